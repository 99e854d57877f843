"""The ``mlcdf`` application: wires one sub-module per stage and maps user errors to exit code 2."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from mlcdf import __version__
from mlcdf.cli import build_graph, evaluate, models, perturb, predict, prepare, report, reproduce, serve, study, synth, train
from mlcdf.cli._console import err
from mlcdf.errors import ENVIRONMENT_ERRNOS, INTERRUPTED_MESSAGE, MlcdfError

if TYPE_CHECKING:
    # The class of the contexts Typer passes: its own copy of click's Context (Typer vendors click, and
    # exports the class under no public name; typer.Context is a subclass made for command callbacks).
    from typer._click import Context

DEBUG_ENV = "MLCDF_DEBUG"


class _MlcdfGroup(TyperGroup):
    """Turns :class:`~mlcdf.errors.MlcdfError`, and ``OSError``s of the environment (read-only or full
    disk, a file where a folder should be: :data:`~mlcdf.errors.ENVIRONMENT_ERRNOS`), into one line on
    stderr and exit code 2, for every command.

    Done at the group, not in ``main()``, so that ``typer.testing.CliRunner`` sees the same exit codes
    as a user. ``MLCDF_DEBUG=1`` re-raises with the full traceback.
    """

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except (MlcdfError, OSError) as error:
            message = _user_error_message(error)
            if message is None or os.environ.get(DEBUG_ENV):
                raise
            # Escaped: a message is plain text; "pip install 'mlcdf[csv]'" must not lose "[csv]" as rich markup.
            err.print(f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            if os.environ.get(DEBUG_ENV):
                raise
            err.print(INTERRUPTED_MESSAGE, highlight=False)
            raise typer.Exit(code=130) from None


def _user_error_message(error: Exception) -> str | None:
    """The one line for a user's error, or ``None`` for a bug (which keeps its traceback)."""
    if isinstance(error, MlcdfError):
        return str(error)
    if isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS:
        return f"{error.filename}: {error.strerror}" if error.filename else error.strerror
    return None


app = typer.Typer(
    name="mlcdf",
    cls=_MlcdfGroup,
    help="Multi-label deepfake classification: which manipulations were applied to a face image.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    rich_markup_mode="markdown",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlcdf {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Multi-label deepfake classification: which manipulations were applied to a face image.

    Pipeline: synth | prepare -> build-graph -> train -> evaluate -> report. Set MLCDF_DEBUG=1 for
    tracebacks.
    """


for _module in (synth, prepare, build_graph, models, train, evaluate, report, reproduce, predict, serve, perturb, study):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
