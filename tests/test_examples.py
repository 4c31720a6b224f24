"""Every example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_quickstart(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(EXAMPLES / "quickstart.py"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = re.search(r"web share of tokens fed: ([0-9.]+) .*resumed at steps \[([0-9, ]+)\]", r.stdout)
    assert m, r.stdout
    assert abs(float(m.group(1)) - 0.7) < 0.02
    assert [int(x) for x in m.group(2).split(",")] == [20, 21, 22, 23, 24]
