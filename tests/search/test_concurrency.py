"""The cap on trials at once follows the cluster on resume (ResizableLimiter)."""

from __future__ import annotations

import copy
import pickle

from ray.tune.search import Searcher

from ckd_search.search.concurrency import ResizableLimiter
from ckd_search.search.concurrency import read_cap
from ckd_search.search.concurrency import write_cap


class Counting(Searcher):
    def __init__(self) -> None:
        super().__init__(metric="m", mode="max")

    def suggest(self, trial_id: str) -> dict:
        return {"x": 1}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


def started(limiter: ResizableLimiter, ids: list[str]) -> list[str]:
    return [i for i in ids if limiter.suggest(i) is not None]


def test_a_restored_limiter_takes_the_cap_of_the_current_cluster(tmp_path):
    cap = tmp_path / "concurrency.json"
    write_cap(cap, 4)
    limiter = ResizableLimiter(Counting(), 4, cap)
    assert started(limiter, ["a", "b", "c", "d", "e"]) == ["a", "b", "c", "d"]
    saved, pickled = limiter.get_state(), pickle.dumps(limiter)

    write_cap(cap, 2)  # resumed on a smaller cluster
    restored = pickle.loads(pickled)  # Tuner.restore unpickles tuner.pkl ...
    assert restored.max_concurrent == 2
    restored.set_state(copy.deepcopy(saved))  # ... then puts back the searcher state Tune saved
    assert restored.max_concurrent == 2
    for trial in ("a", "b", "c"):
        restored.on_trial_complete(trial)
    assert started(restored, ["f", "g"]) == ["f"]  # d and f: two at once

    write_cap(cap, 8)  # and on a larger one
    grown = pickle.loads(pickled)
    grown.set_state(copy.deepcopy(saved))
    assert started(grown, ["f", "g", "h", "i", "j"]) == ["f", "g", "h", "i"]


def test_an_unreadable_cap_file_leaves_the_saved_cap(tmp_path):
    cap = tmp_path / "concurrency.json"
    limiter = ResizableLimiter(Counting(), 3, cap)
    for text in (None, "not json", '{"max_concurrent": 0}', '{"other": 2}'):
        if text is not None:
            cap.write_text(text)
        assert read_cap(cap) is None
        assert pickle.loads(pickle.dumps(limiter)).max_concurrent == 3
