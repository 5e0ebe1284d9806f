"""Damaged files are detected and rebuilt, or refused with one clear line.

- a trial checkpoint truncated while the driver was down: the resumed trial detects it (SHA-256),
  falls back to its older checkpoint (or starts again if it has none) and replays from there;
  nothing is lost;
- the data cache and the teacher-logits cache, truncated: detected and rebuilt;
- ``--resume`` with a corrupt Optuna journal, a damaged ``search.yaml`` or a second driver on the
  same run directory: exit 2, one line naming the file, and no Ray started; a journal record cut
  off mid-write and Optuna's stale lock file are repaired.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from ray.tune import Callback

from ckd_search.cli import main
from ckd_search.search.chaos import audit_run

EPOCHS = 5


class CrashMidTrial(Callback):
    """Raise in the driver loop once some trial reported epoch 3 (of 5), while ``flag`` exists."""

    def __init__(self, flag: Path) -> None:
        self.flag, self.seen = str(flag), False

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if int(result.get("epoch", 0)) >= 3:
            self.seen = True

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.seen and os.path.exists(self.flag):
            raise RuntimeError("simulated driver crash")


@pytest.mark.slow
def test_truncated_trial_checkpoint_in_a_resumed_search(
    tmp_path, tiny_fixed, helpers, monkeypatch, ray_cleanup
):
    from ray.tune import ExperimentAnalysis

    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import run_search

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    monkeypatch.setenv("CKD_SEARCH_FAULT_INJECT", "delay:*:*:0.4")
    monkeypatch.setenv("CKD_SEARCH_FAULT_DIR", str(tmp_path / "faults"))
    space = helpers.write_space(
        tmp_path,
        {**tiny_fixed, "run.epochs": EPOCHS},
        study={"name": "ckpt", "metric": "train_loss", "mode": "min", "num_trials": 2, "seed": 1},
    )
    flag = tmp_path / "crash"
    flag.touch()
    settings = create_search(space, out=tmp_path / "run", gpus=0, cpus=2)
    with pytest.raises(Exception):  # noqa: B017 - Tune may wrap the callback's RuntimeError
        run_search(settings, extra_callbacks=[CrashMidTrial(flag)])
    flag.unlink()

    analysis = ExperimentAnalysis(settings.experiment_path)
    unfinished = {  # trial -> epoch of the checkpoint Tune will resume it from
        t: int(torch.load(Path(t.checkpoint.path) / "state.pt", weights_only=True)["epoch"])
        for t in analysis.trials
        if t.status != "TERMINATED" and t.checkpoint is not None
    }
    assert unfinished, [(t.trial_id, t.status) for t in analysis.trials]
    # Tune keeps two checkpoints: from epoch k >= 2 the trial falls back to epoch k-1; from k = 1 (the
    # stored snapshot can lag the crash by a step) it starts again. Either way it continues at k.
    victim, checkpointed = max(unfinished.items(), key=lambda item: item[1])
    state = Path(victim.checkpoint.path) / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    # and Tune's tuner.pkl cut short, as by a driver killed while a resumed session re-uploads it
    tuner = Path(settings.experiment_path) / "tuner.pkl"
    whole = tuner.read_bytes()
    tuner.write_bytes(whole[: len(whole) // 3])

    assert main(["search", "--resume", settings.run_dir]) == 0
    assert tuner.read_bytes() == whole
    audit = audit_run(settings.run_dir)[victim.trial_id]
    assert audit.reached_end and audit.lost == []
    assert sorted(set(audit.epochs)) == list(range(1, EPOCHS + 1))
    # the damaged epoch-k checkpoint was skipped: the trial went on from epoch k-1 (or from scratch)
    assert audit.segments[-1][0]["epoch"] == checkpointed, (checkpointed, audit.epochs)
    trials = {t.user_attrs["ray_trial_id"]: t for t in helpers.journal_trials(settings)}
    assert trials[victim.trial_id].state.name == "COMPLETE"
    assert sorted(trials[victim.trial_id].intermediate_values) == list(range(1, EPOCHS + 1))
    client, _, children = helpers.mlflow_runs(settings)
    (run,) = [r for r in children if r.data.tags["ckd.trial_id"] == victim.trial_id]
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == list(range(1, EPOCHS + 1))


def test_truncated_data_and_teacher_caches_are_rebuilt(tmp_path, caplog):
    from ckd_search.config import Config
    from ckd_search.engine import prepare

    cfg = Config.from_dict(
        {"data.limit": 100, "data.size": 16, "data.timesteps": 2, "teacher.epochs": 1},
    ).replace(**{"data.cache_dir": str(tmp_path / "cache")})
    first = prepare(cfg)
    files = sorted(p for p in (tmp_path / "cache").rglob("*.arrow"))
    assert any("teachers" in str(p) for p in files) and any("teachers" not in str(p) for p in files)
    for path in files:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    with caplog.at_level(logging.WARNING):
        again = prepare(cfg)
    assert again.data.train.frames.shape == first.data.train.frames.shape
    assert again.teacher_logits is not None and again.teacher_logits.shape == first.teacher_logits.shape
    text = caplog.text
    assert "unusable" in text and "rebuilding" in text


# --- damaged run directories on --resume (no Ray needed to refuse them) ---------------------------
@pytest.fixture
def stopped_search(tmp_path, tiny_fixed, helpers):
    """A search whose driver stopped after one Optuna trial was asked (a journal, no Tune state)."""
    import optuna

    from ckd_search.search.optuna_search import journal_storage
    from ckd_search.search.tuner import create_search

    space = helpers.write_space(tmp_path, tiny_fixed)
    settings = create_search(space, out=tmp_path / "run", gpus=0)
    study = optuna.create_study(
        study_name=settings.study_name, storage=journal_storage(settings.journal_path)
    )
    study.ask()
    return settings


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("ckd-search: error: ") and "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:40] + b"\x00\x00garbage\n" + data[40:],
        lambda data: b"not json at all\n" + data,
        lambda data: data.replace(b'"op_code"', b'"op_cod3"', 1),
    ],
    ids=["garbage-inside", "garbage-first", "unknown-record"],
)
def test_resume_refuses_a_corrupt_journal(stopped_search, capsys, damage):
    import ray

    path = stopped_search.journal_path
    path.write_bytes(damage(path.read_bytes()))
    assert main(["search", "--resume", stopped_search.run_dir]) == 2
    line = one_error_line(capsys)
    assert str(path) in line and "corrupt" in line
    assert not ray.is_initialized()


def test_journal_cut_off_mid_write_and_stale_lock_are_repaired(stopped_search, caplog):
    import optuna

    from ckd_search.search.optuna_search import journal_storage
    from ckd_search.search.tuner import check_journal

    path = stopped_search.journal_path
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "state": 1, "val')
    lock = path.with_name(path.name + ".lock")
    os.symlink(path, lock)  # Optuna's symlink lock, left by a killed driver
    with caplog.at_level(logging.WARNING):
        check_journal(path, stopped_search.study_name)
    assert path.read_bytes() == whole and not lock.exists() and not lock.is_symlink()
    assert "cut off mid-write" in caplog.text and "lock" in caplog.text
    study = optuna.load_study(study_name=stopped_search.study_name, storage=journal_storage(path))
    assert len(study.trials) == 1


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda text: text[: len(text) // 2], "search.yaml"),
        (lambda text: "\x00\x01\x02 binary", "search.yaml"),
        (lambda text: text.replace("num_trials: 3", "num_trials: three"), "num_trials"),
        (lambda text: text.replace("study_name:", "study_nam:"), "study_nam"),
        (lambda text: "- just\n- a list\n", "mapping"),
        (lambda text: text + "\nbroken: [unclosed\n", "invalid YAML"),
        (lambda text: text.replace("num_trials: 3", "num_trials: 0"), "num_trials"),
    ],
    ids=["truncated", "binary", "wrong-type", "unknown-key", "not-a-mapping", "bad-yaml", "zero-trials"],
)
def test_resume_refuses_a_damaged_search_yaml(stopped_search, capsys, edit, needle):
    import ray

    path = Path(stopped_search.run_dir) / "search.yaml"
    path.write_text(edit(path.read_text()))
    assert main(["search", "--resume", stopped_search.run_dir]) == 2
    line = one_error_line(capsys)
    assert str(path) in line and needle in line, line
    assert not ray.is_initialized()


def test_a_second_driver_is_refused(stopped_search, capsys):
    import ray

    from ckd_search.search.tuner import driver_lock

    with driver_lock(Path(stopped_search.run_dir)):
        assert main(["search", "--resume", stopped_search.run_dir]) == 2
    line = one_error_line(capsys)
    assert "another ckd-search driver" in line and f"pid {os.getpid()}" in line
    assert not ray.is_initialized()


def test_resume_of_a_missing_or_foreign_directory(tmp_path, capsys):
    assert main(["search", "--resume", str(tmp_path / "nope")]) == 2
    assert "nope: no such run directory" in one_error_line(capsys)
    assert main(["search", "--resume", str(tmp_path)]) == 2  # a folder, but not a search's
    assert "not a search run directory" in one_error_line(capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "search.yaml").write_text(json.dumps({"run_dir": "/elsewhere"}))
    assert main(["search", "--resume", str(tmp_path / "other")]) == 2
    assert "missing settings" in one_error_line(capsys)


def test_restore_falls_back_to_the_newest_intact_checkpoint(tmp_path):
    from ray import tune

    from ckd_search.checkpoint import load_checkpoint
    from ckd_search.checkpoint import save_checkpoint
    from trainables.ckd import restore_checkpoint

    trial = tmp_path / "trial_x"
    for index in range(3):  # checkpoint_000000..2 hold epochs 1..3
        save_checkpoint(trial / f"checkpoint_{index:06d}", {"epoch": torch.tensor(index + 1)})
    for index in (1, 2):  # the two newest are damaged
        state = trial / f"checkpoint_{index:06d}" / "state.pt"
        state.write_bytes(state.read_bytes()[:-7])
    root = tmp_path / "work"
    root.mkdir()
    assert restore_checkpoint(tune.Checkpoint(str(trial / "checkpoint_000002")), root)
    assert int(load_checkpoint(root)["epoch"]) == 1
    (trial / "checkpoint_000000" / "state.pt").write_bytes(b"")
    assert not restore_checkpoint(tune.Checkpoint(str(trial / "checkpoint_000002")), root)
    assert list(root.iterdir()) == []  # nothing left: the trial starts again


def test_a_read_error_of_the_storage_is_retried_before_a_checkpoint_counts_as_damaged(
    tmp_path, caplog, monkeypatch
):
    from ray import tune

    from ckd_search.checkpoint import load_checkpoint
    from ckd_search.checkpoint import save_checkpoint
    from trainables import ckd

    trial = tmp_path / "trial_x"
    for index in range(2):  # checkpoint_000000..1 hold epochs 1..2
        save_checkpoint(trial / f"checkpoint_{index:06d}", {"epoch": torch.tensor(index + 1)})
    failures = iter([ConnectionResetError("connection reset by peer")])

    class Flaky(tune.Checkpoint):
        def as_directory(self):
            if (err := next(failures, None)) is not None:
                raise err
            return super().as_directory()

    root = tmp_path / "work"
    root.mkdir()
    monkeypatch.setattr(ckd, "READ_RETRY_WAITS_S", (0.0,))
    with caplog.at_level(logging.WARNING, logger=ckd.__name__):
        assert ckd.restore_checkpoint(Flaky(str(trial / "checkpoint_000001")), root)
    assert int(load_checkpoint(root)["epoch"]) == 2  # the newest, not the older one
    assert any("connection reset by peer); again in 0 s" in r.getMessage() for r in caplog.records)
