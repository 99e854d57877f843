"""``mlcdf serve``'s bound on uploads taken in at once, in process: a model that holds until told lets the
test fill the queue exactly (the real server and client are in test_serve.py)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("python_multipart")

from mlcdf.cli.serve import serve_command  # noqa: E402
from mlcdf.inference.media import MediaResult  # noqa: E402
from mlcdf.inference.report_html import ReportInput  # noqa: E402
from mlcdf.inference.thresholds import Thresholds  # noqa: E402
from mlcdf.serve.app import DEFAULT_MAX_PENDING, create_app  # noqa: E402

LABELS = ("nose", "eye")


class HeldModel:
    """Stands in for a MediaPredictor: each upload waits in the model thread until ``release`` is set."""

    labels = LABELS
    info = SimpleNamespace(source="held")
    thresholds = Thresholds.uniform(LABELS, 0.5)

    def __init__(self) -> None:
        self.release = threading.Event()
        self.seen: list[bytes] = []

    def predict_file(self, path: Path, name: str, **options) -> MediaResult:
        self.seen.append(Path(path).read_bytes())
        assert self.release.wait(timeout=30)
        return MediaResult(name, "image", [], [], ReportInput(name, "image", ()))


def test_uploads_past_max_pending_get_503_and_the_rest_are_answered():
    model = HeldModel()
    app = create_app(model, max_pending=3)  # type: ignore[arg-type]

    async def scenario() -> tuple[list[int], httpx.Response, int, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:

            async def upload(number: int) -> httpx.Response:
                return await client.post("/predict", files={"file": (f"{number}.png", bytes([number]) * 10)})

            held = [asyncio.create_task(upload(number)) for number in range(3)]
            for _ in range(600):  # until the three are taken in (one at the model, two waiting for it)
                pending = (await client.get("/health")).json()["pending"]
                if pending == 3:
                    break
                await asyncio.sleep(0.05)
            refused = await upload(9)
            model.release.set()
            answers = await asyncio.gather(*held)
            after = (await client.get("/health")).json()["pending"]
            again = (await upload(4)).status_code
        return [answer.status_code for answer in answers], refused, after, again

    statuses, refused, after, again = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"] == "busy: 3 uploads are being analysed; retry shortly"
    assert statuses == [200, 200, 200] and after == 0 and again == 200
    # The refused upload never reached the model, nor the disk.
    assert sorted(model.seen) == [bytes([n]) * 10 for n in (0, 1, 2, 4)]


def test_the_command_default_is_the_apps():
    import inspect

    assert inspect.signature(serve_command).parameters["max_pending"].default == DEFAULT_MAX_PENDING
