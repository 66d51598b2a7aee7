"""Writing a benchmark's section of benchmarks/RESULTS.md (replaced in place on a re-run), and
the committed records a section is written from (so that ``--report`` rewrites it without
measuring anything)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celltally.io import read_json, write_json

RESULTS = Path(__file__).with_name("RESULTS.md")
# Committed result folders (records, tables); trained networks go in git-ignored runs/ inside.
TABLES_OUT = Path(__file__).with_name("tables")
COUNTCEPTION_OUT = Path(__file__).with_name("countception")


def write_section(key: str, text: str) -> None:
    begin, end = f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"
    content = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in content:
        head, rest = content.split(begin, 1)
        content = head + block + rest.split(end, 1)[1]
    else:
        content = content.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(content)


def records_file(benchmark: str) -> Path:
    """Where a benchmark that measures in one go keeps its figures: ``benchmarks/<name>/``."""
    return Path(__file__).with_name(benchmark) / "records.json"


def save_records(benchmark: str, records: dict[str, Any]) -> None:
    write_json(records_file(benchmark), records)


def read_records(benchmark: str) -> dict[str, Any]:
    """The figures of the benchmark's last run; a clear error where it has not run here."""
    path = records_file(benchmark)
    if not path.is_file():
        raise SystemExit(f"error: {path}: no records; run the benchmark without --report first")
    return read_json(path)
