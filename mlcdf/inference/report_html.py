"""A self-contained HTML report of predictions on photos and videos, for a person to read.

One file, nothing fetched: images are inlined as base64 PNG, the score-over-time charts are SVG written
here, there is no script, and a Content-Security-Policy forbids the page any network access. Every text
that comes from outside (file names, label names) is HTML-escaped. Inputs are sorted by suspicion (the
highest label probability of any of their faces), so the page starts with what deserves a look.

Readable at many labels: each face lists its predicted labels and the most probable others with bars;
every label's probability is one click away (``<details>``), and a chart draws at most
:data:`MAX_CHART_LABELS` lines (the most probable labels), with a legend.

The page is built from :class:`ReportInput` values, which say nothing about how they were computed, so
``mlcdf predict --html`` and ``mlcdf serve`` render the same page; :func:`gradcam_overlays` makes the
Grad-CAM panels of a face with :mod:`mlcdf.inference.explain`.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from mlcdf.errors import MlcdfError
from mlcdf.io import atomic_open, check_file_replaceable

if TYPE_CHECKING:
    import torch

    from mlcdf.inference.runs import RunInfo
    from mlcdf.inference.thresholds import Thresholds
    from mlcdf.models import BackboneClassifier

#: The marker that makes a report recognisable as mlcdf's own (so a later report may replace it).
GENERATOR = "mlcdf report"
#: The most lines a score-over-time chart draws; the other labels are in the face's full list.
MAX_CHART_LABELS = 8
#: Labels shown before the "every label" fold, besides the predicted ones.
SHOWN_UNPREDICTED = 3
#: Grad-CAM panels per face, for its most probable predicted labels (a face predicted with 40 labels
#: would otherwise make the page 40 images longer per face).
MAX_OVERLAYS = 6
#: Distinguishable line colours (Tableau 10); a chart draws at most MAX_CHART_LABELS lines.
COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin: 0 0 .3em; word-break: break-all; }
table.summary { border-collapse: collapse; margin-bottom: 1.5em; }
table.summary td, table.summary th { border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
td.name { word-break: break-all; max-width: 40em; }
section.input { border: 1px solid #ccc; border-radius: 6px; padding: .8em; margin-bottom: 1.2em; }
.face { display: flex; flex-wrap: wrap; gap: 1em; border-top: 1px solid #eee; padding-top: .6em; margin-top: .6em; }
.crop img, .overlays img { width: 160px; height: 160px; border: 1px solid #999; }
.overlays { display: flex; flex-wrap: wrap; gap: .5em; }
figure { margin: 0; } figcaption { font-size: 12px; text-align: center; max-width: 160px; word-break: break-all; }
.scores { min-width: 280px; }
.row { display: flex; align-items: center; gap: .4em; font-size: 13px; }
.row .label { width: 12em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar { width: 120px; height: 10px; background: #eee; } .bar span { display: block; height: 100%; background: #888; }
.row.hit { font-weight: bold; } .row.hit .bar span { background: #c0392b; }
.note { color: #a33; } .muted { color: #666; font-size: 12px; }
.legend span { display: inline-block; margin-right: 1em; font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 3px; }
"""


@dataclass(frozen=True)
class ReportFace:
    """One face of an input: a photo's face, or a video's track.

    Attributes:
        title: what the face is, e.g. ``face 1`` or ``track 2, 0.0-3.5 s, 12 frames``.
        scores: (C,) label probabilities (a track's: the mean over its frames).
        crop: the RGB crop the model saw (None: not kept).
        overlays: ``(label, RGB image)`` Grad-CAM panels.
        timeline: ``(times (T,), scores (T, C))`` for a video track.
        details: one more line of plain text (box, alignment).
    """

    title: str
    scores: np.ndarray
    crop: np.ndarray | None = None
    overlays: tuple[tuple[str, np.ndarray], ...] = ()
    timeline: tuple[np.ndarray, np.ndarray] | None = None
    details: str = ""


@dataclass(frozen=True)
class ReportInput:
    """One input file (``kind``: ``image`` or ``video``) with its faces, or a note saying why it has none."""

    name: str
    kind: str
    faces: tuple[ReportFace, ...]
    note: str = ""

    @property
    def suspicion(self) -> float:
        """The highest probability of any label on any face; -1 for an input without a scored face (listed last)."""
        return max((float(np.max(face.scores)) for face in self.faces if face.scores.size), default=-1.0)


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def _image_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(image: np.ndarray, caption: str, css_class: str) -> str:
    return f'<figure class="{css_class}"><img src="{_image_uri(image)}" alt="{_text(caption)}"><figcaption>{_text(caption)}</figcaption></figure>'


def _score_rows(labels: Sequence[str], scores: np.ndarray, thresholds: np.ndarray) -> str:
    order = np.argsort(-scores, kind="stable")
    hits = scores >= thresholds

    def row(index: int) -> str:
        score = float(scores[index])
        hit = " hit" if hits[index] else ""
        return (
            f'<div class="row{hit}"><span class="label" title="{_text(labels[index])}">{_text(labels[index])}</span>'
            f'<span class="bar"><span style="width:{100 * score:.1f}%"></span></span><span>{score:.3f}</span></div>'
        )

    predicted = [int(i) for i in order if hits[i]]
    shown = predicted + [int(i) for i in order if not hits[i]][:SHOWN_UNPREDICTED]
    verdict = ", ".join(labels[i] for i in predicted) or "none (no label reaches its threshold)"
    parts = [f'<div class="scores"><div><b>predicted:</b> {_text(verdict)}</div>', *(row(i) for i in shown)]
    if len(shown) < len(labels):
        parts.append(f"<details><summary>all {len(labels)} labels</summary>{''.join(row(int(i)) for i in order)}</details>")
    parts.append("</div>")
    return "".join(parts)


def timeline_svg(
    times: np.ndarray, scores: np.ndarray, labels: Sequence[str], thresholds: float | np.ndarray, *, width: int = 520, height: int = 170
) -> str:
    """An SVG chart of each label's probability over time (the :data:`MAX_CHART_LABELS` highest), with
    the threshold dashed (each drawn label's in its colour when they differ), and its legend as HTML."""
    levels = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (len(labels),))  # one number, or one per label
    times, scores = np.asarray(times, dtype=np.float64), np.asarray(scores, dtype=np.float64).reshape(len(times), -1)
    left, right, top, bottom = 36, 8, 8, 22
    span = float(times.max() - times.min()) if len(times) > 1 else 0.0
    start = float(times.min()) if len(times) else 0.0

    def x(t: float) -> float:
        return left + ((t - start) / span if span > 0 else 0.5) * (width - left - right)

    def y(p: float) -> float:
        return top + (1 - p) * (height - top - bottom)

    chosen = [int(i) for i in np.argsort(-scores.max(axis=0), kind="stable")[:MAX_CHART_LABELS]] if scores.size else []
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="label probabilities over time">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" fill="#fafafa" stroke="#bbb"/>',
    ]
    if len(levels) and np.all(levels == levels[0]):
        dashes = [("#999", float(levels[0]))]
    else:
        dashes = [(colour, float(levels[index])) for colour, index in zip(COLOURS, chosen)]
    for colour, threshold in dashes:
        level = y(threshold)
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{level:.1f}" y2="{level:.1f}" stroke="{colour}" stroke-dasharray="4 3"/>')
    for value in (0.0, 0.5, 1.0):
        parts.append(f'<text x="{left - 4}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end">{value:g}</text>')
    for t, anchor in ((start, "start"), (start + span, "end")):
        parts.append(f'<text x="{x(t):.1f}" y="{height - 6}" font-size="10" text-anchor="{anchor}">{t:.1f} s</text>')
    for colour, index in zip(COLOURS, chosen):
        points = " ".join(f"{x(t):.1f},{y(p):.1f}" for t, p in zip(times, scores[:, index]))
        parts.append(
            f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"><title>{_text(labels[index])}</title></polyline>'
        )
        if len(times) == 1:
            parts.append(f'<circle cx="{x(times[0]):.1f}" cy="{y(scores[0, index]):.1f}" r="3" fill="{colour}"/>')
    parts.append("</svg>")
    legend = "".join(f'<span><i style="background:{colour}"></i>{_text(labels[i])}</span>' for colour, i in zip(COLOURS, chosen))
    more = f" (the {len(chosen)} most probable of {len(labels)} labels)" if len(labels) > len(chosen) else ""
    return "".join(parts) + f'<div class="legend">{legend}<span class="muted">{_text(more)}</span></div>'


def _face_html(face: ReportFace, labels: Sequence[str], thresholds: np.ndarray) -> str:
    parts = ['<div class="face">']
    if face.crop is not None:
        parts.append(_figure(face.crop, "what the model saw", "crop"))
    parts.append(f"<div><h3>{_text(face.title)}</h3>")
    if face.details:
        parts.append(f'<div class="muted">{_text(face.details)}</div>')
    parts.append(_score_rows(labels, face.scores, thresholds))
    parts.append("</div>")
    if face.overlays:
        parts.append(
            '<div class="overlays">' + "".join(_figure(image, f"Grad-CAM: {label}", "overlay") for label, image in face.overlays) + "</div>"
        )
    if face.timeline is not None:
        parts.append(f'<div class="timeline">{timeline_svg(*face.timeline, labels, thresholds)}</div>')
    parts.append("</div>")
    return "".join(parts)


def render_report(inputs: Sequence[ReportInput], thresholds: Thresholds, *, title: str = "mlcdf report", source: str = "") -> str:
    """The report page as text, a label predicted where it reaches its threshold (``thresholds`` names
    the labels too); ``source`` (the run or bundle) is named under the title."""
    labels = thresholds.labels
    ordered = sorted(inputs, key=lambda item: -item.suspicion)
    summary = []
    sections = []
    for number, item in enumerate(ordered):
        anchor = f"input-{number}"
        faces = sorted(item.faces, key=lambda face: -float(np.max(face.scores)) if face.scores.size else 1.0)
        top = f"{item.suspicion:.3f}" if item.suspicion >= 0 else "-"
        summary.append(
            f'<tr><td class="name"><a href="#{anchor}">{_text(item.name)}</a></td><td>{_text(item.kind)}</td>'
            f"<td>{len(faces)}</td><td>{top}</td><td>{_text(item.note)}</td></tr>"
        )
        body = [
            f'<section class="input" id="{anchor}"><h2>{_text(item.name)}</h2><div class="muted">{_text(item.kind)}, {len(faces)} face(s)</div>'
        ]
        if item.note:
            body.append(f'<p class="note">{_text(item.note)}</p>')
        body.extend(_face_html(face, labels, thresholds.values) for face in faces)
        body.append("</section>")
        sections.append("".join(body))
    head = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">"
        f'<meta name="generator" content="{GENERATOR}"><meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(title)}</title><style>{_STYLE}</style></head><body>"
    )
    intro = (
        f'<h1>{_text(title)}</h1><p class="muted">{_text(source)}{" - " if source else ""}{len(ordered)} input(s), '
        f"{len(labels)} labels, threshold {_text(str(thresholds))}; most suspicious first (highest label probability).</p>"
    )
    table = (
        '<table class="summary"><tr><th>input</th><th>kind</th><th>faces</th><th>max probability</th><th>note</th></tr>'
        + "".join(summary)
        + "</table>"
    )
    return head + intro + table + "".join(sections) + "</body></html>\n"


def is_report_file(path: Path) -> bool:
    """``path`` starts like a page :func:`write_report` wrote (its generator marker)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return f'<meta name="generator" content="{GENERATOR}">' in handle.read(4096)
    except OSError:
        return False


def check_report_replaceable(path: str | Path, command: str) -> None:
    """Raise unless ``path`` is absent, empty or an earlier report (call before the work starts)."""
    check_file_replaceable(path, command=command, is_own=is_report_file)


def write_report(path: str | Path, inputs: Sequence[ReportInput], thresholds: Thresholds, **kwargs: str) -> None:
    """Write :func:`render_report`'s page to ``path`` atomically (text that is not UTF-8, e.g. a file name's
    stray bytes, as ``\\xNN`` escapes)."""
    page = render_report(inputs, thresholds, **kwargs)
    with atomic_open(path, "w", encoding="utf-8", errors="backslashreplace") as handle:
        handle.write(page)


def gradcam_overlays(
    model: BackboneClassifier, info: RunInfo, crop: np.ndarray, scores: np.ndarray, thresholds: Thresholds, device: torch.device
) -> tuple[tuple[str, np.ndarray], ...]:
    """Grad-CAM panels of a face crop (RGB at the model's input size) for its predicted labels, the
    :data:`MAX_OVERLAYS` most probable; none for a sequence model (its maps are per step, ``mlcdf explain``)."""
    import torch

    from mlcdf.data.dataset import no_augmentation, to_model_input
    from mlcdf.inference.explain import grad_cam, overlay

    hits = thresholds.hits(scores)
    chosen = [int(i) for i in np.argsort(-scores, kind="stable") if hits[i]][:MAX_OVERLAYS]
    if not chosen:
        return ()
    batch = {"images": torch.from_numpy(np.array(crop)[None]), **no_augmentation(1)}
    x = to_model_input(batch, device, info.input_mean, info.input_std)
    try:
        maps, _ = grad_cam(model, x, chosen)
    except MlcdfError:  # a sequence model has no logit per label; mlcdf explain draws its maps per step
        return ()
    height, width = crop.shape[:2]
    # explain's overlay captions below the image; the page captions in HTML, so the strip is cut off.
    return tuple((info.labels[index], np.asarray(overlay(crop, heat, "").crop((0, 0, width, height)))) for index, heat in zip(chosen, maps))
