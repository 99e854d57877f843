"""Photos and videos through a run's model, as rows (for JSON and tables) and as report pages.

:class:`MediaPredictor` holds a run's model, loaded once, and answers for one file at a time: a photo
gives one row per face, a video one row per face track (the mean over its sampled frames,
:mod:`mlcdf.inference.video`) and, on request, one row per face per sampled frame. Both give a
:class:`~mlcdf.inference.report_html.ReportInput` for the HTML report, with the crops the model saw and
Grad-CAM panels for the predicted labels. ``mlcdf predict --html`` and ``mlcdf serve`` share it, so the
command line and the service answer the same.

Faces are found, aligned and scored by :class:`~mlcdf.inference.faces.FacePredictor`, as for photos.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from mlcdf.data.images import IMAGE_EXTENSIONS
from mlcdf.devices import resolve_device
from mlcdf.errors import MlcdfError
from mlcdf.faces.photos import load_photo
from mlcdf.inference.faces import SCORED, FacePredictor, FaceRow
from mlcdf.inference.report_html import ReportFace, ReportInput, gradcam_overlays
from mlcdf.inference.runs import find_images, load_run_model, read_run
from mlcdf.inference.thresholds import AUTO, Thresholds, decision_thresholds
from mlcdf.inference.video import VIDEO_EXTENSIONS, FrameFace, VideoPrediction, is_video, predict_video
from mlcdf.models import BackboneClassifier
from mlcdf.progress import ProgressFn, silent


def _box(row: FaceRow, picture: np.ndarray) -> tuple[float, float, float, float]:
    """A face's box; a whole image scored as such (no box) covers the picture."""
    if row.box is not None:
        x0, y0, x1, y1 = (float(v) for v in row.box)
        return (x0, y0, x1, y1)
    height, width = picture.shape[:2]
    return (0.0, 0.0, float(width), float(height))


def _detail(row: FaceRow) -> dict[str, Any]:
    """What a row knows of its face beyond box and scores, as JSON values."""
    detail: dict[str, Any] = {"alignment": row.alignment}
    if row.landmarks is not None:
        detail["landmarks"] = np.round(np.asarray(row.landmarks, dtype=np.float64), 2).tolist()
    if row.confidence is not None:
        detail["confidence"] = float(row.confidence)
    if row.steps is not None:
        detail["sequence"] = [label for label, _ in row.steps]
        detail["step_probabilities"] = [float(p) for _, p in row.steps]
    return detail


def _named(error: Exception, path: Path, name: str) -> str:
    """``error``'s message with the file called by ``name``: a server's upload is stored under a name of its
    own, which its client must not see (nor learn the server's folders from)."""
    return str(error).replace(str(path), name)


@dataclass(frozen=True)
class MediaResult:
    """What one file gave: ``rows`` (one per face, or per track of a video), ``frame_rows`` (a video's faces
    in each sampled frame) and the report's view of it. ``note`` says why there is no row (no face);
    ``warnings`` what else the face finder noticed."""

    name: str
    kind: str
    rows: list[dict[str, Any]]
    frame_rows: list[dict[str, Any]]
    report: ReportInput
    note: str = ""
    warnings: tuple[str, ...] = ()


class MediaPredictor:
    """A run's model (and face detector), loaded once, scoring photos and videos one file at a time.

    Not thread-safe: a server calls it from one thread. Faces are found, aligned and scored by
    :class:`~mlcdf.inference.faces.FacePredictor` (so ``--faces``, ``--alignment``, ``--min-face-size`` and
    ``--max-faces`` mean here what they mean for photos); a whole-image row (alignment ``none``) counts as
    one face covering the picture.

    Args:
        keep_crops: keep each face's crop (a track's: the one of its most suspicious frame) for the report;
            without, a file keeps no pixels, however many tracks a long video has.
        explain: add Grad-CAM panels of the predicted labels to the report's faces (needs ``keep_crops``).
    """

    def __init__(self, faces: FacePredictor, thresholds: Thresholds, *, keep_crops: bool = True, explain: bool = True) -> None:
        self.faces = faces
        self.info = faces.info
        self.labels = faces.info.labels
        self.thresholds = thresholds
        self.keep_crops = keep_crops
        self.explain = explain and keep_crops

    @classmethod
    def load(
        cls,
        run: str | Path,
        *,
        checkpoint: str = "best",
        device: str = "auto",
        threshold: str | float = AUTO,
        keep_crops: bool = True,
        explain: bool = True,
        **face_options: Any,
    ) -> MediaPredictor:
        """Read the run (folder or bundle), load its model on ``device``; ``face_options`` go to :class:`FacePredictor`,
        ``threshold`` to :func:`~mlcdf.inference.thresholds.decision_thresholds`."""
        info = read_run(run)
        thresholds = decision_thresholds(info, threshold)  # a bad choice stops here, before the model loads
        torch_device = resolve_device(device)
        model = load_run_model(info, checkpoint, torch_device)
        faces = FacePredictor(info, model, torch_device, **face_options)
        return cls(faces, thresholds, keep_crops=keep_crops, explain=explain)

    def _face_rows(self, file: Path, pictures: list[np.ndarray]) -> list[list[FaceRow]]:
        """Every row of each picture (faces scored in batches across pictures), in picture order."""
        rows: list[FaceRow] = []
        for index, picture in enumerate(pictures):
            # frame_time carries the picture's place in this batch, to put the rows back with their picture.
            rows.extend(self.faces.rows_for(file, picture, frame_time=float(index)))
        rows.extend(self.faces.flush())
        grouped: list[list[FaceRow]] = [[] for _ in pictures]
        for row in rows:
            grouped[int(row.frame_time or 0)].append(row)
        return grouped

    def score_frames(self, file: Path, pictures: list[np.ndarray]) -> list[list[FrameFace]]:
        """The scored faces of each picture (frames of ``file``), as :mod:`mlcdf.inference.video` tracks them."""
        return [
            [
                FrameFace(_box(row, picture), row.scores, row.crop if self.keep_crops else None, _detail(row))
                for row in rows
                if row.scores is not None
            ]
            for picture, rows in zip(pictures, self._face_rows(file, pictures))
        ]

    def _row(self, name: str, kind: str, scores: np.ndarray, **fields: Any) -> dict[str, Any]:
        return {
            "file": name,
            "kind": kind,
            **fields,
            "scores": {label: float(p) for label, p in zip(self.labels, scores)},
            "fake_score": float(scores.max()) if scores.size else 0.0,
            "predicted": self.thresholds.predicted(scores),
        }

    def _overlays(self, crop: np.ndarray | None, scores: np.ndarray) -> tuple[tuple[str, np.ndarray], ...]:
        if not self.explain or crop is None:
            return ()
        scorer = self.faces.scorer
        # The scorer holds the model load_run_model built: an mlcdf model, which Grad-CAM needs.
        model = cast(BackboneClassifier, scorer.model)
        return gradcam_overlays(model, self.info, crop, scores, self.thresholds, scorer.device)

    def predict_photo(self, path: str | Path, name: str | None = None) -> MediaResult:
        """Rows and report of a photo, one per face.

        Raises:
            MlcdfError: the file is not a readable image (within the pixel limit).
        """
        path = Path(path)
        name = str(path) if name is None else name
        try:
            picture = load_photo(path)
        except OSError as error:
            raise MlcdfError(f"{name}: cannot read the image ({_named(error, path, name)})") from None
        (face_rows,) = self._face_rows(path, [picture])
        rows, report_faces = [], []
        for row in face_rows:
            if row.status != SCORED or row.scores is None:
                continue
            box = [round(v, 2) for v in _box(row, picture)]
            rows.append(self._row(name, "image", row.scores, face=row.face, box=box, **_detail(row)))
            title = f"face {row.face}" if row.face is not None else "whole image"
            details = f"box {box}, alignment {row.alignment}"
            crop = row.crop if self.keep_crops else None
            report_faces.append(ReportFace(title, row.scores, crop, self._overlays(crop, row.scores), details=details))
        note = "; ".join(f"{row.status}: {row.detail}" if row.detail else row.status for row in face_rows if row.status != SCORED)
        return MediaResult(name, "image", rows, [], ReportInput(name, "image", tuple(report_faces), note), note)

    def predict_video(
        self,
        path: str | Path,
        name: str | None = None,
        *,
        frames: int | None = None,
        every: int | None = None,
        progress: ProgressFn = silent,
    ) -> MediaResult:
        """Rows and report of a video: one row per face track, and one per face per sampled frame.

        Raises:
            MlcdfError: as :func:`mlcdf.inference.video.read_frames`.
        """
        path = Path(path)
        name = str(path) if name is None else name
        try:
            video = predict_video(path, functools.partial(self.score_frames, path), frames=frames, every=every, progress=progress)
        except MlcdfError as error:
            raise MlcdfError(_named(error, path, name)) from None
        rows, report_faces = [], []
        for track in video.tracks:
            rows.append(
                self._row(
                    name,
                    "video",
                    track.scores,
                    track=track.track,
                    start=track.first_time,
                    end=track.last_time,
                    frames=track.num_frames,
                    alignment=self.faces.alignment,
                )
            )
            report_faces.append(self._track_face(video, track.track))
        frame_rows = [
            self._row(
                name,
                "frame",
                row.scores,
                track=row.track,
                time=row.time,
                box=[round(v, 2) for v in row.box],
                alignment=self.faces.alignment,
            )
            for row in video.frames
        ]
        note = "" if video.tracks else f"no face found in {video.num_sampled} sampled frame(s)"
        return MediaResult(name, "video", rows, frame_rows, ReportInput(name, "video", tuple(report_faces), note), note)

    def _track_face(self, video: VideoPrediction, track_id: int) -> ReportFace:
        track = next(t for t in video.tracks if t.track == track_id)
        rows = video.track_frames(track_id)
        timeline = (np.array([row.time for row in rows]), np.stack([row.scores for row in rows]))
        title = f"track {track_id}, {track.first_time:.1f}-{track.last_time:.1f} s, {track.num_frames} frame(s)"
        return ReportFace(
            title,
            track.scores,
            track.crop,
            self._overlays(track.crop, track.scores),
            timeline,
            details=f"crop from {track.crop_time:.2f} s (its most suspicious frame); scores: mean over the frames",
        )

    def predict_file(self, path: str | Path, name: str | None = None, **video_options: Any) -> MediaResult:
        """:meth:`predict_video` for a video file name (:data:`~mlcdf.inference.video.VIDEO_EXTENSIONS`), else
        :meth:`predict_photo`; the face finder's warnings about this file (many faces, small faces) come with it."""
        path = Path(path)
        name = str(path) if name is None else name
        try:
            result = self.predict_video(path, name, **video_options) if is_video(name) else self.predict_photo(path, name)
        finally:
            # Taken per file, so that a server answering for hours keeps none of them.
            notes, self.faces.notes = self.faces.notes, []
        warnings = dict.fromkeys(note.replace(str(path), name) for note in notes)  # a video repeats them frame after frame
        return dataclasses.replace(result, warnings=tuple(warnings))


def find_media(inputs: list[Path]) -> list[Path]:
    """Files among ``inputs``, folders expanded (recursively, sorted) into their images and videos.

    Raises:
        MissingArtifactError: an input does not exist.
    """
    return find_images(inputs, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
