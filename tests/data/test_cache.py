"""Arrow IPC frame cache: round trip, memory map, atomic writes, invalid caches rebuilt."""

from __future__ import annotations

import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ckd_search.config import DataConfig
from ckd_search.data import cache
from ckd_search.data import load_paired
from ckd_search.data.built import SplitArrays
from ckd_search.data.built import limit_indices

PARAMS = {"dataset": "unit", "timesteps": 3, "size": 4, "image_size": 5, "x": [1, 2]}


def tiny_split(n: int = 6, seed: int = 0) -> SplitArrays:
    rng = np.random.default_rng(seed)
    return SplitArrays(
        frames=rng.random((n, 3, 2, 4, 4)).astype(np.float16),
        labels=rng.integers(0, 3, n),
        images=rng.integers(0, 256, (n, 3, 5, 5), dtype=np.uint8),
        image_labels=rng.integers(0, 3, n),
        pair_index=np.arange(n),
        n_events=rng.integers(0, 1000, n),
        sensor_hw=np.full((n, 2), 34),
    )


def written(tmp_path: Path, data: SplitArrays | None = None) -> Path:
    path = cache.split_path(tmp_path, PARAMS, "train")
    cache.write_split(path, data or tiny_split(), PARAMS, {"class_names": ["a", "b", "c"]})
    return path


def test_round_trip_is_exact_and_memory_mapped_copy_on_write(tmp_path: Path) -> None:
    data = tiny_split()
    path = written(tmp_path, data)
    assert path.parent == tmp_path / "data" / "unit"
    assert path.name.startswith("train-T3-S4-I5-") and path.suffix == ".arrow"
    loaded, info = cache.read_split(path, PARAMS)
    assert info == {"class_names": ["a", "b", "c"]}
    for name, arr in data.arrays().items():
        got = getattr(loaded, name)
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
    assert loaded.frames.flags.writeable and not loaded.frames.flags.owndata
    before = path.read_bytes()
    loaded.frames[:] = 0  # private mapping: the file is untouched
    assert path.read_bytes() == before
    cache.read_split(path, PARAMS)  # still verifies
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_empty_split_round_trips(tmp_path: Path) -> None:
    empty = SplitArrays(
        np.zeros((0, 3, 2, 4, 4), np.float16),
        np.zeros(0, np.int64),
        np.zeros((0, 3, 5, 5), np.uint8),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros((0, 2), np.int64),
    )
    loaded, _ = cache.read_split(written(tmp_path, empty), PARAMS)
    assert loaded.frames.shape == (0, 3, 2, 4, 4)


def test_other_params_give_another_file_and_are_refused(tmp_path: Path) -> None:
    path = written(tmp_path)
    other = {**PARAMS, "x": [1, 3]}
    assert cache.split_path(tmp_path, other, "train") != path
    with pytest.raises(cache.CacheInvalid, match="other parameters"):
        cache.read_split(path, other)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte", "empty", "garbage"])
def test_damaged_files_are_detected(tmp_path: Path, damage: str) -> None:
    path = written(tmp_path)
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) // 2]
    elif damage == "flip_byte":
        frames = tiny_split().frames.tobytes()
        at = bytes(blob).find(frames[:64])
        assert at > 0
        blob[at + 10] ^= 0xFF
    elif damage == "empty":
        blob = bytearray()
    else:
        blob = bytearray(b"not an arrow file" * 10)
    path.write_bytes(bytes(blob))
    with pytest.raises(cache.CacheInvalid):
        cache.read_split(path, PARAMS)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        cache.read_split(tmp_path / "nope.arrow", PARAMS)


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = cache.split_path(tmp_path, PARAMS, "train")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    from ckd_search.errors import DataError

    with pytest.raises(DataError, match=f"{path.parent}: cannot write the data cache \\(disk full\\)"):
        cache.write_split(path, tiny_split(), PARAMS, {})
    assert not path.exists()
    assert not list(path.parent.glob("*.tmp"))


def test_corrupt_cache_is_rebuilt_with_a_warning(
    data_cfg: Callable[..., DataConfig], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = data_cfg(limit=10)
    first = load_paired(cfg, 28)
    path = Path(first.descriptors["cache_files"]["test"])
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with caplog.at_level(logging.WARNING, logger="ckd_search.data"):
        again = load_paired(cfg, 28)
    assert any("unusable cache" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    assert np.array_equal(again.test.frames.numpy(), first.test.frames.numpy())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ckd_search.data"):
        load_paired(cfg, 28)
    assert not caplog.records  # healthy now


def test_concurrent_builders_get_the_same_data(data_cfg: Callable[..., DataConfig]) -> None:
    cfg = data_cfg(limit=8)
    results: list[object] = []

    def run() -> None:
        results.append(load_paired(cfg, 28))

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3
    frames = [r.train.frames.numpy() for r in results]  # type: ignore[attr-defined]
    assert all(np.array_equal(frames[0], f) for f in frames[1:])
    folder = Path(cfg.cache_dir) / "data" / "digits_dvs"
    assert sorted(p.suffix for p in folder.iterdir()) == [".arrow", ".arrow", ".lock"]


def test_a_build_removes_the_temp_files_a_killed_build_left(
    data_cfg: Callable[..., DataConfig], caplog: pytest.LogCaptureFixture
) -> None:
    cfg = data_cfg(limit=8)
    files = {s: Path(p) for s, p in load_paired(cfg, 28).descriptors["cache_files"].items()}
    files["test"].unlink()  # SIGKILL mid-write: no test file, its temp file left behind
    orphans = [p.with_name(f".{p.name}.k1ll3d_x.tmp") for p in files.values()]
    other_key = files["train"].with_name(".train-T9-S9-I9-0123456789abcdef.arrow.abcdefgh.tmp")
    for tmp in [*orphans, other_key]:
        tmp.write_bytes(b"\0" * 1000)
    with caplog.at_level(logging.WARNING, logger="ckd_search"):
        load_paired(cfg, 28)
    assert not any(p.exists() for p in orphans)
    assert other_key.exists()  # another cache key: its writer may be mid-write under its own lock
    assert "removed 1 temp file(s) an interrupted write left" in caplog.text


def test_limit_indices_round_robin() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(limit_indices(labels, 4), [0, 1, 4, 6])
    np.testing.assert_array_equal(limit_indices(labels, None), np.arange(9))
    np.testing.assert_array_equal(limit_indices(labels, 100), np.arange(9))


def test_bad_image_size_is_a_user_error(data_cfg: Callable[..., DataConfig]) -> None:
    from ckd_search.errors import UserError

    with pytest.raises(UserError, match="image_size=0 must be >= 1"):
        load_paired(data_cfg(), 0)


def test_an_unwritable_cache_folder_is_one_line_naming_it(tmp_path):
    from ckd_search.errors import DataError

    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(DataError, match=f"{not_a_folder}/data.*cannot create the data cache folder"):
        cache.write_split(not_a_folder / "data" / "x.arrow", tiny_split(), {"a": 1}, {})
    with pytest.raises(DataError, match="cannot create the data cache folder"):
        with cache.build_lock(not_a_folder / "data" / "x.arrow"):
            pass


@pytest.mark.parametrize("how", ["refused write", "real permissions"])
def test_a_read_only_cache_folder_is_one_line_naming_it(tmp_path, monkeypatch, how):
    """The folder exists but takes no new file. Root ignores permissions (CI runs as root), so the
    "refused write" case has the temp file's creation fail as it does in a read-only folder."""
    import tempfile

    from ckd_search.errors import DataError

    folder = tmp_path / "ro"
    folder.mkdir()
    if how == "refused write":

        def refuse(*args, dir=None, **kwargs):
            raise PermissionError(13, "Permission denied", str(Path(dir) / "tmpXXXX"))

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    else:
        os.chmod(folder, 0o500)
        if os.access(folder, os.W_OK):  # root ignores permissions: covered by "refused write"
            os.chmod(folder, 0o700)
            pytest.skip("running as root")
    try:
        with pytest.raises(DataError) as raised:
            cache.write_split(folder / "x.arrow", tiny_split(), {"a": 1}, {})
    finally:
        os.chmod(folder, 0o700)
    message = str(raised.value)
    assert message == f"{folder}: cannot write the data cache (Permission denied)"
    assert "\n" not in message and raised.value.__cause__ is None and raised.value.__suppress_context__
    assert list(folder.iterdir()) == []  # nothing half-written left behind


def test_a_cache_file_has_the_permissions_the_umask_gives(tmp_path):
    """A cache shared by a cluster's users: the temp file's 0600 must not survive the rename."""
    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "x.arrow"
    cache.write_split(path, tiny_split(), {"a": 1}, {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
