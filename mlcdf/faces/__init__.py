"""Faces in photos: found with their five landmarks (:mod:`~mlcdf.faces.detect`, the ``faces`` extra),
decoded at full size (:mod:`~mlcdf.faces.photos`) and cut out as FFHQ or CelebA-HQ were
(:mod:`~mlcdf.faces.align`, numpy and Pillow only). Scoring the crops with a run is
:mod:`mlcdf.inference.faces`."""

from mlcdf.faces.align import FACE_ALIGNMENTS, align_face, alignment_quad, to_crop_coordinates
from mlcdf.faces.detect import FACES_INSTALL_HINT, DetectedFace, FaceDetector
from mlcdf.faces.photos import load_photo

__all__ = [
    "FACES_INSTALL_HINT",
    "FACE_ALIGNMENTS",
    "DetectedFace",
    "FaceDetector",
    "align_face",
    "alignment_quad",
    "load_photo",
    "to_crop_coordinates",
]
