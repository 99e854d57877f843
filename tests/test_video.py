"""Videos: evenly spaced and every-k-th frames with their own timestamps, the bad videos of issue 27, and tracks."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mlcdf.errors import MlcdfError
from mlcdf.inference import video as video_module
from mlcdf.inference.video import FrameFace, TrackLinker, box_iou, predict_video, read_frames

av = pytest.importorskip("av")

WIDTH, HEIGHT = 64, 48


def frame_of(value: int) -> np.ndarray:
    """A flat grey frame whose level encodes its number modulo 32 (survives lossy coding to within a few levels)."""
    return np.full((HEIGHT, WIDTH, 3), value % 256, dtype=np.uint8)


def write_video(path: Path, count: int, *, rate: int = 10, pts: list[int] | None = None, codec: str = "mpeg4") -> Path:
    """``count`` frames numbered by level 8*i; ``pts`` (in 1/1000 s) sets a variable frame rate by hand."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i in range(count):
            frame = av.VideoFrame.from_ndarray(frame_of(8 * i), format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_number(image: np.ndarray) -> int:
    return round(float(image.mean()) / 8)


def test_evenly_spaced_frames_are_linspace_over_a_constant_rate(tmp_path):
    video = write_video(tmp_path / "cfr.mp4", 40, rate=10)
    frames = list(read_frames(video, frames=8))
    # 40 frames, 8 targets every 0.5 s: frames 0, 5, 10, ... as DeepfakeBench's linspace would pick them.
    assert [frame_number(f.image) for f in frames] == [n % 32 for n in (0, 5, 10, 15, 20, 25, 30, 35)]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
    assert frames[0].image.shape == (HEIGHT, WIDTH, 3)


def test_every_kth_frame(tmp_path):
    video = write_video(tmp_path / "cfr.mp4", 10, rate=10)
    frames = list(read_frames(video, every=3))
    assert [frame_number(f.image) for f in frames] == [0, 3, 6, 9]
    assert [f.time for f in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9])


def test_a_short_video_gives_each_frame_once(tmp_path):
    video = write_video(tmp_path / "short.mp4", 5)
    assert [frame_number(f.image) for f in read_frames(video)] == [0, 1, 2, 3, 4]


def test_one_frame_video(tmp_path):
    video = write_video(tmp_path / "one.mp4", 1)
    frames = list(read_frames(video, frames=32))
    assert len(frames) == 1 and frames[0].time == 0.0


def test_variable_frame_rate_keeps_the_frames_own_times(tmp_path):
    # Frames bunched at the start, then sparse: 10 frames in the first 0.1 s, then one every second.
    pts = [10 * i for i in range(10)] + [1000 * s for s in range(1, 6)]
    video = write_video(tmp_path / "vfr.mkv", len(pts), pts=pts)
    frames = list(read_frames(video, frames=6))
    times = [f.time for f in frames]
    assert all(t in {p / 1000 for p in pts} for t in times), times
    # Evenly spaced in time: one frame per second, not six of the ten bunched frames.
    assert times[:3] == pytest.approx([0.0, 1.0, 2.0])
    assert [frame_number(f.image) for f in frames][:3] == [0, 10, 11]
    # Every frame read by --every 1 carries its pts, however irregular.
    assert [f.time for f in read_frames(video, every=1)] == pytest.approx([p / 1000 for p in pts])


def test_long_video_seeks_and_still_picks_the_right_frames(tmp_path, monkeypatch):
    video = write_video(tmp_path / "long.mp4", 300, rate=10)  # 30 s: targets 10 s apart are reached by seeking
    decoded = []
    original = video_module._decode_from

    def counting(*args):
        for frame in original(*args):
            decoded.append(frame.time)
            yield frame

    monkeypatch.setattr(video_module, "_decode_from", counting)
    frames = list(read_frames(video, frames=3))
    # Seeking lands on the keyframe before each target (mpeg4's default: one every 12 frames), so only a
    # few frames are decoded, not the 200 up to the last target.
    assert len(decoded) < 40
    monkeypatch.undo()
    assert [f.time for f in frames] == pytest.approx([0.0, 10.0, 20.0])
    # The same pixels as decoding every frame up to there (the codec is lossy, so compare with the decoder's own frames).
    sequential = {f.time: f.image for f in read_frames(video, every=1)}
    for frame in frames:
        assert np.array_equal(frame.image, sequential[frame.time])


def test_audio_only_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "audio.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(MlcdfError, match=r"audio\.mp4: no video stream \(streams: audio\)"):
        list(read_frames(path))


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 10])
def test_corrupt_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "broken.mp4"
    path.write_bytes(content)
    with pytest.raises(MlcdfError, match=r"broken\.mp4: ") as caught:
        list(read_frames(path))
    assert "\n" not in str(caught.value)


def test_truncated_video_is_an_error_or_its_readable_frames(tmp_path):
    video = write_video(tmp_path / "cut.mp4", 40)
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    try:
        frames = list(read_frames(video, every=1))
    except MlcdfError as error:
        assert str(error).startswith(str(video)) and "\n" not in str(error)
    else:
        assert 0 < len(frames) < 40


def test_frames_over_the_pixel_limit_are_refused(tmp_path, monkeypatch):
    video = write_video(tmp_path / "big.mp4", 2)
    monkeypatch.setenv("MLCDF_MAX_PIXELS", str(WIDTH * HEIGHT - 1))
    with pytest.raises(MlcdfError, match="64x48 exceed the limit"):
        list(read_frames(video))


def test_sampling_options_are_bounded_and_exclusive(tmp_path):
    video = write_video(tmp_path / "v.mp4", 2)
    for kwargs, message in [
        ({"frames": 0}, "--frames must be"),
        ({"every": 10**9}, "--every must be"),
        ({"frames": 2, "every": 2}, "exclusive"),
    ]:
        with pytest.raises(MlcdfError, match=message):
            list(read_frames(video, **kwargs))


def test_box_iou():
    iou = box_iou(np.array([[0, 0, 10, 10]]), np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]]))
    assert iou == pytest.approx(np.array([[1.0, 1 / 3, 0.0]]))


def test_tracks_follow_moving_faces_greedily():
    linker = TrackLinker(min_iou=0.3)
    assert linker.link([[0, 0, 10, 10], [50, 50, 60, 60]]) == [0, 1]
    # Both moved a little, listed in the other order: each keeps its id.
    assert linker.link([[51, 50, 61, 60], [1, 0, 11, 10]]) == [1, 0]
    # A box overlapping both old ones goes to the better match; a far one is a new track.
    assert linker.link([[2, 0, 12, 10], [200, 200, 210, 210]]) == [0, 2]
    # A face missing from one sampled frame does not come back under its old id.
    assert linker.link([[51, 50, 61, 60]]) == [3]


def test_predict_video_one_verdict_per_track_is_the_mean(tmp_path):
    video = write_video(tmp_path / "two.mp4", 20, rate=10)

    def score_frames(images):
        # Two faces per frame: a steady one scoring the frame's level, one far away scoring constant 0.9.
        faces = []
        for image in images:
            level = image.mean() / 255
            faces.append([FrameFace((0, 0, 10, 10), np.array([level, 0.0])), FrameFace((30, 30, 40, 40), np.array([0.1, 0.9]))])
        return faces

    result = predict_video(video, score_frames, frames=10)
    assert result.num_sampled == 10 and len(result.frames) == 20
    first, second = result.tracks
    assert (first.num_frames, second.num_frames) == (10, 10)
    levels = [row.scores[0] for row in result.track_frames(0)]
    assert first.scores == pytest.approx([np.mean(levels), 0.0])
    assert second.scores == pytest.approx([0.1, 0.9])
    assert (first.first_time, first.last_time) == pytest.approx((0.0, 1.8))


def test_predict_command_on_a_video_and_a_photo(toy_run, tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from mlcdf.cli.main import app

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    write_video(inputs / "clip.mp4", 12, rate=10)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(inputs / "photo.png")
    (inputs / "broken.mp4").write_bytes(b"not a video")
    out, report = tmp_path / "rows.json", tmp_path / "report.html"
    args = ["predict", str(toy_run), str(inputs), "--frames", "4", "--out", str(out), "--frame-rows", "--html", str(report)]
    args += ["--device", "cpu"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "broken.mp4: not a readable video" in result.output  # a warning is one line, not wrapped
    rows = json.loads(out.read_text())["rows"]
    assert [(row["kind"], Path(row["file"]).name) for row in rows] == [("video", "clip.mp4")] + [("frame", "clip.mp4")] * 4 + [
        ("image", "photo.png")
    ]
    track, frames = rows[0], rows[1:5]
    assert track["frames"] == 4 and [row["time"] for row in frames] == pytest.approx([0.0, 0.3, 0.6, 0.9])
    for label in track["scores"]:
        assert track["scores"][label] == pytest.approx(np.mean([row["scores"][label] for row in frames]))
    page = report.read_text()
    assert page.count("<section") == 3 and page.count("<svg") == 1 and "unreadable: " in page
    # Again: the report and the rows are replaced, being this command's own.
    assert CliRunner().invoke(app, args).exit_code == 0


@pytest.mark.slow
def test_a_real_face_moving_through_a_video_is_one_track(toy_run, tmp_path):
    pytest.importorskip("facenet_pytorch")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from mlcdf.inference.media import MediaPredictor

    photo = Image.fromarray(skimage_data.astronaut())
    path = tmp_path / "drift.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for i in range(10):  # the face drifts 4 px left per frame (the window moves right)
            window = photo.crop((60 + 8 * i, 20, 460 + 8 * i, 420)).resize((256, 256))
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(window), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    predictor = MediaPredictor.load(toy_run, device="cpu", mode="all", explain=False)
    result = predictor.predict_file(path, frames=5)
    (track,) = result.rows
    assert track["frames"] == 5 and result.report.faces[0].crop.shape == (32, 32, 3)
    boxes = np.array([row["box"] for row in result.frame_rows])
    # 0.2 s apart = 2 frames = 16 px of the photo = about 10 px of the 256 px frame, to the left.
    assert np.diff(boxes[:, 0]) == pytest.approx([-10.24] * 4, abs=3)
    assert {row["alignment"] for row in result.rows} == {"ffhq"}
