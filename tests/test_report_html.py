"""The HTML report: self-contained, escaped, sorted by suspicion, readable at 40 labels, and rendered by a real browser."""

from __future__ import annotations

import re

import numpy as np
import pytest
from headless import colour_area, render

from mlcdf.errors import MlcdfError
from mlcdf.inference.report_html import (
    COLOURS,
    MAX_CHART_LABELS,
    ReportFace,
    ReportInput,
    check_report_replaceable,
    render_report,
    timeline_svg,
    write_report,
)
from mlcdf.inference.thresholds import Thresholds

LABELS = tuple(f"label_{i:02d}" for i in range(40))
MAGENTA, CYAN = (255, 0, 255), (0, 255, 255)
AT_HALF = Thresholds.uniform(LABELS, 0.5)
HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>.png'


def flat(colour: tuple[int, int, int], size: int = 32) -> np.ndarray:
    return np.full((size, size, 3), colour, dtype=np.uint8)


def fake_inputs() -> list[ReportInput]:
    rng = np.random.default_rng(0)
    calm = rng.uniform(0, 0.3, len(LABELS))
    hot = calm.copy()
    hot[[3, 17, 39]] = (0.97, 0.8, 0.6)
    times = np.linspace(0, 4, 9)
    track_scores = np.clip(rng.uniform(0, 0.4, (9, len(LABELS))) + np.linspace(0, 0.5, 9)[:, None] * (np.arange(40) == 5), 0, 1)
    return [
        ReportInput("calm.png", "image", (ReportFace("face 1", calm, crop=flat(CYAN)),)),
        ReportInput("nothing.jpg", "image", (), note="no face found"),
        ReportInput(
            HOSTILE,
            "image",
            (ReportFace("face 1", hot, crop=flat(MAGENTA), overlays=(("label_03", flat((0, 0, 255))),), details="box 1,2,3,4"),),
        ),
        ReportInput(
            "clip.mp4",
            "video",
            (ReportFace("track 0, 0.0-4.0 s, 9 frames", track_scores.mean(0), crop=flat(CYAN), timeline=(times, track_scores)),),
        ),
    ]


def test_report_is_sorted_by_suspicion_and_escapes_every_name():
    page = render_report(fake_inputs(), AT_HALF, source=HOSTILE)
    assert "<script" not in page and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3  # title of the section, summary row, source line
    order = [m for m in re.findall(r"<h2>(.*?)</h2>", page)]
    assert order == [
        "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img src=x onerror=alert(2)&gt;.png",
        "clip.mp4",
        "calm.png",
        "nothing.jpg",
    ]
    # Nothing is fetched: every image is inline, and the page forbids the network itself.
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "default-src 'none'" in page


def test_forty_labels_show_the_predicted_ones_first_and_every_label_on_request():
    page = render_report(fake_inputs(), AT_HALF)
    section = page[page.index('id="input-0"') : page.index('id="input-1"')]
    assert "<b>predicted:</b> label_03, label_17, label_39</div>" in section
    visible, folded = section.split("<details>")
    assert visible.count('class="row hit"') == 3 and visible.count('class="row"') == 3  # predicted + 3 more
    assert folded.count('class="row') == 40


def test_per_label_thresholds_decide_the_verdict_and_are_named():
    values = np.full(len(LABELS), 0.5)
    values[[3, 17]] = (0.99, 0.2)  # label_03 (0.97) is no longer predicted; label_17 (0.8) still is
    values[22] = 0.01  # a calm label (scores below 0.3) now is
    tuned = Thresholds(LABELS, values, "tuned per label for F1 on val")
    page = render_report(fake_inputs(), tuned)
    section = page[page.index('id="input-0"') : page.index('id="input-1"')]
    assert "<b>predicted:</b> label_17, label_39, label_22</div>" in section
    assert "threshold tuned per label for F1 on val;" in page


def test_timeline_draws_each_labels_threshold_when_they_differ():
    times, scores = np.array([0.0, 1.0]), np.zeros((2, 40))
    scores[:, 7], scores[:, 9] = 1.0, 0.9
    levels = np.full(40, 0.5)
    levels[[7, 9]] = (0.0, 1.0)
    dashed = re.findall(
        r'<line [^>]*y1="([0-9.]+)"[^>]*stroke="([^"]+)" stroke-dasharray', timeline_svg(times, scores, LABELS, levels, height=130)
    )
    assert dashed[:2] == [("108.0", COLOURS[0]), ("8.0", COLOURS[1])] and len(dashed) == MAX_CHART_LABELS
    assert re.findall(r'<line [^>]*y1="([0-9.]+)"[^>]*stroke-dasharray', timeline_svg(times, scores, LABELS, 0.5, height=130)) == ["58.0"]


def test_timeline_draws_the_most_probable_labels_over_time():
    times = np.array([0.0, 1.0, 2.0])
    scores = np.zeros((3, 40))
    scores[:, 7] = (0.0, 0.5, 1.0)
    svg = timeline_svg(times, scores, LABELS, 0.5, width=136, height=130)
    lines = re.findall(r'<polyline[^>]*points="([^"]*)"><title>([^<]*)</title>', svg)
    assert len(lines) == MAX_CHART_LABELS and lines[0][1] == "label_07"
    # x from 36 to 128 over 0..2 s, y from 108 (p=0) to 8 (p=1).
    assert lines[0][0] == "36.0,108.0 82.0,58.0 128.0,8.0"
    assert "the 8 most probable of 40 labels" in svg


def test_write_report_is_atomic_and_replaces_only_its_own(tmp_path):
    report = tmp_path / "report.html"
    write_report(report, fake_inputs(), AT_HALF)
    check_report_replaceable(report, "mlcdf predict")  # its own earlier page: fine
    foreign = tmp_path / "notes.html"
    foreign.write_text("<html>mine</html>")
    with pytest.raises(MlcdfError, match="notes.html: exists and was not written by 'mlcdf predict'"):
        check_report_replaceable(foreign, "mlcdf predict")
    # A file name's stray bytes (surrogate escapes) are written as escapes, not a UnicodeEncodeError.
    write_report(report, [ReportInput("caf\udce9.png", "image", ())], AT_HALF)
    assert "caf\\udce9.png" in report.read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.html", "report.html"]  # no temporaries left


@pytest.mark.slow
def test_report_renders_in_headless_chromium_without_console_errors(tmp_path):
    report = tmp_path / "report.html"
    write_report(report, fake_inputs(), AT_HALF, source="runs/toy")
    page = render(report.as_uri(), tmp_path / "shot.png")
    assert page.console == []
    # The crops are shown: two cyan crops of 160 x 160 CSS pixels and one magenta (borders excluded).
    assert colour_area(page.screenshot, MAGENTA) >= 150 * 150
    assert colour_area(page.screenshot, CYAN) >= 150 * 150
    assert page.dom.count("<svg") == 1 and "no face found" in page.dom
