"""Search-space files: every validation rule fires with a one-line message naming the key."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from ckd_search.cli import main
from ckd_search.config import leaf_keys
from ckd_search.errors import UserError
from ckd_search.search.space import SpaceSampler
from ckd_search.search.space import check_draws
from ckd_search.search.space import load_space
from ckd_search.search.space import parse_space
from tests.helpers import edited_copy

REPO = Path(__file__).resolve().parents[2]

VALID: dict[str, Any] = {
    "study": {"name": "t", "metric": "best_test_acc", "mode": "max", "num_trials": 4, "seed": 0},
    "fixed": {"run.epochs": 4, "data.limit": 200},
    "space": {
        "kd.k": {"type": "loguniform", "low": 0.01, "high": 100.0},
        "loss.beta": {"type": "uniform", "low": 0.0, "high": 1.0},
        "kd.schedule": {"type": "choice", "values": ["phased", "adaptive"]},
        "kd.p_th": {"type": "uniform", "low": 0.2, "high": 0.8, "condition": {"kd.schedule": "adaptive"}},
        "run.max_epochs": {"type": "int", "low": 1, "high": 4},
    },
    "scheduler": {"asha": {"max_t": 4, "grace_period": 1, "reduction_factor": 2}},
    "searcher": "tpe",
    "resources": {"cpu": 1, "gpu": 0.5},
}


def mutate(path: str, value: Any, delete: bool = False) -> dict[str, Any]:
    """A copy of VALID with ``a/b/c`` set to value (or deleted)."""
    return edited_copy(VALID, path, value, delete)


def test_valid_space_loads_and_draws(write_space):
    space = load_space(write_space(VALID))
    assert space.study.metric == "best_test_acc" and space.scheduler.max_t == 4
    keys = [p.key for p in space.params]
    assert keys.index("kd.schedule") < keys.index("kd.p_th")  # conditions come after their key
    configs = check_draws(space, 32)
    assert len(configs) == 32
    drawn = [space.draw(random.Random(i)) for i in range(64)]
    assert any("kd.p_th" in d for d in drawn) and any("kd.p_th" not in d for d in drawn)
    assert all(("kd.p_th" in d) == (d["kd.schedule"] == "adaptive") for d in drawn)
    assert all(1 <= d["run.max_epochs"] <= 4 and isinstance(d["run.max_epochs"], int) for d in drawn)


def test_define_by_run_honours_conditions(write_space):
    import optuna

    space = load_space(write_space(VALID))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: SpaceSampler(space.params)(t) or 0.0, n_trials=20)
    for t in study.trials:
        assert ("kd.p_th" in t.params) == (t.params["kd.schedule"] == "adaptive")


@pytest.mark.parametrize(
    ("raw", "names"),
    [
        (dict(VALID, sceduler="none"), "sceduler"),
        (mutate("space/kd.kk", {"type": "uniform", "low": 0.0, "high": 1.0}), "space.kd.kk"),
        (mutate("fixed/run.epoch", 3), "fixed.run.epoch"),
        (mutate("fixed/run.epochs", 0), "fixed.run.epochs"),
        (mutate("fixed/resources.cpus", 2), "fixed.resources.cpus"),
        (mutate("fixed/kd.k", 3.0), "space.kd.k"),
        (mutate("space/loss.beta/low", 1.0), "space.loss.beta.low"),
        (mutate("space/loss.beta/high", "lots"), "space.loss.beta.high"),
        (mutate("space/loss.beta/type", "normal"), "space.loss.beta.type"),
        (mutate("space/loss.beta/lo", 0.0), "space.loss.beta.lo"),
        (mutate("space/loss.beta/low", None, delete=True), "space.loss.beta.low"),
        (mutate("space/kd.k/low", 0.0), "space.kd.k.low"),
        (mutate("space/run.max_epochs/low", 1.5), "space.run.max_epochs.low"),
        (mutate("space/run.max_epochs/type", "uniform"), "space.run.max_epochs.type"),
        (mutate("space/kd.schedule/values", []), "space.kd.schedule.values"),
        (mutate("space/kd.schedule/values", ["phased", "phased"]), "space.kd.schedule.values"),
        (mutate("space/kd.schedule/values", ["adaptive", "sometimes"]), "space.kd.schedule='sometimes'"),
        (mutate("space/kd.p_th/condition", {"kd.nothing": 1}), "space.kd.p_th.condition"),
        (
            mutate("space/kd.p_th/condition", {"kd.schedule": "constant"}),
            "space.kd.p_th.condition.kd.schedule",
        ),
        (mutate("space/kd.p_th/condition", {"loss.beta": 0.5}), "space.kd.p_th.condition"),
        (mutate("space/data.size", {"type": "int", "low": 16, "high": 32}), "space.data.size.type"),
        (mutate("space/loss.beta", {"type": "grid", "values": [0.0, 0.5]}), "space.loss.beta.type"),
        (mutate("scheduler/asha/grace_period", 5), "scheduler.asha.grace_period"),
        (mutate("scheduler/asha/reduction_factor", 1), "scheduler.asha.reduction_factor"),
        (mutate("scheduler/asha/max_t", None, delete=True), "scheduler.asha.max_t"),
        (mutate("scheduler", "asha"), "scheduler"),
        (mutate("searcher", "bayes"), "searcher"),
        (mutate("searcher", "nsga2"), "searcher"),
        (mutate("searcher", {"type": "tpe", "n_warmup": 3}), "searcher.n_warmup"),
        (mutate("resources/gpu", 1.5), "resources.gpu"),
        (mutate("resources/gpu", -0.25), "resources.gpu"),
        (mutate("resources/cpu", 0), "resources.cpu"),
        (mutate("resources/tpu", 1), "resources.tpu"),
        (mutate("study/metric", "val_acc"), "study.metric"),
        (mutate("study/mode", "maximize"), "study.mode"),
        (mutate("study/num_trials", 0), "study.num_trials"),
        (mutate("study/budget", 3), "study.budget"),
        (mutate("study/metric", ["best_test_acc", "sops_per_sample"]), "scheduler"),
        (mutate("study/seed", 2**32), "study.seed=4294967296"),
        (mutate("study/seed", -1), "study.seed=-1"),
        (mutate("study/seed", 10**400), "study.seed"),  # too large even for a float
        (mutate("study/metric", {"best_test_acc": "max"}), "study.metric={'best_test_acc': 'max'}"),
        (mutate("study/metric", [["best_test_acc"]]), "study.metric=['best_test_acc']"),
    ],
)
def test_malformed_space_names_the_key(write_space, raw, names):
    path = write_space(raw)
    with pytest.raises(UserError) as info:
        load_space(path)
    message = str(info.value)
    assert names in message and str(path) in message
    assert "\n" not in message


def test_condition_cycle_is_refused():
    raw = mutate("space/kd.schedule/condition", {"kd.p_th": 0.5})
    raw["space"]["kd.p_th"] = {
        "type": "choice",
        "values": [0.5, 0.6],
        "condition": {"kd.schedule": "adaptive"},
    }
    with pytest.raises(UserError, match="cycle"):
        parse_space(raw)


def test_yaml_problems_are_one_line(write_space):
    with pytest.raises(UserError, match="expected a mapping"):
        load_space(write_space("- just\n- a list\n"))
    with pytest.raises(UserError, match=r"line \d+ invalid YAML"):
        load_space(write_space("study:\n  name: [unclosed\n"))
    with pytest.raises(UserError, match="no such file"):
        load_space("/nonexistent/space.yaml")


def test_string_floats_and_multi_objective(write_space):
    raw = mutate("space/optim.lr", {"type": "loguniform", "low": "1e-4", "high": "1e-2"})
    raw["study"]["metric"] = ["best_test_acc", "sops_per_sample"]
    raw["study"]["mode"] = ["max", "min"]
    raw["scheduler"] = "none"
    space = load_space(write_space(raw))
    assert space.param("optim.lr").low == pytest.approx(1e-4)
    assert space.study.multi_objective and space.study.modes == ("max", "min")


def test_grid_searcher_enumerates(write_space):
    raw = {
        "fixed": {"run.epochs": 4},
        "space": {
            "kd.temperature": {"type": "grid", "values": [2.0, 4.0]},
            "kd.schedule": {"type": "choice", "values": ["phased", "constant", "adaptive"]},
        },
        "searcher": "grid",
    }
    assert load_space(write_space(raw)).grid_size() == 6
    raw["space"]["loss.beta"] = {"type": "uniform", "low": 0.0, "high": 1.0}
    with pytest.raises(UserError, match="space.loss.beta.type"):
        load_space(write_space(raw))


def test_grid_searcher_refuses_conditions():
    raw = {
        "space": {
            "kd.schedule": {"type": "choice", "values": ["phased", "adaptive"]},
            "kd.p_th": {"type": "grid", "values": [0.3, 0.6], "condition": {"kd.schedule": "adaptive"}},
        },
        "searcher": "grid",
    }
    with pytest.raises(UserError, match=r"space\.kd\.p_th\.condition=.* searcher: grid"):
        parse_space(raw)
    del raw["space"]["kd.p_th"]["condition"]
    assert parse_space(raw).grid_size() == 4


def test_seed_bounds():
    assert parse_space(mutate("study/seed", 2**32 - 1)).study.seed == 2**32 - 1
    assert parse_space(mutate("study/seed", 0)).study.seed == 0


@pytest.mark.parametrize("metric", ["test_acc", "timesteps", "sops_per_sample", "energy_uj"])
def test_eval_only_metrics_need_eval_every_1(metric):
    raw = mutate("study/metric", metric)
    assert parse_space(raw).study.metric == metric  # default run.eval_every is 1
    raw["fixed"]["run.eval_every"] = 2
    with pytest.raises(UserError, match=f"study.metric='{metric}' .*run.eval_every is 2"):
        parse_space(raw)
    # --set reaches the same check
    with pytest.raises(UserError, match="run.eval_every is 3"):
        parse_space(mutate("study/metric", metric), overrides={"run.eval_every": 3})
    raw = mutate("study/metric", metric)
    raw["space"]["run.eval_every"] = {"type": "choice", "values": [1, 2]}
    with pytest.raises(UserError, match="run.eval_every is 1, 2"):
        parse_space(raw)
    raw["space"]["run.eval_every"] = {"type": "choice", "values": [1]}
    assert parse_space(raw).study.metric == metric
    # metrics reported every epoch do not care
    raw = mutate("fixed/run.eval_every", 2)
    assert parse_space(raw).study.metric == "best_test_acc"


@pytest.mark.parametrize(
    ("metric", "fixed", "match"),
    [
        ("loss_kd", {"kd.enabled": False}, "kd.enabled is false"),
        ("teacher_test_acc", {"kd.enabled": False}, "kd.enabled is false"),
        ("loss_kd", {"loss.method": "dvs_only"}, "loss.method is dvs_only"),
        ("teacher_test_acc", {"loss.method": "dvs_only"}, "loss.method is dvs_only"),
        ("loss_da", {"loss.method": "dvs_only"}, "dvs_only"),
        ("loss_cls_s", {"loss.method": "dvs_only"}, "dvs_only"),
    ],
)
def test_metrics_a_fixed_config_never_reports(metric, fixed, match):
    raw = mutate("study/metric", metric)
    assert parse_space(raw).study.metric == metric  # KD on by default
    raw["fixed"].update(fixed)
    with pytest.raises(UserError, match=f"study.metric='{metric}' .*{match}"):
        parse_space(raw)
    # as a --set override too
    with pytest.raises(UserError, match=match):
        parse_space(mutate("study/metric", metric), overrides=fixed)


@pytest.mark.parametrize(
    ("metric", "key", "values", "match"),
    [
        ("loss_kd", "kd.enabled", [True, False], "kd.enabled can be false"),
        ("teacher_test_acc", "kd.enabled", [True, False], "kd.enabled can be false"),
        ("loss_kd", "loss.method", ["ckd", "dvs_only"], "loss.method can be dvs_only"),
        ("loss_da", "loss.method", ["ckd", "dvs_only"], "dvs_only"),
    ],
)
def test_metrics_some_drawn_trials_never_report(metric, key, values, match):
    # Ray stops the whole search at the first result without the study's metric (TuneError)
    raw = mutate("study/metric", metric)
    raw["space"][key] = {"type": "choice", "values": values}
    with pytest.raises(UserError, match=f"study.metric='{metric}' .*{match}"):
        parse_space(raw)
    raw["space"][key] = {"type": "choice", "values": values[:1]}
    assert parse_space(raw).study.metric == metric


def test_fixed_key_given_nested_and_dotted_is_refused():
    raw = mutate("fixed/kd.temperature", 1.0)
    raw["fixed"]["kd"] = {"alpha": 2.0}
    assert parse_space(raw).fixed["kd.temperature"] == 1.0  # other keys of the section are fine
    raw["fixed"]["kd"]["temperature"] = 2.0
    with pytest.raises(UserError, match=r"fixed\.kd\.temperature=2\.0 is given twice"):
        parse_space(raw)


@pytest.mark.parametrize("values", [[1, 1.0], [True, 1], ["a", "b", "a"]])
def test_choices_optuna_would_merge_are_refused(values):
    with pytest.raises(UserError, match="lists a value twice"):
        parse_space(mutate("space/kd.alpha", {"type": "choice", "values": values}))


@pytest.mark.parametrize("name", ["kd's", "a b", "x/y", "", "ümlaut"])
def test_study_names_that_are_not_plain_are_refused(name):
    with pytest.raises(UserError, match="study.name"):
        parse_space(mutate("study/name", name))
    assert parse_space(mutate("study/name", "ncal-101_v2.1")).study.name == "ncal-101_v2.1"


def test_threads_beyond_the_trials_cores_are_refused():
    raw = mutate("fixed/run.threads", 2)
    raw["resources"] = {"cpu": 2}
    assert parse_space(raw).fixed["run.threads"] == 2
    raw["resources"] = {"cpu": 1}
    with pytest.raises(UserError, match=r"fixed\.run\.threads=2 must be <= resources\.cpu \(1\)"):
        parse_space(raw)


@pytest.mark.parametrize(
    "name", ["demo.yaml", "switching.yaml", "ncaltech101.yaml", "cepdvs.yaml", "energy.yaml"]
)
def test_shipped_spaces_validate(name):
    space = load_space(REPO / "search_spaces" / name)
    assert len(check_draws(space, 16)) == 16
    text = (REPO / "search_spaces" / name).read_text()
    assert text.startswith("#") and "Schema" in text


# --- generated files -----------------------------------------------------------------------------
KEYS = sorted(leaf_keys())
UNKNOWN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=1, max_size=20).filter(
    lambda k: k not in leaf_keys() and not k.startswith("resources.")
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=UNKNOWN, section=st.sampled_from(["fixed", "space"]))
def test_generated_unknown_keys_are_named(key, section):
    value = {"type": "uniform", "low": 0.0, "high": 1.0} if section == "space" else 1
    raw = mutate(f"{section}/{key}", value) if "/" not in key else mutate(f"{section}/x", value)
    with pytest.raises(UserError) as info:
        parse_space(raw)
    assert f"{section}." in str(info.value) and "\n" not in str(info.value)


@settings(max_examples=40, deadline=None)
@given(
    low=st.floats(-1e3, 1e3, allow_nan=False),
    high=st.floats(-1e3, 1e3, allow_nan=False),
    kind=st.sampled_from(["uniform", "loguniform"]),
)
def test_generated_bounds(low, high, kind):
    raw = mutate("space/loss.beta", {"type": kind, "low": low, "high": high})
    bad = not low < high or (kind == "loguniform" and low <= 0) or low < 0  # loss.beta must be >= 0
    if bad:
        with pytest.raises(UserError) as info:
            parse_space(raw)
        assert "space.loss.beta" in str(info.value)
    else:
        space = parse_space(raw)
        assert all(low <= c.loss.beta <= high for c in check_draws(space, 8))


@settings(max_examples=25, deadline=None)
@given(values=st.lists(st.one_of(st.integers(-3, 100), st.floats(-1, 1e3, allow_nan=False)), max_size=5))
def test_generated_choices_for_an_int_field(values):
    raw = mutate("space/optim.warmup_epochs", {"type": "choice", "values": values})
    ok = (
        bool(values)
        and len({(type(v), v) for v in values}) == len(values)
        and all(float(v).is_integer() and 0 <= v < 4 for v in values)
    )
    if ok:
        assert parse_space(raw).param("optim.warmup_epochs").values == tuple(values)
    else:
        with pytest.raises(UserError) as info:
            parse_space(raw)
        assert "space.optim.warmup_epochs" in str(info.value)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_generated_garbage_sections_never_crash(data):
    section = data.draw(st.sampled_from(["study", "fixed", "space", "scheduler", "searcher", "resources"]))
    garbage = data.draw(st.one_of(st.integers(), st.text(max_size=8), st.lists(st.integers(), max_size=3)))
    raw = dict(VALID, **{section: garbage})
    try:
        parse_space(raw)
    except UserError as err:
        assert "\n" not in str(err)


# --- the command -----------------------------------------------------------------------------------
def test_check_space_cli(write_space, capsys):
    assert main(["check-space", str(write_space(VALID)), "--draws", "4"]) == 0
    out = capsys.readouterr().out
    assert "ok:" in out and "kd.p_th: uniform [0.2, 0.8] if kd.schedule in ['adaptive']" in out
    bad = write_space(mutate("space/kd.k/low", -1.0), name="bad.yaml")
    assert main(["check-space", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "space.kd.k.low=-1.0" in err
    assert main(["check-space", "/nonexistent.yaml"]) == 2


def test_check_space_does_not_start_ray(write_space):
    import subprocess
    import sys

    path = write_space(yaml.safe_dump(VALID))
    code = (
        "import sys; from ckd_search.cli import main; rc = main(['check-space', sys.argv[1]]); "
        "sys.exit(rc if 'ray' not in sys.modules or not __import__('ray').is_initialized() else 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kd.kk": 1}, "--set: kd.kk=1 is not a key of the engine config (known kd.* keys: kd.alpha"),
        ({"resources.cpus": 1}, "--set: resources.cpus=1 is set in the `resources` section"),
        ({"kd.k": 1}, "--set: kd.k=1 sets a key that space.yaml searches; drop one of them"),
    ],
)
def test_set_mistakes_name_the_flag_not_the_file(overrides, message):
    with pytest.raises(UserError) as info:
        parse_space(VALID, "space.yaml", overrides=overrides)
    assert str(info.value).startswith(message)


def test_possible_values_of_fixed_searched_and_conditional_keys():
    space = parse_space(mutate("fixed/run.device", "cpu"))
    assert space.possible_values("run.device") == {"cpu"}
    assert space.possible_values("kd.temperature") == {4.0}  # the config default
    assert space.possible_values("kd.schedule") == {"phased", "adaptive"}
    assert space.possible_values("kd.p_th") == {0.2, 0.8, 0.5}  # bounds, and the default where not drawn


def test_the_schema_example_in_the_module_docstring_is_a_valid_space():
    """The space files point readers at this example for the full rules: it must load as written."""
    import textwrap

    from ckd_search.search import space as space_module

    doc = space_module.__doc__ or ""
    block = doc.split(".. code-block:: yaml", 1)[1].split("\nRules checked", 1)[0]
    space = parse_space(yaml.safe_load(textwrap.dedent(block)), "docstring")
    assert {"optim.batch_size", "kd.p_th"} <= set(space.keys)
    assert space.param("optim.batch_size").log and space.param("kd.p_th").condition
