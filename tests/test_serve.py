"""``mlcdf serve`` as a real server process (uvicorn on a free port) and a real HTTP client (httpx)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from headless import colour_area, render
from PIL import Image

httpx = pytest.importorskip("httpx")
av = pytest.importorskip("av")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

LOOPBACK = "127.0.0.1"
MAX_UPLOAD_MB = 1
#: Starting Python, torch and the model on a busy machine.
STARTUP_S = 240


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest's guard, except for this machine's loopback address: these tests talk to the server they started."""
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and address[0] == LOOPBACK:
            return real_connect(self, address)
        raise OSError("network access in a test")

    def getaddrinfo(host, *args, **kwargs):
        if host == LOOPBACK:
            return real_getaddrinfo(host, *args, **kwargs)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, url: str, process: subprocess.Popen, temp: Path) -> None:
        self.url, self.process, self.temp = url, process, temp

    def post(self, route: str, content: bytes, filename: str = "face.png", **kwargs) -> httpx.Response:
        return httpx.post(f"{self.url}{route}", files={"file": (filename, content)}, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def server(toy_run, tmp_path_factory):
    temp = tmp_path_factory.mktemp("server_tmp")
    port = free_port()
    env = {**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mlcdf", "serve", str(toy_run), "--port", str(port), "--device", "cpu"]
    # Room for the concurrency test's 14 requests at once (the bound itself: test_serve_limits.py).
    command += ["--max-upload-mb", str(MAX_UPLOAD_MB), "--frames", "6", "--max-pending", "32"]
    log = temp.parent / "server.log"
    with open(log, "w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the server did not start: {log.read_text()[-3000:]}")
        time.sleep(0.5)
    yield Server(url, process, temp)
    process.terminate()
    process.wait(timeout=60)
    # The server's own upload folder is gone with it.
    assert not list(temp.glob("mlcdf-serve-*"))


def png_bytes(seed: int | None = None, colour: tuple[int, int, int] = (0, 0, 0)) -> bytes:
    """A 50 x 40 PNG: noise from ``seed``, else flat ``colour``."""
    if seed is None:
        pixels = np.full((40, 50, 3), colour, dtype=np.uint8)
    else:
        pixels = np.random.default_rng(seed).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def video_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(12):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def test_predict_answers_json_for_an_image_and_a_video(server, tmp_path):
    answer = server.post("/predict", png_bytes(0))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["labels"] == ["nose", "eye", "eyebrow", "lip", "hair"] and body["kind"] == "image"
    (face,) = body["faces"]
    assert face["box"] == [0.0, 0.0, 50.0, 40.0] and set(face["scores"]) == set(body["labels"])
    assert body["threshold"] == 0.5  # auto: the toy run has no tuned thresholds
    assert face["predicted"] == [label for label, p in face["scores"].items() if p >= 0.5]
    video = server.post("/predict", video_bytes(tmp_path), filename="clip.mp4").json()
    assert video["kind"] == "video" and len(video["faces"]) == 1 and video["faces"][0]["frames"] == 6


def test_concurrent_requests_answer_as_sequential_ones(server, tmp_path):
    uploads = [(png_bytes(seed), f"{seed}.png") for seed in range(6)] + [(video_bytes(tmp_path), "clip.mp4")]
    sequential = [server.post("/predict", content, name).json() for content, name in uploads]
    with ThreadPoolExecutor(max_workers=len(uploads) * 2) as pool:
        concurrent = list(pool.map(lambda item: server.post("/predict", *item).json(), uploads * 2))
    assert concurrent == sequential * 2
    assert len({answer["faces"][0]["fake_score"] for answer in sequential}) == len(uploads)  # the answers differ


@pytest.mark.parametrize(
    ("content", "name", "status", "message"),
    [
        (b"not an image", "face.png", 422, "face.png: cannot read the image"),
        (b"\x00" * 1000, "clip.mp4", 422, "clip.mp4: not a readable video"),
        (b"", "empty.jpg", 422, "empty.jpg: cannot read the image"),
    ],
)
def test_a_bad_upload_is_a_4xx_with_a_message(server, content, name, status, message):
    answer = server.post("/predict", content, name)
    assert answer.status_code == status and answer.json()["error"].startswith(message)
    # The server's own folders stay private.
    assert "mlcdf-serve" not in answer.text and str(server.temp) not in answer.text


def test_requests_without_an_upload_are_400(server):
    assert httpx.post(f"{server.url}/predict", data={"x": "1"}, timeout=30).status_code == 400
    answer = httpx.post(
        f"{server.url}/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}, timeout=30
    )
    assert answer.status_code == 400 and "error" in answer.json()


def test_a_huge_upload_is_413(server):
    huge = os.urandom(3 * MAX_UPLOAD_MB * 1024 * 1024)
    answer = server.post("/predict", huge, "huge.png")
    assert answer.status_code == 413 and "over the limit" in answer.json()["error"]

    # Without a Content-Length (chunked), the body is cut off as it arrives.
    def chunks():
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="huge.png"\r\n\r\n'
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    answer = httpx.post(f"{server.url}/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"}, timeout=60)
    assert answer.status_code == 413
    assert server.post("/predict", png_bytes(1)).status_code == 200  # and the server goes on


def test_a_path_escaping_file_name_is_only_a_name(server, tmp_path):
    target = tmp_path / "escaped.png"
    hostile = "/".join([".."] * 12) + str(target)
    answer = server.post("/predict", png_bytes(2), hostile)
    assert answer.status_code == 200 and answer.json()["file"] == "escaped.png"
    assert not target.exists()
    # Uploads are deleted once scored: the server's folder is empty between requests.
    (folder,) = server.temp.glob("mlcdf-serve-*")
    assert list(folder.iterdir()) == []


def test_pages_load_in_headless_chromium(server, tmp_path):
    page = render(f"{server.url}/", tmp_path / "index.png", height=600)
    assert page.console == [] and 'type="file"' in page.dom
    report = server.post("/report", png_bytes(colour=(255, 0, 0)), "<b onclick=alert(1)>red.png")
    assert report.status_code == 200 and "<h2>&lt;b onclick=alert(1)&gt;red.png</h2>" in report.text
    saved = tmp_path / "report.html"
    saved.write_text(report.text, encoding="utf-8")
    shown = render(saved.as_uri(), tmp_path / "report.png")
    assert shown.console == []
    assert colour_area(shown.screenshot, (255, 0, 0)) >= 150 * 150  # the crop, 160 px wide
