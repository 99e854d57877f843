"""``mlcdf build-graph``: the label graph and node embeddings used by the graph models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlcdf.cli._console import matrix_table, out, rich_progress, warn
from mlcdf.cli._options import (
    Device,
    DeviceOpt,
    JsonOpt,
    MaxPixelsOpt,
    PreparedOpt,
    QuietOpt,
    SeedOpt,
    check_workers_option,
    given_on_command_line,
)
from mlcdf.graph.build import DEFAULT_BACKBONE, GraphConfig, GraphResult, build_graph
from mlcdf.graph.embeddings import parse_embedding_source
from mlcdf.io import check_output_apart

#: Up to this many labels the C x C matrices are printed; beyond, they no longer fit a terminal and the
#: summary points to the .npz instead.
MAX_LABELS_PRINTED_AS_MATRIX = 12

#: Options that only mean something for --embedding image (named as the function's parameters).
_IMAGE_ONLY = ("backbone", "weights", "pretrained", "from_run", "dim", "image_size", "batch_size", "workers", "cache", "device", "seed")


def build_graph_command(
    ctx: typer.Context,
    prepared: PreparedOpt,
    out_path: Annotated[Path, typer.Option("--out", help="Graph file to write (.npz); its .json goes beside it.", dir_okay=False)],
    embedding: Annotated[
        str,
        typer.Option(
            "--embedding",
            help="Node features: 'glove' (GloVe 6B 50-d of the label phrases, shipped with mlcdf), 'glove:PATH' "
            "(your GloVe or word2vec file), 'gensim:NAME' (a gensim-data model, e.g. glove-wiki-gigaword-300, "
            "the paper's; needs internet once) or 'image' (mean training-image feature per label).",
        ),
    ] = "glove",
    t: Annotated[float, typer.Option("--t", help="Edge threshold: keep i -> j where P(j | i) >= t. Higher t, fewer edges.")] = 0.4,
    p: Annotated[
        float,
        typer.Option("--p", help="Weight the neighbours of a node share, against 1 for the node itself."),
    ] = 0.25,
    label_phrases: Annotated[
        Path | None,
        typer.Option(
            "--label-phrases",
            help='JSON file {"label": "phrase"} overriding the default phrases (word embeddings).',
            dir_okay=False,
        ),
    ] = None,
    backbone: Annotated[str, typer.Option("--backbone", help="timm model for image embeddings (IML-GCN's by default).")] = DEFAULT_BACKBONE,
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Local .safetensors/.pth weights for --backbone.", dir_okay=False, exists=True),
    ] = None,
    pretrained: Annotated[
        bool, typer.Option("--pretrained", help="timm's pretrained weights for --backbone (local cache, else download).")
    ] = False,
    from_run: Annotated[
        Path | None,
        typer.Option("--from-run", help="Use the trained model of this run folder instead of --backbone.", file_okay=False),
    ] = None,
    dim: Annotated[int, typer.Option("--dim", min=1, help="PCA dimension of image embeddings.")] = 128,
    image_size: Annotated[
        int | None,
        typer.Option("--image-size", min=8, help="Input size (default: the backbone's, or the size the run trained at)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")] = 64,
    workers: Annotated[
        int, typer.Option("--workers", min=0, callback=check_workers_option, help="DataLoader worker processes decoding images.")
    ] = 4,
    cache: Annotated[
        bool,
        typer.Option("--cache", help="Read images through PREPARED/SUBSET/cache (shared with 'mlcdf train'; built if absent)."),
    ] = False,
    device: DeviceOpt = Device.auto,
    seed: SeedOpt = 0,
    max_pixels: MaxPixelsOpt = None,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Build the label graph (co-occurrence, A, A_hat) and node embeddings of a prepared subset.

    Counts on the train split how often labels occur together, then builds the graph as ML-GCN's code does:
    P(j | i) = images with i and j / images with i; the edge i -> j is kept where P(j | i) >= t (t guards
    against rare, noisy pairs); each kept edge gets weight p / (number of edges into j), the node itself 1
    (p sets how much a label listens to its neighbours against itself: this damps over-smoothing);
    A_hat = D^-1/2 A^T D^-1/2 is what the GCN multiplies by. A label with no training image becomes an
    isolated node.

    Writes OUT.npz (labels, label_counts, cooccurrence, A, A_hat, embeddings) and OUT.json (t, p, the
    embedding source and dimension, per label the words found or the images averaged).

    Examples:

        mlcdf build-graph --prepared prepared/facial_attributes --out graphs/attributes-glove.npz

        mlcdf build-graph --prepared prepared/facial_components --embedding glove:glove.6B.300d.txt --t 0.3 --out graphs/c300.npz

        mlcdf build-graph --prepared prepared/facial_components --embedding image --from-run runs/tm --out graphs/c-img.npz
    """
    try:
        source = parse_embedding_source(embedding)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--embedding") from None
    check_output_apart(out_path, ("--prepared", prepared), ("--from-run", from_run))
    if source.is_word:
        given = [name for name in _IMAGE_ONLY if given_on_command_line(ctx, name)]
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise typer.BadParameter(f"{flags} only apply to --embedding image", param_hint="--embedding")
    config = GraphConfig(
        prepared=prepared,
        out=out_path,
        embedding=embedding,
        t=t,
        p=p,
        label_phrases=label_phrases,
        backbone=backbone,
        weights=weights,
        pretrained=pretrained,
        from_run=from_run,
        dim=dim,
        image_size=image_size,
        batch_size=batch_size,
        workers=workers,
        cache=cache,
        device=device.value,
        seed=seed,
    )
    result = build_graph(config, progress=rich_progress(quiet=quiet))
    for message in result.warnings:
        warn(message)
    if as_json:
        out.print_json(json.dumps({"npz": str(result.path), "json": str(result.json_path), **result.graph.info}))
    else:
        _print_summary(result)


def _embedding_detail(info: dict, label: str) -> str:
    entry = info["per_label"][label]
    if info["kind"] == "image":
        return f"{entry['images']:,} images"
    missing = f" [yellow](not found: {' '.join(entry['words_missing'])})[/]" if entry["words_missing"] else ""
    return " ".join(entry["words_found"]) + missing


def _print_summary(result: GraphResult) -> None:
    graph, adjacency = result.graph, result.adjacency
    info, embedding = graph.info, graph.info["embedding"]
    labels = graph.labels
    out.print(
        f"[bold]{result.path}[/] + {result.json_path.name}: {info['subset']}, {len(labels)} labels, "
        f"{info['num_images']:,} {info['split']} images",
        highlight=False,
    )
    if embedding["kind"] == "word":
        source = f"{embedding['source']} ({embedding['file']})"
    else:
        weights = "[bold red]RANDOM WEIGHTS[/]" if embedding["random_init"] else embedding["weights"]
        source = f"image features of {embedding['backbone']} ({weights}), PCA {embedding['feature_dim']} -> {embedding['dim']}"
    out.print(f"node embeddings: {embedding['dim']}-d, {source}", highlight=False)
    nodes = Table(title="Nodes", title_justify="left")
    nodes.add_column("label")
    nodes.add_column("train images", justify="right")
    nodes.add_column("embedding from")
    nodes.add_column("out-edges", justify="right")
    for i, label in enumerate(labels):
        count = int(graph.label_counts[i])
        nodes.add_row(
            label,
            f"{count:,}" if count else "[bold yellow]0[/]",
            _embedding_detail(embedding, label),
            str(int(adjacency.edges[i].sum())),
        )
    out.print(nodes)
    if len(labels) <= MAX_LABELS_PRINTED_AS_MATRIX:
        out.print(matrix_table("Co-occurrence (train images with both i and j)", labels, graph.cooccurrence, "d"))
        out.print(
            matrix_table(f"P(j | i); kept edges (>= t = {info['t']}) in green", labels, adjacency.conditional, ".3f", adjacency.edges)
        )
        out.print(matrix_table(f"A (kept edges re-weighted with p = {info['p']}, plus identity)", labels, graph.A, ".3f"))
        out.print(matrix_table("A_hat = D^-1/2 A^T D^-1/2 (fed to the GCN)", labels, graph.A_hat, ".3f"))
    else:
        out.print(
            f"{len(labels)} labels: the {len(labels)} x {len(labels)} matrices (cooccurrence, A, A_hat) are in "
            f"{result.path.name}, not printed (numpy.load reads them)",
            highlight=False,
        )
    possible = len(labels) * (len(labels) - 1)
    out.print(f"edges surviving t = {info['t']}: {adjacency.num_edges} of {possible}", highlight=False)
    if result.zero_count_labels:
        out.print(
            f"[bold yellow]labels with no training image:[/] {', '.join(result.zero_count_labels)} (isolated nodes)",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    app.command("build-graph")(build_graph_command)
