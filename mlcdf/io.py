"""Atomic file output: every artifact is written to a temporary name and renamed into place.

A reader never sees a half-written file, and a failure leaves the previous version (or nothing) behind.

Three rules keep outputs from harming anything else:

- A folder output (:func:`atomic_dir`) replaces only an empty folder or a previous output of the same
  command, recognised by its own marker (a prepared subset's ``meta.json``, an evaluation's
  ``metrics.json``, a synthetic subset's ``synth.json``); anything else is refused, untouched.
  :func:`check_output_apart` refuses an output that is, contains or lies inside one of the command's inputs.
  A file output is held to the same rule by :func:`check_file_replaceable`: an existing file is replaced
  only when the command recognises it as its own earlier output (PNGs carry a :func:`save_png` stamp).
- Replacing a folder takes two renames (the previous output to ``.NAME.old``, the new one to ``NAME``).
  A process killed between them leaves ``NAME`` absent and the previous output in ``.NAME.old``;
  :func:`recover_dir` (run by the next write of ``NAME`` and by readers) puts it back, or removes
  ``.NAME.old`` when the new output had already arrived. So ``NAME`` is always the previous or the new output.
- Temporaries are named ``.NAME.<pid>-<host>.<random>.tmp`` after the process writing them. A killed
  run leaves them behind; the next write of ``NAME`` in the same folder removes those whose writer is
  gone: a process of this machine that no longer exists, or, for temporaries of another machine sharing
  the folder (whose processes cannot be checked) and of older mlcdf versions, nothing in them modified
  for :data:`STALE_AFTER_S`. A temporary of a live writer (two runs writing the same output at once) is
  never touched: the one that finishes last wins, whole. (A killed writer's process id taken over by a
  new process keeps its temporary until that process ends too: erring on the side of keeping.)
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from mlcdf.errors import ENVIRONMENT_ERRNOS, MlcdfError, SchemaError, first_line

#: A temporary of another machine (or of an mlcdf before writer names) counts as stale once nothing in
#: it was modified for this long: no run goes a day without writing its output.
STALE_AFTER_S = 24 * 3600

_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-{_HOST}."


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    if os.name != "posix":  # os.kill(pid, 0) would end the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _untouched_for(path: Path, seconds: float) -> bool:
    """Nothing at or under ``path`` was modified in the last ``seconds`` (a folder's own time does not
    change when files deep inside it are written, so the whole tree is looked at)."""
    newest_allowed = time.time() - seconds
    try:
        entries = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
        return all(entry.lstat().st_mtime < newest_allowed for entry in entries)
    except OSError:  # vanished meanwhile: its writer is busy with it
        return False


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by killed writers (see the module docstring); return them."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)-([0-9a-f]{{8}})\.)?[a-z0-9_]{{8}}\.tmp")
    try:
        candidates = [entry for entry in path.parent.iterdir() if entry.name.startswith(f".{path.name}.")]
    except OSError:
        return []
    removed = []
    for entry in candidates:
        match = pattern.fullmatch(entry.name)
        if match is None:
            continue
        pid, host = match.groups()
        if pid is not None and host == _HOST:
            stale = not _process_exists(int(pid))
        else:
            stale = _untouched_for(entry, STALE_AFTER_S)
        if stale:
            _remove(entry)
            removed.append(entry)
    return removed


def _blocking_file(path: Path) -> Path | None:
    """The first of ``path``'s ancestors that exists but is not a folder (so ``path`` cannot be created)."""
    return next((parent for parent in reversed(path.parents) if parent.exists() and not parent.is_dir()), None)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MlcdfError(f"{path}: cannot create its folder, {_blocking_file(path) or path.parent} is not a folder") from None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds.

    The temporary file lives in the same folder so that ``os.replace`` is an atomic rename. Stale
    temporaries of ``path`` left by killed runs are removed first.
    """
    path = Path(path)
    tmp = None
    try:
        _make_parent(path)
        remove_stale_temporaries(path)
        fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        # A full disk names no file, a read-only folder names the temporary one: name the output instead.
        unnamed = error.filename is None or Path(error.filename).name.startswith(f".{path.name}.")
        if error.errno in ENVIRONMENT_ERRNOS and unnamed:
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """``open`` for writing, atomically (see :func:`atomic_path`)."""
    if "b" not in mode:
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_open(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")


def holds_file(name: str) -> Callable[[Path], bool]:
    """A test for :func:`atomic_dir`'s ``is_own``: the folder holds the marker file ``name``."""
    return lambda folder: (folder / name).is_file()


def json_object_with(keys: set[str]) -> Callable[[Path], bool]:
    """A test for :func:`check_file_replaceable`: the file is a JSON object with (at least) ``keys``."""

    def is_own(path: Path) -> bool:
        try:
            return keys <= set(read_json_object(path))
        except (SchemaError, OSError, UnicodeDecodeError):
            return False

    return is_own


def recover_dir(path: str | Path) -> None:
    """Finish a folder replacement that a killed process left half done (see the module docstring)."""
    path = Path(path)
    old = _old_name(path)
    if not os.path.lexists(old):
        return
    if os.path.lexists(path):
        _remove(old)  # the new output had arrived; only the clean-up was cut short
    else:
        os.replace(old, path)  # cut between the two renames: the previous output goes back


def _exists_or_can_be_created(path: Path) -> bool:
    """True when ``path`` exists; False when it does not but can be created.

    Raises:
        MlcdfError: one of ``path``'s parents is a file.
    """
    blocker = _blocking_file(path)
    if blocker is not None:
        raise MlcdfError(f"{path}: cannot create it, {blocker} is not a folder")
    return os.path.lexists(path)


def check_replaceable(path: str | Path, *, command: str, is_own: Callable[[Path], bool]) -> None:
    """Raise unless :func:`atomic_dir` may write ``path``: absent, an empty folder, or ``command``'s own output.

    Raises:
        MlcdfError: ``path`` (or one of its parents) is a file, or a folder ``command`` did not write.
    """
    path = Path(path)
    if not _exists_or_can_be_created(path):
        return
    if not path.is_dir():
        raise MlcdfError(f"{path}: exists and is not a folder; not replacing it (choose another output)")
    if any(path.iterdir()) and not is_own(path):
        raise MlcdfError(f"{path}: exists and was not written by '{command}'; not replacing it (choose another output, or empty it)")


def check_file_replaceable(path: str | Path, *, command: str, is_own: Callable[[Path], bool]) -> None:
    """Raise unless ``command`` may write the file ``path``: absent, empty, or its own earlier output.

    An empty file holds nothing to lose (as an empty folder for :func:`check_replaceable`); it is also
    what an earlier table of nothing looks like (``reproduce`` before any run was evaluated).

    Called before a command's work starts, so a refusal costs nothing; :func:`atomic_path` then replaces
    the file whole. ``is_own`` reads just enough of the file to recognise it (a header, a stamp).

    Raises:
        MlcdfError: one of ``path``'s parents is a file, ``path`` is a folder or a link, or a file that
            ``is_own`` does not recognise.
    """
    path = Path(path)
    if not _exists_or_can_be_created(path):
        return
    if path.is_symlink() or not path.is_file():
        raise MlcdfError(f"{path}: exists and is not a plain file; not replacing it (choose another output)")
    if path.stat().st_size > 0 and not is_own(path):
        raise MlcdfError(f"{path}: exists and was not written by '{command}'; not replacing it (choose another output, or remove it)")


#: The PNG text chunk that marks an image as written by mlcdf (value: the command's name).
PNG_STAMP_KEY = "Software"


def save_png(image: Any, path: str | Path, *, command: str) -> None:
    """Save a PIL image as PNG, atomically, stamped as ``command``'s output (see :func:`png_written_by`)."""
    from PIL.PngImagePlugin import PngInfo

    stamp = PngInfo()
    stamp.add_text(PNG_STAMP_KEY, command)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=stamp)


def png_written_by(command: str) -> Callable[[Path], bool]:
    """A test for :func:`check_file_replaceable`: the file is a PNG that :func:`save_png` stamped as ``command``'s."""

    def is_own(path: Path) -> bool:
        from PIL import Image

        try:
            with Image.open(path, formats=["PNG"]) as image:  # reads the chunks before the pixels only
                return bool(image.info.get(PNG_STAMP_KEY) == command)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            return False

    return is_own


#: The longest name (in UTF-8 bytes) of a file or folder that mlcdf makes from a name the user chose
#: (``prepare --name``, a plan's run and subset names). File systems allow 255 bytes; the rest is room
#: for what is added to it (``-s<seed>``, ``.outcome.json``, a temporary's ``.NAME.<pid>-<host>.<random>.tmp``).
MAX_NAME_BYTES = 128


def folder_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the name of one folder made inside an output, or ``None``.

    One plain name: not empty, ``.`` or ``..``, without a path separator or NUL (so the folder cannot land
    outside the output it is made in), at most :data:`MAX_NAME_BYTES` bytes.
    """
    if name in ("", ".", ".."):
        return "is not a folder name"
    if "/" in name or "\\" in name or "\0" in name:
        return "holds a path separator (or NUL); give one folder name, not a path"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


def check_folder_name(name: str, option: str) -> None:
    """Raise unless ``name`` (given as ``option``) can name one folder inside an output (:func:`folder_name_problem`).

    Raises:
        MlcdfError: naming the option and the name.
    """
    problem = folder_name_problem(name)
    if problem is not None:
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise MlcdfError(f"{option} {shown!r} {problem}")


def check_output_folder(path: str | Path, option: str = "--out") -> None:
    """Refuse an output folder that is a file system's root or a home folder (or the folder holding the home
    folders): a command writes subfolders into its output and may replace them, which has no place there.

    Called by every command that takes an output folder, before anything is written.

    Raises:
        MlcdfError: naming the option and the folder.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError):  # no HOME and no user entry: only the root is refused
        home = Path(resolved.anchor)
    if resolved == Path(resolved.anchor):
        what = "the root of the file system"
    elif resolved == home:
        what = "your home folder"
    elif home.parent != Path(home.anchor) and (resolved == home.parent or resolved.parent == home.parent):
        what = "a home folder" if resolved.parent == home.parent else "the folder of the home folders"
    else:
        return
    raise MlcdfError(f"{option} {path}: is {what}; give a folder of its own for the output (e.g. {Path(path) / 'mlcdf-out'})")


def check_output_apart(output: str | Path, *inputs: tuple[str, str | Path | None]) -> None:
    """Refuse an output that is, lies inside, or contains an input, since writing it could overwrite the input.

    Args:
        output: the file or folder a command writes.
        inputs: ``(name, path)`` pairs, the name as the user knows it (``"--root"``); ``None`` paths are skipped.

    Raises:
        MlcdfError: naming the output and the input it overlaps. Paths are compared resolved (symlinks
            followed), so two names for one folder are caught too.
    """
    written = Path(output).resolve()
    for name, given in inputs:
        if given is None:
            continue
        read = Path(given).resolve()
        if written == read:
            overlap = f"is {name}"
        elif written.is_relative_to(read):
            overlap = f"lies inside {name} {given}"
        elif read.is_relative_to(written):
            overlap = f"contains {name} {given}"
        else:
            continue
        raise MlcdfError(f"{output}: the output {overlap}; writing it could overwrite its input, choose another output")


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, command: str, is_own: Callable[[Path], bool]) -> Iterator[Path]:
    """Build a folder under a temporary name and move it into place when the block succeeds.

    For stages that write several files that only make sense together (a prepared subset, an
    evaluation): either all of them appear, or none. A folder already at ``path`` is replaced only when
    it is empty or ``is_own`` recognises it as a previous output of ``command``; otherwise nothing is
    written (checked before the block runs, and again before the rename).

    Raises:
        MlcdfError: see :func:`check_replaceable`.
    """
    path = Path(path)
    recover_dir(path)
    check_replaceable(path, command=command, is_own=is_own)
    _make_parent(path)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        recover_dir(path)
        check_replaceable(path, command=command, is_own=is_own)
        if os.path.lexists(path):
            old = _old_name(path)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError:
                recover_dir(path)
                raise MlcdfError(f"{path}: another process wrote it at the same time; this output was discarded") from None
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        _remove(tmp)


def read_csv_rows(path: str | Path, *, encoding: str = "utf-8") -> Iterator[tuple[int, list[str]]]:
    """The records of a CSV file, each with the line it ends on.

    Raises:
        SchemaError: bytes that are not ``encoding`` text, or a malformed record (a field over
            ``csv.field_size_limit``, a NUL byte), naming the line.
    """
    path = Path(path)
    with open(path, newline="", encoding=encoding) as handle:
        reader = csv.reader(handle)
        try:
            for record in reader:
                yield reader.line_num, record
        except UnicodeDecodeError as error:
            raise SchemaError(path, f"not UTF-8 text ({error.reason})", line=_undecodable_line(path, encoding)) from None
        except csv.Error as error:
            raise SchemaError(path, f"not a valid CSV record ({error})", line=reader.line_num) from None


def _undecodable_line(path: Path, encoding: str) -> int | None:
    decoder = codecs.getincrementaldecoder(encoding)()
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                decoder.decode(raw)
            except UnicodeDecodeError:
                return number
    return None


def read_json_object(path: str | Path, what: str = "a JSON object") -> dict[str, Any]:
    """The JSON object in ``path``.

    Raises:
        SchemaError: the file is not valid JSON (naming the line) or not an object; ``what`` says what
            was expected.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SchemaError(path, f"not valid JSON ({error.msg})", line=error.lineno) from None
    except RecursionError:
        raise SchemaError(path, "not a usable JSON document: nested too deeply") from None
    except UnicodeDecodeError:  # the callers name the encoding
        raise
    except ValueError as error:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise SchemaError(path, f"not a usable JSON document: {first_line(error)}") from None
    if not isinstance(document, dict):
        raise SchemaError(path, f"expected {what}")
    return document


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent) for the block; waits without a timeout.

    Processes that share a file (the ranks of one run, two runs over one prepared subset) take turns:
    the first builds it, the next ones find it done. POSIX ``flock``; the lock file stays behind, empty.
    """
    import fcntl  # POSIX only; imported here so that the rest of this module works everywhere

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
