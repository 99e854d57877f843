def test_atomic_writes_respect_the_umask(tmp_path):
    import os

    from mlcdf.io import atomic_dir, write_json

    write_json(tmp_path / "a.json", {"x": 1})
    with atomic_dir(tmp_path / "d") as staging:
        (staging / "f").write_text("x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o777 & ~mask
