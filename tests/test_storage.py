"""File helpers: atomic writes and copies, the benchmarks' given-or-temporary cache folder."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path
from typing import IO

import pytest

from ckd_search.storage import atomic_copy
from ckd_search.storage import atomic_write
from ckd_search.storage import atomic_write_text
from ckd_search.storage import given_or_temp_dir
from ckd_search.storage import remove_stale_temp_files
from ckd_search.storage import stale_temp_files


def test_a_given_folder_is_used_and_kept(tmp_path):
    with given_or_temp_dir(str(tmp_path), "x-") as folder:
        (Path(folder) / "f").write_text("1")
    assert folder == str(tmp_path) and (tmp_path / "f").is_file()


def test_a_temporary_folder_is_removed_on_exit_and_on_error():
    with given_or_temp_dir(None, "ckd-test-") as folder:
        (Path(folder) / "f").write_text("1")
    assert not Path(folder).exists()
    try:
        with given_or_temp_dir(None, "ckd-test-") as folder:
            raise RuntimeError
    except RuntimeError:
        pass
    assert not Path(folder).exists()


# --- atomic writes -----------------------------------------------------------------------------
def _spy_fsync(monkeypatch: pytest.MonkeyPatch, events: list[str], folder_error: bool = False) -> None:
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            events.append("fsync folder")
            if folder_error:
                raise OSError(errno.EINVAL, "fsync on a folder not supported")
        else:
            events.append("fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events: list[str] = []
    _spy_fsync(monkeypatch, events)
    atomic_write_text(tmp_path / "a.json", "{}")
    assert events == ["fsync file", "replace", "fsync folder"]  # the rename itself survives a power cut
    assert (tmp_path / "a.json").read_text() == "{}"


def test_a_folder_that_cannot_be_synced_does_not_fail_the_write(tmp_path, monkeypatch):
    events: list[str] = []
    _spy_fsync(monkeypatch, events, folder_error=True)
    atomic_write_text(tmp_path / "a.json", "{}")
    assert events[-1] == "fsync folder" and (tmp_path / "a.json").read_text() == "{}"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old")

    def torn(handle: IO[bytes]) -> None:
        handle.write(b"ne")
        raise OSError(errno.ENOSPC, "disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, torn)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]


def test_atomic_copy_copies_the_bytes_into_a_new_folder(tmp_path):
    src = tmp_path / "space.yaml"
    src.write_bytes(b"study: {name: x}\n# \xe9t\xe9 \xff\n")  # not even UTF-8: copied as bytes
    dst = tmp_path / "run" / "space.yaml"
    assert atomic_copy(src, dst) == dst
    assert dst.read_bytes() == src.read_bytes() and os.listdir(dst.parent) == ["space.yaml"]


def test_a_failed_copy_keeps_the_old_file(tmp_path, monkeypatch):
    dst = tmp_path / "run" / "space.yaml"
    dst.parent.mkdir()
    dst.write_text("old")
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing.yaml", dst)
    src = tmp_path / "space.yaml"
    src.write_text("new: 1\n")

    def torn(source: IO[bytes], target: IO[bytes]) -> None:  # killed half way through the copy
        target.write(source.read(3))
        raise OSError(errno.EIO, "read error")

    monkeypatch.setattr(shutil, "copyfileobj", torn)
    with pytest.raises(OSError, match="read error"):
        atomic_copy(src, dst)
    assert dst.read_text() == "old" and os.listdir(dst.parent) == ["space.yaml"]


def test_stale_temp_files_are_exactly_the_ones_atomic_write_leaves(tmp_path):
    path = tmp_path / "train-T3.arrow"
    kept = []

    def killed(handle: IO[bytes]) -> None:  # keep a hard link: the temp file as a SIGKILL leaves it
        handle.write(b"x")
        (name,) = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
        os.link(tmp_path / name, tmp_path / f"{name}.keep")
        kept.append(name)

    atomic_write(path, killed)
    os.rename(tmp_path / f"{kept[0]}.keep", tmp_path / kept[0])
    others = [
        "train-T3.arrow.lock",
        ".train-T3.arrow.abc.tmp",  # not mkstemp's 8 random characters
        ".train-T3.arrow.x.abcdefgh.tmp",  # the temp file of "train-T3.arrow.x"
        ".test-T3.arrow.abcdefgh.tmp",  # another target's
        "train-T3.arrow.abcdefgh.tmp",
    ]
    for name in others:
        (tmp_path / name).write_bytes(b"")
    assert stale_temp_files(path) == [tmp_path / kept[0]]
    assert remove_stale_temp_files(path) == [tmp_path / kept[0]]
    assert sorted(os.listdir(tmp_path)) == sorted([*others, "train-T3.arrow"])
    assert stale_temp_files(tmp_path / "no" / "such.arrow") == []
