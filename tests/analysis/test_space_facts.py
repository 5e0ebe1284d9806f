"""What analyze reads from a run's space.yaml: objectives, log scales, conditions, ASHA's max_t."""

from __future__ import annotations

import yaml

from ckd_search.analysis.space_facts import ENGINE_CONDITIONS
from ckd_search.analysis.space_facts import LOG_PARAMS
from ckd_search.analysis.space_facts import read_space_facts


def write(tmp_path, raw) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(raw))


def test_objectives_follow_the_space_file(tmp_path):
    assert read_space_facts(tmp_path).objectives == ()
    raw = {"study": {"name": "s", "metric": ["best_test_acc", "sops_per_sample"], "mode": ["max", "min"]}}
    raw.update(searcher="nsga2", space={"kd.k": {"type": "loguniform", "low": 0.1, "high": 10.0}})
    write(tmp_path, raw)
    assert read_space_facts(tmp_path).objectives == (("best_test_acc", "max"), ("sops_per_sample", "min"))
    raw.update(study={"metric": "train_loss", "mode": "min"}, searcher="tpe")
    write(tmp_path, raw)
    assert read_space_facts(tmp_path).objectives == (("train_loss", "min"),)


def test_an_unreadable_space_is_a_note_and_the_engine_defaults(tmp_path):
    write(
        tmp_path,
        {"study": {"metric": "not_a_metric"}, "space": {"kd.k": {"type": "uniform", "low": 1, "high": 2}}},
    )
    notes: list[str] = []
    facts = read_space_facts(tmp_path, notes)
    assert facts.objectives == () and not facts.read and facts.log_params == LOG_PARAMS
    assert len(notes) == 1 and "space.yaml not read" in notes[0] and "not_a_metric" in notes[0]


def test_the_search_overrides_are_applied(tmp_path):
    # run.epochs: 0 is invalid on its own; the search was started with --set run.epochs=10
    raw = {
        "study": {"metric": "train_loss", "mode": "min"},
        "fixed": {"run.epochs": 0},
        "space": {"kd.k": {"type": "loguniform", "low": 0.1, "high": 10.0}},
    }
    write(tmp_path, raw)
    assert not read_space_facts(tmp_path).read
    (tmp_path / "search.yaml").write_text(yaml.safe_dump({"overrides": {"run.epochs": 10}}))
    facts = read_space_facts(tmp_path)
    assert facts.read and facts.objectives == (("train_loss", "min"),)


def test_log_scales_conditions_and_max_t(tmp_path):
    raw = {
        "study": {"name": "s"},
        "space": {
            "kd.units": {"type": "choice", "values": ["epoch", "iteration"]},
            "kd.e_th": {"type": "uniform", "low": 1.0, "high": 5.0, "condition": {"kd.units": "epoch"}},
            "kd.alpha": {"type": "loguniform", "low": 0.1, "high": 4.0},
            "loss.beta": {"type": "uniform", "low": 0.0, "high": 1.0},
        },
        "scheduler": {"asha": {"max_t": 6, "grace_period": 1, "reduction_factor": 2}},
    }
    write(tmp_path, raw)
    facts = read_space_facts(tmp_path)
    assert facts.max_t == 6 and facts.epoch_cap == 6
    assert "kd.alpha" in facts.log_params and "loss.beta" not in facts.log_params
    assert facts.conditions["kd.e_th"] == (*ENGINE_CONDITIONS["kd.e_th"], ("kd.units", frozenset({"epoch"})))
