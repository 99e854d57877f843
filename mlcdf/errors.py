"""User-facing errors.

Library code raises these; the CLI turns them into a one-line message on stderr and exit code 2
(a user error, like Click's usage errors). Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
from pathlib import Path

#: ``OSError`` numbers that mean the place, not the program, is at fault: read-only, no permission, disk or
#: quota full, over the file size limit, a file where a folder should be (or the reverse). The CLI reports
#: them in one line naming the path, like the errors below.
ENVIRONMENT_ERRNOS = frozenset(
    {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
)

#: What an interrupted command (Ctrl-C, a Slurm job stopped) says: every output is written atomically and the
#: runner resumes from the run folders, so the same command goes on where it stopped.
INTERRUPTED_MESSAGE = "interrupted; rerun the same command to resume"


class MlcdfError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class SchemaError(MlcdfError):
    """A file does not follow its documented format; names the file and, where known, the line."""

    def __init__(self, path: str | Path, message: str, *, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.detail = message
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {message}")


class MissingArtifactError(MlcdfError):
    """A file or folder an earlier stage should have written is not there.

    ``what`` replaces "not found" when something else is at the place (a folder without the file in it).
    """

    def __init__(self, path: str | Path, hint: str = "", *, what: str = "not found") -> None:
        self.path = Path(path)
        message = f"{path}: {what}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line user errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
