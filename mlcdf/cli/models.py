"""``mlcdf models``: the model zoo with parameter counts, beside the paper's."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from mlcdf.cli._console import err, out
from mlcdf.cli._options import JsonOpt
from mlcdf.errors import MlcdfError


def models_command(
    pattern: Annotated[str, typer.Argument(help="Shell-style wildcard over model names, e.g. '*gcn'.")] = "*",
    num_labels: Annotated[int, typer.Option("--num-labels", min=1, help="Labels to count the head for.")] = 5,
    embedding_dim: Annotated[int, typer.Option("--embedding-dim", min=1, help="Node-feature width graph models are counted with.")] = 300,
    as_json: JsonOpt = False,
) -> None:
    """List the models 'mlcdf train --model' accepts, with their parameter counts.

    Counts are for --num-labels labels and, for graph models, --embedding-dim node features; the
    defaults (5 labels, 300-d word embeddings) are the paper's, whose counts are shown beside ours.
    Models are built on PyTorch's meta device, so nothing is allocated or downloaded. Any timm backbone
    also works as a direct model under the name timm:ARCH (e.g. timm:convnext_tiny).

    Example:

        mlcdf models '*gcn' --json
    """
    # Imported here: torch and timm are slow to import and other commands do not need them.
    from mlcdf.models import count_parameters, list_models, meta_model, model_info

    infos = sorted((model_info(name) for name in list_models(pattern)), key=lambda info: info.requires_graph)
    if not infos:
        raise MlcdfError(f"no model matches {pattern!r}; known: {', '.join(list_models())}")
    rows = []
    for info in infos:
        model = meta_model(info.name, num_labels, embedding_dim=embedding_dim)
        rows.append(
            {
                "name": info.name,
                "family": info.family,
                "params": count_parameters(model),
                "paper_params_m": info.paper_params_m,
                "requires_graph": info.requires_graph,
                "input_mean": list(model.input_mean),
                "input_std": list(model.input_std),
                "description": info.description,
            }
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    _print_table(rows, num_labels, embedding_dim)


def _normalisation(mean: list[float], std: list[float]) -> str:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    if mean == [0.0, 0.0, 0.0] and std == [1.0, 1.0, 1.0]:
        return "none"
    if tuple(mean) == IMAGENET_DEFAULT_MEAN and tuple(std) == IMAGENET_DEFAULT_STD:
        return "ImageNet"
    return f"{tuple(mean)} / {tuple(std)}"


def _print_table(rows: list[dict], num_labels: int, embedding_dim: int) -> None:
    title = f"{num_labels} labels; graph models with {embedding_dim}-d node features"
    table = Table(title=title, title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("family")
    table.add_column("params (M)", justify="right")
    table.add_column("paper (M)", justify="right")
    table.add_column("graph")
    table.add_column("normalisation")
    for row in rows:
        paper = row["paper_params_m"]
        table.add_row(
            row["name"],
            row["family"],
            f"{row['params'] / 1e6:.2f}",
            "-" if paper is None else f"{paper:.1f}",
            "needed" if row["requires_graph"] else "",
            _normalisation(row["input_mean"], row["input_std"]),
        )
    out.print(table)
    err.print("Any timm backbone is a direct model too: --model timm:ARCH (e.g. timm:convnext_tiny).", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("models")(models_command)
