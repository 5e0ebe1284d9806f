"""File helpers: the benchmarks' given-or-temporary cache folder."""

from __future__ import annotations

from pathlib import Path

from ckd_search.storage import given_or_temp_dir


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
