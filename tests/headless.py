"""Headless Chromium (Debian's ``chromium``) for the tests of pages: render a URL, collect console messages, screenshot it."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: Chromium logs each console message (errors, warnings, Content-Security-Policy violations) as one stderr line with this tag.
CONSOLE_TAG = ":CONSOLE"


@dataclass(frozen=True)
class Rendered:
    console: list[str]
    screenshot: np.ndarray
    dom: str


def chromium_or_skip() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless page checks need Chromium (apt-get install chromium); .ci/run installs it")


def render(url: str, screenshot: Path, *, width: int = 1200, height: int = 1600) -> Rendered:
    """Load ``url`` in a fresh headless Chromium: its console messages, an RGB screenshot and the DOM."""
    binary = chromium_or_skip()
    profile = screenshot.parent / f"{screenshot.stem}-profile"
    common = [binary, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run", f"--user-data-dir={profile}", "--hide-scrollbars"]
    shot = subprocess.run(
        [*common, "--enable-logging=stderr", "--v=0", f"--window-size={width},{height}", f"--screenshot={screenshot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and dom.returncode == 0, shot.stderr[-2000:] + dom.stderr[-2000:]
    with Image.open(screenshot) as image:
        pixels = np.asarray(image.convert("RGB"))
    return Rendered([line for line in shot.stderr.splitlines() if CONSOLE_TAG in line], pixels, dom.stdout)


def colour_area(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels of a screenshot are ``colour`` (within ``tolerance`` per channel)."""
    return int((np.abs(pixels.astype(int) - np.array(colour)).max(axis=2) <= tolerance).sum())
