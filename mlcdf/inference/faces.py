"""A run on real photos: find each face, align it as the run's training images were, score it. One row per face.

A model trained on Seq-DeepFake has only seen aligned face crops (:mod:`mlcdf.faces.align`); a whole
photo, a screenshot or a video frame is far from that, and its scores mean little. So each face is
found (MTCNN, :mod:`mlcdf.faces.detect`), cut out with the run's alignment at the model's input size,
and the crops are scored a batch at a time. A photo without a face gives one row saying so, with no
scores: it is not scored whole. :class:`FacePredictor` works on decoded photos, so that a video reader
(each sampled frame), a report and a server reuse it; :func:`predict_faces` runs it over files and folders.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
from PIL import Image

from mlcdf.config import check_count
from mlcdf.data.images import resize
from mlcdf.devices import resolve_device
from mlcdf.errors import MlcdfError
from mlcdf.faces.align import FACE_ALIGNMENTS, align_face, to_crop_coordinates
from mlcdf.faces.detect import FaceDetector
from mlcdf.faces.photos import load_photo
from mlcdf.inference.runs import ImageScorer, RunInfo, find_images, load_run_model, read_run
from mlcdf.inference.thresholds import AUTO, Thresholds, decision_thresholds
from mlcdf.io import check_file_replaceable, png_written_by, save_png
from mlcdf.progress import ProgressFn, silent

#: ``--faces``: ``auto`` aligns faces when the run records an alignment and scores whole images when it
#: does not; ``all`` and ``largest`` always look for faces (FFHQ's alignment for a run without one);
#: ``none`` scores whole images, as the run's training images were when they were not aligned.
FACE_MODES = ("auto", "all", "largest", "none")
#: Faces whose box is narrower than this many pixels are reported, not scored: too few pixels to judge.
DEFAULT_MIN_FACE_SIZE = 40
#: The most faces scored per photo (the largest); a crowd photo is reported with the count left out.
DEFAULT_MAX_FACES = 20

#: Row statuses: scored, or why not.
SCORED = "ok"
NO_FACE = "no face"
TOO_SMALL = "face too small"
UNREADABLE = "unreadable"
NOT_ALIGNED = "cannot align"
PROFILE = "profile"
#: Who writes ``--crops`` PNGs (their stamp); only such files are replaced.
CROPS_COMMAND = "mlcdf predict"


@dataclass(frozen=True)
class FaceRow:
    """One face of one photo (or frame), or one photo with nothing scored in it.

    ``face`` numbers the photo's faces, largest first (None on a row without a face). ``box`` (x0, y0, x1,
    y1) and ``landmarks`` (5, 2) are in the photo's pixels; ``crop_landmarks`` in the crop's. A whole
    image scored as such (alignment ``none``) has no box. ``scores`` are per label (None when not
    scored); ``steps`` are a sequence run's predicted steps in order with their probabilities.
    ``frame_time`` is for a video reader (seconds into the video); ``crop`` is the (S, S, 3) image the
    model saw, kept where asked (a report) and dropped otherwise.
    """

    file: Path
    status: str
    alignment: str
    face: int | None = None
    box: tuple[float, float, float, float] | None = None
    landmarks: np.ndarray | None = None
    crop_landmarks: np.ndarray | None = None
    confidence: float | None = None
    scores: np.ndarray | None = None
    steps: list[tuple[str, float]] | None = None
    detail: str = ""
    crop_file: Path | None = None
    frame_time: float | None = None
    crop: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FacePredictions:
    """Every row of :func:`predict_faces`, with what is needed to read them."""

    labels: tuple[str, ...]
    thresholds: Thresholds
    alignment: str
    rows: list[FaceRow]
    notes: list[str] = field(default_factory=list)

    def predicted(self, row: FaceRow) -> list[str]:
        """The labels of ``row`` at or above their thresholds (none for a row without scores)."""
        return [] if row.scores is None else self.thresholds.predicted(row.scores)


def choose_alignment(mode: str, run_alignment: str, override: str | None) -> str:
    """The alignment of the crops: ``none`` (whole images) for ``--faces none``, and for ``auto`` on a run
    without one; else ``override`` (``--alignment``), else the run's, else FFHQ's.

    Raises:
        MlcdfError: an unknown mode or alignment, or ``--alignment`` with ``--faces none``.
    """
    if mode not in FACE_MODES:
        raise MlcdfError(f"--faces must be one of {', '.join(FACE_MODES)}, got {mode!r}")
    if override is not None and override not in FACE_ALIGNMENTS:
        raise MlcdfError(f"--alignment must be one of {', '.join(FACE_ALIGNMENTS)}, got {override!r}")
    if mode == "none":
        if override is not None:
            raise MlcdfError("--alignment aligns faces, which --faces none does not look for; drop one of them")
        return "none"
    if override is not None:
        return override
    if run_alignment != "none":
        return run_alignment
    return "none" if mode == "auto" else "ffhq"


class FacePredictor:
    """A run's model and, when faces are looked for, the face detector, loaded once.

    :meth:`rows_for` turns one decoded photo into rows; rows with a crop wait until :meth:`flush` (or a
    full batch) scores them together.
    """

    def __init__(
        self,
        info: RunInfo,
        model: torch.nn.Module,
        device: torch.device,
        *,
        mode: str = "auto",
        alignment: str | None = None,
        min_face_size: float = DEFAULT_MIN_FACE_SIZE,
        max_faces: int = DEFAULT_MAX_FACES,
        batch_size: int = 64,
    ) -> None:
        if max_faces < 1:
            raise MlcdfError(f"--max-faces must be at least 1, got {max_faces}")
        check_count("faces", max_faces, option="--max-faces")
        if not min_face_size >= 0:
            raise MlcdfError(f"--min-face-size must be at least 0 pixels, got {min_face_size}")
        self.info = info
        self.scorer = ImageScorer(info, model, device)
        self.alignment = choose_alignment(mode, info.alignment, alignment)
        self.size = info.config.input_size
        self.largest_only = mode == "largest"
        self.min_face_size = min_face_size
        self.max_faces = max_faces
        self.batch_size = batch_size
        self.detector = FaceDetector(device) if self.alignment != "none" else None
        self.notes: list[str] = []
        self._pending: list[FaceRow] = []  # rows with their crop, waiting for a full batch

    def rows_for(self, file: Path, photo: np.ndarray, frame_time: float | None = None) -> Iterator[FaceRow]:
        """Queue the faces of ``photo`` for scoring; yield the rows finished so far (those of earlier photos
        scored with a full batch, and this photo's rows that need no scores)."""
        if self.detector is None:
            crop = np.asarray(resize(Image.fromarray(photo), (self.size, self.size)))
            yield from self._queue(FaceRow(file, SCORED, "none", frame_time=frame_time), crop)
            return
        faces = self.detector.detect(photo)
        if not faces:
            yield FaceRow(file, NO_FACE, self.alignment, detail="no face found", frame_time=frame_time)
            return
        large = [face for face in faces if face.size >= self.min_face_size]
        small = len(faces) - len(large)
        if not large:
            sizes = ", ".join(f"{face.size:.0f}" for face in faces[:3])
            detail = f"{len(faces)} face(s) of {sizes} px, under --min-face-size {self.min_face_size:g}"
            yield FaceRow(file, TOO_SMALL, self.alignment, detail=detail, frame_time=frame_time)
            return
        kept = large[:1] if self.largest_only else large[: self.max_faces]
        if not self.largest_only and len(large) > self.max_faces:
            self.notes.append(f"{file}: {len(large)} faces, scored the {self.max_faces} largest (--max-faces)")
        if small:
            self.notes.append(f"{file}: {small} face(s) under --min-face-size {self.min_face_size:g} px not scored")
        image = Image.fromarray(photo)
        for index, face in enumerate(kept):
            row = FaceRow(
                file,
                SCORED,
                self.alignment,
                face=index,
                box=face.box,
                landmarks=face.landmarks,
                confidence=face.confidence,
                frame_time=frame_time,
            )
            if face.in_profile:
                yield replace(row, status=PROFILE, detail="seen from the side (the nose lies beyond an eye); the model knows frontal faces")
                continue
            try:
                crop = np.asarray(align_face(image, face.landmarks, self.alignment, self.size))
            except ValueError as error:  # landmarks without a usable square (a profile, a face at a few pixels)
                yield replace(row, status=NOT_ALIGNED, detail=str(error))
                continue
            crop_landmarks = to_crop_coordinates(face.landmarks, face.landmarks, self.alignment, self.size)
            yield from self._queue(replace(row, crop_landmarks=crop_landmarks), crop)

    def _queue(self, row: FaceRow, crop: np.ndarray) -> Iterator[FaceRow]:
        self._pending.append(replace(row, crop=crop))
        if len(self._pending) >= self.batch_size:
            yield from self.flush()

    def flush(self) -> Iterator[FaceRow]:
        """Score the queued crops; yield their rows (with ``scores``, and ``steps`` for a sequence run)."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        scored = self.scorer(torch.from_numpy(np.stack([cast(np.ndarray, row.crop) for row in pending])))
        labels = self.info.labels
        for index, row in enumerate(pending):
            steps = None
            if scored.sequences is not None and scored.step_probabilities is not None:
                steps = [(labels[s - 1], float(p)) for s, p in zip(scored.sequences[index], scored.step_probabilities[index]) if s]
            yield replace(row, scores=scored.scores[index], steps=steps)


def crop_name(file_index: int, row: FaceRow) -> str:
    """``--crops`` file name of a row: numbered by input file (names of different folders may clash)."""
    what = "image" if row.face is None else f"face{row.face}"
    return f"{file_index:05d}_{row.file.stem}_{what}.png"


def predict_faces(
    run: str | Path,
    inputs: list[Path],
    *,
    faces: str = "auto",
    alignment: str | None = None,
    crops_dir: Path | None = None,
    min_face_size: float = DEFAULT_MIN_FACE_SIZE,
    max_faces: int = DEFAULT_MAX_FACES,
    checkpoint: str = "best",
    device: str = "auto",
    batch_size: int = 64,
    threshold: str | float = AUTO,
    keep_crops: bool = False,
    progress: ProgressFn = silent,
) -> FacePredictions:
    """Score every face of every photo among ``inputs`` (files, folders searched recursively).

    Unreadable files (corrupt, over the pixel limit, floating-point pixels) are rows with status
    ``unreadable`` and the reason; photos without a face, or with faces all under ``min_face_size``, are
    rows without scores. With ``crops_dir`` each scored crop is saved there as a PNG (named by
    :func:`crop_name`; a file of that name is replaced only if this command wrote it). Rows keep their
    crop's pixels only with ``keep_crops``, so memory stays bounded by one batch of crops otherwise.
    """
    info = read_run(run)
    thresholds = decision_thresholds(info, threshold)
    torch_device = resolve_device(device)
    model = load_run_model(info, checkpoint, torch_device)
    predictor = FacePredictor(
        info, model, torch_device, mode=faces, alignment=alignment, min_face_size=min_face_size, max_faces=max_faces, batch_size=batch_size
    )
    paths = find_images(inputs)
    index_of = {path: index for index, path in enumerate(paths)}
    is_own_crop = png_written_by(CROPS_COMMAND)
    rows: list[FaceRow] = []

    def finish(finished: Iterator[FaceRow]) -> None:
        for row in finished:
            if crops_dir is not None and row.crop is not None:
                target = crops_dir / crop_name(index_of[row.file], row)
                check_file_replaceable(target, command=CROPS_COMMAND, is_own=is_own_crop)
                save_png(Image.fromarray(row.crop), target, command=CROPS_COMMAND)
                row = replace(row, crop_file=target)
            rows.append(row if keep_crops else replace(row, crop=None))

    for path in progress(paths, "Finding faces" if predictor.detector else "Predicting", total=len(paths)):
        try:
            photo = load_photo(path)
        except OSError as error:
            rows.append(FaceRow(path, UNREADABLE, predictor.alignment, detail=str(error) or type(error).__name__))
            continue
        finish(predictor.rows_for(path, photo))
    finish(predictor.flush())
    # Rows of a photo are finished when their batch is scored: put them back in input order.
    rows.sort(key=lambda row: (index_of[row.file], -1 if row.face is None else row.face))
    return FacePredictions(info.labels, thresholds, predictor.alignment, rows, predictor.notes)
