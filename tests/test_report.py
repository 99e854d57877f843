import csv
import io
import json
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.evaluation.evaluate import PAPER_METRICS
from mlcdf.evaluation.report import (
    PAPER_METHODS,
    group_over_seeds,
    is_report_file,
    load_result,
    paper_results,
    results_table,
    runs_csv,
    sequence_results,
    write_category_figure,
)
from mlcdf.labels import SUBSETS

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
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith("| ---")
    ]


def test_table_for_two_runs(two_runs):
    text = results_table([load_result(run) for run in two_runs])
    assert text.startswith("### facial_components (the paper's Table II)")
    header, r101, mlgcn = markdown_rows(text)
    assert header == ["Category", "Method", "Run", "#Params (M)", *PAPER_METRICS]
    assert r101 == [
        "direct",
        "ResNet101 + ASL",
        "r101_asl",
        "42.5",
        "**92.9**",
        "83.0",
        "**89.0**",
        "**86.0**",
        "83.1",
        "**89.9**",
        "**86.3**",
    ]
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
    sequence = sequence_results()
    assert {method for method, _ in PAPER_METHODS.values()} == {row.method for row in rows + sequence}
    # SeqFakeFormer's: ResNet-50 from the authors' README, ResNet-34 quoted elsewhere and marked so.
    published = {(row.subset, row.method): (row.values["Fixed-Acc"], row.values["Adaptive-Acc"], row.source) for row in sequence}
    assert published == {
        ("facial_components", "SeqFakeFormer-R50"): (72.65, 55.30, "Seq-DeepFake README"),
        ("facial_attributes", "SeqFakeFormer-R50"): (68.86, 49.63, "Seq-DeepFake README"),
        ("facial_components", "SeqFakeFormer-R34"): (71.58, 53.62, "QUOTED (not README)"),
        ("facial_attributes", "SeqFakeFormer-R34"): (68.12, 48.58, "QUOTED (not README)"),
    }
    assert all(row.values["mAP"] is None and row.category == "sequence" for row in sequence)


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


# --- Seeds: runs that differ only in their seed are one row of mean ± std -------------------------------


def seeded_run(root: Path, name: str, seed: int | None, mAP: float, *, model="resnet50", loss="asl", lr=1e-4, embedding=None) -> Path:
    train = {"model": model, "loss": loss, "lr": lr, "out": str(root / name), "device": "auto", "workers": None}
    if seed is not None:
        train["seed"] = seed
    graph = {"embedding": embedding} if embedding else None
    values = R101 | {"mAP": mAP, "CR": 80.0 + (seed or 0)}
    return write_run(root, name, {"train": train, "subset": "facial_components", "graph": graph, "num_params": 23_500_000}, values)


def test_runs_differing_only_in_their_seed_are_one_row(tmp_path):
    runs = [seeded_run(tmp_path, f"r50-asl-s{seed}", seed, value) for seed, value in ((0, 90.0), (1, 92.0), (2, 97.0))]
    runs.append(seeded_run(tmp_path, "r50-bce", 0, 88.0, loss="bce"))  # one seed only
    # A configuration missing its seed 1 (failed or not yet run) still groups the seeds it has.
    runs += [
        seeded_run(tmp_path, f"mlgcn-s{seed}", seed, value, model="ml_gcn", embedding="word") for seed, value in ((0, 80.0), (2, 70.0))
    ]
    rows = [load_result(run) for run in runs]
    assert [row.seed for row in rows] == [0, 1, 2, 0, 0, 2]
    grouped = group_over_seeds(rows)
    assert [(row.source, row.n) for row in grouped] == [("r50-asl", 3), ("r50-bce", 1), ("mlgcn", 2)]
    r50 = grouped[0]
    # By hand: mean (90 + 92 + 97) / 3 = 93; deviations -3, -1, 4 -> sample variance (9 + 1 + 16) / 2 = 13.
    assert r50.values["mAP"] == pytest.approx(93.0) and r50.std["mAP"] == pytest.approx(13**0.5)
    assert r50.values["CR"] == pytest.approx(81.0) and r50.std["CR"] == pytest.approx(1.0)
    assert r50.std["CP"] == 0.0 and r50.seed is None
    assert grouped[1].std["mAP"] == 0.0 and grouped[1].values["mAP"] == 88.0 and grouped[1].seed == 0
    assert grouped[2].values["mAP"] == pytest.approx(75.0) and grouped[2].std["mAP"] == pytest.approx(50**0.5)

    header, *lines = markdown_rows(results_table(rows))
    assert header == ["Category", "Method", "Run", "n", "#Params (M)", *PAPER_METRICS]
    assert lines[0][:6] == ["direct", "ResNet50 + ASL", "r50-asl", "3", "23.5", "**93.0 ± 3.6**"]
    assert lines[1][:6] == ["direct", "ResNet50", "r50-bce", "1", "23.5", "88.0"]
    assert lines[2][2:6] == ["mlgcn", "2", "23.5", "75.0 ± 7.1"]
    latex = results_table(rows, fmt="latex")
    assert r"r50-asl & 3 & 23.5 & \textbf{93.0 $\pm$ 3.6}" in latex and r"& n &" in latex

    table = list(csv.DictReader(io.StringIO(results_table(rows, fmt="csv", paper=True))))
    ours = {row["source"]: row for row in table if row["n"]}
    assert set(ours) == {"r50-asl", "r50-bce", "mlgcn"}
    assert float(ours["r50-asl"]["mAP"]) == pytest.approx(93.0) and float(ours["r50-asl"]["mAP_std"]) == pytest.approx(3.605551, abs=1e-6)
    assert ours["r50-asl"]["n"] == "3" and ours["r50-bce"]["mAP_std"] == "0.0" and ours["r50-bce"]["n"] == "1"
    paper_row = next(row for row in table if row["source"] == "paper")
    assert paper_row["n"] == "" and paper_row["mAP_std"] == ""


def test_single_seed_tables_keep_their_layout(two_runs):
    # No configuration has two seeds: no n column, no ± (the tables of test_table_for_two_runs).
    text = results_table([load_result(run) for run in two_runs], paper=True)
    assert "± " not in text and markdown_rows(text)[0][3] == "#Params (M)"


def test_seeds_group_only_within_one_configuration(tmp_path):
    # Same folder stem but another learning rate: two configurations, each a single run.
    rows = [load_result(seeded_run(tmp_path, "a-s0", 0, 90.0)), load_result(seeded_run(tmp_path, "a-s1", 1, 91.0, lr=1e-3))]
    assert [(row.source, row.n) for row in group_over_seeds(rows)] == [("a-s0", 1), ("a-s1", 1)]
    # No seed in the config: never grouped with anything.
    rows = [load_result(seeded_run(tmp_path, name, None, 90.0)) for name in ("b", "c")]
    assert rows[0].seed is None and [row.n for row in group_over_seeds(rows)] == [1, 1]
    # The same seed twice in one configuration would count one seed twice.
    twins = [load_result(seeded_run(tmp_path, "d", 0, 90.0)), load_result(seeded_run(tmp_path, "d-s0", 0, 91.0))]
    with pytest.raises(MlcdfError, match="d and d-s0: the same configuration trained with the same seed 0"):
        group_over_seeds(twins)


def test_runs_csv_has_one_line_per_run_with_its_seed(tmp_path):
    rows = [load_result(seeded_run(tmp_path, f"r-s{seed}", seed, 90.0 + seed)) for seed in (0, 1)]
    rows.append(load_result(seeded_run(tmp_path, "noseed", None, 50.0)))
    table = list(csv.DictReader(io.StringIO(runs_csv(rows))))
    assert [(row["source"], row["seed"], row["mAP"]) for row in table] == [
        ("r-s0", "0", "90.0"),
        ("r-s1", "1", "91.0"),
        ("noseed", "", "50.0"),
    ]
    path = tmp_path / "results.csv"
    path.write_text(runs_csv(rows))
    assert is_report_file(path)


# --- The category figure (the paper's Figures 2 and 3) ---------------------------------------------------


def published(subset: str, category: str) -> list[dict]:
    with open(Path(__file__).resolve().parents[1] / "mlcdf" / "resources" / "paper_tables.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["subset"] == subset and row["category"] == category]


@pytest.fixture
def figure_runs(tmp_path):
    runs = [seeded_run(tmp_path / "runs", f"r50-s{seed}", seed, value) for seed, value in ((0, 90.0), (1, 94.0))]
    runs.append(seeded_run(tmp_path / "runs", "r101", 0, 80.0, model="resnet101"))
    runs.append(seeded_run(tmp_path / "runs", "mlgcn", 0, 70.0, model="ml_gcn", embedding="word"))
    return runs


def test_category_figure_numbers(figure_runs, tmp_path):
    figure = tmp_path / "fig.png"
    write_category_figure([load_result(run) for run in figure_runs], figure, paper=True)
    table = list(csv.DictReader(figure.with_suffix(".csv").read_text(encoding="utf-8").splitlines()))
    assert tuple(table[0]) == ("subset", "category", "metric", "source", "mean", "std", "n")
    bars = {(row["category"], row["metric"], row["source"]): row for row in table}
    assert {row["subset"] for row in table} == {"facial_components"}
    assert len(table) == 4 * len(PAPER_METRICS)
    # Ours: the configurations are r50 (seed mean 92), r101 (80): mean 86, sample std of (92, 80) = 8.485...
    direct = bars["direct", "mAP", "ours"]
    assert float(direct["mean"]) == pytest.approx(86.0) and float(direct["std"]) == pytest.approx(72**0.5) and direct["n"] == "2"
    assert bars["indirect", "mAP", "ours"]["n"] == "1" and float(bars["indirect", "mAP", "ours"]["std"]) == 0.0
    # The paper: the 6 published rows of each category, averaged here independently of mlcdf.evaluation.report.
    for category in ("direct", "indirect"):
        rows = published("facial_components", category)
        assert len(rows) == 6
        for metric in PAPER_METRICS:
            column = [float(row[metric]) for row in rows]
            bar = bars[category, metric, "paper"]
            assert float(bar["mean"]) == pytest.approx(sum(column) / 6, abs=1e-6)
            assert float(bar["std"]) == pytest.approx(statistics.stdev(column), abs=1e-6) and bar["n"] == "6"
    # Spot check against numbers written out by hand: the published direct mAPs of Table II.
    maps = [float(row["mAP"]) for row in published("facial_components", "direct")]
    assert float(bars["direct", "mAP", "paper"]["mean"]) == pytest.approx(sum(maps) / len(maps))


def test_category_figure_png(figure_runs, tmp_path):
    from PIL import Image

    figure = tmp_path / "fig.png"
    result = runner.invoke(app, ["report", *map(str, figure_runs), "--figure", str(figure)])
    assert result.exit_code == 0, result.output
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 400 and image.info["Software"] == "mlcdf report"
    sources = {row["source"] for row in csv.DictReader(figure.with_suffix(".csv").read_text(encoding="utf-8").splitlines())}
    assert sources == {"ours"}  # the paper's bars only with --paper
    # Written again over its own output; a PNG of someone else is refused before any work.
    assert runner.invoke(app, ["report", *map(str, figure_runs), "--figure", str(figure), "--paper"]).exit_code == 0
    Image.new("RGB", (4, 4)).save(tmp_path / "photo.png")
    result = runner.invoke(app, ["report", *map(str, figure_runs), "--figure", str(tmp_path / "photo.png")])
    assert result.exit_code == 2 and "not written by 'mlcdf report'" in result.stderr
    assert not (tmp_path / "photo.csv").exists()


def test_category_figure_bad_inputs(figure_runs, tmp_path):
    result = runner.invoke(app, ["report", *map(str, figure_runs), "--figure", str(tmp_path / "fig.jpg")])
    assert result.exit_code == 2 and "ending in .png" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    (figure_runs[1] / "config.json").write_text("{broken")
    result = runner.invoke(app, ["report", *map(str, figure_runs), "--figure", str(tmp_path / "fig.png")])
    assert result.exit_code == 2 and "r50-s1" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "fig.png").exists() and not (tmp_path / "fig.csv").exists()
    write_metrics(tmp_path / "plain_eval", R101)
    result = runner.invoke(app, ["report", str(tmp_path / "plain_eval"), "--figure", str(tmp_path / "fig.png")])
    assert result.exit_code == 2 and "direct or indirect" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "fig.png").exists()


def test_options_that_do_not_change_what_is_trained_never_split_seeds_of_one_configuration():
    from mlcdf.config import RESUME_OVERRIDES
    from mlcdf.evaluation.report import _NOT_IDENTITY

    assert set(RESUME_OVERRIDES) <= _NOT_IDENTITY


def test_asl_with_other_settings_than_the_papers_is_named_and_not_matched(tmp_path):
    paper_asl = {"model": "resnet101", "loss": "asl", "asl_gamma_neg": 4.0, "asl_gamma_pos": 0.0, "asl_clip": 0.05}
    runs = [
        write_run(tmp_path, "paper-asl", {"train": paper_asl, "subset": "facial_components"}, R101),
        write_run(tmp_path, "asl-g1", {"train": paper_asl | {"asl_gamma_neg": 1.0, "asl_clip": 0.0}, "subset": "facial_components"}, R101),
    ]
    rows = [load_result(run) for run in runs]
    assert [row.loss for row in rows] == ["asl", "asl (γ-=1, clip=0)"]
    assert [row.title for row in rows] == ["ResNet101 + ASL", "ResNet101 + ASL (γ-=1, clip=0)"]
    table = markdown_rows(results_table(rows, paper=True))[1:]
    sources = [row[2] for row in table]
    # The paper's settings are compared with the published row; the other settings have no published match.
    assert sources[:3] == ["paper-asl", "paper", "Δ vs paper"]
    assert sources.index("asl-g1") == 3 and sources[4] == "paper"


def test_a_run_written_before_the_asl_settings_is_a_seed_of_the_same_configuration(tmp_path):
    old = seeded_run(tmp_path, "r50-asl-s0", 0, 90.0)  # config.json without asl_* keys, as mlcdf wrote before
    new = seeded_run(tmp_path, "r50-asl-s1", 1, 92.0)
    config = json.loads((new / "config.json").read_text())
    config["train"] |= {"asl_gamma_neg": 4.0, "asl_gamma_pos": 0.0, "asl_clip": 0.05}
    (new / "config.json").write_text(json.dumps(config))
    assert [(row.source, row.n) for row in group_over_seeds([load_result(old), load_result(new)])] == [("r50-asl", 2)]


# --- Both families on both tasks (issue 26): sequence metrics, SeqFakeFormer's published rows, the oracle ---

ORACLE = {"Fixed-Acc": 80.25, "Adaptive-Acc": 61.5}


def write_two_task_run(root: Path, name: str, train: dict, values: dict, *, oracle=ORACLE, num_params=None) -> Path:
    """A run whose metrics.json has the paper's metrics, Fixed-Acc / Adaptive-Acc and the oracle order's."""
    run = write_run(root, name, {"train": train, "subset": "facial_components", "num_params": num_params}, values)
    metrics_path = run / "eval" / "test" / "metrics.json"
    document = json.loads(metrics_path.read_text())
    document |= {name: values[name] for name in ("Fixed-Acc", "Adaptive-Acc")}
    if oracle is not None:
        document["oracle_order"] = oracle
    metrics_path.write_text(json.dumps(document))
    return run


SFF50 = dict(mAP=70.0, CP=60.0, CR=50.0, CF1=55.0, OP=61.0, OR=52.0, OF1=56.0) | {"Fixed-Acc": 74.02, "Adaptive-Acc": 54.04}
R101_BOTH = R101 | {"Fixed-Acc": 71.04, "Adaptive-Acc": 50.0}


@pytest.fixture
def two_families(tmp_path):
    seqfakeformer = write_two_task_run(tmp_path, "sff50", {"model": "seqfakeformer_r50", "loss": "bce"}, SFF50, num_params=27_213_162)
    r101 = write_two_task_run(tmp_path, "r101-both", {"model": "resnet101", "loss": "asl"}, R101_BOTH, num_params=42_510_000)
    return seqfakeformer, r101


def test_both_families_on_both_tasks_beside_the_published_rows(two_families):
    rows = [load_result(run) for run in two_families]
    # The sequence model's loss option does not apply (it trains with cross-entropy): matched on its name.
    assert (rows[0].category, rows[0].method, rows[0].loss, rows[0].title) == ("sequence", "SeqFakeFormer-R50", None, "SeqFakeFormer-R50")
    assert rows[0].values["Fixed-Acc"] == 74.02 and rows[0].oracle == ORACLE
    header, *lines = markdown_rows(results_table(rows, paper=True, columns="tasks"))
    assert header == ["Category", "Method", "Run", "#Params (M)", "mAP", "CF1", "OF1", "Fixed-Acc", "Adaptive-Acc"]
    by_source = [line[2] for line in lines]
    assert by_source[:6] == ["sff50", "Seq-DeepFake README", "Δ vs paper", "r101-both", "paper", "Δ vs paper"]
    assert lines[0] == ["sequence", "SeqFakeFormer-R50", "sff50", "27.2", "70.0", "55.0", "56.0", "**74.0**", "54.0"]
    # The authors' README: 72.65 / 55.30; ours minus theirs: 74.02 - 72.65 = +1.37, 54.04 - 55.30 = -1.26.
    assert lines[1] == ["sequence", "SeqFakeFormer-R50", "Seq-DeepFake README", "27.2", "-", "-", "-", "72.7", "**55.3**"]
    assert lines[2] == ["", "", "Δ vs paper", "+0.0", "-", "-", "-", "+1.4", "-1.3"]
    assert lines[3] == ["direct", "ResNet101 + ASL", "r101-both", "42.5", "**92.9**", "86.0", "**86.3**", "71.0", "50.0"]
    assert lines[5][4:] == ["+0.2", "-0.2", "+0.1", "-", "-"]
    # The paper's other rows of Table II, then the unmatched SeqFakeFormer-R34 (quoted), then the oracle (no bold).
    assert by_source.count("paper") == 12
    assert lines[-2] == ["sequence", "SeqFakeFormer-R34", "QUOTED (not README)", "24.6", "-", "-", "-", "71.6", "53.6"]
    assert lines[-1] == ["", "true set, most frequent order", "oracle", "-", "-", "-", "-", "80.2", "61.5"]


def test_column_views(two_families, two_runs):
    rows = [load_result(run) for run in two_families]
    # auto: every metric once a run has the sequence metrics; the paper's seven without (test_table_for_two_runs).
    header, *lines = markdown_rows(results_table(rows))
    assert header[4:] == [*PAPER_METRICS, "Fixed-Acc", "Adaptive-Acc"] and lines[-1][2] == "oracle"
    assert markdown_rows(results_table([load_result(run) for run in two_runs]))[0][4:] == list(PAPER_METRICS)
    # The paper's view: no sequence column, so neither the oracle nor SeqFakeFormer's published rows (all dashes).
    header, *lines = markdown_rows(results_table(rows, paper=True, columns="paper"))
    assert header[4:] == list(PAPER_METRICS)
    assert [line[2] for line in lines[:4]] == ["sff50", "r101-both", "paper", "Δ vs paper"] and len(lines) == 2 + 12 + 1
    latex = results_table(rows, fmt="latex", columns="tasks")
    assert r"\begin{tabular}{lllrrrrrr}" in latex and r"sff50 & 27.2 & 70.0 & 55.0 & 56.0 & \textbf{74.0} & \textbf{54.0} \\" in latex
    # CSV: every metric, whatever the view; the oracle row has the sequence metrics only.
    table = list(csv.DictReader(io.StringIO(results_table(rows, fmt="csv", columns="paper"))))
    assert float(table[0]["Fixed-Acc"]) == 74.02 and float(table[0]["Adaptive-Acc"]) == 54.04 and table[0]["Fixed-Acc_std"] == "0.0"
    assert (table[-1]["source"], table[-1]["Fixed-Acc"], table[-1]["mAP"], table[-1]["n"]) == ("oracle", "80.25", "", "")
    assert float(list(csv.DictReader(io.StringIO(runs_csv(rows))))[1]["Adaptive-Acc"]) == 50.0
    with pytest.raises(ValueError, match="columns"):
        results_table(rows, columns="some")


def test_seeds_average_the_sequence_metrics(tmp_path):
    runs = [
        write_two_task_run(tmp_path, f"sff-s{seed}", {"model": "seqfakeformer_r34", "seed": seed}, SFF50 | {"Fixed-Acc": value})
        for seed, value in ((0, 70.0), (1, 74.0))
    ]
    [row] = group_over_seeds([load_result(run) for run in runs])
    assert row.n == 2 and row.values["Fixed-Acc"] == pytest.approx(72.0) and row.std["Fixed-Acc"] == pytest.approx(8**0.5)
    lines = markdown_rows(results_table([load_result(run) for run in runs], columns="tasks"))
    assert lines[1][:3] == ["sequence", "SeqFakeFormer-R34", "sff"] and lines[1][-2] == "**72.0 ± 2.8**"
    assert len(lines) == 3 and lines[-1][2:] == ["oracle", "", "-", "-", "-", "-", "80.2", "61.5"]  # one oracle row: the seeds agree


def test_oracle_rows_of_runs_on_other_data_are_named(tmp_path):
    first = write_two_task_run(tmp_path, "a", {"model": "resnet101", "loss": "asl"}, R101_BOTH)
    other = write_two_task_run(
        tmp_path, "b", {"model": "resnet50", "loss": "asl"}, R101_BOTH, oracle={"Fixed-Acc": 50.0, "Adaptive-Acc": 40.0}
    )
    unordered = write_run(tmp_path, "c", {"model": "resnet50", "loss": "bce", "subset": "facial_components"}, R101)  # no oracle
    lines = markdown_rows(results_table([load_result(run) for run in (first, other, unordered)], columns="tasks"))[1:]
    assert [line[2] for line in lines] == ["a", "b", "c", "oracle (a)", "oracle (b)"]
    assert lines[2][-2:] == ["-", "-"] and lines[4][-2:] == ["50.0", "40.0"]


def test_another_backbone_is_named_and_not_matched(tmp_path):
    run = write_two_task_run(tmp_path, "sff-r18", {"model": "seqfakeformer_r34", "backbone": "resnet18"}, SFF50)
    row = load_result(run)
    assert row.method == "SeqFakeFormer-R34 on resnet18"
    lines = markdown_rows(results_table([row], paper=True, columns="tasks"))[1:]
    assert lines[1][2] != "Δ vs paper" and "Δ vs paper" not in [line[2] for line in lines]


@pytest.mark.parametrize(
    "document, message",
    [
        ({"Fixed-Acc": "high"}, "'Fixed-Acc' is 'high'"),
        ({"Adaptive-Acc": float("nan")}, "'Adaptive-Acc' is nan"),
        ({"oracle_order": {"Fixed-Acc": 1.0}}, "'oracle_order' needs both"),
        ({"oracle_order": [1, 2]}, "'oracle_order' is [1, 2]"),
        ({"oracle_order": {"Fixed-Acc": True, "Adaptive-Acc": 1.0}}, "'oracle_order.Fixed-Acc' is True"),
    ],
)
def test_malformed_sequence_figures_name_the_file(tmp_path, document, message):
    run = write_run(tmp_path, "r", {"model": "resnet50", "loss": "bce", "subset": "facial_components"}, R101)
    metrics_path = run / "eval" / "test" / "metrics.json"
    metrics_path.write_text(json.dumps(json.loads(metrics_path.read_text()) | document))
    with pytest.raises(SchemaError, match="metrics.json") as error:
        load_result(run)
    assert message in str(error.value)
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1 and "metrics.json" in result.stderr


def test_cli_report_columns(two_families, tmp_path):
    from mlcdf.cli.report import Columns
    from mlcdf.evaluation.report import COLUMN_CHOICES

    assert tuple(choice.value for choice in Columns) == COLUMN_CHOICES
    out = tmp_path / "table.md"
    result = runner.invoke(app, ["report", *map(str, two_families), "--paper", "--columns", "tasks", "--out", str(out)])
    assert result.exit_code == 0, result.output
    header, *lines = markdown_rows(out.read_text())
    assert header[4:] == ["mAP", "CF1", "OF1", "Fixed-Acc", "Adaptive-Acc"] and lines[1][2] == "Seq-DeepFake README"
    assert is_report_file(out)  # written again over its own table of any view
    result = runner.invoke(app, ["report", *map(str, two_families), "--columns", "paper", "--out", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", *map(str, two_families), "--columns", "wide"])
    assert result.exit_code == 2 and "wide" in result.output


def test_tables_written_before_the_sequence_metrics_are_still_ours(tmp_path):
    grouped = ["subset", "source", "category", "method", "loss", "node_embedding", "params_m", "n", *PAPER_METRICS]
    path = tmp_path / "old.csv"
    path.write_text(",".join(grouped + [f"{name}_std" for name in PAPER_METRICS]) + "\n")
    assert is_report_file(path)
    path.write_text(
        ",".join(["subset", "source", "category", "method", "loss", "node_embedding", "seed", "params_m", *PAPER_METRICS]) + "\n"
    )
    assert is_report_file(path)
    path.write_text("name,mAP\n")
    assert not is_report_file(path)
