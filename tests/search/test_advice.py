"""check-space's notes on ASHA's first rung against the trials' epochs and KD switches."""

from __future__ import annotations

from ckd_search.cli import main
from ckd_search.config import Config
from ckd_search.search.advice import switch_epoch
from tests.helpers import two_key_space

ASHA = {"asha": {"max_t": 8, "grace_period": 2, "reduction_factor": 2}}


def space_with_switch(tmp_path, low: float, high: float, **fixed) -> str:
    path = two_key_space(
        tmp_path,
        {"run.epochs": 8, **fixed},
        scheduler=ASHA,
        space={"kd.e_th": {"type": "uniform", "low": low, "high": high}},
    )
    return str(path)


def test_late_switches_are_noted(tmp_path, capsys):
    assert main(["check-space", space_with_switch(tmp_path, 4.0, 8.0), "--draws", "6"]) == 0
    out = capsys.readouterr().out
    assert "ASHA's first rung (epoch 2) comes before the KD switch (kd.e_th) of 6 of 6 drawn configs" in out


def test_early_switches_and_compressed_schedules_are_not_noted(tmp_path, capsys):
    assert main(["check-space", space_with_switch(tmp_path, 0.0, 1.5), "--draws", "6"]) == 0
    assert main(["check-space", space_with_switch(tmp_path, 4.0, 8.0, **{"run.fidelity": "compress"})]) == 0
    assert "KD switch" not in capsys.readouterr().out


def test_short_trials_are_noted(tmp_path, capsys):
    assert main(["check-space", space_with_switch(tmp_path, 0.0, 1.0, **{"run.max_epochs": 1})]) == 0
    assert "grace_period=2 exceeds the shortest trial (1 epochs)" in capsys.readouterr().out


def test_switch_epoch_is_the_half_way_point_in_epochs_only():
    assert switch_epoch(Config.from_dict({"run.epochs": 10})) == 5
    assert switch_epoch(Config.from_dict({"run.epochs": 10, "kd.units": "iteration"})) == 5
    assert switch_epoch(Config.from_dict({"kd.e_th": 3.0})) == 3.0
    unknown = ({"kd.units": "iteration", "kd.e_th": 3.0}, {"kd.schedule": "constant"}, {"kd.enabled": False})
    for fixed in unknown:
        assert switch_epoch(Config.from_dict(fixed)) is None


def test_a_new_search_prints_the_notes_as_it_starts(tmp_path, capsys, monkeypatch):
    from ckd_search.errors import UserError
    from ckd_search.search import tuner

    def refuse(settings, **kwargs):
        raise UserError("stopped here by the test")

    monkeypatch.setattr(tuner, "run_search", refuse)
    args = ["search", "--space", space_with_switch(tmp_path, 4.0, 8.0), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert (
        "ASHA's first rung (epoch 2) comes before the KD switch (kd.e_th) of 32 of 32"
        in capsys.readouterr().out
    )
    assert not (tmp_path / "run").exists()  # refused before its first trial: nothing left behind


def test_the_switch_note_needs_a_quarter_of_the_draws_to_switch_after_the_first_rung(tmp_path):
    from ckd_search.search.advice import scheduler_notes
    from ckd_search.search.space import load_space

    space = load_space(space_with_switch(tmp_path, 0.0, 8.0))  # first rung at epoch 2

    def notes(*e_ths: float) -> list[str]:
        return scheduler_notes(space, [Config.from_dict({"run.epochs": 8, "kd.e_th": e}) for e in e_ths])

    assert any("of 1 of 4 drawn configs" in n for n in notes(1.0, 1.5, 2.0, 5.0))  # 1 of 4: noted
    assert notes(1.0, 1.5, 2.0, 1.0, 5.0) == []  # 1 of 5 is under a quarter
    assert notes(1.0, 2.0) == []  # a switch at the rung itself is judged after it


def test_rungs_between_test_evaluations_are_noted(tmp_path, capsys):
    # rungs at epochs 2 and 4; evaluations every 4 epochs: rung 2 compares a test accuracy of 0
    study = {"name": "t", "metric": "best_test_acc", "mode": "max", "num_trials": 3, "seed": 0}
    path = two_key_space(tmp_path, {"run.epochs": 8, "run.eval_every": 4}, scheduler=ASHA, study=study)
    assert main(["check-space", str(path), "--draws", "4"]) == 0
    assert "ASHA judges at epochs 2, where some drawn configs (run.eval_every > 1)" in capsys.readouterr().out
    path = two_key_space(tmp_path, {"run.epochs": 8, "run.eval_every": 2}, scheduler=ASHA, study=study)
    assert main(["check-space", str(path), "--draws", "4"]) == 0
    assert "ASHA judges at" not in capsys.readouterr().out
