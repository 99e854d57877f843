"""Videos: sampled frames with their timestamps, faces linked across frames into tracks, one verdict per track.

Decoding uses PyAV (the ``video`` extra). A video is never held in memory: frames are decoded one at a
time and dropped once scored, and only :data:`FRAME_BATCH` of them wait for the model at once.

Sampling follows DeepfakeBench (32 evenly spaced frames per video, ``np.linspace`` over the frame
indices in its preprocessing), but over *time* rather than frame numbers: the targets are
``start + i * duration / count`` for ``i < count`` and each takes the first frame shown at or after it.
On a constant frame rate that is the same set of frames, and on a variable frame rate it stays evenly
spaced in time where frame numbers would not. Timestamps are the frames' own (``pts x time_base``).
A target more than :data:`SEEK_AFTER_S` ahead is reached by seeking to the keyframe before it, so 32
frames of a two-hour video cost 32 short decodes, not two hours of decoding.

Tracks: the faces of consecutive sampled frames are matched greedily by box IoU (highest first, each
face used once, at least :data:`MIN_TRACK_IOU`); an unmatched face starts a new track. A track's verdict
is the mean of its faces' scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mlcdf.data.images import pixel_limit
from mlcdf.errors import MlcdfError
from mlcdf.progress import ProgressFn, silent

if TYPE_CHECKING:
    import av

#: File extensions read as videos (everything else is an image).
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
#: DeepfakeBench's frames per video.
DEFAULT_FRAMES = 32
#: The most frames one video may give the model (``--frames``, or the frames ``--every`` selects).
MAX_SAMPLED_FRAMES = 100_000
#: A target this far ahead of the decoder is reached by seeking rather than by decoding every frame between.
SEEK_AFTER_S = 5.0
#: Frames decoded before the model scores them together (bounds memory, keeps batches full).
FRAME_BATCH = 8
#: Two boxes in consecutive sampled frames are the same face when their IoU is at least this.
MIN_TRACK_IOU = 0.3

VIDEO_INSTALL_HINT = "reading videos needs PyAV: pip install 'mlcdf[video]'"


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _import_av() -> Any:
    try:
        import av
    except ImportError:
        raise MlcdfError(VIDEO_INSTALL_HINT) from None
    return av


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame: its time in seconds (which identifies it, also on a variable frame rate) and its RGB pixels."""

    time: float
    image: np.ndarray


def check_sampling(frames: int | None, every: int | None) -> None:
    """``frames`` (evenly spaced) and ``every`` (every k-th frame) are exclusive and bounded.

    Raises:
        MlcdfError: both given, or a count below 1 or above :data:`MAX_SAMPLED_FRAMES`.
    """
    if frames is not None and every is not None:
        raise MlcdfError("--frames and --every are exclusive: give one")
    for option, value in (("--frames", frames), ("--every", every)):
        if value is not None and not 1 <= value <= MAX_SAMPLED_FRAMES:
            raise MlcdfError(f"{option} must be from 1 to {MAX_SAMPLED_FRAMES:,}, got {value}")


def _seconds(value: int | None, time_base: Any) -> float | None:
    return None if value is None or time_base is None else float(value * time_base)


def _video_stream(container: av.container.InputContainer, path: Path) -> av.VideoStream:
    if not container.streams.video:
        kinds = ", ".join(sorted({str(stream.type) for stream in container.streams})) or "none"
        raise MlcdfError(f"{path}: no video stream (streams: {kinds})")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > pixel_limit():
        raise MlcdfError(f"{path}: frames of {width}x{height} exceed the limit of {pixel_limit():,} pixels (--max-pixels)")
    stream.thread_type = "AUTO"
    return stream


def _span(container: av.container.InputContainer, stream: av.VideoStream) -> tuple[float, float]:
    """(start, duration) in seconds: from the stream header, else the container's, else by reading every
    packet's timestamp (no decoding)."""
    start = _seconds(stream.start_time, stream.time_base) or 0.0
    duration = _seconds(stream.duration, stream.time_base)
    if not duration and container.duration:
        duration = container.duration / 1_000_000
    if duration:
        return start, duration
    times = [_seconds(packet.pts, packet.time_base) for packet in container.demux(stream)]
    known = [t for t in times if t is not None]
    container.seek(0)
    if not known:
        return start, 0.0
    start = min(known)
    return start, max(known) - start + 1e-6


def read_frames(path: str | Path, *, frames: int | None = None, every: int | None = None) -> Iterator[SampledFrame]:
    """Yield the sampled frames of a video, in order, decoding one at a time.

    Args:
        frames: this many frames evenly spaced in time (default :data:`DEFAULT_FRAMES` when ``every`` is
            None); a shorter video gives each of its frames once.
        every: instead, every ``every``-th decoded frame, from the first.

    Raises:
        MlcdfError: no PyAV, an unreadable or corrupt file, no video stream, frames over the pixel limit,
            no decodable frame, or more than :data:`MAX_SAMPLED_FRAMES` frames selected.
    """
    check_sampling(frames, every)
    av = _import_av()
    path = Path(path)
    try:
        container = av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as error:
        raise MlcdfError(f"{path}: not a readable video ({error})") from None
    yielded = 0
    try:
        with container:
            stream = _video_stream(container, path)
            selected: Iterator[SampledFrame]
            if every is not None:
                selected = (frame for index, frame in enumerate(_decode_from(container, stream, None)) if index % every == 0)
            else:
                selected = _evenly_spaced(container, stream, frames or DEFAULT_FRAMES)
            for frame in selected:
                if yielded == MAX_SAMPLED_FRAMES:
                    raise MlcdfError(f"{path}: more than {MAX_SAMPLED_FRAMES:,} frames selected; use a larger --every or --frames")
                yielded += 1
                yield frame
    except av.FFmpegError as error:
        raise MlcdfError(f"{path}: corrupt video after {yielded} frame(s) ({error})") from None
    if yielded == 0:
        raise MlcdfError(f"{path}: no frame could be decoded")


def _decode_from(container: Any, stream: Any, seek_to: float | None) -> Iterator[SampledFrame]:
    """Decoded frames (as RGB) from the start, or from the keyframe at or before ``seek_to`` seconds."""
    if seek_to is not None:
        container.seek(int(seek_to / stream.time_base), stream=stream, backward=True, any_frame=False)
    rate = float(stream.average_rate) if stream.average_rate else None
    for index, frame in enumerate(container.decode(stream)):
        time = frame.time
        if time is None:  # no timestamp: a constant frame rate is the best guess there is
            time = index / rate if rate else float(index)
        yield SampledFrame(float(time), frame.to_ndarray(format="rgb24"))


def _evenly_spaced(container: Any, stream: Any, count: int) -> Iterator[SampledFrame]:
    start, duration = _span(container, stream)
    targets = [start + i * duration / count for i in range(count)]
    decoder = _decode_from(container, stream, None)
    position = -math.inf  # time of the last frame decoded
    last_time = -math.inf  # time of the last frame yielded: a frame is given once, and in order
    for target in targets:
        if target <= last_time:
            continue
        if target - max(position, start) > SEEK_AFTER_S:
            decoder = _decode_from(container, stream, target)
        for frame in decoder:
            position = frame.time
            if frame.time >= target - 1e-9 and frame.time > last_time:
                last_time = frame.time
                yield frame
                break
        else:
            return


@dataclass(frozen=True)
class FrameFace:
    """A face found in a frame and scored: its box ``(x0, y0, x1, y1)`` in pixels, per-label scores, and
    the crop the model saw (for a report; None when not kept)."""

    box: tuple[float, float, float, float]
    scores: np.ndarray
    crop: np.ndarray | None = None
    detail: dict[str, Any] = field(default_factory=dict)


#: Finds and scores the faces of a batch of RGB frames: one list of faces per frame.
FrameScorer = Callable[[list[np.ndarray]], list[list[FrameFace]]]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), boxes as ``x0, y0, x1, y1``: (N, M)."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    left = np.maximum(a[:, None, 0], b[None, :, 0])
    top = np.maximum(a[:, None, 1], b[None, :, 1])
    right = np.minimum(a[:, None, 2], b[None, :, 2])
    bottom = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class TrackLinker:
    """Gives each face of each sampled frame a track id: greedy IoU matching with the previous frame's faces."""

    def __init__(self, min_iou: float = MIN_TRACK_IOU) -> None:
        self.min_iou = min_iou
        self._previous_boxes = np.zeros((0, 4))
        self._previous_ids: list[int] = []
        self._next_id = 0

    def link(self, boxes: Sequence[Sequence[float]]) -> list[int]:
        """Track ids for this frame's ``boxes``, in their order."""
        current = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids: list[int | None] = [None] * len(current)
        iou = box_iou(self._previous_boxes, current)
        used_previous: set[int] = set()
        # Highest IoU first; ties keep the lower indices first (a stable, reproducible order).
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            row, col = divmod(int(flat), len(current))
            if iou[row, col] < self.min_iou:
                break
            if row in used_previous or ids[col] is not None:
                continue
            used_previous.add(row)
            ids[col] = self._previous_ids[row]
        for col, value in enumerate(ids):
            if value is None:
                ids[col] = self._next_id
                self._next_id += 1
        linked = [int(value) for value in ids if value is not None]
        self._previous_boxes, self._previous_ids = current, linked
        return linked


@dataclass(frozen=True)
class FrameRow:
    """One face in one sampled frame (the frame's time identifies it)."""

    time: float
    track: int
    box: tuple[float, float, float, float]
    scores: np.ndarray


@dataclass
class Track:
    """A face followed over sampled frames; its verdict is the mean score over them."""

    track: int
    first_time: float
    last_time: float
    num_frames: int
    score_sum: np.ndarray
    #: The crop of the frame where this face scored highest (the most suspicious look), for a report.
    crop: np.ndarray | None = None
    crop_time: float = 0.0
    _best: float = -1.0

    @property
    def scores(self) -> np.ndarray:
        return self.score_sum / self.num_frames

    def add(self, time: float, face: FrameFace) -> None:
        self.last_time = time
        self.num_frames += 1
        self.score_sum = self.score_sum + face.scores
        peak = float(np.max(face.scores)) if face.scores.size else 0.0
        if face.crop is not None and peak > self._best:
            self._best, self.crop, self.crop_time = peak, face.crop, time


@dataclass(frozen=True)
class VideoPrediction:
    """Tracks of one video (by track id) and every scored face of every sampled frame."""

    path: Path
    tracks: list[Track]
    frames: list[FrameRow]
    num_sampled: int

    def track_frames(self, track: int) -> list[FrameRow]:
        return [row for row in self.frames if row.track == track]


def predict_video(
    path: str | Path,
    score_frames: FrameScorer,
    *,
    frames: int | None = None,
    every: int | None = None,
    progress: ProgressFn = silent,
) -> VideoPrediction:
    """Sample a video's frames, score the faces of each (``score_frames``, a batch at a time) and link them into tracks.

    Raises:
        MlcdfError: as :func:`read_frames`.
    """
    path = Path(path)
    total = frames or DEFAULT_FRAMES if every is None else None
    linker = TrackLinker()
    tracks: dict[int, Track] = {}
    rows: list[FrameRow] = []
    sampled = 0

    def score(batch: list[SampledFrame]) -> None:
        for frame, faces in zip(batch, score_frames([f.image for f in batch])):
            for face, track_id in zip(faces, linker.link([face.box for face in faces])):
                if track_id not in tracks:
                    tracks[track_id] = Track(track_id, frame.time, frame.time, 0, np.zeros_like(face.scores, dtype=np.float64))
                tracks[track_id].add(frame.time, face)
                rows.append(FrameRow(frame.time, track_id, face.box, face.scores))

    batch: list[SampledFrame] = []
    for frame in progress(read_frames(path, frames=frames, every=every), f"Frames of {path.name}", total=total):
        batch.append(frame)
        sampled += 1
        if len(batch) == FRAME_BATCH:
            score(batch)
            batch = []
    if batch:
        score(batch)
    return VideoPrediction(path, [tracks[key] for key in sorted(tracks)], rows, sampled)
