"""Plans: a set of training runs as data (a TOML file, or built in Python), read and checked.

A plan has ``defaults`` (where the data is, the seeds, and any ``mlcdf train`` option shared by the runs)
and a list of ``runs`` (a name, and the options that make it differ)::

    [defaults]
    prepared = { facial_components = "prepared/facial_components" }  # or: data = "/data/Seq-DeepFake"
    seeds = 3
    epochs = 20
    image_size = 224
    pretrained = true

    [[runs]]
    name = "resnet50-asl"
    model = "resnet50"
    loss = "asl"

    [[runs]]
    name = "ml_agcn-asl-word"
    model = "ml_agcn"
    loss = "asl"
    embedding = "word"      # the runner builds OUT/graphs/<subset>-word.npz; or graph = "my.npz"

Plan keys of ``[defaults]`` (the other keys are :class:`~mlcdf.train.stage.TrainConfig` options):

- ``prepared``: prepared subset folders, a table ``{name = "folder"}`` or one folder (named after it);
- ``data`` and ``subsets``: a Seq-DeepFake root and the subsets to prepare from it into ``OUT/prepared``
  (done by ``mlcdf reproduce``, see :mod:`mlcdf.experiments.reproduce`);
- ``seeds``: train each configuration N times with seeds 0..N-1 (folders ``<name>-s<k>``; 1 keeps
  ``<name>`` and the ``seed`` option);
- ``word_embedding``: node features of the ``word`` graphs the runner builds (``embedding = "word"``);
- ``keep_last``: keep ``checkpoints/last.pt`` of evaluated runs;
- ``paper``: put the paper's published rows beside ours in the reports;
- ``report_columns``: the metric columns of the reports (``auto``, ``paper``, ``tasks`` or ``all``, as
  ``mlcdf report --columns``);
- ``tensorboard``: each run also writes TensorBoard event files to ``OUT/tensorboard/<subset>/<run>``
  (``tensorboard --logdir OUT/tensorboard`` shows them all; needs the ``tensorboard`` extra).

Relative paths in a plan file are relative to the file. A run may set any ``mlcdf train`` option but
``prepared`` and ``out`` (the runner chooses them); ``embedding`` (``word`` or ``image``) asks for a
graph built by the runner. A bad plan (an unknown key, model or value type, a duplicate run name) is a
:class:`~mlcdf.errors.SchemaError` naming the file, the line where known, and the key.

:func:`mlcdf.experiments.runner.run_plan` runs a plan into a folder; the paper's Tables I and II are the
plan :data:`PAPER_PLAN`, shipped with the package. This module imports no torch: checking a plan is cheap.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlcdf.config import TrainConfig, check_count, is_option_type
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.graph.embeddings import PAPER_WORD_EMBEDDING
from mlcdf.io import folder_name_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


#: The plans shipped with the package: ``<name>.toml``, run by ``mlcdf reproduce --plan <name>``.
SHIPPED_PLANS_DIR = Path(__file__).parents[1] / "resources" / "plans"
#: The paper's Tables I and II: 12 configurations on each of the two subsets.
PAPER_PLAN = SHIPPED_PLANS_DIR / "paper.toml"

#: ``[defaults]`` keys that are about the plan, not a TrainConfig option, with their types.
PLAN_KEYS: dict[str, str] = {
    "prepared": "table or str",
    "data": "str",
    "subsets": "list of str",
    "seeds": "int",
    "word_embedding": "str",
    "keep_last": "bool",
    "paper": "bool",
    "report_columns": "str",
    "tensorboard": "bool",
}
#: Node embeddings of the graphs the runner builds for a run's ``embedding``.
EMBEDDINGS = ("word", "image")
#: TrainConfig options the runner sets for every run; a plan may not.
_RUNNER_OPTIONS = ("prepared", "out", "tensorboard")
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+=-]*")


@dataclass(frozen=True)
class PlanRun:
    """One configuration of a plan: its name (the run folder's) and the options it sets over the defaults."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    embedding: str | None = None

    @property
    def model(self) -> str:
        model = self.options["model"]
        assert isinstance(model, str), "the plan parser checks that every run names its model"
        return model


@dataclass(frozen=True)
class PlanEntry:
    """One run folder of a plan: a configuration on a subset with a seed."""

    subset: str
    run: PlanRun
    seed: int | None
    name: str

    @property
    def label(self) -> str:
        """``<subset>/<run folder name>``, as logs, outcomes and failures name it."""
        return f"{self.subset}/{self.name}"


@dataclass(frozen=True)
class Plan:
    """A validated plan; build one with :meth:`from_dict` or :func:`load_plan`, not by hand.

    Attributes:
        runs: the configurations, in order (reports keep it).
        train: TrainConfig options shared by every run (the non-plan keys of ``[defaults]``).
        prepared: subset name -> prepared subset folder.
        data: a Seq-DeepFake root to prepare ``subsets`` from (``mlcdf reproduce``), if no ``prepared``.
        subsets: the subsets of the plan, in order.
        seeds: runs per configuration (seeds 0..N-1).
        word_embedding, keep_last, paper, report_columns, tensorboard: see the module docstring.
        source: the file (or name) the plan came from, for messages.
    """

    runs: tuple[PlanRun, ...]
    train: Mapping[str, Any] = field(default_factory=dict)
    prepared: Mapping[str, Path] = field(default_factory=dict)
    data: Path | None = None
    subsets: tuple[str, ...] = ()
    seeds: int = 1
    word_embedding: str = PAPER_WORD_EMBEDDING
    keep_last: bool = False
    paper: bool = False
    report_columns: str = "auto"
    tensorboard: bool = False
    source: str = "plan"

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], *, source: str = "plan", base: Path | None = None, text: str | None = None) -> Plan:
        """The plan in ``document`` (``{"defaults": {...}, "runs": [{...}, ...]}``), checked.

        ``base`` is the folder relative paths start from (the plan file's); ``text`` the file's text,
        to name the line of a bad key.

        Raises:
            SchemaError: an unknown key, model or embedding, a value of the wrong type, a duplicate or
                unusable run name, no runs, or no data; it names ``source`` and the key.
        """
        return _Parser(source, base or Path("."), text).plan(document)

    def with_defaults(self, **changes: Any) -> Plan:
        """This plan with TrainConfig defaults or ``seeds``, ``word_embedding``, ``keep_last``, ``paper``,
        ``report_columns``, ``tensorboard`` changed (``None`` values are ignored), checked again like the file."""
        document = self.to_dict()
        document["defaults"].update({key: value for key, value in changes.items() if value is not None})
        return Plan.from_dict(document, source=self.source)

    def with_overrides(self, **changes: Any) -> Plan:
        """As :meth:`with_defaults`, and over the runs' own values too: a command line's ``--epochs`` or
        the smoke variant's tiny images hold for every run, also one that sets its own (a SeqFakeFormer
        run's 170 epochs beside the paper's 40)."""
        given = {key: value for key, value in changes.items() if value is not None}
        document = self.to_dict()
        document["defaults"].update(given)
        for run in document["runs"]:
            for key in given:
                run.pop(key, None)
        return Plan.from_dict(document, source=self.source)

    def to_dict(self) -> dict[str, Any]:
        """The plan as a document :meth:`from_dict` reads back (absolute paths)."""
        defaults: dict[str, Any] = dict(self.train)
        if self.prepared:
            defaults["prepared"] = {name: str(path) for name, path in self.prepared.items()}
        else:
            defaults["subsets"] = list(self.subsets)
            if self.data is not None:
                defaults["data"] = str(self.data)
        defaults.update(
            seeds=self.seeds,
            word_embedding=self.word_embedding,
            keep_last=self.keep_last,
            paper=self.paper,
            report_columns=self.report_columns,
            tensorboard=self.tensorboard,
        )
        runs = [{"name": run.name, **run.options, **({"embedding": run.embedding} if run.embedding else {})} for run in self.runs]
        return {"defaults": defaults, "runs": runs}

    def select(self, only: Sequence[str] = ()) -> list[PlanRun]:
        """The configurations whose name matches one of the glob patterns ``only`` (all if empty)."""
        if not only:
            return list(self.runs)
        return [run for run in self.runs if any(fnmatch.fnmatchcase(run.name, pattern) for pattern in only)]

    def entries(self, only: Sequence[str] = (), subsets: Sequence[str] | None = None) -> list[PlanEntry]:
        """Every run folder of the plan (of ``only`` and ``subsets``, if given): subset x configuration x seed."""
        seeds: list[int | None] = [None] if self.seeds == 1 else list(range(self.seeds))
        return [
            PlanEntry(subset, run, seed, run.name if seed is None else f"{run.name}-s{seed}")
            for subset in (self.subsets if subsets is None else subsets)
            for run in self.select(only)
            for seed in seeds
        ]

    def train_config(self, entry: PlanEntry, out: Path) -> TrainConfig:
        """The TrainConfig of ``entry`` when the plan runs into ``out``."""
        if entry.subset not in self.prepared:
            raise MlcdfError(f"{self.source}: no prepared folder for subset {entry.subset!r}")
        options = {**self.train, **entry.run.options}
        if entry.run.embedding:
            options["graph"] = str(graph_path(out, entry.subset, entry.run.embedding))
        if entry.seed is not None:
            options["seed"] = entry.seed
        if self.tensorboard:  # one folder per run: runs sharing one would hide each other's points
            options["tensorboard"] = str(Path(out) / "tensorboard" / entry.subset / entry.name)
        return TrainConfig(prepared=str(self.prepared[entry.subset]), out=str(run_dir(out, entry)), **options)

    def shared_options(self) -> TrainConfig:
        """The TrainConfig of the defaults alone: the settings every run shares unless it sets its own."""
        return TrainConfig(**{"prepared": "", "model": "", "out": "", **self.train})

    def embeddings(self, only: Sequence[str] = ()) -> list[str]:
        """The graph embeddings the selected configurations ask the runner to build."""
        return sorted({run.embedding for run in self.select(only) if run.embedding})


def run_dir(out: Path, entry: PlanEntry) -> Path:
    """``OUT/runs/<subset>/<name>``."""
    return Path(out) / "runs" / entry.subset / entry.name


def graph_path(out: Path, subset: str, embedding: str) -> Path:
    """``OUT/graphs/<subset>-<embedding>.npz``, the graph the runner builds for a run's ``embedding``."""
    return Path(out) / "graphs" / f"{subset}-{embedding}.npz"


def load_plan(path: str | Path) -> Plan:
    """The plan in the TOML file ``path``, checked (see the module docstring).

    Raises:
        MissingArtifactError / SchemaError: no such file, not TOML, or a bad plan (file, line and key).
    """
    path = Path(path)
    if not path.is_file():
        from mlcdf.errors import MissingArtifactError

        raise MissingArtifactError(path, "the plan file")
    try:
        text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError:
        raise SchemaError(path, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise SchemaError(path, f"not valid TOML ({error})") from None
    return Plan.from_dict(document, source=str(path), base=path.parent, text=text)


def paper_plan() -> Plan:
    """The paper's plan (:data:`PAPER_PLAN`)."""
    return load_plan(PAPER_PLAN)


def shipped_plans() -> dict[str, Path]:
    """The plans shipped with the package, by name (``paper``, ``sequence``, ...)."""
    return {path.stem: path for path in sorted(SHIPPED_PLANS_DIR.glob("*.toml"))}


def plan_path(plan: str | Path) -> Path:
    """The file of ``plan``: a plan file, or the name of a shipped plan (:func:`shipped_plans`).

    An existing file wins; otherwise a bare name (no folder, no ``.toml``) is a shipped plan's.

    Raises:
        MlcdfError: a bare name that is neither a file nor a shipped plan (listing the shipped names).
    """
    path = Path(plan)
    if path.is_file() or path.suffix == ".toml" or len(path.parts) != 1:
        return path
    shipped = shipped_plans()
    if path.name not in shipped:
        raise MlcdfError(f"--plan {plan}: no such file, nor a shipped plan; the shipped plans are {', '.join(shipped)}")
    return shipped[path.name]


class _Parser:
    """Checks a plan document key by key, naming the file, the line (when the text is known) and the key."""

    def __init__(self, source: str, base: Path, text: str | None) -> None:
        self.source = source
        self.base = base
        self.lines = text.splitlines() if text is not None else []

    def fail(self, message: str, section: tuple[str, int], key: str | None = None) -> SchemaError:
        return SchemaError(self.source, message, line=self._line(section, key))

    def _line(self, section: tuple[str, int], key: str | None) -> int | None:
        """The line of ``key`` in the ``index``-th ``[defaults]``/``[[runs]]`` table of the text, if found."""
        header, index = section
        pattern = re.compile(rf"\s*\[\[?\s*{header}\s*\]\]?\s*(#.*)?$")
        starts = [number for number, line in enumerate(self.lines) if pattern.match(line)]
        if index >= len(starts):
            return None
        if key is None:
            return starts[index] + 1
        key_pattern = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=")
        for number in range(starts[index] + 1, len(self.lines)):
            if self.lines[number].lstrip().startswith("["):
                break
            if key_pattern.match(self.lines[number]):
                return number + 1
        return None

    def plan(self, document: Mapping[str, Any]) -> Plan:
        top = ("top", 0)
        unknown = sorted(set(document) - {"defaults", "runs"})
        if unknown:
            raise self.fail(f"unknown key {unknown[0]!r}; a plan has [defaults] and [[runs]]", top)
        defaults = document.get("defaults", {})
        if not isinstance(defaults, Mapping):
            raise self.fail("'defaults' must be a table", top)
        runs = document.get("runs")
        if not isinstance(runs, list) or not runs or not all(isinstance(run, Mapping) for run in runs):
            raise self.fail("no runs: give one [[runs]] table per configuration", top)
        settings = self._defaults(defaults)
        train = {key: value for key, value in defaults.items() if key not in PLAN_KEYS}
        parsed: list[PlanRun] = []
        names: set[str] = set()
        for index, run in enumerate(runs):
            parsed.append(self._run(run, index, train))
            if parsed[-1].name in names:
                raise self.fail(f"runs[{index}]: duplicate run name {parsed[-1].name!r}", ("runs", index), "name")
            names.add(parsed[-1].name)
        return Plan(runs=tuple(parsed), train=train, source=self.source, **settings)

    def _defaults(self, defaults: Mapping[str, Any]) -> dict[str, Any]:
        section = ("defaults", 0)
        for key, value in defaults.items():
            if key in PLAN_KEYS:
                continue
            self._train_option(key, value, section, "defaults")
        settings: dict[str, Any] = {}
        for key in ("seeds", "word_embedding", "keep_last", "paper", "report_columns", "tensorboard"):
            if key in defaults:
                type_name = PLAN_KEYS[key]
                if not is_option_type(defaults[key], type_name):
                    raise self.fail(f"defaults.{key} must be {type_name}, got {defaults[key]!r}", section, key)
                settings[key] = defaults[key]
        if "report_columns" in settings:
            from mlcdf.evaluation.report import COLUMN_CHOICES  # imported here: it brings scikit-learn

            if settings["report_columns"] not in COLUMN_CHOICES:
                choices = ", ".join(COLUMN_CHOICES)
                raise self.fail(
                    f"defaults.report_columns must be one of {choices}, got {settings['report_columns']!r}", section, "report_columns"
                )
        if settings.get("seeds", 1) < 1:
            raise self.fail(f"defaults.seeds must be at least 1, got {settings['seeds']}", section, "seeds")
        try:
            check_count("seeds", settings.get("seeds", 1), option="defaults.seeds")
        except MlcdfError as error:
            raise self.fail(str(error), section, "seeds") from None
        if defaults.get("graph") is not None:
            self._check_graph(self._path(defaults["graph"]), section, "defaults")
        prepared = defaults.get("prepared")
        if prepared is not None:
            if "data" in defaults or "subsets" in defaults:
                raise self.fail("defaults: give either prepared or data (with subsets), not both", section, "prepared")
            if isinstance(prepared, str):
                prepared = {Path(prepared).name: prepared}
            if not isinstance(prepared, Mapping) or not prepared or not all(isinstance(v, str) for v in prepared.values()):
                raise self.fail('defaults.prepared must be a folder or a table {subset = "folder"}', section, "prepared")
            for name in prepared:
                self._check_name(name, "a subset name", section, "prepared")
            settings["prepared"] = {name: self._path(folder) for name, folder in prepared.items()}
            settings["subsets"] = tuple(prepared)
            return settings
        subsets = defaults.get("subsets")
        if not isinstance(subsets, list) or not subsets or not all(isinstance(s, str) for s in subsets):
            raise self.fail(
                "defaults: give prepared (prepared subset folders) or subsets (a list of names, with data)",
                section,
                "subsets" if subsets is not None else None,
            )
        if len(set(subsets)) != len(subsets):
            raise self.fail(f"defaults.subsets lists a subset twice: {subsets}", section, "subsets")
        for name in subsets:
            self._check_name(name, "a subset name", section, "subsets")
        settings["subsets"] = tuple(subsets)
        if "data" in defaults:
            if not isinstance(defaults["data"], str):
                raise self.fail(f"defaults.data must be a folder, got {defaults['data']!r}", section, "data")
            settings["data"] = self._path(defaults["data"])
        return settings

    def _run(self, run: Mapping[str, Any], index: int, train: Mapping[str, Any]) -> PlanRun:
        section = ("runs", index)
        name = run.get("name")
        if not isinstance(name, str):
            raise self.fail(f"runs[{index}]: every run needs a name (a string)", section, "name" if "name" in run else None)
        self._check_name(name, "a run name", section, "name")
        where = f"runs[{index}] ({name})"
        options: dict[str, Any] = {}
        embedding = run.get("embedding")
        for key, value in run.items():
            if key == "name":
                continue
            if key == "embedding":
                if value not in EMBEDDINGS:
                    raise self.fail(f"{where}: embedding must be one of {', '.join(EMBEDDINGS)}, got {value!r}", section, key)
                continue
            self._train_option(key, value, section, where)
            options[key] = str(self._path(value)) if key in ("graph", "weights") and value is not None else value
            if key == "graph" and value is not None:
                self._check_graph(Path(options[key]), section, where)
        if embedding and "graph" in options:
            raise self.fail(f"{where}: give either embedding (a graph the runner builds) or graph, not both", section, "graph")
        model = options.get("model", train.get("model"))
        if model is None:
            raise self.fail(f"{where}: no model (set model in the run or in [defaults])", section)
        from mlcdf.models import is_model

        if not is_model(model):
            raise self.fail(f"{where}: unknown model {model!r} (see 'mlcdf models')", section, "model" if "model" in run else None)
        options.setdefault("model", model)
        merged = {**train, **options}
        try:  # the values the trainer checks (recipe, loss, ranges, device), before anything starts
            TrainConfig(prepared="", out="", **merged).resolve()
        except MlcdfError as error:
            # A range error names its option first ("epochs must be ..."): point at the line that set it,
            # the run's own or, when the run takes it from there, [defaults]'.
            key = str(error).split(" ", 1)[0]
            if key in train and key not in options:
                raise self.fail(f"defaults: {error}", ("defaults", 0), key) from None
            raise self.fail(f"{where}: {error}", section, key if key in options else None) from None
        return PlanRun(name=name, options=options, embedding=embedding)

    def _train_option(self, key: str, value: Any, section: tuple[str, int], where: str) -> None:
        if key in _RUNNER_OPTIONS:
            raise self.fail(f"{where}: {key} is chosen by the runner; a plan may not set it", section, key)
        if key not in _TRAIN_FIELDS:
            known = "name, embedding, " if section[0] == "runs" else ", ".join(PLAN_KEYS) + ", "
            raise self.fail(f"{where}: unknown key {key!r} (known: {known}and the 'mlcdf train' options)", section, key)
        allowed = _TRAIN_FIELDS[key].type.split(" | ")
        if not any(is_option_type(value, type_name) for type_name in allowed):
            expected = " or ".join(allowed)
            raise self.fail(f"{where}: {key} must be {expected}, got {value!r}", section, key)

    def _check_name(self, name: str, what: str, section: tuple[str, int], key: str) -> None:
        # Names become folder names under OUT: no separators, no '..', nothing hidden, not too long.
        if not _NAME.fullmatch(name):
            shown = name if len(name) <= 60 else name[:57] + "..."
            raise self.fail(f"{shown!r} is not usable as {what} (letters, digits and _.:+=- only)", section, key)
        problem = folder_name_problem(name)
        if problem is not None:
            raise self.fail(f"{name[:57]!r}... is not usable as {what}: it {problem}", section, key)

    def _check_graph(self, path: Path, section: tuple[str, int], where: str) -> None:
        # Every run would fail on it: say so now, not once per run.
        if path.is_dir():
            raise self.fail(f"{where}: graph {path} is a folder, not a graph file (.npz from 'mlcdf build-graph')", section, "graph")
        if not path.is_file():
            raise self.fail(f"{where}: graph {path}: not found (a .npz from 'mlcdf build-graph')", section, "graph")

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.base / path).absolute()
