"""Writing a benchmark's section of benchmarks/RESULTS.md (replaced in place on a re-run)."""

from __future__ import annotations

from pathlib import Path

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
