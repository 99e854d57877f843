"""Faces and their five landmarks, found offline with MTCNN (facenet-pytorch, the ``faces`` extra).

Why MTCNN from facenet-pytorch 2.5.3: its P-, R- and O-net weights ship inside the wheel (nothing is
downloaded at run time), it gives exactly the five points both alignments are defined on (eye centres,
nose tip, mouth corners; CelebA's own landmarks are these five), it runs on torch, so on the GPU too,
and its licence (MIT) has no non-commercial clause. 2.6.0 pins an old torch, so 2.5.3 is the version
used. The alternative, dlib's HOG detector with a landmark model, needs the 68-point model (licensed for
non-commercial use only) to get eye centres as FFHQ took them.

The weights are read here with ``torch.load(weights_only=True)`` and fed to facenet-pytorch's
``detect_face`` (its MTCNN class would load them with its own call). A photo is searched at most
:data:`DETECTION_SIDE` px on its longest side, so a 9000 px photo costs no more than a small one; boxes
and landmarks are given in the photo's own pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mlcdf.errors import MlcdfError

FACES_INSTALL_HINT = "finding faces needs facenet-pytorch: pip install 'mlcdf[faces]'"
#: Longest side, in pixels, of the copy of a photo that is searched for faces.
DETECTION_SIDE = 1280
#: MTCNN's smallest face, in pixels of the searched copy (facenet-pytorch's default).
MTCNN_MIN_FACE = 20
#: MTCNN's thresholds of its three stages and its pyramid factor (facenet-pytorch's defaults).
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)
MTCNN_FACTOR = 0.709
#: Detections less confident than this are dropped: at 0.9 MTCNN's remaining false faces are rare.
MIN_CONFIDENCE = 0.9


@dataclass(frozen=True)
class DetectedFace:
    """A face in a photo: its box ``(x0, y0, x1, y1)``, its five landmarks (5, 2) (eye on the image's left,
    other eye, nose, mouth corner on the left, other corner), all in the photo's pixels, and MTCNN's confidence."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    confidence: float

    @property
    def in_profile(self) -> bool:
        """Seen from the side: along the line between the eyes, the nose tip lies beyond one of them. A
        frontal or half-turned face has it between them; the aligned datasets' faces are such faces."""
        eye_left, eye_right, nose = self.landmarks[:3]
        axis = eye_right - eye_left
        length = float(np.dot(axis, axis))
        if length == 0.0:
            return False  # no eye line: no orientation, which the alignment refuses
        along = float(np.dot(nose - eye_left, axis)) / length
        return not 0.0 < along < 1.0

    @property
    def size(self) -> float:
        """The shorter side of the box, in pixels: what a minimum face size is compared with."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


def _import_facenet() -> Any:
    try:
        from facenet_pytorch.models import mtcnn
        from facenet_pytorch.models.utils.detect_face import detect_face
    except ImportError:
        raise MlcdfError(FACES_INSTALL_HINT) from None
    return mtcnn, detect_face


class FaceDetector:
    """MTCNN on ``device``, loaded once; :meth:`detect` takes RGB photos (H, W, 3) ``uint8`` of any size.

    Raises:
        MlcdfError: the ``faces`` extra is not installed.
    """

    def __init__(self, device: Any = "cpu") -> None:
        import torch

        mtcnn, self._detect_face = _import_facenet()
        weights = Path(mtcnn.__file__).parent.parent / "data"
        self.device = torch.device(device)
        self.nets = []
        for net_class, file in ((mtcnn.PNet, "pnet.pt"), (mtcnn.RNet, "rnet.pt"), (mtcnn.ONet, "onet.pt")):
            net = net_class(pretrained=False)
            net.load_state_dict(torch.load(weights / file, map_location="cpu", weights_only=True))
            self.nets.append(net.to(self.device).eval())

    def detect(self, photo: np.ndarray) -> list[DetectedFace]:
        """The faces of ``photo`` at least :data:`MIN_CONFIDENCE` sure, largest first."""
        import torch

        height, width = photo.shape[:2]
        scale = min(1.0, DETECTION_SIDE / max(height, width))
        searched = photo
        if scale < 1.0:
            target = (max(1, round(width * scale)), max(1, round(height * scale)))
            searched = np.asarray(Image.fromarray(photo).resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0))
        if min(searched.shape[:2]) < MTCNN_MIN_FACE:
            return []  # too small to hold a face MTCNN can see (its pyramid would be empty)
        # Sizes are rounded: the factors of both axes differ slightly from ``scale``.
        factors = np.array([width / searched.shape[1], height / searched.shape[0]])
        with torch.no_grad():
            boxes, points = self._detect_face(searched[None], MTCNN_MIN_FACE, *self.nets, list(MTCNN_THRESHOLDS), MTCNN_FACTOR, self.device)
        faces = []
        for box, landmarks in zip(
            np.asarray(boxes[0], dtype=np.float64).reshape(-1, 5), np.asarray(points[0], dtype=np.float64).reshape(-1, 5, 2)
        ):
            if box[4] < MIN_CONFIDENCE:
                continue
            scaled = box[:4] * np.tile(factors, 2)
            faces.append(DetectedFace(tuple(float(v) for v in scaled), landmarks * factors, float(box[4])))  # type: ignore[arg-type]
        return sorted(faces, key=lambda face: -face.size)
