"""``mlcdf perturb``: a perturbed copy of a Seq-DeepFake-layout dataset (as Seq-DeepFake-P is of Seq-DeepFake).

``OUT/<subset>/`` gets the same annotation CSVs (copied byte for byte) and every image they list, at the
same relative path and in the same file format, perturbed (:mod:`mlcdf.data.perturb`). Any stage reads the
copy as it reads the original (``mlcdf prepare --root OUT``). Beside each ``annotations/<split>.csv`` is
``annotations/<split>.perturbations.csv`` (``file_path,perturbation,level,parameter``): the condition of
each image; ``OUT/<subset>/perturb.json`` records the spec, the seed and the source.

A condition is one fixed spec (``jpeg:3``), or ``random``: a type and level drawn per image
(:func:`mlcdf.data.perturb.draw_condition`) from the seed and the image's path, so the same image gets the
same condition whatever the order or the splits chosen. Perturbed PNG (and other lossless) files stay
lossless; JPEG files are written at quality 95 (:data:`JPEG_QUALITY`), since the copy keeps their format
and names, which adds that encoding on top of the perturbation.

Each subset folder is written whole or not at all (:func:`mlcdf.io.atomic_dir`), and replaces only an
earlier output of this command (its ``perturb.json``).
"""

from __future__ import annotations

import csv
import functools
import os
import shutil
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from mlcdf.config import check_workers
from mlcdf.data.images import open_image
from mlcdf.data.perturb import Condition, apply, check_seed, describe, draw_condition, parse_spec
from mlcdf.data.prepared import OutputOwner
from mlcdf.data.seqdeepfake import annotation_path, read_annotations
from mlcdf.errors import MlcdfError, SchemaError
from mlcdf.io import atomic_dir, atomic_open, check_output_apart, check_output_folder, check_replaceable, holds_file, write_json
from mlcdf.progress import ProgressFn, silent

RANDOM = "random"
PERTURB_JSON = "perturb.json"
#: Quality of the JPEG files of the copy (which keeps each file's format).
JPEG_QUALITY = 95
_PERTURBED_OUTPUT: OutputOwner = {"command": "mlcdf perturb", "is_own": holds_file(PERTURB_JSON)}


def records_path(folder: Path, split: str) -> Path:
    """``annotations/<split>.perturbations.csv``: the condition of each image of the split."""
    return folder / "annotations" / f"{split}.perturbations.csv"


def fixed_condition(spec: str) -> Condition | None:
    """The one condition of ``spec``, or None for ``random``.

    Raises:
        MlcdfError: a bad spec, or one naming several conditions (a copy holds one per image).
    """
    if spec.strip().lower() == RANDOM:
        return None
    conditions = parse_spec(spec)
    if len(conditions) != 1:
        raise MlcdfError(
            f"spec {spec!r} names {len(conditions)} conditions; a copy has one per image: give one (e.g. jpeg:3) "
            f"or '{RANDOM}' (a type and level drawn per image)"
        )
    return conditions[0]


def image_seed(seed: int, file_path: str) -> tuple[int, int]:
    """The draws of one image: from the seed and its path, not its position in a CSV."""
    return (seed, zlib.crc32(file_path.encode("utf-8")))


def _save_like(image, source_format: str | None, path: Path) -> None:
    options = {"quality": JPEG_QUALITY} if source_format == "JPEG" else {}
    image.save(path, format=source_format or None, **options)


@dataclass
class PerturbedSubset:
    subset: str
    out: Path
    images: dict[str, int] = field(default_factory=dict)  # per split


def _perturb_one(
    file_path: str, *, root: Path, building: Path, subset: str, condition: Condition | None, seed: int
) -> tuple[str, Condition]:
    """Perturb the image ``root/file_path`` into the copy being built; ``condition`` None draws one per image."""
    drawn = condition or draw_condition(image_seed(seed, file_path))
    target = building / PurePosixPath(file_path).relative_to(subset)
    target.parent.mkdir(parents=True, exist_ok=True)
    source = root / file_path
    try:
        with open_image(source) as image:
            source_format = image.format
            rgb = image.convert("RGB")
    except OSError as error:
        raise MlcdfError(f"{source}: cannot decode ({error})") from None
    _save_like(apply(rgb, drawn, image_seed(seed, file_path)), source_format, target)
    return file_path, drawn


def perturb_dataset(
    root: str | Path,
    out: str | Path,
    spec: str,
    *,
    subsets: Sequence[str],
    splits: Sequence[str] = ("test",),
    seed: int = 0,
    workers: int | None = None,
    progress: ProgressFn = silent,
) -> list[PerturbedSubset]:
    """Write ``OUT/<subset>`` for each subset: the splits' annotations and their images perturbed.

    Raises:
        MlcdfError: a bad spec, an output inside the root (or the root inside it), an output folder this
            command did not write, a missing annotation CSV, a bad annotation row, or an unreadable image.
    """
    root, out = Path(root), Path(out)
    condition = fixed_condition(spec)
    check_seed(seed, "seed")
    check_workers(workers, "workers")
    check_output_folder(out)
    for subset in subsets:
        check_output_apart(out / subset, ("--root", root))
        check_replaceable(out / subset, **_PERTURBED_OUTPUT)
    annotated = {subset: {split: read_annotations(annotation_path(root, subset, split), subset) for split in splits} for subset in subsets}
    workers = workers or min(8, os.cpu_count() or 1)
    results = []
    for subset, splits_of in annotated.items():
        for split_annotations in splits_of.values():
            outside = next((p for p in split_annotations.table.file_paths if not PurePosixPath(p).is_relative_to(subset)), None)
            if outside is not None:
                line = split_annotations.lines[split_annotations.table.file_paths.index(outside)]
                raise SchemaError(
                    split_annotations.csv_path, f"file_path {outside!r} lies outside {subset}/, which is what is copied", line=line
                )
    for subset in subsets:
        result = PerturbedSubset(subset, out / subset)
        with atomic_dir(out / subset, **_PERTURBED_OUTPUT) as building:
            for split, split_annotations in annotated[subset].items():
                file_paths = split_annotations.table.file_paths

                with ThreadPoolExecutor(max_workers=workers) as pool:
                    write_one = functools.partial(_perturb_one, root=root, building=building, subset=subset, condition=condition, seed=seed)
                    done = list(progress(pool.map(write_one, file_paths), f"Perturbing {subset}/{split}", total=len(file_paths)))
                (building / "annotations").mkdir(exist_ok=True)
                shutil.copyfile(split_annotations.csv_path, building / "annotations" / f"{split}.csv")
                with atomic_open(records_path(building, split)) as handle:
                    writer = csv.writer(handle, lineterminator="\n")
                    writer.writerow(["file_path", "perturbation", "level", "parameter"])
                    for file_path, drawn in done:
                        writer.writerow([file_path, drawn.name, drawn.level, "" if drawn.parameter is None else f"{drawn.parameter:g}"])
                result.images[split] = len(done)
            write_json(
                building / PERTURB_JSON,
                {
                    "spec": spec if condition is None else str(condition),
                    "condition": RANDOM if condition is None else describe(condition),
                    "seed": seed,
                    "source_root": str(root.resolve()),
                    "splits": result.images,
                    "jpeg_quality": JPEG_QUALITY,
                },
            )
        results.append(result)
    return results
