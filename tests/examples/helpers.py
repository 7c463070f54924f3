"""Checks shared by the example tests."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RESULT = re.compile(r"Train: (\d\.\d{3}), Test: (\d\.\d{3})")


def assert_png(path: Path) -> None:
    """A valid PNG: signature, an IHDR chunk with a sensible size, and matplotlib reads it."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    length, kind, width, height = struct.unpack(">I4sII", data[8:24])
    assert kind == b"IHDR" and length == 13 and 200 <= width <= 5000 and 100 <= height <= 3000
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (height, width)
    assert image.std() > 0.01  # not a blank canvas


def run_script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def table_rows(report: str, header: str) -> list[str]:
    """The body rows of the first Markdown table after ``header`` in ``report``."""
    lines = report.split(header, 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2 :]:  # after the header and separator rows
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows
