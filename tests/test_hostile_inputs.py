"""Hostile options and files of issue 25: an output written where it must not be, a silently wrong result,
a traceback, or a check that comes too late. Each is one line and exit 2 (or one failed run of a plan),
with nothing written or deleted. Every hostile file is written here by the test itself, tiny."""

import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from conftest import write_image
from test_own_csv import write_csv
from test_report import R101, write_metrics
from toy import write_toy_prepared
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import MAX_COUNTS, TrainConfig
from mlcdf.data.prepared import load_prepared
from mlcdf.data.synth_cooccurrence import load_cooccurrence
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.experiments.plans import load_plan
from mlcdf.io import check_output_folder

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def one_line(result) -> str:
    """The output of a command that failed as a user error: exit 2, no traceback."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception)
    return result.output.replace("\n", "")


def file_tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): b"<folder>" if p.is_dir() else p.read_bytes() for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    return write_toy_prepared(tmp_path_factory.mktemp("hostile_inputs"), {"train": 8, "val": 4, "test": 4})


def write_plan(folder: Path, body: str, prepared: Path | None = None) -> Path:
    defaults = f'[defaults]\nprepared = {{ facial_components = "{prepared}" }}\n' if prepared else ""
    path = folder / "plan.toml"
    path.write_text(defaults + body, encoding="utf-8")
    return path


TINY_RUN = 'epochs = 1\nbatch_size = 4\nimage_size = 16\ndevice = "cpu"\nworkers = 0\npatience = 0\n'


# ------------------------------------------------------------------------- writing where it must not


def one_image_csv(folder: Path, rows: list[list[str]], header: tuple[str, ...] = ("file_path", "nose", "eye", "split")) -> Path:
    for row in rows:
        path = folder / "images" / row[0]
        if not path.exists():
            write_image(path)
    return write_csv(folder / "own.csv", list(header), rows)


def prepare_csv_args(csv_path: Path, out: Path, *more: object) -> list[object]:
    return ["prepare", "--format", "csv", "--csv", csv_path, "--root", csv_path.parent / "images", "--out", out, *more]


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "a/b", "..", "n" * 200])
def test_prepare_name_is_one_folder_inside_out(tmp_path, name):
    name = str(tmp_path / "abs" / "x") if name == "/abs/x" else name
    csv_path = one_image_csv(tmp_path / "data", [["a.png", "1", "0", "train"], ["b.png", "0", "1", "val"]])
    (tmp_path / "out").mkdir()
    before = file_tree(tmp_path)
    flat = one_line(invoke(*prepare_csv_args(csv_path, tmp_path / "out" / "deep", "--name", name)))
    assert "--name" in flat
    assert file_tree(tmp_path) == before and not (tmp_path / "x").exists() and not (tmp_path / "abs").exists()


def test_reproduce_into_the_plans_prepared_folder_is_refused(tmp_path, prepared):
    plan = write_plan(tmp_path, TINY_RUN + '\n[[runs]]\nname = "r"\nmodel = "timm:test_resnet"\n', prepared)
    before = file_tree(prepared.parent)
    for out in (prepared, prepared / "inside"):
        for dry in ((), ("--dry-run",)):
            flat = one_line(invoke("reproduce", "--plan", plan, "--out", out, *dry))
            assert "the plan's prepared folder" in flat
    assert file_tree(prepared.parent) == before


def test_study_with_a_mistyped_profile_writes_nothing_even_in_a_dry_run(tmp_path):
    out = tmp_path / "study"
    for dry in (("--dry-run",), ()):
        flat = one_line(invoke("study", "cooccurrence", "--out", out, "--profile", tmp_path / "typo.json", *dry))
        assert "typo.json: not found" in flat
        assert not out.exists()


def test_train_tensorboard_into_the_prepared_folder_is_refused(tmp_path):
    prepared = write_toy_prepared(tmp_path / "data", {"train": 4, "val": 4})
    before = file_tree(tmp_path)
    args = ["train", "--prepared", prepared, "--model", "timm:test_resnet", "--out", tmp_path / "run", "--epochs", 1]
    flat = one_line(invoke(*args, "--device", "cpu", "--workers", 0, "--tensorboard", prepared / "tb", "--quiet"))
    assert "--prepared" in flat and "tb: the output" in flat
    assert file_tree(tmp_path) == before


# ------------------------------------------------------------------------- a wrong result, silently


@pytest.mark.parametrize(("first", "second"), [("a.png", "./a.png"), ("sub//a.png", "sub/a.png"), ("sub/./a.png", "sub/a.png")])
def test_an_image_under_two_spellings_is_one_image(tmp_path, first, second):
    csv_path = one_image_csv(tmp_path / "data", [[first, "1", "0", "train"], [second, "1", "0", "test"]])
    flat = one_line(invoke(*prepare_csv_args(csv_path, tmp_path / "out")))
    assert "own.csv:3" in flat and "repeats line 2" in flat
    assert not (tmp_path / "out").exists()


def test_image_paths_are_written_in_one_spelling(tmp_path):
    csv_path = one_image_csv(tmp_path / "data", [["./a.png", "1", "0", "train"], ["sub//b.png", "0", "1", "val"]])
    assert invoke(*prepare_csv_args(csv_path, tmp_path / "out")).exit_code == 0
    subset = load_prepared(tmp_path / "out" / "own")
    assert subset.read_split("train").file_paths == ["a.png"] and subset.read_split("val").file_paths == ["sub/b.png"]


def test_huge_profile_weights_are_refused_not_summed_to_infinity(tmp_path):
    profile = tmp_path / "huge.json"
    recipes = [{"labels": ["nose"], "weight": 1e308}, {"labels": ["eye"], "weight": 1e308}]
    profile.write_text(json.dumps({"recipes": recipes}))
    with pytest.raises(SchemaError, match=r"recipes\[0\]: 'weight' must be a number > 0 and at most"):
        load_cooccurrence(str(profile), "facial_components", 1.0)
    recipes = [{"labels": ["nose"], "weight": 1e12}, {"labels": ["eye"], "weight": 1e12}]
    profile.write_text(json.dumps({"recipes": recipes}))
    assert load_cooccurrence(str(profile), "facial_components", 1.0).probabilities.tolist() == [0.5, 0.5]


@pytest.mark.parametrize(("figure", "table"), [("same.png", "same.png"), ("t.png", "t.csv")])
def test_report_outputs_do_not_replace_each_other(tmp_path, figure, table):
    write_metrics(tmp_path / "eval", R101)
    (tmp_path / "out").mkdir()
    flat = one_line(invoke("report", tmp_path / "eval", "--figure", tmp_path / "out" / figure, "--out", tmp_path / "out" / table))
    assert "--out" in flat and "--figure" in flat
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (("file_path", unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"), "split"), "appear more than once"),
        (("file_path", "no\u200bse", "eye", "split"), "invisible character U+200B"),
    ],
    ids=["nfc-nfd", "zero-width"],
)
def test_label_names_that_look_alike_are_refused(tmp_path, header, message):
    csv_path = one_image_csv(tmp_path / "data", [["a.png", "1", "0", "train"], ["b.png", "0", "1", "val"]], header)
    flat = one_line(invoke(*prepare_csv_args(csv_path, tmp_path / "out")))
    assert message in flat and "own.csv:1" in flat
    assert not (tmp_path / "out").exists()


def test_a_label_typed_in_nfc_and_nfd_is_one_label(tmp_path):
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    rows = [["a.png", nfc, "train"], ["b.png", f"{nfd}|nose", "train"], ["c.png", "nose", "val"]]
    csv_path = one_image_csv(tmp_path / "data", rows, ("file_path", "labels", "split"))
    assert invoke(*prepare_csv_args(csv_path, tmp_path / "out")).exit_code == 0
    assert load_prepared(tmp_path / "out" / "own").labels == (nfc, "nose")


# ------------------------------------------------------------------------- tracebacks


def test_a_plan_run_name_too_long_for_a_file_name_is_refused_at_its_line(tmp_path, prepared):
    plan = write_plan(tmp_path, f'\n[[runs]]\nname = "{"r" * 300}"\nmodel = "timm:test_resnet"\n', prepared)
    with pytest.raises(SchemaError, match=r"plan.toml:5: 'r+'\.\.\. is not usable as a run name: it is longer than 128 bytes"):
        load_plan(plan)
    flat = one_line(invoke("reproduce", "--plan", plan, "--out", tmp_path / "out"))
    assert "longer than 128 bytes" in flat and not (tmp_path / "out").exists()


def test_seed_and_image_counts_are_bounded(tmp_path, prepared):
    plan = write_plan(tmp_path, f"seeds = {10**9}\n\n[[runs]]\nname = 'r'\nmodel = 'timm:test_resnet'\n", prepared)
    with pytest.raises(SchemaError, match=r"plan.toml:3: defaults.seeds must be at most 1,000, got 1000000000"):
        load_plan(plan)
    good = write_plan(tmp_path, "\n[[runs]]\nname = 'r'\nmodel = 'timm:test_resnet'\n", prepared)
    flat = one_line(invoke("reproduce", "--plan", good, "--out", tmp_path / "out", "--seeds", 10**9, "--dry-run"))
    assert "--seeds must be at most 1,000" in flat
    flat = one_line(invoke("study", "cooccurrence", "--out", tmp_path / "study", "--seeds", 10**9, "--dry-run"))
    assert "--seeds must be at most 1,000" in flat
    flat = one_line(invoke("synth", "--out", tmp_path / "synth", "--train", 2**62))
    assert f"--train must be at most {MAX_COUNTS['images']:,}" in flat
    assert not (tmp_path / "out").exists() and not (tmp_path / "study").exists() and not (tmp_path / "synth").exists()


def test_epochs_and_other_counts_are_bounded():
    for name in ("epochs", "patience", "batch_size", "image_size"):
        with pytest.raises(MlcdfError, match=f"{name} must be at most {MAX_COUNTS[name]:,}"):
            TrainConfig(prepared="", model="m", out="", **{name: 2**63 - 1}).resolve()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"recipes": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        ('{"recipes": [{"labels": ["nose"], "weight": ' + "9" * 5000 + "}]}", "Exceeds the limit"),
    ],
    ids=["deep", "long-integer"],
)
def test_a_profile_too_deep_or_with_a_huge_integer_is_a_schema_error(tmp_path, text, message):
    profile = tmp_path / "p.json"
    profile.write_text(text)
    with pytest.raises(SchemaError, match=message):
        load_cooccurrence(str(profile), "facial_components", 1.0)


def test_a_one_image_batch_of_a_batch_norm_model_is_refused_up_front(tmp_path):
    prepared = write_toy_prepared(tmp_path, {"train": 1, "val": 2})
    config = TrainConfig(prepared=str(prepared), model="timm:test_resnet", out=str(tmp_path / "run"), epochs=1, image_size=16)
    from mlcdf.train.stage import train

    with pytest.raises(MlcdfError, match="BatchNorm layers, which need at least 2 images per training batch"):
        train(dataclasses_replace(config, workers=0, device="cpu"))


def dataclasses_replace(config: TrainConfig, **changes) -> TrainConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_a_failing_run_fails_only_itself_in_reproduce(tmp_path, prepared):
    from mlcdf.experiments.reproduce import ReproduceConfig, reproduce

    body = TINY_RUN + '\n[[runs]]\nname = "one-image-batches"\nmodel = "timm:test_resnet"\nbatch_size = 1\n'
    body += '\n[[runs]]\nname = "fine"\nmodel = "timm:test_resnet"\n'
    result = reproduce(ReproduceConfig(out=tmp_path / "out", plan_file=write_plan(tmp_path, body, prepared)))
    assert list(result.failed) == ["facial_components/one-image-batches"]
    assert "at least 2 images per training batch" in result.failed["facial_components/one-image-batches"]
    assert result.trained == ["facial_components/fine"]


# ------------------------------------------------------------------------- hangs, unclear messages, late checks


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('graph = "{folder}"', "is a folder, not a graph file"),
        ('graph = "{folder}/none.npz"', "none.npz: not found"),
        ('device = "potato"', "device must be auto, cpu, cuda or cuda:N, got 'potato'"),
    ],
    ids=["graph-folder", "graph-missing", "device"],
)
def test_a_plans_graph_and_device_are_checked_up_front(tmp_path, prepared, setting, message):
    model = "ml_gcn" if setting.startswith("graph") else "timm:test_resnet"
    plan = write_plan(tmp_path, f'\n[[runs]]\nname = "r"\nmodel = "{model}"\n{setting.format(folder=tmp_path)}\n', prepared)
    with pytest.raises(SchemaError, match=f"plan.toml:7: .*{message}"):
        load_plan(plan)
    flat = one_line(invoke("reproduce", "--plan", plan, "--out", tmp_path / "out", "--dry-run"))
    assert message in flat and not (tmp_path / "out").exists()


def test_a_bad_default_is_reported_at_the_defaults_line(tmp_path, prepared):
    plan = write_plan(tmp_path, 'epochs = -1\n\n[[runs]]\nname = "r"\nmodel = "timm:test_resnet"\n', prepared)
    with pytest.raises(SchemaError, match=r"plan.toml:3: defaults: epochs must be at least 1, got -1"):
        load_plan(plan)
    plan = write_plan(tmp_path, 'epochs = 2\n\n[[runs]]\nname = "r"\nmodel = "timm:test_resnet"\nepochs = -1\n', prepared)
    with pytest.raises(SchemaError, match=r"plan.toml:8: runs\[0\] \(r\): epochs must be at least 1"):
        load_plan(plan)


def test_paths_that_exist_but_are_wrong_say_what_is_wrong(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(MlcdfError, match="file: is a file, not a prepared folder"):
        load_prepared(tmp_path / "file")
    with pytest.raises(MlcdfError, match=f"{tmp_path}: not a prepared folder, it has no meta.json"):
        load_prepared(tmp_path)
    with pytest.raises(MlcdfError, match="an empty co-occurrence profile name"):
        load_cooccurrence("", "facial_components", 1.0)
    with pytest.raises(MlcdfError, match="is a folder, not a co-occurrence profile"):
        load_cooccurrence(str(tmp_path), "facial_components", 1.0)
    flat = one_line(invoke("synth", "--out", tmp_path / "synth", "--cooccurrence", ""))
    assert "empty co-occurrence profile" in flat and not (tmp_path / "synth").exists()


def test_names_print_as_typed_not_as_emoji_or_markup(tmp_path, prepared):
    plan = write_plan(tmp_path, '\n[[runs]]\nname = "a:x:b"\nmodel = "timm:test_resnet"\n', prepared)
    result = invoke("reproduce", "--plan", plan, "--out", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "a:x:b" in result.output and "❌" not in result.output
    from mlcdf.cli import _console
    from mlcdf.cli._console import note

    assert _console.out._emoji is False and _console.err._emoji is False
    with _console.err.capture() as captured:
        note("run a:x:b in [red]folder[/red]")
    assert captured.get().strip() == "run a:x:b in [red]folder[/red]"


def test_a_root_or_home_output_folder_is_refused(tmp_path, monkeypatch):
    home = tmp_path / "home" / "me"
    home.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for folder in ("/", home, tmp_path / "home", tmp_path / "home" / "someone"):
        with pytest.raises(MlcdfError, match="--out .*: is (the root of the file system|your home folder|a home folder|the folder of)"):
            check_output_folder(folder)
    check_output_folder(home / "runs")
    csv_path = one_image_csv(tmp_path / "data", [["a.png", "1", "0", "train"], ["b.png", "0", "1", "val"]])
    before = file_tree(tmp_path)
    for command in (prepare_csv_args(csv_path, home), ["synth", "--out", home, "--train", 2, "--val", 0, "--test", 0]):
        assert "your home folder" in one_line(invoke(*command))
    assert file_tree(tmp_path) == before


def test_many_labels_skip_the_per_label_plots_and_say_so(tmp_path):
    from mlcdf.evaluation.evaluate import AP_BARS_FILE, MAX_PLOTTED_LABELS, PR_CURVES_FILE, Predictions, write_evaluation

    labels = tuple(f"l{j}" for j in range(MAX_PLOTTED_LABELS + 1))
    targets = np.eye(2, len(labels), dtype=np.uint8)
    predictions = Predictions(["a.png", "b.png"], labels, targets, targets * 0.8 + 0.1)
    metrics = write_evaluation(tmp_path / "eval", predictions)
    names = sorted(path.name for path in (tmp_path / "eval").iterdir())
    assert PR_CURVES_FILE not in names and AP_BARS_FILE not in names
    assert any("per-label plots" in message for message in metrics["warnings"])
    assert "Not drawn:" in (tmp_path / "eval" / "report.md").read_text(encoding="utf-8")


def test_a_few_labels_still_get_their_plots(tmp_path):
    from test_evaluate import make_predictions

    from mlcdf.evaluation.evaluate import AP_BARS_FILE, PR_CURVES_FILE, write_evaluation

    metrics = write_evaluation(tmp_path / "eval", make_predictions())
    assert (tmp_path / "eval" / PR_CURVES_FILE).is_file() and (tmp_path / "eval" / AP_BARS_FILE).is_file()
    assert not any("per-label plots" in message for message in metrics["warnings"])


def test_the_home_check_needs_no_home(monkeypatch):
    monkeypatch.setenv("HOME", os.sep)  # a home at the root: only the root itself is refused
    check_output_folder(Path(os.sep) / "tmp" / "x")
