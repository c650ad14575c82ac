"""Build: render the C wrapper types from the spec, then compile the one
extension module lockprof._lockprof from generated/*.c and runtime/*.c."""
import os
import sys
import sysconfig
from glob import glob

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

PTH = "lockprof-autostart.pth"


class build_py_with_pth(build_py):
    """Also puts lockprof-autostart.pth at the top of the install, where
    site.py runs it at interpreter start: with LOCKPROF_ENABLED set it imports
    lockprof._autostart, otherwise it costs one environment lookup."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH),
                       preserve_mode=0)

    def get_outputs(self, include_bytecode=1):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, PTH)]

HERE = os.path.dirname(os.path.abspath(__file__))


def regenerate():
    # generated/ is committed; rendering again keeps it in step with the spec
    # and the templates (only files whose bytes change are written).
    sys.path.insert(0, HERE)
    try:
        from generator import render
    except ImportError as e:  # jinja2 missing: build from the committed files
        print(f"lockprof: not regenerating ({e}); using committed generated/", file=sys.stderr)
        return
    finally:
        sys.path.pop(0)
    render.write(render.render(), render.DEFAULT_OUT)


regenerate()

extra = ["-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
         "-Wno-missing-field-initializers", "-Wno-cast-function-type"]
if os.environ.get("LOCKPROF_WERROR"):
    extra.append("-Werror")
if os.environ.get("LOCKPROF_CFLAGS"):
    extra += os.environ["LOCKPROF_CFLAGS"].split()
link = os.environ.get("LOCKPROF_LDFLAGS", "").split()

# Test extras: gevent (and the greenlet it needs) does not build on a
# free-threaded CPython, so there its tests skip (no environment marker tells
# a free-threaded interpreter apart; this runs on the interpreter installing)
free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
test_extras = ["pytest>=7", "jinja2>=3.0", "setuptools>=77",
               # the third-party lock types lockprof profiles, and a real server
               # using them (tests/test_anyio.py, tests/test_trio.py)
               "anyio>=4.5", "trio>=0.25", "starlette", "uvicorn",
               # request labels through real apps (tests/test_labels.py)
               "flask", "waitress", "django; python_version >= '3.10'",
               # a pre-fork server for the live endpoint (tests/test_http.py)
               "gunicorn; sys_platform != 'win32'"]
if not free_threaded:
    test_extras.append("gevent>=23; platform_python_implementation == 'CPython'")

sources = sorted(glob("generated/*.c")) + sorted(glob("runtime/*.c"))
setup(
    cmdclass={"build_py": build_py_with_pth},
    extras_require={"test": test_extras, "bench": ["ddtrace>=4"]},
    ext_modules=[
        Extension(
            "lockprof._lockprof",
            sources=sources,
            include_dirs=["runtime", "generated"],
            depends=sorted(glob("runtime/*.h")) + sorted(glob("generated/*.h")),
            extra_compile_args=extra,
            extra_link_args=link,
        )
    ],
)
