"""``mlcdf serve``: a trained run or bundle as a small HTTP service on this machine."""

from __future__ import annotations

from typing import Annotated

import typer

from mlcdf.cli._console import err
from mlcdf.cli._options import (
    Checkpoint,
    CheckpointOpt,
    Device,
    DeviceOpt,
    EveryOpt,
    FramesOpt,
    MaxPixelsOpt,
    RunArg,
    ThresholdOpt,
)
from mlcdf.cli.predict import FaceAlignment, Faces
from mlcdf.errors import MlcdfError

#: The largest --max-upload-mb: a request body is written to disk, so the bound keeps a client from filling it.
MAX_UPLOAD_MB = 4096
#: The largest --max-pending: the disk holds up to that many uploads at once.
MAX_PENDING = 256


def serve_command(
    run: RunArg,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; the default answers this machine only.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    threshold: ThresholdOpt = "auto",
    max_upload_mb: Annotated[
        int, typer.Option("--max-upload-mb", min=1, max=MAX_UPLOAD_MB, help="Largest upload in MiB; larger ones get 413.")
    ] = 100,
    max_pending: Annotated[
        int,
        typer.Option(
            "--max-pending",
            min=1,
            max=MAX_PENDING,
            help="Uploads taken in at once (being read, waiting for the model or scored); one more gets 503. "
            "The disk holds up to this many times --max-upload-mb.",
        ),
    ] = 8,
    frames: FramesOpt = None,
    every: EveryOpt = None,
    faces: Annotated[
        Faces,
        typer.Option("--faces", help="As mlcdf predict's: auto aligns faces when the run records an alignment, else scores whole images."),
    ] = Faces.auto,
    alignment: Annotated[
        FaceAlignment | None, typer.Option("--alignment", help="Align faces this way instead of the run's (FFHQ's for a run without one).")
    ] = None,
    explain: Annotated[
        bool, typer.Option("--explain/--no-explain", help="Grad-CAM panels of the predicted labels in /report pages.")
    ] = True,
    checkpoint: CheckpointOpt = Checkpoint.best,
    device: DeviceOpt = Device.auto,
    max_pixels: MaxPixelsOpt = None,
) -> None:
    """Serve a run (folder or bundle) over HTTP: POST /predict (an image or video) -> JSON; GET / an upload page.

    The model is loaded once. Uploads are bounded by --max-upload-mb and --max-pixels, and in number by
    --max-pending (more get 503); a bad upload gets a 4xx answer with a JSON message. Stop with Ctrl+C.

    Example:

        mlcdf serve r101-asl.mlcdf --port 8000

        curl -F file=@face.jpg http://127.0.0.1:8000/predict
    """
    from mlcdf.inference.video import check_sampling

    check_sampling(frames, every)
    try:
        import uvicorn
    except ImportError:
        from mlcdf.serve.app import SERVE_INSTALL_HINT

        raise MlcdfError(SERVE_INSTALL_HINT) from None
    from mlcdf.inference.media import MediaPredictor
    from mlcdf.serve.app import create_app

    predictor = MediaPredictor.load(
        run,
        checkpoint=checkpoint.value,
        device=device.value,
        threshold=threshold,
        explain=explain,
        mode=faces.value,
        alignment=None if alignment is None else alignment.value,
    )
    app = create_app(
        predictor,
        max_upload_bytes=max_upload_mb * 1024 * 1024,
        max_pending=max_pending,
        video_options={"frames": frames, "every": every},
    )
    err.print(
        f"serving {predictor.info.source} ({len(predictor.labels)} labels, threshold {predictor.thresholds}) on http://{host}:{port}/",
        highlight=False,
        markup=False,
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
