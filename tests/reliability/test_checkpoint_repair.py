"""A resumed trial whose latest checkpoint (in the stored Tune snapshot) is gone resumes from the next one.

Tune uploads experiment snapshots in the background but deletes checkpoints beyond ``num_to_keep`` at
once; under load a killed driver leaves a stored snapshot naming a deleted checkpoint, and Ray then
fails the trial on every retry. :class:`ckd_search.search.faults.CheckpointRepair` points it at the
oldest newer checkpoint (its epoch was processed by the driver) before Tune starts it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from ray import tune
from ray.train import CheckpointConfig
from ray.train._internal.checkpoint_manager import _CheckpointManager
from ray.train._internal.session import _TrainingResult

from ckd_search.search.faults import CheckpointRepair
from ckd_search.search.faults import repair_checkpoint


def _trial(folder: Path, registered: list[int], status: str = "PENDING") -> SimpleNamespace:
    """A trial as Tune restores it: its snapshot registered ``registered`` checkpoints (numbers)."""
    manager = _CheckpointManager(CheckpointConfig(num_to_keep=2))
    for number in registered:
        path = folder / f"checkpoint_{number:06d}"
        path.mkdir(parents=True, exist_ok=True)
        manager.register_checkpoint(
            _TrainingResult(tune.Checkpoint(str(path)), {"training_iteration": number + 1})
        )
    return SimpleNamespace(
        trial_id="t1", status=status, run_metadata=SimpleNamespace(checkpoint_manager=manager)
    )


def _on_storage(folder: Path, numbers: list[int]) -> None:
    """Leave exactly these checkpoint folders (what the killed driver kept and deleted)."""
    for path in folder.glob("checkpoint_*"):
        if int(path.name.split("_")[1]) not in numbers:
            shutil.rmtree(path)
    for number in numbers:
        (folder / f"checkpoint_{number:06d}").mkdir(exist_ok=True)


def _latest(trial: SimpleNamespace) -> str | None:
    result = trial.run_metadata.checkpoint_manager.latest_checkpoint_result
    return Path(result.checkpoint.path).name if result else None


def test_lost_latest_checkpoint_is_replaced_by_the_next_one(tmp_path: Path):
    trial = _trial(tmp_path, [0, 1])  # the stored snapshot: latest checkpoint_000001
    _on_storage(tmp_path, [2, 3, 4])  # the driver went on to 3 (kept 2, 3); 4 was never processed
    CheckpointRepair().on_step_begin(0, [trial])
    assert _latest(trial) == "checkpoint_000002"
    manager = trial.run_metadata.checkpoint_manager
    assert manager.latest_checkpoint_result.metrics["training_iteration"] == 2
    assert manager._checkpoint_results == []  # no kept entry names a deleted folder


def test_no_newer_checkpoint_means_start_again(tmp_path: Path):
    trial = _trial(tmp_path, [0, 1])
    _on_storage(tmp_path, [])
    assert repair_checkpoint(trial)
    assert _latest(trial) is None


@pytest.mark.parametrize("status", ["PENDING", "TERMINATED"])
def test_intact_or_finished_trials_are_left_alone(tmp_path: Path, status: str):
    intact = _trial(tmp_path / "a", [0, 1], status)
    finished = _trial(tmp_path / "b", [0, 1], "TERMINATED")
    _on_storage(tmp_path / "b", [3])
    repair = CheckpointRepair()
    repair.on_step_begin(0, [intact, finished])
    assert _latest(intact) == "checkpoint_000001" and _latest(finished) == "checkpoint_000001"
    _on_storage(tmp_path / "a", [3])
    repair.on_step_begin(1, [intact])  # only the first step of a run is checked
    assert _latest(intact) == "checkpoint_000001"
