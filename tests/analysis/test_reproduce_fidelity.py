"""``ckd-search reproduce`` and the fidelity study on tiny settings (real trainings)."""

from __future__ import annotations

import json
import math

import pytest

from ckd_search.analysis.fidelity import budget_config
from ckd_search.analysis.fidelity import fidelity_study
from ckd_search.analysis.fidelity import sample_configs
from ckd_search.analysis.reproduce import VARIANTS
from ckd_search.analysis.reproduce import seeds_for
from ckd_search.cli import main
from ckd_search.config import Config
from ckd_search.engine import Schedules


def test_seeds_follow_he_et_al():
    assert seeds_for(2) == [42, 1024]
    assert seeds_for(3) == [42, 1024, 90210]
    assert seeds_for(5) == [0, 1, 2, 3, 4]


def test_budget_configs_differ_only_in_the_schedule_span(tmp_path, tiny):
    base = tiny()
    params = sample_configs(1, 8, seed=0)[0]
    full = Schedules(budget_config(base, params, 8, None), 10)
    trunc = Schedules(budget_config(base, params, 8, 2, "truncate"), 10)
    comp = Schedules(budget_config(base, params, 8, 2, "compress"), 10)
    assert (full.budget, trunc.budget, comp.budget) == (8, 2, 2)
    assert (full.span, trunc.span, comp.span) == (8, 8, 2)
    assert comp.switch_point() == pytest.approx(params["kd.e_th"] / 4)
    assert sample_configs(3, 8, seed=0) == sample_configs(3, 8, seed=0)


def test_fidelity_study_gives_two_finite_correlations(tmp_path, tiny):
    base = tiny()
    result = fidelity_study(base, n_configs=4, full_epochs=3, low_epochs=1, seed=1, metric="final_test_acc")
    assert len(result["rows"]) == 4
    for mode in ("truncate", "compress"):
        rho = result["spearman"][mode]["rho"]
        assert rho is not None and math.isfinite(rho) and -1 <= rho <= 1
    json.dumps(result)  # JSON-ready


@pytest.mark.slow
def test_reproduce_writes_the_ablation_table(tmp_path, tiny):
    out = tmp_path / "repro"
    sets = [
        f"{k}={v}"
        for k, v in tiny(**{"run.epochs": 2}).flat().items()
        if k
        in (
            "data.limit",
            "data.size",
            "data.timesteps",
            "model.width",
            "teacher.epochs",
            "run.epochs",
            "optim.batch_size",
            "run.device",
            "run.threads",
            "data.cache_dir",
        )
    ]
    code = main(["reproduce", "--dataset", "digits_dvs", "--seeds", "2", "--out", str(out), "--set", *sets])
    assert code == 0
    doc = json.loads((out / "ablation.json").read_text())
    assert doc["seeds"] == [42, 1024]
    assert len(doc["runs"]) == len(VARIANTS) * 2
    assert set(doc["summary"]) == {v.name for v in VARIANTS}
    for s in doc["summary"].values():
        assert s["n"] == 2 and 0 <= s["best_mean"] <= 1 and s["best_std"] >= 0
    for row in doc["runs"]:  # the CKD variants distil from a teacher; the baseline and transfer do not
        assert (row["teacher_test_acc"] is not None) == row["variant"].startswith("ckd_"), row
    teacherless = {r["prepare_key"] for r in doc["runs"] if not r["variant"].startswith("ckd_")}
    # one preparation without a teacher, one with a teacher per seed (the fine-tune is seeded)
    assert len(teacherless) == 1 and len({r["prepare_key"] for r in doc["runs"]}) == 1 + len(doc["seeds"])
    md = (out / "ablation.md").read_text()
    for v in VARIANTS:
        assert f"| {v.name} |" in md
    assert "±" in md
    assert (out / "descriptors.json").is_file()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reproduce-digits_dvs")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("ckd.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == len(VARIANTS) * 2
    assert "ckd_phased.best_mean" in parents[0].data.metrics


def test_reproduce_rejects_a_contradicting_dataset(tmp_path, capsys):
    code = main(
        [
            "reproduce",
            "--dataset",
            "digits_dvs",
            "--seeds",
            "1",
            "--out",
            str(tmp_path),
            "--set",
            "data.dataset=shapes_dvs",
        ]
    )
    assert code == 2
    assert "data.dataset=shapes_dvs but --dataset is digits_dvs" in capsys.readouterr().err


def test_the_teacher_line_counts_each_seeds_teacher_once():
    from ckd_search.analysis.reproduce import ablation_markdown

    runs = [
        {"variant": v.name, "seed": seed, "best_test_acc": 0.5, "final_test_acc": 0.5, "teacher_test_acc": t}
        for seed, t in ((42, 0.80), (1024, 0.90))
        for v in VARIANTS
        if v.name.startswith("ckd")
    ]
    doc = {"dataset": "d", "seeds": [42, 1024], "runs": runs, "summary": {}}
    line = next(x for x in ablation_markdown(doc).splitlines() if x.startswith("Teacher"))
    assert "85.00 ± 7.07" in line  # two teachers: sample std of (80, 90); four rows would give 5.77


def test_each_variant_sets_its_switches_and_the_seed():
    from ckd_search.analysis.reproduce import variant_config

    base = Config.from_dict({"kd.schedule": "adaptive", "loss.method": "dvs_only"})
    made = {v.name: variant_config(base, v, 7) for v in VARIANTS}
    assert made["tet_baseline"].loss.method == "dvs_only"
    assert made["transfer"].loss.method == "ckd" and not made["transfer"].kd.enabled
    assert made["ckd_kd_always"].kd.schedule == "constant" and made["ckd_kd_always"].kd.enabled
    assert made["ckd_phased"].kd.schedule == "phased" and made["ckd_phased"].loss.method == "ckd"
    assert {c.run.seed for c in made.values()} == {7}
