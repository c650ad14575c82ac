pytest_plugins = ["pytester"]

import pytest

import lockprof


@pytest.fixture(autouse=True)
def _stopped():
    """Every test starts and ends with profiling stopped and nothing recorded."""
    lockprof.stop()
    lockprof.reset()
    yield
    lockprof.stop()
    lockprof.reset()


RATES = [0.0, 0.01, 1.0]
