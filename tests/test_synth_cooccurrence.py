"""Co-occurrence profiles of ``mlcdf synth``: the label process (without drawing faces), what synth.json
records, bad profiles, and the uniform default unchanged."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chi2
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.data.synth import SynthConfig, generate, image_steps, sample_steps
from mlcdf.data.synth_cooccurrence import EDITING_HABITS, UNIFORM, label_statistics, load_cooccurrence
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.graph.cooccurrence import build_adjacency
from mlcdf.labels import SUBSETS, count_cooccurrence

#: sha256 over the image and annotation files (path, then bytes) of ``tiny_uniform``, computed with
#: main's code before profiles existed (commit 4505e68): ``uniform`` must keep writing these bytes.
UNIFORM_DIGEST_BEFORE_PROFILES = "6a5fe8868d5634e1a8bafcbc8a74dc352cba9bbfbe75649e7cd1db21c51d7463"


def tiny_uniform(out: Path, **changes) -> SynthConfig:
    return SynthConfig(out=out, train=8, val=3, test=3, size=32, workers=1, seed=5, **changes)


def data_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in ("synth.json", "README.txt"):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def draws(subset: str, strength: float, count: int, profile: str = EDITING_HABITS, seed: int = 0) -> list[list[int]]:
    cooccurrence = load_cooccurrence(profile, subset, strength)
    rng = np.random.default_rng(seed)
    return [sample_steps(rng, 0.0, cooccurrence) for _ in range(count)]


# --------------------------------------------------------------------------------------------- uniform


def test_uniform_default_writes_the_same_bytes_as_before_profiles(tmp_path: Path) -> None:
    assert data_digest(generate(tiny_uniform(tmp_path / "default")).root) == UNIFORM_DIGEST_BEFORE_PROFILES
    info = json.loads((tmp_path / "default" / "facial_components" / "synth.json").read_text(encoding="utf-8"))
    assert info["cooccurrence"]["profile"] == UNIFORM and info["cooccurrence"]["strength"] == 0.0
    # RHO = 0 of a profile is the uniform process draw for draw: the same images, labels and statistics.
    zero = generate(tiny_uniform(tmp_path / "zero", cooccurrence=EDITING_HABITS, cooccurrence_strength=0.0)).root
    assert data_digest(zero) == UNIFORM_DIGEST_BEFORE_PROFILES
    for subset in SUBSETS:
        statistics = [
            json.loads((root / subset / "synth.json").read_text(encoding="utf-8"))["cooccurrence"]["label_statistics"]
            for root in (tmp_path / "default", zero)
        ]
        assert statistics[0]["p_j_given_i"] == statistics[1]["p_j_given_i"]
        assert statistics[0]["positives"] == statistics[1]["positives"]


def test_strength_zero_draws_exactly_the_uniform_label_sets() -> None:
    for subset in SUBSETS:
        profile = load_cooccurrence(EDITING_HABITS, subset, 0.0)
        for index in range(300):
            uniform = image_steps(subset, "train", index, seed=1, real_fraction=0.05)
            assert image_steps(subset, "train", index, seed=1, real_fraction=0.05, cooccurrence=profile) == uniform


# --------------------------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("subset", list(SUBSETS))
def test_strength_one_draws_only_recipes_at_their_weights(subset: str) -> None:
    """Every label set is a recipe; the counts pass Pearson's chi-square goodness-of-fit test against
    the weights at a false-alarm rate of 1e-6 (X^2 follows chi2 with K - 1 degrees of freedom when the
    draws follow the weights). Drawing the recipes uniformly instead gives X^2 in the thousands."""
    profile = load_cooccurrence(EDITING_HABITS, subset, 1.0)
    recipe_sets = [frozenset(recipe.steps) for recipe in profile.recipes]
    count = 20_000
    drawn = draws(subset, 1.0, count)
    sets = Counter(frozenset(steps) for steps in drawn)
    assert set(sets) <= set(recipe_sets)
    observed = np.array([sets[recipe] for recipe in recipe_sets])
    weights = np.array([recipe.weight for recipe in profile.recipes])
    expected = count * weights / weights.sum()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    assert statistic < chi2.ppf(1 - 1e-6, len(recipe_sets) - 1), (observed, expected)
    # Steps come in random order: every recipe of two or more labels shows each label first.
    for recipe in profile.recipes:
        firsts = {steps[0] for steps in drawn if frozenset(steps) == frozenset(recipe.steps)}
        assert firsts == set(recipe.steps)


def test_intermediate_strength_mixes_recipes_and_uniform() -> None:
    """At RHO a fake is a recipe with probability RHO plus the uniform process's chance of hitting a
    recipe set (sum over recipes of 1 / (5 * C(5, length)))."""
    profile = load_cooccurrence(EDITING_HABITS, "facial_components", 0.5)
    uniform_hit = sum(1 / (5 * [5, 10, 10, 5, 1][len(recipe.steps) - 1]) for recipe in profile.recipes)
    count = 20_000
    share = label_statistics(
        [tuple(steps) + (0,) * (5 - len(steps)) for steps in draws("facial_components", 0.5, count)],
        SUBSETS["facial_components"],
        profile.recipes,
    )["fakes_from_a_recipe_set"]
    expected = 0.5 + 0.5 * uniform_hit
    assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / count)


def test_editing_habits_changes_the_label_graph() -> None:
    """Uniform sequences make P(j | i) about 0.6 for every pair, so ML-GCN's t = 0.4 keeps all 20 edges;
    editing habits at 0.9 keep the habitual pairs only, and make 'Beard with Bangs' rare (it comes only
    from the 10% uniform draws: about 0.18 instead of 0.6)."""

    def graph(subset: str, profile: str, strength: float):
        labels = SUBSETS[subset]
        targets = np.zeros((4000, len(labels)), np.int64)
        for row, steps in enumerate(draws(subset, strength, 4000, profile)):
            targets[row, [step - 1 for step in steps]] = 1
        counts, cooccurrence = count_cooccurrence(targets)
        return build_adjacency(cooccurrence, counts, t=0.4, p=0.25)

    assert graph("facial_components", UNIFORM, 0.0).num_edges == 20
    habits = graph("facial_components", EDITING_HABITS, 0.9)
    assert habits.num_edges < 12
    nose, lip = SUBSETS["facial_components"].index("nose"), SUBSETS["facial_components"].index("lip")
    assert habits.conditional[nose, lip] > 0.85
    attributes = graph("facial_attributes", EDITING_HABITS, 0.9)
    beard, bangs = SUBSETS["facial_attributes"].index("Beard"), SUBSETS["facial_attributes"].index("Bangs")
    assert attributes.conditional[beard, bangs] < 0.25 and not attributes.edges[beard, bangs]


def test_synth_json_records_the_profile_and_its_statistics(tmp_path: Path) -> None:
    profile = tmp_path / "mine.json"
    profile.write_text(
        json.dumps({"recipes": [{"labels": ["nose", "lip"], "weight": 3}, {"labels": ["hair"], "weight": 1}], "real_fraction": 0.25})
    )
    config = SynthConfig(
        out=tmp_path / "root",
        subsets=("facial_components",),
        train=40,
        val=0,
        test=0,
        size=32,
        workers=1,
        cooccurrence=str(profile),
        cooccurrence_strength=1.0,
    )
    generate(config)
    info = json.loads((tmp_path / "root" / "facial_components" / "synth.json").read_text(encoding="utf-8"))
    record = info["cooccurrence"]
    assert record["profile"] == str(profile) and record["strength"] == 1.0
    assert record["recipes"] == [{"labels": ["nose", "lip"], "weight": 3.0}, {"labels": ["hair"], "weight": 1.0}]
    assert info["real_fraction"] == 0.25  # the profile's, as --real-fraction was not given
    statistics = record["label_statistics"]
    assert statistics["fakes_from_a_recipe_set"] == 1.0
    assert statistics["positives"]["eye"] == statistics["positives"]["eyebrow"] == 0
    assert statistics["positives"]["nose"] == statistics["positives"]["lip"] > 0
    assert statistics["p_j_given_i"]["nose"]["lip"] == 1.0 and statistics["p_j_given_i"]["hair"]["nose"] == 0.0
    assert statistics["images"] - statistics["fake_images"] == sum(info["real_images"].values())
    assert "co-occurrence " + str(profile) + " at strength 1.0" in (tmp_path / "root" / "README.txt").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------- bad profiles


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"recipes": [{"labels": ["nose", "chin"], "weight": 1}]}', "recipes[0]: unknown label 'chin'"),
        ('{"recipes": [{"labels": ["nose"], "weight": 0}]}', "'weight' must be a number > 0"),
        ('{"recipes": [{"labels": ["nose"], "weight": 1}, {"labels": ["lip"], "weight": -2}]}', "recipes[1]: 'weight'"),
        ('{"recipes": [{"labels": ["nose"], "weight": true}]}', "'weight' must be a number > 0"),
        ('{"recipes": [{"labels": [], "weight": 1}]}', "recipes[0]: 'labels' must be a non-empty list"),
        ('{"recipes": []}', "'recipes' must be a non-empty list"),
        ('{"recipes": [{"labels": ["nose"], "weight": 1}], "mode": "x"}', "unknown key 'mode'"),
        ('{"recipes": [{"labels": ["nose"], "weight": 1, "order": 2}]}', "recipes[0]: unknown key 'order'"),
        ('{"recipes": [{"labels": ["nose", "nose"], "weight": 1}]}', "repeated"),
        ('{"recipes": [{"labels": ["nose"], "weight": 1}], "real_fraction": 2}', "'real_fraction'"),
        ('{"recipes": [{"labels": ["nose"], "weight": 1},]}', "not valid JSON"),
        ('["nose"]', "expected a co-occurrence profile object"),
    ],
)
def test_a_bad_profile_is_exit_code_2_naming_the_file(tmp_path: Path, content: str, message: str) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(content, encoding="utf-8")
    root = tmp_path / "root"
    result = CliRunner().invoke(
        app,
        [
            "synth",
            "--out",
            str(root),
            "--subset",
            "facial_components",
            "--train",
            "2",
            "--val",
            "0",
            "--test",
            "0",
            "--size",
            "32",
            "--workers",
            "1",
            "--quiet",
            "--cooccurrence",
            str(profile),
        ],
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(profile) in lines[0] and message in lines[0], result.output
    assert "Traceback" not in result.output
    assert not root.exists()  # refused before anything is written


def test_other_profile_errors(tmp_path: Path) -> None:
    with pytest.raises(MlcdfError, match="missing.json: not found"):
        SynthConfig(out=tmp_path / "r", cooccurrence=str(tmp_path / "missing.json")).check()
    with pytest.raises(MlcdfError, match="needs a profile"):
        SynthConfig(out=tmp_path / "r", cooccurrence_strength=0.5).check()
    with pytest.raises(MlcdfError, match="--cooccurrence-strength 1.5"):
        SynthConfig(out=tmp_path / "r", cooccurrence=EDITING_HABITS, cooccurrence_strength=1.5).check()
    # A file names one subset's labels: the other subset is refused with a hint.
    profile = tmp_path / "components.json"
    profile.write_text('{"recipes": [{"labels": ["nose"], "weight": 1}]}')
    with pytest.raises(SchemaError, match="unknown label 'nose' for facial_attributes .*--subset"):
        SynthConfig(out=tmp_path / "r", cooccurrence=str(profile)).check()
    profile.write_bytes(b'{"recipes": [{"labels": ["\xff"], "weight": 1}]}')
    with pytest.raises(SchemaError, match="not UTF-8"):
        load_cooccurrence(str(profile), "facial_components", 1.0)


def test_prepare_and_build_graph_show_the_observed_conditional_probabilities(tmp_path: Path) -> None:
    """With editing habits at 1, nose always comes with lip (every recipe with nose has lip): both
    summaries show P(lip | nose) = 1, where uniform sequences give about 0.6."""
    runner = CliRunner()
    root, prepared = tmp_path / "root", tmp_path / "prepared"
    result = runner.invoke(
        app,
        [
            "synth",
            "--out",
            str(root),
            "--subset",
            "facial_components",
            "--train",
            "40",
            "--val",
            "0",
            "--test",
            "0",
            "--size",
            "32",
            "--workers",
            "1",
            "--quiet",
            "--cooccurrence",
            EDITING_HABITS,
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["prepare", "--root", str(root), "--out", str(prepared), "--subset", "facial_components", "--splits", "train"]
    )
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("train: P(j | i)") :]
    nose_row = next(line for line in table.splitlines() if line.startswith("│ nose"))
    assert nose_row.split("│")[5].strip() == "1.00"  # the columns: i, nose, eye, eyebrow, lip, hair
    result = runner.invoke(app, ["build-graph", "--prepared", str(prepared / "facial_components"), "--out", str(tmp_path / "g.npz")])
    assert result.exit_code == 0, result.output
    table = result.output[result.output.index("P(j | i)") :]
    assert "1.000" in next(line for line in table.splitlines() if line.startswith("│ nose")).split("│")[5]
