"""The HTTP service of ``mlcdf serve``: a Starlette app around one :class:`~mlcdf.inference.media.MediaPredictor`.

Routes:

- ``GET /``: an upload page (a plain form, no script) whose answer is the HTML report of ``mlcdf predict --html``;
- ``POST /predict``: multipart field ``file`` (an image or a video) -> JSON ``{file, kind, labels, threshold,
  faces, note, warnings}``, ``faces`` holding the rows of :class:`~mlcdf.inference.media.MediaResult`,
  ``threshold`` the number applied or each label's (tuned thresholds);
- ``POST /report``: the same upload -> the HTML report;
- ``GET /health``: ``{"status": "ok", "pending": N, ...}`` once the model is loaded.

Safety: the model is loaded once and used by one worker thread only (a single-thread executor), so
concurrent requests queue for it while the event loop stays free to accept and read uploads. An upload
is bounded in bytes (:data:`DEFAULT_MAX_UPLOAD_BYTES`; over it, 413 before the rest is read) and in
pixels (the pixel limit of :mod:`mlcdf.data.images`, also for video frames); at most
:data:`DEFAULT_MAX_PENDING` uploads are taken in at once (being read, waiting for the model or being
scored), so the disk holds at most that many uploads and a flood gets 503 with ``Retry-After``, not a
queue without end. It is written to a folder the
server made for itself, under a random name: the client's file name is shown back, never used as a path.
A bad upload is a 4xx with ``{"error": message}``, never a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlcdf.data.images import IMAGE_EXTENSIONS, pixel_limit
from mlcdf.errors import MlcdfError
from mlcdf.inference.media import MediaPredictor, MediaResult
from mlcdf.inference.report_html import render_report
from mlcdf.inference.video import VIDEO_EXTENSIONS

SERVE_INSTALL_HINT = "mlcdf serve needs Starlette and Uvicorn: pip install 'mlcdf[serve]'"
#: Largest upload accepted, in bytes (``--max-upload-mb``).
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
#: Uploads taken in at once (``--max-pending``); one more is answered 503.
DEFAULT_MAX_PENDING = 8
#: A client's file name is shown back at most this long.
MAX_NAME_CHARS = 200
#: The form field holding the upload.
UPLOAD_FIELD = "file"


class _TooLarge(Exception):
    pass


def _limited(receive: Callable[[], Awaitable[MutableMapping[str, Any]]], limit: int) -> Callable[[], Awaitable[MutableMapping[str, Any]]]:
    """``receive`` that stops (raises :class:`_TooLarge`) once the request body passes ``limit`` bytes."""
    received = 0

    async def wrapped() -> MutableMapping[str, Any]:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _TooLarge
        return message

    return wrapped


def display_name(name: str | None) -> str:
    """A client's file name as text to show: its last path part, printable, bounded (never used as a path)."""
    text = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(ch if ch.isprintable() else "?" for ch in text)[:MAX_NAME_CHARS]
    return text or "upload"


def _suffix(name: str) -> str:
    """The upload's extension when it is one mlcdf reads (it decides image or video), else none."""
    suffix = Path(name).suffix.lower()
    return suffix if suffix in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS else ""


def upload_page(predictor: MediaPredictor, max_upload_bytes: int) -> str:
    labels = ", ".join(predictor.labels)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; form-action 'self'\">"
        "<title>mlcdf</title><style>body{font:15px/1.5 system-ui,sans-serif;margin:2em;max-width:50em}"
        "form{border:1px solid #ccc;border-radius:6px;padding:1em}</style></head><body>"
        "<h1>Which manipulations were applied to this face?</h1>"
        f"<p>Model: {html.escape(predictor.info.source)} ({len(predictor.labels)} labels: {html.escape(labels)}).</p>"
        '<form action="report" method="post" enctype="multipart/form-data">'
        f'<p><input type="file" name="{UPLOAD_FIELD}" accept="image/*,video/*" required></p>'
        '<p><button type="submit">Analyse</button></p></form>'
        f"<p>An image or a video up to {max_upload_bytes / 1024 / 1024:.0f} MB and {pixel_limit():,} pixels a picture. "
        "The answer is a report page; the same as JSON: <code>curl -F file=@face.jpg http://HOST:PORT/predict</code>.</p>"
        "</body></html>"
    )


def create_app(
    predictor: MediaPredictor,
    *,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pending: int = DEFAULT_MAX_PENDING,
    video_options: dict[str, Any] | None = None,
) -> Any:
    """The Starlette application serving ``predictor``.

    Args:
        max_upload_bytes: the largest request body accepted (413 above it).
        max_pending: uploads taken in at once, from reading to answer (503 above it).
        video_options: ``frames`` / ``every`` for videos (:meth:`MediaPredictor.predict_video`).

    Raises:
        MlcdfError: Starlette or python-multipart is not installed.
    """
    try:
        import python_multipart  # noqa: F401  (Starlette parses forms with it, and fails only on the first upload without it)
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, Response
        from starlette.routing import Route
    except ImportError:
        raise MlcdfError(SERVE_INSTALL_HINT) from None

    # One thread owns the model: requests queue for it, the event loop does not wait.
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlcdf-model")
    uploads = Path(tempfile.mkdtemp(prefix="mlcdf-serve-"))
    # Uploads taken in and not yet answered; changed on the event loop only, so no lock.
    pending = 0

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def predict_saved(path: Path, name: str) -> MediaResult:
        try:
            return predictor.predict_file(path, name, **(video_options or {}))
        finally:
            path.unlink(missing_ok=True)

    async def analyse(request: Request) -> MediaResult | JSONResponse:
        nonlocal pending
        if pending >= max_pending:
            return error(503, f"busy: {max_pending} uploads are being analysed; retry shortly", {"Retry-After": "1"})
        pending += 1
        try:
            return await _analyse(request)
        finally:
            pending -= 1

    async def _analyse(request: Request) -> MediaResult | JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_upload_bytes:
            return error(413, f"upload over the limit of {max_upload_bytes:,} bytes")
        limited = Request(request.scope, _limited(request.receive, max_upload_bytes))
        try:
            form = await limited.form(max_files=1, max_fields=4)
        except _TooLarge:
            return error(413, f"upload over the limit of {max_upload_bytes:,} bytes")
        except HTTPException as exc:
            return error(400, f"not a readable multipart form ({exc.detail})")
        try:
            upload = form.get(UPLOAD_FIELD)
            if upload is None or isinstance(upload, str):
                return error(400, f"no file: send the image or video as multipart field {UPLOAD_FIELD!r}")
            name = display_name(upload.filename)
            path = uploads / f"{uuid.uuid4().hex}{_suffix(name)}"
            try:
                with open(path, "wb") as handle:
                    await asyncio.get_running_loop().run_in_executor(None, shutil.copyfileobj, upload.file, handle)
            except BaseException:  # a full disk, a cancelled request: no half-written upload stays behind
                path.unlink(missing_ok=True)
                raise
        finally:
            await form.close()
        try:
            return await asyncio.get_running_loop().run_in_executor(model_thread, predict_saved, path, name)
        except (MlcdfError, OSError, ValueError) as failure:
            return error(422, str(failure).splitlines()[0] if str(failure) else type(failure).__name__)

    async def predict(request: Request) -> Response:
        result = await analyse(request)
        if isinstance(result, JSONResponse):
            return result
        return JSONResponse(
            {
                "file": result.name,
                "kind": result.kind,
                "labels": list(predictor.labels),
                "threshold": predictor.thresholds.to_json(),
                "faces": result.rows,
                "note": result.note,
                "warnings": list(result.warnings),
            }
        )

    async def report(request: Request) -> Response:
        result = await analyse(request)
        if isinstance(result, JSONResponse):
            return result
        page = render_report([result.report], predictor.thresholds, title=f"mlcdf: {result.name}", source=predictor.info.source)
        return HTMLResponse(page)

    async def index(request: Request) -> Response:
        return HTMLResponse(upload_page(predictor, max_upload_bytes))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "labels": list(predictor.labels), "source": predictor.info.source, "pending": pending})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 400
        detail = exc.detail if isinstance(exc, HTTPException) else str(exc)
        return error(status, str(detail))

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            model_thread.shutdown(wait=True)
            shutil.rmtree(uploads, ignore_errors=True)

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/predict", predict, methods=["POST"]),
            Route("/report", report, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
