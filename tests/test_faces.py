"""Faces found with MTCNN (the real detector, on scikit-image's astronaut), aligned, scored: ``mlcdf predict --faces``.

The alignment maths against its references is tests/test_align_reference.py.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mlcdf.cli.main import app
from mlcdf.config import default_alignment
from mlcdf.errors import MlcdfError, SchemaError

pytest.importorskip("facenet_pytorch")
skimage_data = pytest.importorskip("skimage.data")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def detector():
    from mlcdf.faces import FaceDetector

    return FaceDetector("cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


def similarity_copy(photo: np.ndarray, degrees: float, scale: float, shift: tuple[float, float], canvas: tuple[int, int]):
    """``photo`` rotated, scaled and moved onto a larger canvas, and the map of its points."""
    angle = math.radians(degrees)
    matrix = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    offset = np.array(shift)
    inverse = np.linalg.inv(matrix)
    coefficients = (*inverse[0], -(inverse[0] @ offset), *inverse[1], -(inverse[1] @ offset))
    copy = Image.fromarray(photo).transform(canvas, Image.Transform.AFFINE, coefficients, Image.Resampling.BICUBIC)
    return np.asarray(copy), lambda points: np.asarray(points) @ matrix.T + offset


def test_mtcnn_finds_the_astronaut_with_its_five_points(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert face.confidence > 0.99
    # Her face is at about x 181..268, y 62..172; eyes at y ~102, the image-left eye first; mouth below the nose.
    x0, y0, x1, y1 = face.box
    assert 170 < x0 < 195 and 255 < x1 < 280 and 50 < y0 < 75 and 160 < y1 < 185
    eye_left, eye_right, nose, mouth_left, mouth_right = face.landmarks
    assert eye_left[0] < eye_right[0] and mouth_left[0] < mouth_right[0]
    assert eye_left[1] < nose[1] < mouth_left[1]
    assert detector.detect(np.zeros((64, 64, 3), np.uint8)) == []
    assert detector.detect(np.zeros((8, 8, 3), np.uint8)) == []


@pytest.mark.parametrize("alignment", ["ffhq", "celeba-hq"])
def test_a_rotated_scaled_moved_copy_gives_the_same_crop(detector, astronaut, alignment):
    from mlcdf.faces import align_face, to_crop_coordinates

    copy, move = similarity_copy(astronaut, degrees=25, scale=0.7, shift=(150.0, 90.0), canvas=(600, 560))
    original_face, copied_face = detector.detect(astronaut)[0], detector.detect(copy)[0]
    # MTCNN finds the same points, moved with the photo (within 3 px).
    assert np.abs(move(original_face.landmarks) - copied_face.landmarks).max() < 3.0
    size = 128
    crop = np.asarray(align_face(Image.fromarray(astronaut), original_face.landmarks, alignment, size), dtype=np.float64)
    copied = np.asarray(align_face(Image.fromarray(copy), copied_face.landmarks, alignment, size), dtype=np.float64)
    # The same points of the face land within 3 px of each other in the two crops ...
    here = to_crop_coordinates(original_face.landmarks, original_face.landmarks, alignment, size)
    there = to_crop_coordinates(move(original_face.landmarks), copied_face.landmarks, alignment, size)
    assert np.abs(here - there).max() < 3.0
    # ... and the pixels agree (measured 25.6: hair texture and the outline, the copy being smaller),
    # where a crop 8 px off differs by 45 and the whole photo by 87.
    difference = np.abs(crop - copied).mean()
    assert difference < 30
    assert np.abs(crop[:, 8:] - crop[:, :-8]).mean() > difference + 10
    # Eyes level and where the recipe puts them: the quad's centre column, about 0.38 of the side from the top.
    eyes = here[:2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 1.0
    assert abs((eyes[0, 0] + eyes[1, 0]) / 2 - size / 2) < 3.0


# ---- the run's alignment --------------------------------------------------------------------------


def test_alignment_defaults_and_choices():
    from mlcdf.inference.faces import choose_alignment

    assert default_alignment("facial_attributes") == "ffhq"
    assert default_alignment("facial_components") == "celeba-hq"
    assert default_alignment("my_faces") == "none"
    assert choose_alignment("auto", "celeba-hq", None) == "celeba-hq"
    assert choose_alignment("auto", "none", None) == "none"
    assert choose_alignment("all", "none", None) == "ffhq"
    assert choose_alignment("largest", "ffhq", "celeba-hq") == "celeba-hq"
    assert choose_alignment("none", "ffhq", None) == "none"
    with pytest.raises(MlcdfError, match="--faces none"):
        choose_alignment("none", "ffhq", "ffhq")


def test_prepared_meta_records_alignment_and_old_folders_read_their_subsets(tmp_path):
    from mlcdf.data.prepared import load_prepared
    from mlcdf.io import write_json

    def prepared(meta: dict) -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        write_json(folder / "meta.json", {"labels": ["a"], "root": str(tmp_path), "splits": {}, **meta})
        return folder

    assert load_prepared(prepared({"subset": "facial_attributes"})).alignment == "ffhq"
    assert load_prepared(prepared({"subset": "facial_components"})).alignment == "celeba-hq"
    assert load_prepared(prepared({"subset": "mine"})).alignment == "none"
    assert load_prepared(prepared({"subset": "facial_attributes", "alignment": "none"})).alignment == "none"
    with pytest.raises(SchemaError, match="'alignment' must be one of none, ffhq, celeba-hq"):
        load_prepared(prepared({"subset": "mine", "alignment": "dlib"}))


def test_prepare_seqdeepfake_and_csv_record_alignment(release, tmp_path):
    from mlcdf.data.own_csv import CsvPrepareConfig, prepare_csv
    from mlcdf.data.prepared import load_prepared
    from mlcdf.data.seqdeepfake import PrepareConfig, prepare

    prepare(PrepareConfig(root=release, out=tmp_path / "p", subsets=("facial_components", "facial_attributes")))
    assert load_prepared(tmp_path / "p" / "facial_components").meta["alignment"] == "celeba-hq"
    assert load_prepared(tmp_path / "p" / "facial_attributes").meta["alignment"] == "ffhq"
    prepare(PrepareConfig(root=release, out=tmp_path / "q", subsets=("facial_components",), alignment="none"))
    assert load_prepared(tmp_path / "q" / "facial_components").meta["alignment"] == "none"

    images = tmp_path / "own"
    images.mkdir()
    rows = ["file_path,a,split"]
    for index in range(6):
        Image.fromarray(np.full((8, 8, 3), index * 30, np.uint8)).save(images / f"{index}.png")
        rows.append(f"{index}.png,{index % 2},{['train', 'val', 'test'][index % 3]}")
    (tmp_path / "own.csv").write_text("\n".join(rows) + "\n")
    prepare_csv(CsvPrepareConfig(csv=tmp_path / "own.csv", root=images, out=tmp_path / "c"))
    assert load_prepared(tmp_path / "c" / "own").meta["alignment"] == "none"
    prepare_csv(CsvPrepareConfig(csv=tmp_path / "own.csv", root=images, out=tmp_path / "d", alignment="ffhq"))
    assert load_prepared(tmp_path / "d" / "own").alignment == "ffhq"


def run_with(toy_run: Path, tmp_path: Path, alignment: str | None) -> Path:
    """A copy of the toy run whose config.json records ``alignment`` (None: no field, as before it existed)."""
    run = tmp_path / f"run-{alignment}"
    shutil.copytree(toy_run, run)
    config = json.loads((run / "config.json").read_text())
    config.pop("alignment", None)
    if alignment is not None:
        config["alignment"] = alignment
    (run / "config.json").write_text(json.dumps(config))
    return run


def test_runs_record_alignment_and_old_runs_read_their_subsets(toy_run, tmp_path):
    from mlcdf.inference.runs import read_run

    assert json.loads((toy_run / "config.json").read_text())["alignment"] == "none"  # the toy subset says so
    assert read_run(run_with(toy_run, tmp_path, None)).alignment == "celeba-hq"  # the toy subset is facial_components
    assert read_run(run_with(toy_run, tmp_path, "ffhq")).alignment == "ffhq"
    with pytest.raises(MlcdfError, match="alignment must be one of"):
        read_run(run_with(toy_run, tmp_path, "sideways"))


# ---- predict on photos -----------------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path, astronaut) -> Path:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(astronaut).save(folder / "a_astronaut.png")
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(folder / "b_grey.png")
    (folder / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    grey = np.asarray(Image.fromarray(astronaut).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(grey).save(folder / "nested" / "d_grey16.png")
    Image.fromarray(astronaut).convert("CMYK").save(folder / "nested" / "e_cmyk.jpg", quality=95)
    pair = np.concatenate([astronaut, astronaut[:, ::-1]], axis=1)
    Image.fromarray(pair).save(folder / "nested" / "f_two.png")
    return folder


def test_predict_faces_gives_a_row_per_face_and_says_why_not(toy_run, tmp_path, photos):
    from mlcdf.inference.faces import NO_FACE, SCORED, UNREADABLE, predict_faces

    run = run_with(toy_run, tmp_path, "ffhq")
    crops = tmp_path / "crops"
    result = predict_faces(run, [photos], device="cpu", crops_dir=crops, max_faces=1, batch_size=2, keep_crops=True)
    assert result.alignment == "ffhq"
    by_file = {}
    for row in result.rows:
        by_file.setdefault(row.file.name, []).append(row)
    assert [row.file.name for row in result.rows] == [
        "a_astronaut.png", "b_grey.png", "c_corrupt.jpg", "d_grey16.png", "e_cmyk.jpg", "f_two.png"
    ]  # fmt: skip
    astronaut = by_file["a_astronaut.png"][0]
    assert astronaut.status == SCORED and astronaut.face == 0 and astronaut.alignment == "ffhq"
    assert astronaut.scores is not None and astronaut.scores.shape == (len(result.labels),)
    assert np.all((astronaut.scores >= 0) & (astronaut.scores <= 1))
    assert astronaut.landmarks.shape == (5, 2) and astronaut.crop.shape == (32, 32, 3)
    assert by_file["b_grey.png"][0].status == NO_FACE and by_file["b_grey.png"][0].scores is None
    assert by_file["c_corrupt.jpg"][0].status == UNREADABLE and by_file["c_corrupt.jpg"][0].scores is None
    # 16-bit grey is scaled, not clipped to white: the face is found where it is in the 8-bit photo.
    grey16 = by_file["d_grey16.png"][0]
    assert grey16.status == SCORED and np.abs(np.array(grey16.box) - np.array(astronaut.box)).max() < 6
    assert 60 < grey16.crop.mean() < 200
    cmyk = by_file["e_cmyk.jpg"][0]
    assert cmyk.status == SCORED and np.abs(cmyk.landmarks - astronaut.landmarks).max() < 4
    # Two faces, --max-faces 1: one scored, and a note says so.
    assert len(by_file["f_two.png"]) == 1
    assert any("f_two.png: 2 faces, scored the 1 largest" in note for note in result.notes)
    # The crops saved are what the model saw, named by input order.
    assert sorted(p.name for p in crops.iterdir()) == [
        "00000_a_astronaut_face0.png", "00003_d_grey16_face0.png", "00004_e_cmyk_face0.png", "00005_f_two_face0.png"
    ]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(Image.open(astronaut.crop_file)), astronaut.crop)
    # The same crops scored one by one give the same scores: batching changes nothing.
    single = predict_faces(run, [photos / "a_astronaut.png"], device="cpu", batch_size=1)
    np.testing.assert_allclose(single.rows[0].scores, astronaut.scores, atol=1e-6)


def test_tiny_faces_are_reported_not_scored(toy_run, tmp_path, photos):
    from mlcdf.inference.faces import TOO_SMALL, predict_faces

    run = run_with(toy_run, tmp_path, "celeba-hq")
    result = predict_faces(run, [photos / "a_astronaut.png"], device="cpu", min_face_size=200)
    (row,) = result.rows
    assert row.status == TOO_SMALL and row.scores is None and "under --min-face-size 200" in row.detail


def test_a_run_without_alignment_scores_whole_images_unless_told(toy_run, tmp_path, photos):
    from mlcdf.inference.faces import SCORED, predict_faces

    whole = predict_faces(toy_run, [photos / "b_grey.png"], device="cpu")
    assert whole.alignment == "none" and whole.rows[0].status == SCORED and whole.rows[0].box is None
    faces = predict_faces(toy_run, [photos / "b_grey.png"], faces="all", device="cpu")
    assert faces.alignment == "ffhq" and faces.rows[0].status == "no face"


def test_missing_extra_is_one_line_with_the_install_command(monkeypatch):
    from mlcdf.faces import FaceDetector

    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    monkeypatch.setitem(sys.modules, "facenet_pytorch.models", None)
    with pytest.raises(MlcdfError, match=r"pip install 'mlcdf\[faces\]'"):
        FaceDetector("cpu")


def test_cli_predict_faces_writes_rows_and_refuses_bad_options(toy_run, tmp_path, photos):
    run = run_with(toy_run, tmp_path, "ffhq")
    out = tmp_path / "faces.csv"
    runner = CliRunner()
    result = runner.invoke(
        app, ["predict", str(run), str(photos / "a_astronaut.png"), str(photos / "b_grey.png"), "--out", str(out), "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines[0].startswith("file_path,face,status,detail,alignment,box,landmarks,confidence,crop,score_")
    assert len(lines) == 3 and ",0,ok,,ffhq," in lines[1] and ",no face,no face found,ffhq," in lines[2]
    # Written by this command: replaced on a second run; a foreign file is not.
    assert runner.invoke(app, ["predict", str(run), str(photos / "b_grey.png"), "--out", str(out), "--device", "cpu"]).exit_code == 0
    foreign = tmp_path / "notes.csv"
    foreign.write_text("my,own\n")
    refused = runner.invoke(app, ["predict", str(run), str(photos / "b_grey.png"), "--out", str(foreign), "--device", "cpu"])
    assert refused.exit_code == 2 and foreign.read_text() == "my,own\n"
    both = runner.invoke(app, ["predict", str(run), str(photos), "--faces", "none", "--alignment", "ffhq", "--device", "cpu"])
    assert both.exit_code == 2 and "--faces none" in both.output


def test_cli_defaults_are_the_library_defaults():
    from mlcdf.cli import predict
    from mlcdf.inference import faces

    assert (predict.DEFAULT_MIN_FACE_SIZE, predict.DEFAULT_MAX_FACES) == (faces.DEFAULT_MIN_FACE_SIZE, faces.DEFAULT_MAX_FACES)
    assert [mode.value for mode in predict.Faces] == list(faces.FACE_MODES)


def test_faces_in_profile_or_without_usable_landmarks_are_reported_not_scored(toy_run, tmp_path, astronaut):
    from mlcdf.devices import resolve_device
    from mlcdf.faces import DetectedFace
    from mlcdf.inference.faces import NOT_ALIGNED, PROFILE, SCORED, FacePredictor
    from mlcdf.inference.runs import load_run_model, read_run

    class Stub:
        """Three faces: one whose points coincide but for the nose (no orientation), one in profile (the nose
        beyond the right eye), and the astronaut's real one."""

        def __init__(self, real):
            self.real = real

        def detect(self, photo):
            coincide = np.array([[45.0, 45.0], [45.0, 45.0], [45.5, 50.0], [45.0, 45.0], [45.0, 45.0]])
            profile = np.array([[20.0, 40.0], [40.0, 40.0], [55.0, 55.0], [22.0, 70.0], [38.0, 70.0]])
            return [
                DetectedFace((0.0, 0.0, 90.0, 90.0), coincide, 0.99),
                DetectedFace((0.0, 0.0, 80.0, 80.0), profile, 0.99),
                *self.real.detect(photo),
            ]

    info = read_run(run_with(toy_run, tmp_path, "ffhq"))
    device = resolve_device("cpu")
    predictor = FacePredictor(info, load_run_model(info, "best", device), device)
    predictor.detector = Stub(predictor.detector)
    rows = [*predictor.rows_for(Path("a.png"), astronaut), *predictor.flush()]
    assert [(row.face, row.status) for row in rows] == [(0, NOT_ALIGNED), (1, PROFILE), (2, SCORED)]
    assert "coincide" in rows[0].detail and "from the side" in rows[1].detail
    assert rows[0].scores is None and rows[1].scores is None and rows[2].scores is not None


def test_cli_without_the_extra_says_how_to_install_it(toy_run, tmp_path, photos, monkeypatch):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)
    monkeypatch.setitem(sys.modules, "facenet_pytorch.models", None)
    result = CliRunner().invoke(app, ["predict", str(run_with(toy_run, tmp_path, "ffhq")), str(photos), "--device", "cpu"])
    assert result.exit_code == 2
    assert "pip install 'mlcdf[faces]'" in result.output and "Traceback" not in result.output
