"""examples/mixup_digits.py runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).parents[1] / "examples" / "mixup_digits.py"


def test_mixup_digits_example() -> None:
    r = subprocess.run([sys.executable, str(EXAMPLE), "60"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    m = re.search(r"last step mixed rows: (\d+) .* test accuracy ([0-9.]+)", r.stdout)
    assert m, r.stdout
    assert int(m.group(1)) == 0                  # the schedule stopped mixing at step 48
    assert float(m.group(2)) > 0.5
