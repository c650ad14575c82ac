"""lockprof's benchmarks: `python -m bench`."""
import json
from typing import Any, Optional


def write_results(data: Any, text: str, json_path: Optional[str], md_path: Optional[str]) -> None:
    """prints a bench's Markdown and writes it, and its data as JSON, where
    asked (--md, --json)"""
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)
    if md_path:
        with open(md_path, "w") as f:
            f.write(text + "\n")
