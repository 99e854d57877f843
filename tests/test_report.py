import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.errors import MissingArtifactError, SchemaError
from mlcdf.evaluate import PAPER_METRICS
from mlcdf.labels import SUBSETS
from mlcdf.report import PAPER_METHODS, load_result, paper_results, results_table

runner = CliRunner()
COMPONENTS = list(SUBSETS["facial_components"])


def write_metrics(folder: Path, values: dict, *, labels=COMPONENTS, num_params=None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    document = {name: values.get(name) for name in PAPER_METRICS} | {"labels": labels, "num_params": num_params}
    (folder / "metrics.json").write_text(json.dumps(document))


def write_run(root: Path, name: str, config: dict, values: dict, num_params=None) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(config))
    write_metrics(run / "eval" / "test", values, num_params=num_params)
    return run


R101 = dict(mAP=92.94, CP=83.0, CR=89.0, CF1=86.04, OP=83.1, OR=89.9, OF1=86.3)
MLGCN = dict(mAP=89.0, CP=90.0, CR=None, CF1=70.0, OP=88.0, OR=70.0, OF1=78.0)


@pytest.fixture
def two_runs(tmp_path):
    # The trainer's layout (options under "train") and a flat one are both understood.
    r101 = write_run(
        tmp_path,
        "r101_asl",
        {"train": {"model": "resnet101", "loss": "asl"}, "subset": "facial_components", "graph": None, "num_params": 42_510_000},
        R101,
    )
    mlgcn = write_run(
        tmp_path,
        "mlgcn",
        {"model": "ml_gcn", "loss": "bce", "subset": "facial_components", "graph": {"embedding": "word"}},
        MLGCN,
        num_params=44.9,
    )
    return r101, mlgcn


def markdown_rows(text: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]


def test_table_for_two_runs(two_runs):
    text = results_table([load_result(run) for run in two_runs])
    assert text.startswith("### facial_components (the paper's Table II)")
    header, r101, mlgcn = markdown_rows(text)
    assert header == ["Category", "Method", "Run", "#Params (M)", *PAPER_METRICS]
    assert r101 == ["direct", "ResNet101 + ASL", "r101_asl", "42.5", "**92.9**", "83.0", "**89.0**", "**86.0**", "83.1", "**89.9**", "**86.3**"]
    assert mlgcn == ["indirect", "ML-GCN (word)", "mlgcn", "44.9", "89.0", "**90.0**", "-", "70.0", "**88.0**", "70.0", "78.0"]


def test_paper_rows_and_differences(two_runs):
    text = results_table([load_result(run) for run in two_runs], paper=True)
    rows = markdown_rows(text)[1:]
    assert [row[2] for row in rows[:6]] == ["r101_asl", "paper", "Δ vs paper", "mlgcn", "paper", "Δ vs paper"]
    paper_r101 = rows[1]
    assert paper_r101[:4] == ["direct", "ResNet101 + ASL", "paper", "42.8"]
    assert rows[2] == ["", "", "Δ vs paper", "-0.3", "+0.2", "+0.3", "-1.0", "-0.2", "+0.4", "-0.1", "+0.1"]
    assert rows[5][6] == "-"  # no difference where our value is undefined
    # All 12 published rows of the subset are there, the unmatched ones after ours.
    assert sum(row[2] == "paper" for row in rows) == 12
    # Bold is over ours and the published rows: the paper's CR 90.0 beats our 89.0.
    assert paper_r101[6] == "**90.0**" and rows[0][6] == "89.0"


def test_latex_and_csv(two_runs, tmp_path):
    rows = [load_result(run) for run in two_runs]
    latex = results_table(rows, fmt="latex", paper=True)
    assert r"\begin{tabular}{lllrrrrrrrr}" in latex and r"\end{tabular}" in latex
    assert r"r101\_asl & 42.5 & \textbf{92.9}" in latex and r"$\Delta$ vs paper" in latex and r"\#Params" in latex
    table = list(csv.DictReader(io.StringIO(results_table(rows, fmt="csv"))))
    assert [row["source"] for row in table] == ["r101_asl", "mlgcn"]
    assert float(table[0]["mAP"]) == 92.94 and table[1]["CR"] == "" and table[1]["node_embedding"] == "word"
    with pytest.raises(ValueError, match="fmt"):
        results_table(rows, fmt="html")


def test_evaluation_folders(two_runs, tmp_path):
    # Inside a run, the run's config describes it; elsewhere, the folder name and the labels do.
    assert load_result(two_runs[0] / "eval" / "test").title == "ResNet101 + ASL"
    write_metrics(tmp_path / "other_tool", R101, labels=list(SUBSETS["facial_attributes"]))
    row = load_result(tmp_path / "other_tool")
    assert (row.subset, row.method, row.source, row.category) == ("facial_attributes", "other_tool", "other_tool", "")
    write_metrics(tmp_path / "custom", R101, labels=["a", "b"])
    assert "### other labels" in results_table([load_result(tmp_path / "custom")], paper=True)


def test_an_evaluation_cut_off_mid_replace_is_restored(two_runs):
    evaluation = two_runs[0] / "eval" / "test"
    evaluation.rename(evaluation.with_name(".test.old"))  # a kill between atomic_dir's two renames
    assert load_result(two_runs[0]).values["mAP"] == 92.94
    assert evaluation.is_dir() and not evaluation.with_name(".test.old").exists()


def test_missing_or_malformed_inputs(two_runs, tmp_path):
    with pytest.raises(MissingArtifactError, match="mlcdf evaluate --run"):
        load_result(two_runs[0], split="val")
    (two_runs[1] / "config.json").write_text(json.dumps({"loss": "bce"}))
    with pytest.raises(SchemaError, match="model"):
        load_result(two_runs[1])
    (two_runs[0] / "eval" / "test" / "metrics.json").write_text('{"mAP": "high"}')
    with pytest.raises(SchemaError, match="mAP"):
        load_result(two_runs[0])


def test_published_rows_ship_with_the_package():
    rows = paper_results()
    assert len(rows) == 24 and {row.subset for row in rows} == set(SUBSETS)
    best = max((row for row in rows if row.subset == "facial_components"), key=lambda row: row.values["mAP"])
    assert (best.title, best.values["mAP"]) == ("ResNet101 + ASL", 92.7)
    assert {method for method, _ in PAPER_METHODS.values()} == {row.method for row in rows}


def test_cli_report(two_runs, tmp_path):
    result = runner.invoke(app, ["report", *map(str, two_runs), "--paper"])
    assert result.exit_code == 0, result.output
    assert "ResNet101 + ASL" in result.stdout and "Δ vs paper" in result.stdout
    out = tmp_path / "table.tex"
    result = runner.invoke(app, ["report", *map(str, two_runs), "--format", "latex", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("% facial_components") and result.stdout == ""
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "neither a run folder" in result.stderr
