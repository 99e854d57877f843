"""``mlcdf report``: one table over many runs, in the layout of the paper's Tables I and II.

Each result is a run folder (``RUN/config.json`` + ``RUN/eval/<split>/metrics.json``) or an evaluation
folder (``metrics.json``, from ``mlcdf evaluate``). A table row holds: category, method, the run,
#Params (millions), then the metrics of a column view (:data:`COLUMN_VIEWS`) in percent: the paper's
mAP, CP, CR, CF1, OP, OR, OF1, and Seq-DeepFake's Fixed-Acc and Adaptive-Acc when the runs carry them
(both families are scored on both tasks: see :mod:`mlcdf.evaluation.evaluate`). There is one table per
subset, and the best value of each metric column is in bold. With ``paper=True``, each run is followed
by the published row for the same method, loss and node embedding, and then by the difference (ours
minus paper). The published rows that no run matches come last. The published figures ship as
``mlcdf/resources/paper_tables.csv`` (the multi-label paper's Tables I and II) and
``mlcdf/resources/seqdeepfake_tables.csv`` (SeqFakeFormer's, from Seq-DeepFake); see the README there.
When the runs' metrics carry it, each subset ends with the oracle row: the true set of each image in its
most frequent training order, what the order alone is worth on Fixed-Acc and Adaptive-Acc.

Runs that differ only in their seed are one configuration, shown as one row of ``mean ± std`` (sample
standard deviation) with the number of runs ``n`` (:func:`seed_groups`). The category figure (the paper's
Figures 2 and 3, :func:`write_category_figure`) averages the direct and the indirect configurations.
"""

from __future__ import annotations

import csv
import importlib.resources
import io
import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlcdf.config import RESUME_OVERRIDES, asl_defaults
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.evaluation.evaluate import METRICS_FILE, PAPER_METRICS, default_eval_dir, read_metrics
from mlcdf.io import atomic_open, check_file_replaceable, png_written_by, read_json_object, recover_dir, save_png
from mlcdf.labels import SUBSETS

#: Our model names (the registry's) -> (the published method name, its category): the multi-label paper's
#: direct and indirect (graph) models, and Seq-DeepFake's image-to-sequence model.
PAPER_METHODS: dict[str, tuple[str, str]] = {
    "resnet50": ("ResNet50", "direct"),
    "resnet101": ("ResNet101", "direct"),
    "tresnet_m": ("TResNetM", "direct"),
    "ml_gcn": ("ML-GCN", "indirect"),
    "iml_gcn": ("IML-GCN", "indirect"),
    "ml_agcn": ("ML-AGCN", "indirect"),
    "seqfakeformer_r34": ("SeqFakeFormer-R34", "sequence"),
    "seqfakeformer_r50": ("SeqFakeFormer-R50", "sequence"),
}
#: The category of the models that predict the order of the manipulations.
SEQUENCE_CATEGORY = "sequence"
#: Any timm backbone used as a direct model is named ``timm:<name>``.
TIMM_PREFIX = "timm:"

PAPER_TABLES_FILE = "paper_tables.csv"
SEQUENCE_TABLES_FILE = "seqdeepfake_tables.csv"
#: The paper's table number for each subset.
PAPER_TABLE_NUMBERS = {"facial_attributes": "I", "facial_components": "II"}
RUN_CONFIG_FILE = "config.json"

FORMATS = ("md", "latex", "csv")
#: Seq-DeepFake's sequence metrics, in percent, as ``metrics.json`` names them.
SEQUENCE_METRICS = ("Fixed-Acc", "Adaptive-Acc")
ALL_METRICS = (*PAPER_METRICS, *SEQUENCE_METRICS)
#: The metric columns a table can show. ``paper``: the paper's Tables I and II. ``tasks``: both tasks side
#: by side, for comparing the two families (issue 26). ``all``: every metric. ``auto`` (the default of
#: :func:`results_table`) is ``all`` when some row has a sequence metric, else ``paper``.
COLUMN_VIEWS: dict[str, tuple[str, ...]] = {
    "paper": PAPER_METRICS,
    "tasks": ("mAP", "CF1", "OF1", *SEQUENCE_METRICS),
    "all": ALL_METRICS,
}
AUTO_COLUMNS = "auto"
COLUMN_CHOICES = (AUTO_COLUMNS, *COLUMN_VIEWS)
_NAME_COLUMNS = ("Category", "Method", "Run")
PARAMS_COLUMN = "#Params (M)"
PAPER_SOURCE = "paper"
DELTA_SOURCE = "Δ vs paper"
ORACLE_SOURCE = "oracle"
ORACLE_METHOD = "true set, most frequent order"
#: What a row is: a result of ours, a published one, ours minus the published one, or the oracle order.
OURS, PUBLISHED, DIFFERENCE, ORACLE = "ours", "published", "difference", "oracle"
#: Training options that say where a run ran, where it logged or its seed, not what was trained: runs
#: equal in every other option are seeds of one configuration.
_NOT_IDENTITY = frozenset({*RESUME_OVERRIDES, "prepared", "graph", "seed"})
#: How a row names each Asymmetric Loss setting. A run that changes them from their defaults (the paper's)
#: trains another loss than the paper's: its row says so and has no published match.
_ASL_SYMBOLS = {"asl_gamma_neg": "γ-", "asl_gamma_pos": "γ+", "asl_clip": "clip"}


@dataclass(frozen=True)
class ResultRow:
    """One line of results: a run of ours, a published row, the difference between the two, or the oracle order.

    Attributes:
        subset: the Seq-DeepFake subset, or ``""`` when the labels match none.
        category: ``direct`` or ``indirect`` (graph-based), ``sequence`` (SeqFakeFormer), ``""`` when unknown.
        method: the published method name (``ResNet101``, ``ML-GCN``, ``SeqFakeFormer-R50``, ...) or our model
            name; a run on another backbone than the published one says so (``ML-GCN on resnet18``).
        loss: ``bce`` or ``asl``, None when unknown; ASL with other settings than the paper's names them,
            e.g. ``asl (γ-=1)``.
        embedding: node embedding of a graph model (``word`` or ``image``), None otherwise.
        source: the run's folder name, the published row's source (``paper``, ``Seq-DeepFake README``, ...),
            ``Δ vs paper`` or ``oracle``.
        num_params: parameters in millions, None when unknown.
        values: percent per metric of :data:`ALL_METRICS`, None when undefined or not measured (a run
            evaluated without sequences, a published row of the other task); the mean over the runs when
            ``n`` > 1.
        seed: the run's training seed, None when unknown or when the row stands for several seeds.
        n: how many runs (seeds) the row stands for; 1 for a single run and for a published row.
        std: sample standard deviation (ddof=1) per metric over those runs, 0 when ``n`` = 1; None for a
            published row or a difference.
        options: the run's training options other than its seed and where it ran, as JSON; ``""`` when unknown.
        kind: :data:`OURS`, :data:`PUBLISHED`, :data:`DIFFERENCE` or :data:`ORACLE`.
        oracle: a run's ``oracle_order`` figures (Fixed-Acc and Adaptive-Acc of the true sets in their most
            frequent training order), None when its metrics have none.
    """

    subset: str
    category: str
    method: str
    loss: str | None
    embedding: str | None
    source: str
    num_params: float | None
    values: dict[str, float | None]
    seed: int | None = None
    n: int = 1
    std: dict[str, float | None] | None = None
    options: str = field(default="", repr=False)
    kind: str = OURS
    oracle: dict[str, float] | None = None

    @property
    def title(self) -> str:
        """The method as the paper names it, e.g. ``ResNet101 + ASL`` or ``IML-GCN + ASL (word)``."""
        title = self.method + (" + ASL" + self.loss[len("asl") :] if self.loss and self.loss.startswith("asl") else "")
        return title + (f" ({self.embedding})" if self.embedding else "")

    @property
    def match_key(self) -> tuple:
        return (self.subset, self.method, self.loss, self.embedding)


def method_of(model: str) -> tuple[str, str]:
    """``(paper method name, category)`` of a registry model name; unknown names keep their own name."""
    if model in PAPER_METHODS:
        return PAPER_METHODS[model]
    return model, "direct" if model.startswith(TIMM_PREFIX) else ""


def subset_of_labels(labels: Sequence[str]) -> str:
    """The subset whose vocabulary is ``labels`` (in order), or ``""``."""
    return next((name for name, vocab in SUBSETS.items() if tuple(labels) == vocab), "")


def _read_run_config(path: Path) -> dict:
    """The identity of a run from its ``config.json``: model, loss, subset, node embedding, backbone, #params.

    The training options may sit at the top level or under ``train`` (as ``mlcdf train`` writes them).
    """
    config = read_json_object(path)
    options = config["train"] if isinstance(config.get("train"), dict) else config
    model = options.get("model")
    if not isinstance(model, str) or not model:
        raise SchemaError(path, "no model name ('model' or 'train.model')")
    graph = config.get("graph")
    num_params = config.get("num_params")
    seed = options.get("seed")
    backbone = options.get("backbone")
    return {
        "model": model,
        "loss": _loss_name(options),
        "backbone": backbone if isinstance(backbone, str) and backbone else None,
        "subset": config.get("subset"),
        "embedding": graph.get("embedding") if isinstance(graph, dict) else None,
        "num_params": num_params / 1e6 if isinstance(num_params, (int, float)) else None,
        "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        # A run written before the ASL settings existed trained with the paper's: the same configuration.
        "options": json.dumps(
            asl_defaults() | {key: value for key, value in options.items() if key not in _NOT_IDENTITY},
            sort_keys=True,
        ),
    }


def _loss_name(options: dict) -> str | None:
    """``bce``, ``asl``, or ``asl (γ-=1, ...)`` when a run's ASL settings differ from the paper's."""
    loss = options.get("loss")
    if loss != "asl":
        return loss
    paper = asl_defaults()
    changed = [
        f"{symbol}={options[key]:g}"
        for key, symbol in _ASL_SYMBOLS.items()
        if isinstance(options.get(key), (int, float)) and options[key] != paper[key]
    ]
    return f"asl ({', '.join(changed)})" if changed else loss


def load_result(path: str | Path, *, split: str = "test") -> ResultRow:
    """One row from a run folder (its ``eval/<split>``) or from an evaluation folder.

    An evaluation folder inside a run (``RUN/eval/<split>``) is described by the run's config. Any
    other evaluation folder is labelled by its folder name, and its subset is recognised from its labels.

    Raises:
        MlcdfError: ``path`` is neither kind of folder.
        MissingArtifactError: the run has no evaluation of ``split``.
        SchemaError: a config.json or metrics.json breaks its format.
    """
    path = Path(path)
    # An evaluation cut off between the two renames of its replacement is put back first.
    recover_dir(path)
    if (path / RUN_CONFIG_FILE).is_file():
        recover_dir(default_eval_dir(path, split))
    if (path / METRICS_FILE).is_file():
        metrics_path = path / METRICS_FILE
        inside_run = path.parent.name == "eval" and (path.parent.parent / RUN_CONFIG_FILE).is_file()
        run_dir = path.parent.parent if inside_run else None
    elif (path / RUN_CONFIG_FILE).is_file():
        run_dir = path
        metrics_path = default_eval_dir(path, split) / METRICS_FILE
        if not metrics_path.is_file():
            raise MissingArtifactError(metrics_path, f"run 'mlcdf evaluate --run {path} --split {split}' first")
    else:
        raise MlcdfError(f"{path}: neither a run folder (no {RUN_CONFIG_FILE}) nor an evaluation folder (no {METRICS_FILE})")
    metrics = read_metrics(metrics_path)
    values = {name: metrics[name] for name in PAPER_METRICS} | _sequence_figures(metrics, metrics_path)
    oracle = _oracle_figures(metrics, metrics_path)
    single_run = {name: None if value is None else 0.0 for name, value in values.items()}
    if run_dir is None:
        return ResultRow(
            subset=subset_of_labels(metrics["labels"]),
            category="",
            method=path.name,
            loss=None,
            embedding=None,
            source=path.name,
            num_params=metrics.get("num_params"),
            values=values,
            std=single_run,
            oracle=oracle,
        )
    config = _read_run_config(run_dir / RUN_CONFIG_FILE)
    method, category = method_of(config["model"])
    if config["backbone"]:  # not the published architecture: never matched with a published row
        method = f"{method} on {config['backbone']}"
    num_params = metrics.get("num_params")
    return ResultRow(
        subset=config["subset"] or subset_of_labels(metrics["labels"]),
        category=category,
        method=method,
        # A sequence model trains with its own cross-entropy whatever the loss option says.
        loss=None if category == SEQUENCE_CATEGORY else config["loss"],
        embedding=config["embedding"],
        source=run_dir.name,
        num_params=num_params if num_params is not None else config["num_params"],
        values=values,
        seed=config["seed"],
        std=single_run,
        options=config["options"],
        oracle=oracle,
    )


def _oracle_figures(metrics: dict, path: Path) -> dict[str, float] | None:
    """The ``oracle_order`` figures of a metrics document, None when it has none.

    Raises:
        SchemaError: ``oracle_order`` is not an object of both figures.
    """
    if metrics.get("oracle_order") is None:
        return None
    figures = _sequence_figures(metrics["oracle_order"], path, key="oracle_order")
    defined = {name: value for name, value in figures.items() if value is not None}
    if len(defined) != len(SEQUENCE_METRICS):
        raise SchemaError(path, f"'oracle_order' needs both {' and '.join(SEQUENCE_METRICS)}")
    return defined


def _sequence_figures(document: dict, path: Path, *, key: str | None = None) -> dict[str, float | None]:
    """Fixed-Acc and Adaptive-Acc of a metrics document (or of its ``key`` part); None where absent.

    Raises:
        SchemaError: a figure, or the ``key`` part, of the wrong type.
    """
    if not isinstance(document, dict):
        raise SchemaError(path, f"{key!r} is {document!r}, expected an object")
    figures = {name: document.get(name) for name in SEQUENCE_METRICS}
    for name, value in figures.items():
        # bool is an int to Python, and json reads NaN and Infinity: none of them is a figure.
        if not (value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))):
            where = f"{key}.{name}" if key else name
            raise SchemaError(path, f"{where!r} is {value!r}, expected a finite number or null")
    return figures


def _resource_records(name: str) -> list[dict[str, str]]:
    text = (importlib.resources.files("mlcdf") / "resources" / name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def paper_results() -> list[ResultRow]:
    """The published rows of Tables I and II (``mlcdf/resources/paper_tables.csv``)."""
    return [
        ResultRow(
            subset=record["subset"],
            category=record["category"],
            method=record["method"],
            loss=record["loss"] or None,
            embedding=record["node_embedding"] or None,
            source=PAPER_SOURCE,
            num_params=float(record["params_m"]),
            values={name: float(record[name]) if name in PAPER_METRICS else None for name in ALL_METRICS},
            kind=PUBLISHED,
        )
        for record in _resource_records(PAPER_TABLES_FILE)
    ]


def sequence_results() -> list[ResultRow]:
    """SeqFakeFormer's published Fixed-Acc and Adaptive-Acc (``mlcdf/resources/seqdeepfake_tables.csv``); a
    row's source says whether it is the authors' README's or quoted elsewhere."""
    return [
        ResultRow(
            subset=record["subset"],
            category=record["category"],
            method=record["method"],
            loss=None,
            embedding=None,
            source=record["source"],
            num_params=float(record["params_m"]),
            values={name: float(record[name]) if name in SEQUENCE_METRICS else None for name in ALL_METRICS},
            kind=PUBLISHED,
        )
        for record in _resource_records(SEQUENCE_TABLES_FILE)
    ]


def published_results() -> list[ResultRow]:
    """Every published row: the paper's Tables I and II, then SeqFakeFormer's."""
    return paper_results() + sequence_results()


def _difference(ours: ResultRow, paper: ResultRow) -> ResultRow:
    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return replace(
        ours,
        source=DELTA_SOURCE,
        kind=DIFFERENCE,
        num_params=minus(ours.num_params, paper.num_params),
        values={name: minus(ours.values[name], paper.values[name]) for name in ALL_METRICS},
    )


def oracle_rows(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """The oracle row of ``rows`` (one subset): Fixed-Acc and Adaptive-Acc of the true sets in their most
    frequent training order, from the runs' ``oracle_order``; none when no run has it.

    The figures depend only on the data, so the runs of one subset agree; runs evaluated on other data
    (another prepared folder under the same subset name) give one row each, named after the first run.
    """
    distinct: dict[tuple, ResultRow] = {}
    for row in rows:
        if row.kind == OURS and row.oracle is not None:
            distinct.setdefault(tuple(round(row.oracle[name], 6) for name in SEQUENCE_METRICS), row)
    return [
        ResultRow(
            subset=row.subset,
            category="",
            method=ORACLE_METHOD,
            loss=None,
            embedding=None,
            source=ORACLE_SOURCE if len(distinct) == 1 else f"{ORACLE_SOURCE} ({row.source})",
            num_params=None,
            values={name: row.oracle.get(name) if row.oracle is not None else None for name in ALL_METRICS},
            kind=ORACLE,
        )
        for row in distinct.values()
    ]


def configuration_name(row: ResultRow) -> str:
    """The run's folder name without the ``-s<seed>`` the runner appends for seed ``k`` (``r50-asl-s1`` -> ``r50-asl``)."""
    if row.seed is None:
        return row.source
    return re.sub(rf"-s{row.seed}$", "", row.source)


def seed_groups(rows: Sequence[ResultRow]) -> list[list[ResultRow]]:
    """Runs grouped by configuration, in the order each configuration first appears.

    Runs are seeds of one configuration when they have the same subset, method, loss, node embedding,
    the same training options apart from the seed and where they ran, and the same folder name once the
    ``-s<seed>`` suffix is removed (:func:`configuration_name`). A row whose seed is unknown (an
    evaluation folder, an older config) is a configuration of its own.

    Raises:
        MlcdfError: two runs of one configuration have the same seed (one would count twice).
    """
    groups: dict[tuple, list[ResultRow]] = {}
    for index, row in enumerate(rows):
        if row.seed is None:
            key: tuple = ("unknown seed", index)
        else:
            key = (*row.match_key, row.category, configuration_name(row), row.options)
        group = groups.setdefault(key, [])
        twin = next((run for run in group if run.seed == row.seed), None)
        if twin is not None:
            raise MlcdfError(
                f"{twin.source} and {row.source}: the same configuration trained with the same seed {row.seed}; report only one of them"
            )
        group.append(row)
    return list(groups.values())


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; 0 for one value; None, None for none)."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def seed_summary(runs: Sequence[ResultRow]) -> ResultRow:
    """One row for the runs (seeds) of one configuration: per metric the mean and the sample standard
    deviation, undefined (None) where any run's value is. A single run comes back as it is."""
    if len(runs) == 1:
        return runs[0]
    means, spreads = {}, {}
    for name in ALL_METRICS:
        defined = [value for run in runs if (value := run.values[name]) is not None]
        means[name], spreads[name] = mean_std(defined) if len(defined) == len(runs) else (None, None)
    return replace(runs[0], source=configuration_name(runs[0]), seed=None, n=len(runs), values=means, std=spreads)


def group_over_seeds(rows: Sequence[ResultRow]) -> list[ResultRow]:
    """One row per configuration (see :func:`seed_groups` and :func:`seed_summary`)."""
    return [seed_summary(runs) for runs in seed_groups(rows)]


def comparison_tables(rows: Sequence[ResultRow], *, paper: bool = False, oracle: bool = True) -> dict[str, list[ResultRow]]:
    """Rows grouped by subset, in input order.

    With ``paper``, each row of ours is followed by its published row (:func:`published_results`) and the
    difference, and the subset's unmatched published rows come last. With ``oracle``, each subset ends
    with its oracle row(s) (:func:`oracle_rows`), when the runs have one.
    """
    tables: dict[str, list[ResultRow]] = {}
    for row in rows:
        tables.setdefault(row.subset, []).append(row)
    published = published_results() if paper else []
    for subset, ours in tables.items():
        candidates = [row for row in published if row.subset == subset]
        lines: list[ResultRow] = []
        matched: set[tuple] = set()
        for row in ours:
            lines.append(row)
            match = next((p for p in candidates if p.match_key == row.match_key), None)
            if match is not None:
                lines += [match, _difference(row, match)]
                matched.add(match.match_key)
        tables[subset] = lines + [p for p in candidates if p.match_key not in matched] + (oracle_rows(ours) if oracle else [])
    return tables


def table_metrics(rows: Sequence[ResultRow], columns: str = AUTO_COLUMNS) -> tuple[str, ...]:
    """The metric columns of the view ``columns`` (:data:`COLUMN_VIEWS`); ``auto`` is ``all`` when one of
    ``rows`` has a sequence metric, else ``paper`` (the paper's layout).

    Raises:
        ValueError: an unknown view.
    """
    if columns == AUTO_COLUMNS:
        has_sequences = any(row.values.get(name) is not None for row in rows for name in SEQUENCE_METRICS)
        columns = "all" if has_sequences else "paper"
    if columns not in COLUMN_VIEWS:
        raise ValueError(f"columns must be one of {COLUMN_CHOICES}; got {columns!r}")
    return COLUMN_VIEWS[columns]


def table_header(metrics: Sequence[str], *, seeds: bool = False) -> tuple[str, ...]:
    """Category, Method, Run, (``n`` when a row stands for several seeds), #Params (M), then ``metrics``."""
    return (*_NAME_COLUMNS, *(("n",) if seeds else ()), PARAMS_COLUMN, *metrics)


def _shown(lines: Sequence[ResultRow], metrics: Sequence[str]) -> list[ResultRow]:
    """The rows of a table with something to show in ``metrics``: a published row of the other task (a
    SeqFakeFormer row among the paper's seven metrics), or an oracle row there, would be all dashes."""
    return [row for row in lines if row.kind == OURS or any(row.values[name] is not None for name in metrics)]


def _best(lines: Sequence[ResultRow], digits: int, metrics: Sequence[str]) -> dict[str, float | None]:
    """Best (highest) value per metric as displayed, over the results of ours and the published ones
    (not the differences, nor the oracle, which is no model)."""
    best = {}
    for name in metrics:
        shown = [round(value, digits) for row in lines if row.kind in (OURS, PUBLISHED) and (value := row.values[name]) is not None]
        best[name] = max(shown, default=None)
    return best


def _number(value: float | None, digits: int, signed: bool) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _shows_seeds(lines: Sequence[ResultRow]) -> bool:
    """A table gets the ``n`` column (and ``mean ± std`` cells) when one of its rows stands for several runs."""
    return any(row.n > 1 for row in lines)


def _cells(row: ResultRow, best: dict[str, float | None], digits: int, seeds: bool, metrics: Sequence[str]) -> list[tuple[str, bool]]:
    """The displayed cells of a row, each with whether it holds the best value of its column."""
    delta = row.kind == DIFFERENCE
    cells = [("" if delta else row.category, False), ("" if delta else row.title, False), (row.source, False)]
    if seeds:
        cells.append((str(row.n) if row.kind == OURS else "", False))
    cells.append((_number(row.num_params, 1, delta), False))
    for name in metrics:
        value = row.values[name]
        is_best = row.kind in (OURS, PUBLISHED) and value is not None and round(value, digits) == best[name]
        text = _number(value, digits, delta)
        if row.n > 1 and value is not None and row.std is not None and row.std[name] is not None:
            text += f" ± {row.std[name]:.{digits}f}"
        cells.append((text, is_best))
    return cells


def _title(subset: str) -> str:
    if not subset:
        return "other labels"
    number = PAPER_TABLE_NUMBERS.get(subset)
    return f"{subset} (the paper's Table {number})" if number else subset


def _markdown(tables: dict[str, list[ResultRow]], digits: int, metrics: Sequence[str]) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    parts = []
    for subset, lines in tables.items():
        lines = _shown(lines, metrics)
        best = _best(lines, digits, metrics)
        seeds = _shows_seeds(lines)
        header = table_header(metrics, seeds=seeds)
        rows = [
            _markdown_header(header),
            "| --- | --- | --- |" + " ---: |" * (len(header) - 3),
            *(
                "| "
                + " | ".join(
                    f"**{escape(text)}**" if is_best else escape(text) for text, is_best in _cells(row, best, digits, seeds, metrics)
                )
                + " |"
                for row in lines
            ),
        ]
        parts.append(f"### {_title(subset)}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text).replace("Δ", r"$\Delta$").replace("±", r"$\pm$")


def _latex(tables: dict[str, list[ResultRow]], digits: int, metrics: Sequence[str]) -> str:
    parts = []
    for subset, lines in tables.items():
        lines = _shown(lines, metrics)
        best = _best(lines, digits, metrics)
        seeds = _shows_seeds(lines)
        header = table_header(metrics, seeds=seeds)
        body = [
            " & ".join(
                rf"\textbf{{{_latex_escape(text)}}}" if is_best else _latex_escape(text)
                for text, is_best in _cells(row, best, digits, seeds, metrics)
            )
            + r" \\"
            for row in lines
        ]
        parts.append(
            "\n".join(
                [
                    f"% {_title(subset)}",
                    r"\begin{tabular}{lll" + "r" * (len(header) - 3) + "}",
                    r"\hline",
                    _latex_header(header),
                    r"\hline",
                    *body,
                    r"\hline",
                    r"\end{tabular}",
                ]
            )
            + "\n"
        )
    return "\n".join(parts)


def _csv_number(value: float | None) -> str | float:
    return "" if value is None else round(value, 6)


def _csv(tables: dict[str, list[ResultRow]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    for subset, lines in tables.items():
        for row in lines:
            labels = [subset, row.source, row.category, row.method, row.loss or "", row.embedding or ""]
            means = [_csv_number(row.values[name]) for name in ALL_METRICS]
            spreads = [_csv_number(row.std[name]) if row.std is not None else "" for name in ALL_METRICS]
            writer.writerow([*labels, _csv_number(row.num_params), row.n if row.kind == OURS else "", *means, *spreads])
    return buffer.getvalue()


def runs_csv(rows: Sequence[ResultRow]) -> str:
    """One CSV line per run, not grouped over seeds, with its ``seed`` (a plan's ``results.csv``); values to 6 decimals."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_RUNS_CSV_HEADER)
    for row in rows:
        labels = [row.subset, row.source, row.category, row.method, row.loss or "", row.embedding or ""]
        seed = "" if row.seed is None else row.seed
        writer.writerow([*labels, seed, _csv_number(row.num_params), *(_csv_number(row.values[name]) for name in ALL_METRICS)])
    return buffer.getvalue()


def _markdown_header(header: Sequence[str]) -> str:
    return "| " + " | ".join(header) + " |"


def _latex_header(header: Sequence[str]) -> str:
    return " & ".join(_latex_escape(name) for name in header) + r" \\"


_LABEL_COLUMNS = ["subset", "source", "category", "method", "loss", "node_embedding"]


def _grouped_csv_header(metrics: Sequence[str]) -> list[str]:
    """The grouped table: the means under the metrics' names, then ``<metric>_std`` (see :class:`ResultRow`)."""
    return [*_LABEL_COLUMNS, "params_m", "n", *metrics, *(f"{name}_std" for name in metrics)]


_CSV_HEADER = _grouped_csv_header(ALL_METRICS)
_RUNS_CSV_HEADER = [*_LABEL_COLUMNS, "seed", "params_m", *ALL_METRICS]
#: The CSV tables before they grouped seeds, and before they had the sequence metrics: still recognised
#: as this command's own output.
_FORMER_CSV_HEADERS = (
    [*_LABEL_COLUMNS, "params_m", *PAPER_METRICS],
    _grouped_csv_header(PAPER_METRICS),
    [*_LABEL_COLUMNS, "seed", "params_m", *PAPER_METRICS],
)
FIGURE_CSV_HEADER = ("subset", "category", "metric", "source", "mean", "std", "n")


def is_report_file(path: Path) -> bool:
    """``path`` holds a table of :func:`results_table` or :func:`runs_csv`, or a category figure's CSV, in any
    format and column view: its header row is among the first four lines (line 3 in Markdown, 4 in LaTeX,
    1 in CSV). Another tool's table has other column names."""
    table_headers = [table_header(metrics, seeds=seeds) for metrics in COLUMN_VIEWS.values() for seeds in (False, True)]
    headers = {
        *(function(header) for function in (_markdown_header, _latex_header) for header in table_headers),
        *(",".join(header) for header in (_CSV_HEADER, _RUNS_CSV_HEADER, *_FORMER_CSV_HEADERS, FIGURE_CSV_HEADER)),
    }
    try:
        with open(path, encoding="utf-8") as handle:
            first_lines = [handle.readline(1 << 16).rstrip("\n") for _ in range(4)]
    except (OSError, UnicodeDecodeError):
        return False
    return not headers.isdisjoint(first_lines)


def results_table(rows: Sequence[ResultRow], *, fmt: str = "md", paper: bool = False, digits: int = 1, columns: str = AUTO_COLUMNS) -> str:
    """The comparison table as text, one row per configuration (runs differing only in their seed are
    one row, :func:`group_over_seeds`).

    In ``md`` and ``latex``, a table where some configuration has several runs gets an ``n`` column, and
    those rows show ``mean ± std``; a table of single runs looks as it always did. Rows other than ours
    with nothing in the shown columns are left out (a SeqFakeFormer row among the paper's seven metrics).

    Args:
        rows: results from :func:`load_result`.
        fmt: ``md`` (one Markdown table per subset), ``latex`` (one ``tabular`` per subset) or ``csv``
            (one flat table with a ``subset`` column, the means of every metric under its name, then
            ``n`` and ``<metric>_std`` columns; values to 6 decimals, no bold).
        paper: add the published rows and the differences (see :func:`comparison_tables`).
        digits: decimals shown in ``md`` and ``latex``. The paper prints one.
        columns: the metric columns of ``md`` and ``latex``, a view of :data:`COLUMN_VIEWS` or ``auto``
            (:func:`table_metrics`). The oracle row comes with a view that has the sequence metrics.

    Raises:
        ValueError: an unknown format or view.
        MlcdfError: two runs of one configuration have the same seed.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
    metrics = ALL_METRICS if fmt == "csv" else table_metrics(rows, columns)
    tables = comparison_tables(group_over_seeds(rows), paper=paper, oracle=not set(SEQUENCE_METRICS).isdisjoint(metrics))
    if fmt == "csv":
        return _csv(tables)
    return _markdown(tables, digits, metrics) if fmt == "md" else _latex(tables, digits, metrics)


#: The paper's two categories of method, in the order of the figure's bars.
CATEGORIES = ("direct", "indirect")
OURS_SOURCE = "ours"
FIGURE_COMMAND = "mlcdf report"


@dataclass(frozen=True)
class CategoryBar:
    """One bar of the category figure: a metric averaged over a category's configurations in a subset.

    ``std`` is the sample standard deviation (ddof=1, 0 when ``n`` = 1) over the ``n`` configurations
    whose value is defined; ``mean`` and ``std`` are None when none is.
    """

    subset: str
    category: str
    metric: str
    source: str
    mean: float | None
    std: float | None
    n: int


def category_statistics(rows: Sequence[ResultRow], *, paper: bool = False) -> list[CategoryBar]:
    """The bars of the category figure, per subset of ``rows``: for ours and (with ``paper``) the published
    rows, each category's mean ± std per metric over its configurations.

    A configuration counts once, by its mean over seeds (:func:`group_over_seeds`), so the spread is
    between methods, as in the paper's figures; the seed spread is in the table. Rows of no known
    category (an evaluation folder outside a run) are left out.

    Raises:
        MlcdfError: no row is a direct or an indirect run; or as :func:`seed_groups`.
    """
    configurations = [row for row in group_over_seeds(rows) if row.category in CATEGORIES]
    if not configurations:
        raise MlcdfError(
            "the category figure needs runs of direct or indirect (graph) models; none of the given folders is a run of a known model"
        )
    sources = [(OURS_SOURCE, configurations)] + ([(PAPER_SOURCE, paper_results())] if paper else [])
    bars = []
    for subset in dict.fromkeys(row.subset for row in configurations):
        for source, pool in sources:
            for category in CATEGORIES:
                members = [row for row in pool if row.subset == subset and row.category == category]
                if not members:
                    continue
                for metric in PAPER_METRICS:
                    column = [value for row in members if (value := row.values[metric]) is not None]
                    bars.append(CategoryBar(subset, category, metric, source, *mean_std(column), len(column)))
    return bars


def figure_csv_path(path: str | Path) -> Path:
    """The CSV written beside the figure ``path`` (``f.png`` -> ``f.csv``).

    Raises:
        MlcdfError: ``path`` does not end in ``.png``.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise MlcdfError(f"{path}: the figure is written as PNG; give a file name ending in .png")
    return path.with_suffix(".csv")


def check_outputs_distinct(table: str | Path | None, figure: str | Path | None) -> None:
    """Raise when the table (``report --out``) is the figure or the figure's CSV: one would replace the other.

    Raises:
        MlcdfError: naming both options; also as :func:`figure_csv_path`.
    """
    if table is None or figure is None:
        return
    written = Path(table).resolve()
    for what, path in (("the --figure", Path(figure)), ("the --figure's CSV", figure_csv_path(figure))):
        if written == path.resolve():
            raise MlcdfError(f"--out {table}: is {what} ({path}); one output would replace the other, give them different names")


def check_figure_replaceable(path: str | Path, *, command: str = FIGURE_COMMAND) -> None:
    """Raise unless the figure ``path`` and its CSV may be written (absent, or an earlier figure of ours);
    call it before long work."""
    csv_path = figure_csv_path(path)
    check_file_replaceable(path, command=command, is_own=png_written_by(FIGURE_COMMAND))
    check_file_replaceable(csv_path, command=command, is_own=is_report_file)


def _draw_category_figure(bars: Sequence[CategoryBar]):
    """A matplotlib Figure: one panel per subset (stacked), a group of bars per metric."""
    # Imported here: matplotlib costs about a second and only the figure needs it. A bare Figure (no
    # pyplot) renders with Agg without touching global backend state.
    from matplotlib.figure import Figure

    subsets = list(dict.fromkeys(bar.subset for bar in bars))
    series = list(dict.fromkeys((bar.source, bar.category) for bar in bars))
    colours = {OURS_SOURCE: "tab:blue", PAPER_SOURCE: "tab:gray"}
    width = 0.8 / len(series)
    figure = Figure(figsize=(9, 3.6 * len(subsets)), layout="constrained")
    panels = figure.subplots(len(subsets), 1, squeeze=False)[:, 0]
    for axes, subset in zip(panels, subsets):
        for position, (source, category) in enumerate(series):
            chosen = {bar.metric: bar for bar in bars if (bar.subset, bar.source, bar.category) == (subset, source, category)}
            if not chosen:
                continue
            centres = [index - 0.4 + width * (position + 0.5) for index in range(len(PAPER_METRICS))]
            means = [float("nan") if chosen[m].mean is None else chosen[m].mean for m in PAPER_METRICS]
            spreads = [0.0 if chosen[m].std is None else chosen[m].std for m in PAPER_METRICS]
            configurations = max(bar.n for bar in chosen.values())
            axes.bar(
                centres,
                means,
                width,
                yerr=spreads,
                capsize=3,
                color=colours[source],
                alpha=1.0 if source == OURS_SOURCE else 0.55,
                edgecolor="black",
                linewidth=0.6,
                hatch="//" if category == "indirect" else None,
                label=f"{source}, {category} (n={configurations})",
            )
        axes.set_xticks(range(len(PAPER_METRICS)), PAPER_METRICS)
        axes.set(ylabel="%", ylim=(0, 105), title=f"{_title(subset)}: mean ± std over configurations")
        axes.grid(axis="y", alpha=0.3)
        axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return figure


def write_category_figure(
    rows: Sequence[ResultRow], path: str | Path, *, paper: bool = False, command: str = FIGURE_COMMAND
) -> list[CategoryBar]:
    """Draw the paper's Figures 2 and 3 for ``rows`` into ``path`` (PNG) and the plotted numbers into
    ``path`` with ``.csv`` (:data:`FIGURE_CSV_HEADER`, one line per bar).

    Per subset present, one panel (panels stacked top to bottom, one image for all subsets): a group of
    bars per metric, plain bars for the direct configurations, hatched for the indirect ones, ± one
    sample standard deviation; with ``paper``, the published averages of the same categories in grey
    beside ours. See :func:`category_statistics` for what is averaged.

    Returns:
        The bars, as in the CSV.

    Raises:
        MlcdfError: ``path`` is no ``.png``, it or its CSV is a file not written by this function, or
            as :func:`category_statistics`.
    """
    check_figure_replaceable(path, command=command)
    bars = category_statistics(rows, paper=paper)
    from PIL import Image

    buffer = io.BytesIO()
    _draw_category_figure(bars).savefig(buffer, format="png", dpi=110)
    buffer.seek(0)
    with Image.open(buffer) as image:
        save_png(image, path, command=FIGURE_COMMAND)
    with atomic_open(figure_csv_path(path)) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(FIGURE_CSV_HEADER)
        for bar in bars:
            writer.writerow([bar.subset, bar.category, bar.metric, bar.source, _csv_number(bar.mean), _csv_number(bar.std), bar.n])
    return bars
