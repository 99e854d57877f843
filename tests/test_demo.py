"""make demo: scripts/demo.sh runs end to end and prints the Table-II-style report of its three runs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_script_prints_the_report(tmp_path):
    env = {**os.environ, "MLCDF": f"{sys.executable} -m mlcdf", "DEMO_DIR": str(tmp_path / "demo"), "DEMO_EPOCHS": "1"}
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "facial_components (the paper's Table II)" in done.stdout
    rows = {match[0]: float(match[1]) for match in re.findall(r"\| (resnet18-bce|resnet18-asl|mlgcn-r18-asl) \| [\d.]+ \| \**([\d.]+)", done.stdout)}
    assert set(rows) == {"resnet18-bce", "resnet18-asl", "mlgcn-r18-asl"}
    assert all(0 < value <= 100 for value in rows.values())  # the test mAP of each run
    assert (tmp_path / "demo" / "report.md").read_text() in done.stdout
