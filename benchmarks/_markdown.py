"""Shared by the benchmark scripts: replace a marked section of a markdown file."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path, name: str, stamp: str, table: str) -> None:
    """Write ``stamp`` and ``table`` between <!-- name:begin --> and <!-- name:end --> in
    ``path`` (appended when the markers are not there yet)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{stamp}\n\n{table}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text += "\n" + block + "\n"
    path.write_text(text)
