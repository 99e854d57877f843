"""``mlcdf report``: one table over many runs, in the layout of the paper's Tables I and II.

Each result is a run folder (``RUN/config.json`` + ``RUN/eval/<split>/metrics.json``) or an evaluation
folder (``metrics.json``, from ``mlcdf evaluate``). A table row holds: category, method, the run,
#Params (millions), then mAP, CP, CR, CF1, OP, OR, OF1 in percent. There is one table per subset, and
the best value of each metric column is in bold. With ``paper=True``, each run is followed by the
published row for the same method, loss and node embedding, and then by the difference (ours minus
paper). The published rows that no run matches come last. The published figures ship as
``mlcdf/resources/paper_tables.csv`` (see the README there).
"""

from __future__ import annotations

import csv
import importlib.resources
import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError
from mlcdf.evaluate import METRICS_FILE, PAPER_METRICS, default_eval_dir, read_metrics
from mlcdf.io import read_json_object, recover_dir
from mlcdf.labels import SUBSETS

#: Our model names (the registry's) -> (the paper's method name, the paper's category).
PAPER_METHODS: dict[str, tuple[str, str]] = {
    "resnet50": ("ResNet50", "direct"),
    "resnet101": ("ResNet101", "direct"),
    "tresnet_m": ("TResNetM", "direct"),
    "ml_gcn": ("ML-GCN", "indirect"),
    "iml_gcn": ("IML-GCN", "indirect"),
    "ml_agcn": ("ML-AGCN", "indirect"),
}
#: Any timm backbone used as a direct model is named ``timm:<name>``.
TIMM_PREFIX = "timm:"

PAPER_TABLES_FILE = "paper_tables.csv"
#: The paper's table number for each subset.
PAPER_TABLE_NUMBERS = {"facial_attributes": "I", "facial_components": "II"}
RUN_CONFIG_FILE = "config.json"

FORMATS = ("md", "latex", "csv")
HEADER = ("Category", "Method", "Run", "#Params (M)", *PAPER_METRICS)
PAPER_SOURCE = "paper"
DELTA_SOURCE = "Δ vs paper"


@dataclass(frozen=True)
class ResultRow:
    """One line of results: a run of ours, a published row, or the difference between the two.

    Attributes:
        subset: the Seq-DeepFake subset, or ``""`` when the labels match none.
        category: ``direct`` or ``indirect`` (graph-based), ``""`` when unknown.
        method: the paper's method name (``ResNet101``, ``ML-GCN``, ...) or our model name.
        loss: ``bce`` or ``asl``, None when unknown.
        embedding: node embedding of a graph model (``word`` or ``image``), None otherwise.
        source: the run's folder name, ``paper``, or ``Δ vs paper``.
        num_params: parameters in millions, None when unknown.
        values: percent per metric of :data:`~mlcdf.evaluate.PAPER_METRICS`, None when undefined.
    """

    subset: str
    category: str
    method: str
    loss: str | None
    embedding: str | None
    source: str
    num_params: float | None
    values: dict[str, float | None]

    @property
    def title(self) -> str:
        """The method as the paper names it, e.g. ``ResNet101 + ASL`` or ``IML-GCN + ASL (word)``."""
        title = self.method + (" + ASL" if self.loss == "asl" else "")
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
    """The identity of a run from its ``config.json``: model, loss, subset, node embedding, #params.

    The training options may sit at the top level or under ``train`` (as ``mlcdf train`` writes them).
    """
    config = read_json_object(path)
    options = config["train"] if isinstance(config.get("train"), dict) else config
    model = options.get("model")
    if not isinstance(model, str) or not model:
        raise SchemaError(path, "no model name ('model' or 'train.model')")
    graph = config.get("graph")
    num_params = config.get("num_params")
    return {
        "model": model,
        "loss": options.get("loss"),
        "subset": config.get("subset"),
        "embedding": graph.get("embedding") if isinstance(graph, dict) else None,
        "num_params": num_params / 1e6 if isinstance(num_params, (int, float)) else None,
    }


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
        raise MlcdfError(
            f"{path}: neither a run folder (no {RUN_CONFIG_FILE}) nor an evaluation folder (no {METRICS_FILE})"
        )
    metrics = read_metrics(metrics_path)
    values = {name: metrics[name] for name in PAPER_METRICS}
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
        )
    config = _read_run_config(run_dir / RUN_CONFIG_FILE)
    method, category = method_of(config["model"])
    num_params = metrics.get("num_params")
    return ResultRow(
        subset=config["subset"] or subset_of_labels(metrics["labels"]),
        category=category,
        method=method,
        loss=config["loss"],
        embedding=config["embedding"],
        source=run_dir.name,
        num_params=num_params if num_params is not None else config["num_params"],
        values=values,
    )


def paper_results() -> list[ResultRow]:
    """The published rows of Tables I and II (``mlcdf/resources/paper_tables.csv``)."""
    text = (importlib.resources.files("mlcdf") / "resources" / PAPER_TABLES_FILE).read_text(encoding="utf-8")
    return [
        ResultRow(
            subset=record["subset"],
            category=record["category"],
            method=record["method"],
            loss=record["loss"] or None,
            embedding=record["node_embedding"] or None,
            source=PAPER_SOURCE,
            num_params=float(record["params_m"]),
            values={name: float(record[name]) for name in PAPER_METRICS},
        )
        for record in csv.DictReader(io.StringIO(text))
    ]


def _difference(ours: ResultRow, paper: ResultRow) -> ResultRow:
    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    return replace(
        ours,
        source=DELTA_SOURCE,
        num_params=minus(ours.num_params, paper.num_params),
        values={name: minus(ours.values[name], paper.values[name]) for name in PAPER_METRICS},
    )


def comparison_tables(rows: Sequence[ResultRow], *, paper: bool = False) -> dict[str, list[ResultRow]]:
    """Rows grouped by subset, in input order.

    With ``paper``, each row of ours is followed by its published row and the difference, and the
    subset's unmatched published rows come last.
    """
    tables: dict[str, list[ResultRow]] = {}
    for row in rows:
        tables.setdefault(row.subset, []).append(row)
    if not paper:
        return tables
    published = paper_results()
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
        tables[subset] = lines + [p for p in candidates if p.match_key not in matched]
    return tables


def _best(lines: Sequence[ResultRow], digits: int) -> dict[str, float | None]:
    """Best (highest) value per metric as displayed, over the result rows (not the differences)."""
    best = {}
    for name in PAPER_METRICS:
        shown = [
            round(row.values[name], digits)
            for row in lines
            if row.source != DELTA_SOURCE and row.values[name] is not None
        ]
        best[name] = max(shown, default=None)
    return best


def _number(value: float | None, digits: int, signed: bool) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _cells(row: ResultRow, best: dict[str, float | None], digits: int) -> list[tuple[str, bool]]:
    """The displayed cells of a row, each with whether it holds the best value of its column."""
    delta = row.source == DELTA_SOURCE
    cells = [("" if delta else row.category, False), ("" if delta else row.title, False), (row.source, False)]
    cells.append((_number(row.num_params, 1, delta), False))
    for name in PAPER_METRICS:
        value = row.values[name]
        is_best = not delta and value is not None and round(value, digits) == best[name]
        cells.append((_number(value, digits, delta), is_best))
    return cells


def _title(subset: str) -> str:
    if not subset:
        return "other labels"
    number = PAPER_TABLE_NUMBERS.get(subset)
    return f"{subset} (the paper's Table {number})" if number else subset


def _markdown(tables: dict[str, list[ResultRow]], digits: int) -> str:
    def escape(text: str) -> str:
        return text.replace("|", "\\|")

    parts = []
    for subset, lines in tables.items():
        best = _best(lines, digits)
        rows = [
            _MARKDOWN_HEADER,
            "| --- | --- | --- |" + " ---: |" * (len(HEADER) - 3),
            *(
                "| "
                + " | ".join(f"**{escape(text)}**" if is_best else escape(text) for text, is_best in _cells(row, best, digits))
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
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text).replace("Δ", r"$\Delta$")


def _latex(tables: dict[str, list[ResultRow]], digits: int) -> str:
    parts = []
    for subset, lines in tables.items():
        best = _best(lines, digits)
        body = [
            " & ".join(
                rf"\textbf{{{_latex_escape(text)}}}" if is_best else _latex_escape(text)
                for text, is_best in _cells(row, best, digits)
            )
            + r" \\"
            for row in lines
        ]
        parts.append(
            "\n".join(
                [
                    f"% {_title(subset)}",
                    r"\begin{tabular}{lll" + "r" * (len(HEADER) - 3) + "}",
                    r"\hline",
                    _LATEX_HEADER,
                    r"\hline",
                    *body,
                    r"\hline",
                    r"\end{tabular}",
                ]
            )
            + "\n"
        )
    return "\n".join(parts)


def _csv(tables: dict[str, list[ResultRow]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(_CSV_HEADER)
    for subset, lines in tables.items():
        for row in lines:
            numbers = [row.num_params, *(row.values[name] for name in PAPER_METRICS)]
            labels = [subset, row.source, row.category, row.method, row.loss or "", row.embedding or ""]
            writer.writerow(labels + ["" if value is None else round(value, 6) for value in numbers])
    return buffer.getvalue()


_MARKDOWN_HEADER = "| " + " | ".join(HEADER) + " |"
_LATEX_HEADER = " & ".join(_latex_escape(name) for name in HEADER) + r" \\"
_CSV_HEADER = ["subset", "source", "category", "method", "loss", "node_embedding", "params_m", *PAPER_METRICS]


def is_report_file(path: Path) -> bool:
    """``path`` holds a table of :func:`results_table` in any format: its header row is among the first
    four lines (line 3 in Markdown, 4 in LaTeX, 1 in CSV). Another tool's table has other column names."""
    headers = {_MARKDOWN_HEADER, _LATEX_HEADER, ",".join(_CSV_HEADER)}
    try:
        with open(path, encoding="utf-8") as handle:
            first_lines = [handle.readline(1 << 16).rstrip("\n") for _ in range(4)]
    except (OSError, UnicodeDecodeError):
        return False
    return not headers.isdisjoint(first_lines)


def results_table(rows: Sequence[ResultRow], *, fmt: str = "md", paper: bool = False, digits: int = 1) -> str:
    """The comparison table as text.

    Args:
        rows: results from :func:`load_result`.
        fmt: ``md`` (one Markdown table per subset), ``latex`` (one ``tabular`` per subset) or ``csv``
            (one flat table with a ``subset`` column, values to 6 decimals, no bold).
        paper: add the published rows and the differences (see :func:`comparison_tables`).
        digits: decimals shown in ``md`` and ``latex``. The paper prints one.

    Raises:
        ValueError: an unknown format.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}; got {fmt!r}")
    tables = comparison_tables(rows, paper=paper)
    if fmt == "csv":
        return _csv(tables)
    return _markdown(tables, digits) if fmt == "md" else _latex(tables, digits)
