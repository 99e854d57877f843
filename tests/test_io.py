import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mlcdf.errors import MlcdfError
from mlcdf.io import (
    STALE_AFTER_S,
    atomic_dir,
    atomic_path,
    check_output_apart,
    holds_file,
    recover_dir,
    write_json,
)

OWN = {"command": "mlcdf test", "is_own": holds_file("marker")}


def test_atomic_writes_respect_the_umask(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "d", **OWN) as staging:
        (staging / "f").write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask


def write_output(path: Path, content: str) -> None:
    with atomic_dir(path, **OWN) as staging:
        (staging / "marker").write_text(content)


def test_atomic_dir_replaces_only_its_own_output_or_an_empty_folder(tmp_path):
    foreign = tmp_path / "out" / "mine.txt"
    foreign.parent.mkdir()
    foreign.write_text("keep me")
    with pytest.raises(MlcdfError, match=r"out: exists and was not written by 'mlcdf test'"):
        write_output(tmp_path / "out", "new")
    assert foreign.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(MlcdfError, match="not a folder"):
        write_output(tmp_path / "file", "new")
    with pytest.raises(MlcdfError, match=r"file is not a folder"):
        write_output(tmp_path / "file" / "below", "new")
    assert (tmp_path / "file").read_text() == "x"
    (tmp_path / "empty").mkdir()
    write_output(tmp_path / "empty", "first")
    write_output(tmp_path / "empty", "second")
    assert [p.name for p in (tmp_path / "empty").iterdir()] == ["marker"]
    assert (tmp_path / "empty" / "marker").read_text() == "second"


def test_atomic_dir_checks_again_before_the_rename(tmp_path):
    with pytest.raises(MlcdfError, match="not written by"):
        with atomic_dir(tmp_path / "out", **OWN) as staging:
            (staging / "marker").write_text("new")
            (tmp_path / "out").mkdir()  # appeared while this output was being built
            (tmp_path / "out" / "theirs.txt").write_text("keep me")
    assert (tmp_path / "out" / "theirs.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# A writer killed (SIGKILL: no clean-up runs) just before step N of replacing a folder: the two renames,
# then removing the previous output; "partial" dies halfway through that removal.
KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import mlcdf.io as io

    target, kill_before = Path(sys.argv[1]), sys.argv[2]
    steps = 0
    real_replace, real_remove = os.replace, io._remove

    def step():
        global steps
        if kill_before == str(steps):
            os.kill(os.getpid(), signal.SIGKILL)
        steps += 1

    def replace(src, dst):
        step()
        real_replace(src, dst)

    def remove(path):
        if path.name.endswith(".old"):
            if kill_before == "partial":
                (path / "marker").unlink()
                os.kill(os.getpid(), signal.SIGKILL)
            step()
        real_remove(path)

    io.os.replace, io._remove = replace, remove
    with io.atomic_dir(target, command="mlcdf test", is_own=io.holds_file("marker")) as staging:
        (staging / "marker").write_text("new")
        (staging / "more").write_text("new")
    """
)


@pytest.mark.parametrize("kill_before, survivor", [("0", "old"), ("1", "old"), ("2", "new"), ("partial", "new"), ("never", "new")])
def test_a_killed_folder_replace_leaves_the_old_or_the_new_output(tmp_path, kill_before, survivor):
    target = tmp_path / "eval" / "test"
    write_output(target, "old")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target), kill_before], env=env)
    assert done.returncode == (0 if kill_before == "never" else -9)
    # The next writer or reader puts things right: the previous output back, or the new one kept.
    recover_dir(target)
    assert (target / "marker").read_text() == survivor
    assert (target / "more").exists() == (survivor == "new")
    assert not (tmp_path / "eval" / ".test.old").exists()
    # The next write also clears the dead writer's temporary folder.
    write_output(target, "next")
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["test"]


def dead_writers_temporary(target: Path) -> Path:
    """The temporary a writer of ``target`` leaves when killed mid-write."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from mlcdf.io import atomic_path
        with atomic_path(sys.argv[1]) as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    assert subprocess.run([sys.executable, "-c", script, str(target)], env=env).returncode == -9
    (left,) = [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
    return left


def test_stale_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "out.json"
    dead = dead_writers_temporary(target)
    assert dead.name.startswith(".out.json.") and dead.read_bytes() == b"half"
    long_ago = time.time() - STALE_AFTER_S - 60
    other_host_fresh = tmp_path / ".out.json.123-00000000.abcdefgh.tmp"
    other_host_old = tmp_path / ".out.json.124-00000000.abcdefgi.tmp"
    old_style_old = tmp_path / ".out.json.abcdefgj.tmp"
    old_style_old_folder = tmp_path / ".out.json.abcdefgk.tmp"
    old_style_folder_fresh_inside = tmp_path / ".out.json.abcdefgl.tmp"
    not_ours = [tmp_path / ".out.json.notes", tmp_path / ".out.jsonl.abcdefgm.tmp", tmp_path / ".other.abcdefgn.tmp"]
    for path in [other_host_fresh, other_host_old, old_style_old, *not_ours]:
        path.write_text("x")
    for folder in (old_style_old_folder, old_style_folder_fresh_inside):
        (folder / "deep").mkdir(parents=True)
        (folder / "deep" / "f").write_text("x")
    for path in (
        other_host_old,
        old_style_old,
        *not_ours,
        old_style_old_folder,
        old_style_old_folder / "deep",
        old_style_old_folder / "deep" / "f",
        old_style_folder_fresh_inside,
        old_style_folder_fresh_inside / "deep",
    ):
        os.utime(path, (long_ago, long_ago))
    # A live writer of the same file (this process, mid-write) keeps its temporary.
    with atomic_path(target) as live:
        live.write_text("being written")
        write_json(target, {"x": 1})
        assert live.read_text() == "being written"
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"out.json", other_host_fresh.name, old_style_folder_fresh_inside.name, *(p.name for p in not_ours)}


def test_check_output_apart(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    for output, overlap in [
        (data, "is --root"),
        (data / "sub" / "x", "lies inside --root"),
        (tmp_path / "link" / "x", "lies inside --root"),
        (tmp_path, "contains --root"),
    ]:
        with pytest.raises(MlcdfError, match=overlap):
            check_output_apart(output, ("--root", data))
    check_output_apart(tmp_path / "elsewhere", ("--root", data), ("--graph", None))
    check_output_apart(tmp_path / "data2", ("--root", data))
