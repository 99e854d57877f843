"""make demo: scripts/demo.sh runs end to end, prints the Table-II-style report of its three runs, and learns."""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNS = ("resnet18-asl", "mlgcn-r18-asl")
DIRECT_RUNS = ("resnet18-asl",)
#: What the demo promises (README): the best direct model, the graph model, on the test split (mAP %).
BEST_DIRECT_MAP = 90.0
GRAPH_MAP = 80.0
#: ... and an ASL model that does not predict every label at 0.5: predicting everything gives CR 100 and
#: CP = the share of positive (image, label) pairs, about 60.
ASL_MAX_CR = 97.0
ASL_MIN_CP = 75.0


def assert_demo_learnt(demo: Path, stdout: str) -> None:
    """The demo's promises, checked on its folder and printed output: the table shows the runs' test mAP,
    the models reach the README's quality figures, and the figure and the Grad-CAM strip are there."""
    assert "facial_components (the paper's Table II)" in stdout
    assert (demo / "report.md").read_text() in stdout
    shown = {match[0]: float(match[1]) for match in re.findall(r"\| (resnet18-asl|mlgcn-r18-asl) \| [\d.]+ \| \**([\d.]+)", stdout)}
    assert set(shown) == set(RUNS)
    metrics = {run: json.loads((demo / "runs" / run / "eval" / "test" / "metrics.json").read_text()) for run in RUNS}
    for run in RUNS:
        assert shown[run] == pytest.approx(metrics[run]["mAP"], abs=0.051)  # the report shows one decimal
    best_direct = max(metrics[run]["mAP"] for run in DIRECT_RUNS)
    assert best_direct >= BEST_DIRECT_MAP, f"best direct test mAP {best_direct:.1f} < {BEST_DIRECT_MAP}"
    assert metrics["mlgcn-r18-asl"]["mAP"] >= GRAPH_MAP, f"graph model test mAP {metrics['mlgcn-r18-asl']['mAP']:.1f} < {GRAPH_MAP}"
    direct = metrics["resnet18-asl"]
    assert direct["CR"] <= ASL_MAX_CR and direct["CP"] >= ASL_MIN_CP, (
        f"the ASL model predicts nearly every label: CP {direct['CP']:.1f}, CR {direct['CR']:.1f}"
    )
    # The category figure of the three runs, and a Grad-CAM strip of one test face.
    with open(demo / "figure.csv", newline="") as handle:
        bars = list(csv.DictReader(handle))
    direct_map = next(bar for bar in bars if (bar["category"], bar["metric"], bar["source"]) == ("direct", "mAP", "ours"))
    assert direct_map["n"] == "1" and float(direct_map["mean"]) == pytest.approx(metrics["resnet18-asl"]["mAP"], abs=1e-5)
    assert (demo / "figure.png").stat().st_size > 0
    strips = list((demo / "explain").glob("*_all.png"))
    assert len(strips) == 1 and strips[0].name in stdout
    assert "Demo outputs, in" in stdout and "figure.png" in stdout.split("Demo outputs")[-1]


@pytest.mark.slow
def test_demo_script_prints_the_report_and_learns(tmp_path):
    demo = tmp_path / "demo"
    env = {**os.environ, "MLCDF": f"{sys.executable} -m mlcdf", "DEMO_DIR": str(demo)}
    env.pop("DEMO_EPOCHS", None)  # the demo as a user runs it
    done = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_demo_learnt(demo, done.stdout)


def test_demo_does_not_replace_a_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    env = {**os.environ, "MLCDF": f"{sys.executable} -m mlcdf", "DEMO_DIR": str(mine)}
    result = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh")], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert "not written by demo.sh" in result.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("script", ["make_explain_figure.sh", "make_robustness_figure.sh"])
def test_figure_scripts_do_not_replace_a_folder_they_did_not_write(tmp_path, script):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    env = {**os.environ, "MLCDF": f"{sys.executable} -m mlcdf", "FIGURE_DIR": str(mine)}
    result = subprocess.run(["bash", str(REPO / "scripts" / script)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{script}: {mine} exists and was not written by {script}; set FIGURE_DIR to another folder"
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
