"""Image-based label embeddings (IML-GCN style): the mean training-image feature of each label.

1. Encode every training image with a backbone into one pooled feature vector: a timm model (random
   initialisation unless weights are given) or the model of a trained run (``--from-run``).
2. Fit a PCA on all those features, real images included (they shape the feature space as well), and
   project them to ``dim`` dimensions.
3. Average the projections of the images that carry each label.

Because the PCA centres the data, a label without training images gets the zero vector: the centroid of
all training images, the least informative and least surprising node feature.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import numpy as np
import torch

from mlcdf.data.dataset import (
    CachedSource,
    EpochSampler,
    FileSource,
    ImageSource,
    MultiLabelImages,
    build_image_cache,
    collate_batch,
    to_model_input,
)
from mlcdf.data.prepared import PreparedSubset, SplitTable
from mlcdf.errors import MissingArtifactError, MlcdfError
from mlcdf.graph.embeddings import LabelEmbeddings
from mlcdf.progress import ProgressFn, silent


@dataclass(frozen=True)
class ImageEncoder:
    """A backbone that turns a batch of normalised images into pooled features (B, F).

    Attributes:
        module: the network, in eval mode.
        mean: per-channel input mean (images in [0, 1]).
        std: per-channel input standard deviation.
        image_size: square input size in pixels.
        source: what it is, for the ``.json`` (``timm:NAME`` or ``run:PATH``).
        weights: where its weights came from; ``None`` for a random initialisation.
        encode: module, batch -> (B, F) features.
    """

    module: torch.nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    source: str
    weights: str | None
    encode: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]

    @property
    def is_random(self) -> bool:
        return self.weights is None


def global_average_pool(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature maps or (B, N, C) tokens -> (B, C); (B, C) passes through."""
    if features.ndim == 4:
        return features.mean(dim=(2, 3))
    if features.ndim == 3:
        return features.mean(dim=1)
    if features.ndim == 2:
        return features
    raise ValueError(f"cannot pool features of shape {tuple(features.shape)}")


def _timm_pooled(module: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    # Built with num_classes=0, a timm model's forward is its own pooling plus pre-logits: the features
    # the model was designed to classify from, whatever the architecture.
    return module(images)


class _FeatureModel(Protocol):
    """What :func:`run_encoder` needs of a run's model (every mlcdf model has it)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...


def _run_pooled(module: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    # A cast, not a check: run_encoder pairs this function with a run's model only, which has forward_features.
    return global_average_pool(cast(_FeatureModel, module).forward_features(images))


def timm_encoder(
    name: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool = False,
    image_size: int | None = None,
    seed: int = 0,
) -> ImageEncoder:
    """A timm backbone (``num_classes=0``) with its own input normalisation.

    Args:
        name: a timm model name, e.g. ``tresnet_m`` or ``resnet50.a1_in1k``.
        weights: a local ``.safetensors``/``.pth`` file to load (strictly, classifier keys dropped).
        pretrained: load timm's default pretrained weights from the local Hugging Face cache, downloading
            them only when missing and the Hub is reachable.
        image_size: input size (default: the model's pretrained configuration, e.g. 224).
        seed: seed of the random initialisation (features of a random network still depend on it).

    Raises:
        MlcdfError: unknown model name, or weights that cannot be read or do not fit.
    """
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0]}*")[:8]
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise MlcdfError(f"unknown timm model {name!r}{hint}")
    # A private RNG stream: the same seed gives the same random network without touching global state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = timm.create_model(name, pretrained=False, num_classes=0)
    source = None
    if weights is not None or pretrained:
        from mlcdf.weights import load_backbone_weights, load_pretrained_backbone

        report = load_backbone_weights(module, weights) if weights is not None else load_pretrained_backbone(module)
        source = report.source
    config = timm.data.resolve_model_data_config(module)
    return ImageEncoder(
        module=module.eval(),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
        image_size=image_size or int(config["input_size"][-1]),
        source=f"timm:{name}",
        weights=source,
        encode=_timm_pooled,
    )


def run_encoder(run_dir: str | Path, *, device: torch.device, image_size: int | None = None) -> ImageEncoder:
    """The trained model of a run folder (its ``best`` checkpoint), pooled after ``forward_features``.

    Expects from :mod:`mlcdf.inference.runs`: ``load_run_model(run_dir, checkpoint="best", device=...)`` giving an
    ``nn.Module`` with ``forward_features(x)`` (B x C x H x W) and ``input_mean`` / ``input_std``
    (3-tuples); and ``read_run(run_dir).config.image_size``, the size it was trained at (used when
    ``image_size`` is None).
    """
    # Imported here: the training stack is heavy and only this path needs it.
    from mlcdf.inference import runs as inference

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MissingArtifactError(run_dir, "a run folder written by 'mlcdf train'")
    module = inference.load_run_model(run_dir, checkpoint="best", device=device)
    return ImageEncoder(
        module=module.eval(),
        mean=tuple(float(v) for v in module.input_mean),
        std=tuple(float(v) for v in module.input_std),
        image_size=image_size or inference.read_run(run_dir).config.input_size,
        source=f"run:{run_dir}",
        weights="best checkpoint",
        encode=_run_pooled,
    )


def extract_features(
    encoder: ImageEncoder,
    prepared: PreparedSubset,
    table: SplitTable,
    *,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    cache: bool = False,
    progress: ProgressFn = silent,
) -> np.ndarray:
    """Pooled features (N, F) of every image of ``table``, in row order.

    Args:
        cache: read the images through the prepared subset's packed cache (built, or reused when current,
            as ``mlcdf train --cache`` does) instead of decoding the files.

    Raises:
        MissingArtifactError: an image file is missing.
        MlcdfError: an image cannot be decoded.
    """
    source: ImageSource
    if cache:
        source = CachedSource(build_image_cache(prepared, "train", encoder.image_size, table=table, progress=progress))
    else:
        paths = [prepared.image_path(file_path) for file_path in table.file_paths]
        # Checked up front, to name the split file that lists a missing image.
        missing = next((path for path in paths if not path.is_file()), None)
        if missing is not None:
            raise MissingArtifactError(missing, f"a training image listed in {prepared.split_path('train')}")
        source = FileSource(paths, encoder.image_size)
    loader = torch.utils.data.DataLoader(
        MultiLabelImages(source, table.targets),
        batch_size=batch_size,
        sampler=EpochSampler(len(table), shuffle=False, pad=False),
        collate_fn=collate_batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    module = encoder.module.to(device)
    chunks = []
    with torch.inference_mode():
        for batch in progress(loader, "Image features", total=len(loader)):
            images = to_model_input(batch, device, encoder.mean, encoder.std)  # raises an undecodable image's error
            chunks.append(encoder.encode(module, images).float().cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


def fit_pca(features: np.ndarray, dim: int, *, seed: int = 0) -> tuple[np.ndarray, float]:
    """Project ``features`` (N, F) onto their first ``k = min(dim, N - 1, F)`` principal components.

    ``N - 1`` because N centred points span at most N - 1 directions: further components are noise.

    Returns:
        ``(projected, explained)``: (N, k) coordinates and the share of variance they keep.

    Raises:
        MlcdfError: fewer than 2 images, or all features identical (nothing to project).
    """
    from sklearn.decomposition import PCA

    n, f = features.shape
    if n < 2:
        raise MlcdfError(f"image embeddings need at least 2 training images, got {n}")
    if not np.any(np.ptp(features, axis=0) > 0):
        raise MlcdfError("every training image has the same features; image embeddings would be meaningless")
    pca = PCA(n_components=min(dim, n - 1, f), random_state=seed)
    projected = pca.fit_transform(features.astype(np.float64))
    return projected, float(pca.explained_variance_ratio_.sum())


def label_means(projected: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C, k) mean of the rows of ``projected`` carrying each label; zeros for a label with no row."""
    multi_hot = (np.asarray(targets) != 0).astype(np.float64)
    counts = multi_hot.sum(axis=0)
    sums = multi_hot.T @ projected
    return np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)


def image_embeddings(
    prepared: PreparedSubset,
    table: SplitTable,
    encoder: ImageEncoder,
    *,
    dim: int = 128,
    device: torch.device,
    batch_size: int = 64,
    workers: int = 0,
    cache: bool = False,
    seed: int = 0,
    progress: ProgressFn = silent,
) -> LabelEmbeddings:
    """Image embeddings of the labels of ``prepared`` from its training split ``table``.

    Args:
        dim: PCA dimension; lowered to what the data allows (N - 1 images, F features) with a warning.

    Returns:
        The embeddings; ``info["per_label"][label]["images"]`` counts the images averaged.
    """
    features = extract_features(
        encoder, prepared, table, device=device, batch_size=batch_size, workers=workers, cache=cache, progress=progress
    )
    projected, explained = fit_pca(features, dim, seed=seed)
    vectors = label_means(projected, table.targets).astype(np.float32)
    counts = (np.asarray(table.targets) != 0).sum(axis=0)
    k = projected.shape[1]
    warnings = []
    if encoder.is_random:
        warnings.append(
            f"{encoder.source} has RANDOM weights: its features carry little meaning. Pass --weights PATH, "
            "--pretrained, or --from-run RUN for useful image embeddings"
        )
    if k < dim:
        warnings.append(f"--dim {dim} lowered to {k}: {len(features)} training images and {features.shape[1]} features allow no more")
    empty = [label for label, count in zip(prepared.labels, counts) if count == 0]
    if empty:
        warnings.append(f"no training image for {', '.join(empty)}: embedding set to the centroid of all images (zeros)")
    info = {
        "kind": "image",
        "source": "image",
        "backbone": encoder.source,
        "weights": encoder.weights,
        "random_init": encoder.is_random,
        "image_size": encoder.image_size,
        "feature_dim": int(features.shape[1]),
        "dim": k,
        "dim_requested": dim,
        "pca_explained_variance": round(explained, 6),
        "num_images": len(features),
        "per_label": {label: {"images": int(count)} for label, count in zip(prepared.labels, counts)},
    }
    return LabelEmbeddings(vectors, info, tuple(warnings))
