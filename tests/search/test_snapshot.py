"""Tune's experiment snapshot: a resume keeps the newest whole session and sets broken ones aside."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from ckd_search.search.snapshot import SET_ASIDE_SUFFIX
from ckd_search.search.snapshot import settle_snapshot

OLD, NEW = "2026-11-27_03-43-06", "2026-11-27_03-43-55"


def write_session(
    folder: Path,
    stamp: str,
    skip: str = "",
    cut: str = "",
    trials: str = "ab",
    counted: int = 2,
    asked: str = "ab",
) -> None:
    """The four snapshot files of one driver session, shaped as Tune writes them.

    ``skip`` leaves one out, ``cut`` halves one; ``trials`` are the experiment's trial ids, ``counted``
    the search generator's count and ``asked`` the trials the searcher knows.
    """
    trial_data = [[json.dumps({"trial_id": t, "status": "RUNNING"}), "{}"] for t in trials]
    files = {
        f"experiment_state-{stamp}.json": json.dumps({"trial_data": trial_data, "stats": {}}).encode(),
        f"search_gen_state-{stamp}.json": pickle.dumps({"counter": counted}),  # a pickle, as Tune writes it
        f"searcher-state-{stamp}.pkl": pickle.dumps({"_ot_trials": dict.fromkeys(asked), "_metric": "m"}),
        f"callback-states-{stamp}.pkl": pickle.dumps({1: {"runs": {}}}),
    }
    for name, data in files.items():
        if skip and name.startswith(skip):
            continue
        (folder / name).write_bytes(data[: len(data) // 2] if cut and name.startswith(cut) else data)


def names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_a_whole_newest_session_is_kept(tmp_path):
    write_session(tmp_path, OLD)
    write_session(tmp_path, NEW)
    before = names(tmp_path)
    assert settle_snapshot(str(tmp_path)) == NEW
    assert names(tmp_path) == before


@pytest.mark.parametrize(
    "damage",
    [
        {"skip": "searcher-state"},
        {"skip": "experiment_state"},
        {"cut": "experiment_state"},
        {"cut": "searcher"},
        {"cut": "search_gen_state"},
        {"trials": "abc", "counted": 2, "asked": "abc"},  # the generator file kept the save before
        {"trials": "abc", "counted": 3, "asked": "ab"},  # the searcher file kept the save before
    ],
    ids=[
        "searcher-missing",
        "state-missing",
        "state-cut",
        "searcher-cut",
        "generator-cut",
        "mixed-count",
        "mixed-ask",
    ],
)
def test_a_broken_newer_session_is_set_aside(tmp_path, damage):
    write_session(tmp_path, OLD)
    write_session(tmp_path, NEW, **damage)
    new_files = {n for n in names(tmp_path) if NEW in n}
    assert settle_snapshot(str(tmp_path)) == OLD
    left = names(tmp_path)
    assert not any(NEW in n and not n.endswith(SET_ASIDE_SUFFIX) for n in left)
    assert {n + SET_ASIDE_SUFFIX for n in new_files} <= left  # kept, under a name Tune ignores
    assert settle_snapshot(str(tmp_path)) == OLD  # settled: nothing more to do


def test_no_whole_session_means_none(tmp_path):
    assert settle_snapshot(str(tmp_path / "absent")) is None
    write_session(tmp_path, OLD, cut="callback-states")
    (tmp_path / "tuner.pkl").write_bytes(b"\x80")  # Tune's Tuner file is not a snapshot file
    assert settle_snapshot(str(tmp_path)) is None
    assert (tmp_path / "tuner.pkl").is_file()
    assert not any(p.suffix in (".json", ".pkl") and OLD in p.name for p in tmp_path.iterdir())


def test_setting_aside_twice_keeps_both_copies(tmp_path):
    write_session(tmp_path, NEW, skip="searcher-state")
    assert settle_snapshot(str(tmp_path)) is None
    write_session(tmp_path, NEW, skip="searcher-state")  # the same session broken again
    assert settle_snapshot(str(tmp_path)) is None
    state = f"experiment_state-{NEW}.json"
    assert {state + SET_ASIDE_SUFFIX, f"{state}{SET_ASIDE_SUFFIX}-2"} <= names(tmp_path)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_count_is_read_without_unpickling(protocol):
    from ckd_search.search.snapshot import _int_after
    from ckd_search.search.snapshot import _strings

    data = pickle.dumps({"finished": False, "counter": 7, "live": {"ab12cd34"}}, protocol=protocol)
    assert _int_after(data, "counter") == 7
    assert _int_after(data, "finished") is None  # a bool is not a count
    assert "ab12cd34" in _strings(data)


def test_a_cut_short_tuner_pickle_is_put_back_from_its_whole_copy(tmp_path, caplog):
    """A resumed driver re-uploads tuner.pkl with every snapshot; a kill mid-copy cuts it short."""
    from ckd_search.search.snapshot import TUNER_COPY
    from ckd_search.search.snapshot import TUNER_FILE
    from ckd_search.search.snapshot import keep_tuner_whole

    tuner = tmp_path / TUNER_FILE
    assert not keep_tuner_whole(str(tmp_path))  # neither file: nothing to restore
    whole = pickle.dumps({"trainable": "train_ckd", "param_space": list(range(100))})
    tuner.write_bytes(whole)
    assert keep_tuner_whole(str(tmp_path))
    assert (tmp_path / TUNER_COPY).read_bytes() == whole
    tuner.write_bytes(whole[: len(whole) // 2])  # the upload was killed half way
    assert keep_tuner_whole(str(tmp_path))
    assert tuner.read_bytes() == whole and "cut short" in caplog.text
    tuner.unlink()
    assert keep_tuner_whole(str(tmp_path)) and tuner.read_bytes() == whole  # missing: put back too
    newer = pickle.dumps({"trainable": "train_ckd", "restart": True})
    tuner.write_bytes(newer)  # a restarted experiment writes a new Tuner: the copy follows it
    assert keep_tuner_whole(str(tmp_path)) and (tmp_path / TUNER_COPY).read_bytes() == newer
    tuner.write_bytes(b"")
    (tmp_path / TUNER_COPY).write_bytes(newer[:5])
    assert not keep_tuner_whole(str(tmp_path))  # neither whole: start the Tune experiment again
