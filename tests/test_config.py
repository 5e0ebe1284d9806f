"""The configuration tree: round trips, dotted keys, coercion and every validation rule."""

import dataclasses

import pytest
import yaml

from ckd_search import config as C
from ckd_search.config import Config
from ckd_search.errors import ConfigError
from ckd_search.errors import UserError


def test_defaults_validate_and_round_trip_through_yaml(tmp_path):
    cfg = Config.from_dict({"kd.temperature": 2.0, "data": {"size": 48}, "model.width": 0.5})
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = Config.from_yaml(path)
    assert again == cfg
    assert again.kd.temperature == 2.0 and again.data.size == 48 and again.model.width == 0.5


def test_dict_round_trip_with_flat_keys():
    cfg = Config.from_dict({"run.epochs": 10, "kd.e_th": 4})
    assert Config.from_dict(cfg.flat()) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.flat()["kd.e_th"] == 4.0


def test_nested_and_dotted_keys_merge():
    cfg = Config.from_dict({"kd": {"k": 10}, "kd.alpha": 0.5, "data.simulator.contrast": 0.3})
    assert cfg.kd.k == 10.0 and cfg.kd.alpha == 0.5 and cfg.data.simulator.contrast == 0.3


def test_numbers_in_strings_are_coerced():
    cfg = Config.from_dict({"optim.lr": "1e-4", "run.epochs": "12", "optim.min_lr": "1e-6"})
    assert cfg.optim.lr == 1e-4 and cfg.run.epochs == 12
    assert Config.from_dict({"run.epochs": 3.0}).run.epochs == 3
    assert Config.from_dict({"run.compile": "true"}).run.compile is True


def test_replace_returns_validated_copy():
    cfg = Config()
    assert cfg.replace(**{"kd.k": 5}).kd.k == 5.0
    with pytest.raises(ConfigError, match="kd.k"):
        cfg.replace(**{"kd.k": -5})


@pytest.mark.parametrize(
    ("values", "key", "rule"),
    [
        ({"kd.temperature": -1.0}, "kd.temperature", "must be > 0"),
        ({"kd.temperature": "hot"}, "kd.temperature", "must be a number"),
        ({"kd.k": 0}, "kd.k", "must be in (0, 10000]"),
        ({"kd.k": 1e308, "kd.e_th": 1}, "kd.k", "must be in (0, 10000]"),  # k epochs / span overflowed
        ({"kd.schedule": "sometimes"}, "kd.schedule", "must be one of"),
        ({"kd.units": "days"}, "kd.units", "must be one of"),
        ({"model.bn_statistics": "per_batch"}, "model.bn_statistics", "must be one of"),
        ({"kd.e_th": -1}, "kd.e_th", "must be >= 0"),
        ({"kd.e_th": 99, "run.epochs": 10}, "kd.e_th", "must be <= run.epochs"),
        ({"kd.p_th": 1.5}, "kd.p_th", "must be in"),
        ({"kd.alpha": -0.1}, "kd.alpha", "must be >= 0"),
        ({"kd.target": "x"}, "kd.target", "must be one of"),
        ({"kd.enabled": "maybe"}, "kd.enabled", "true or false"),
        ({"loss.beta": -1}, "loss.beta", "must be >= 0"),
        ({"loss.tet_lambda": 2}, "loss.tet_lambda", "must be in"),
        ({"loss.replace": "sometimes"}, "loss.replace", "must be one of"),
        ({"loss.replace_power": 0}, "loss.replace_power", "must be > 0"),
        ({"loss.method": "ann"}, "loss.method", "must be one of"),
        ({"loss.theta_init": 1e300}, "loss.theta_init", "must be in [-100, 100]"),  # torch: overflow
        ({"loss.theta_init": -101}, "loss.theta_init", "must be in [-100, 100]"),
        ({"loss.tet_phi": 1e300}, "loss.tet_phi", "must be in [-10, 10]"),
        ({"loss.tet_phi": -11}, "loss.tet_phi", "must be in [-10, 10]"),
        ({"data.dataset": "mnist"}, "data.dataset", "must be one of"),
        ({"data.dataset": "ncaltech101"}, "data.root", "must be set"),
        ({"data.timesteps": 0}, "data.timesteps", "must be in"),
        ({"data.size": 4}, "data.size", "must be in"),
        ({"data.size": 15}, "data.size", "must be in [16, 512]"),  # VGGSNN: four 2x2 poolings
        ({"data.pairing": "any"}, "data.pairing", "must be one of"),
        ({"data.crop_padding": -1}, "data.crop_padding", "must be >= 0"),
        ({"data.rotation": 200}, "data.rotation", "must be in"),
        ({"data.split_seed": -3}, "data.split_seed", "must be in [0, 4294967295]"),
        ({"data.split_seed": 2**32}, "data.split_seed", "must be in [0, 4294967295]"),  # scikit-learn
        ({"data.limit": 0}, "data.limit", "must be >= 1"),
        ({"data.simulator.contrast": 0}, "data.simulator.contrast", "must be > 0"),
        ({"data.simulator.contrast_sigma": -0.1}, "data.simulator.contrast_sigma", "must be >= 0"),
        ({"data.simulator.log_eps": 0}, "data.simulator.log_eps", "must be > 0"),
        ({"data.simulator.amplitude": 0}, "data.simulator.amplitude", "must be > 0"),
        ({"data.simulator.steps_per_leg": 0}, "data.simulator.steps_per_leg", "must be >= 1"),
        ({"data.simulator.duration_us": 0}, "data.simulator.duration_us", "must be >= 1"),
        ({"data.simulator.refractory_us": -1}, "data.simulator.refractory_us", "must be >= 0"),
        ({"data.simulator.shot_noise_hz": -1}, "data.simulator.shot_noise_hz", "must be >= 0"),
        ({"data.simulator.intensity": "rgb"}, "data.simulator.intensity", "must be one of"),
        ({"model.width": 0}, "model.width", "must be in"),
        ({"model.tau": 1.0}, "model.tau", "must be > 1"),
        ({"model.v_threshold": 0}, "model.v_threshold", "must be > 0"),
        ({"model.surrogate_alpha": 0}, "model.surrogate_alpha", "must be > 0"),
        ({"model.arch": "resnet"}, "model.arch", "must be one of"),
        ({"model.cka_tap": "pre_reset"}, "model.cka_tap", "must be one of"),
        ({"teacher.arch": "vit"}, "teacher.arch", "must be one of"),
        ({"teacher.input_size": 2}, "teacher.input_size", "must be in"),
        ({"teacher.epochs": -1}, "teacher.epochs", "must be >= 0"),
        ({"teacher.lr": 0}, "teacher.lr", "must be > 0"),
        ({"teacher.batch_size": 0}, "teacher.batch_size", "must be >= 1"),
        ({"teacher.weight_decay": -1e-4}, "teacher.weight_decay", "must be >= 0"),
        ({"teacher.shift": 0.6}, "teacher.shift", "must be in"),
        ({"optim.batch_size": 1}, "optim.batch_size", "must be >= 2"),
        ({"optim.lr": 0}, "optim.lr", "must be > 0"),
        ({"optim.weight_decay": -1}, "optim.weight_decay", "must be >= 0"),
        ({"optim.beta1": 1.5}, "optim.beta1", "must be in"),
        ({"optim.beta1": 1}, "optim.beta1", "must be in [0, 1)"),  # AdamW refuses beta = 1
        ({"optim.beta2": -0.5}, "optim.beta2", "must be in"),
        ({"optim.beta2": 1.0}, "optim.beta2", "must be in [0, 1)"),
        ({"optim.eps": 0}, "optim.eps", "must be > 0"),
        ({"optim.warmup_epochs": -1}, "optim.warmup_epochs", "must be >= 0"),
        (
            {"optim.warmup_epochs": 6, "run.epochs": 6},
            "optim.warmup_epochs",
            "must be < run.epochs",
        ),
        (  # a 1-epoch run would train at warmup_lr throughout
            {"optim.warmup_epochs": 1, "run.epochs": 1},
            "optim.warmup_epochs",
            "must be < run.epochs (1)",
        ),
        ({"optim.warmup_lr": -1}, "optim.warmup_lr", "must be >= 0"),
        ({"optim.min_lr": 1.0, "optim.lr": 0.1}, "optim.min_lr", "must be <= optim.lr"),
        ({"run.epochs": 0}, "run.epochs", "must be >= 1"),
        ({"run.epochs": 2.5}, "run.epochs", "must be an integer"),
        ({"run.max_epochs": 9, "run.epochs": 5}, "run.max_epochs", "must be <= run.epochs"),
        ({"run.max_epochs": 0}, "run.max_epochs", "must be >= 1"),
        ({"run.fidelity": "full"}, "run.fidelity", "must be one of"),
        ({"run.seed": -1}, "run.seed", "must be in [0, 4294967294]"),
        ({"run.seed": 2**32 - 1}, "run.seed", "must be in [0, 4294967294]"),  # the run seeds seed + 1
        ({"run.seed": 2**64 - 1}, "run.seed", "must be in [0, 4294967294]"),
        ({"run.device": "tpu"}, "run.device", "must be auto"),
        ({"run.precision": "fp8"}, "run.precision", "must be one of"),
        ({"run.compile_mode": "fast"}, "run.compile_mode", "must be one of"),
        ({"run.cpu_lif": "triton"}, "run.cpu_lif", "must be one of"),
        ({"run.threads": 0}, "run.threads", "must be in [1, 1024]"),
        ({"run.threads": 100000}, "run.threads", "must be in [1, 1024]"),  # aborted the process
        ({"run.checkpoint_every": -1}, "run.checkpoint_every", "must be >= 0"),
        ({"run.eval_every": 0}, "run.eval_every", "must be >= 1"),
        ({"resources.cpus": 0}, "resources.cpus", "must be > 0"),
        ({"resources.gpu_fraction": 1.5}, "resources.gpu_fraction", "must be in"),
        ({"kd.temperatur": 4}, "kd.temperatur", "not a known key"),
        ({"nosuch.key": 1}, "nosuch.key=1", "not a known key"),  # the dotted key, not nosuch={...}
        ({"kd": 3}, "kd", "must be a mapping"),
        ({"kd.k": None}, "kd.k", "must not be empty"),
        ({"kd.k": float("nan")}, "kd.k", "finite"),
        ({"run.epochs": True}, "run.epochs", "must be an integer"),
        ({"run.epochs": 10**400}, "run.epochs", "must be an integer"),  # too large for a float
        ({"kd.k": 10**400}, "kd.k", "must be a number"),
        ({"data.dataset": 3}, "data.dataset", "must be a string"),
    ],
)
def test_every_rule_fires_with_key_value_and_rule(values, key, rule):
    with pytest.raises(ConfigError) as info:
        Config.from_dict(values)
    message = str(info.value)
    assert message.startswith(key), message
    assert rule in message


def test_every_checked_field_has_a_rule_test():
    """Each field with a validation rule has a row of its own in the parametrised table above."""
    (mark,) = [m for m in test_every_rule_fires_with_key_value_and_rule.pytestmark if m.name == "parametrize"]
    tested = {key for _values, key, _rule in mark.args[1]}
    checked = set()

    def walk(cls, prefix):
        for fld in dataclasses.fields(cls):
            hint = C._hint(cls, fld.name)
            if dataclasses.is_dataclass(hint):
                walk(hint, f"{prefix}{fld.name}.")
            elif fld.metadata.get("check") is not None:
                checked.add(prefix + fld.name)

    walk(Config, "")
    assert len(checked) > 40
    missing = checked - tested
    assert not missing, f"rules without a test: {sorted(missing)}"


def test_dotted_key_conflicts_are_errors():
    with pytest.raises(ConfigError, match="kd.k"):
        Config.from_dict({"kd.k": 1, "kd": {"k": 2}})


def test_yaml_loading_errors_name_the_path(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        Config.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kd: [1, 2\n")
    with pytest.raises(UserError, match="invalid YAML"):
        Config.from_yaml(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="mapping"):
        Config.from_yaml(listy)


def test_a_wrong_key_in_a_file_names_the_file_and_in_an_override_not(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"kd": {"temprature": 2.0}}))
    with pytest.raises(UserError) as info:
        Config.from_yaml(path)
    assert str(info.value).startswith(f"{path}: kd.temprature=2.0 is not a known key")
    path.write_text(yaml.safe_dump({"kd": {"k": 3.0}}))
    with pytest.raises(ConfigError) as info:
        Config.from_yaml(path, {"kd.kk": 7})
    assert str(info.value).startswith("kd.kk=7 is not a known key")


def test_yaml_overrides_win(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"kd": {"k": 3.0}}))
    assert Config.from_yaml(path, {"kd.k": 7}).kd.k == 7.0


def test_field_docs_cover_every_leaf():
    docs = list(C.field_docs())
    assert len(docs) == len(C.leaf_keys()) > 60
    assert all(doc for _, _, doc in docs)


def test_a_key_given_twice_is_refused_with_its_line(tmp_path):
    from ckd_search.config import load_yaml_mapping

    path = tmp_path / "c.yaml"
    path.write_text("run:\n  epochs: 2\nkd:\n  k: 1\nrun:\n  seed: 3\n")  # PyYAML would keep the second
    with pytest.raises(UserError, match=r"c\.yaml: line 5 invalid YAML \(key 'run' given twice"):
        load_yaml_mapping(path)
    path.write_text("kd:\n  k: 1\n  k: 2\n")
    with pytest.raises(UserError, match="key 'k' given twice"):
        Config.from_yaml(path)
    path.write_text("a: !!python/object:os.system {}\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_yaml_mapping(path)


def test_the_largest_accepted_values_validate():
    cfg = Config.from_dict(
        {
            "data.size": 16,
            "data.split_seed": 2**32 - 1,
            "run.seed": 2**32 - 2,
            "run.threads": 1024,
            "optim.beta1": 0.0,
            "optim.beta2": 0.9999,
            "kd.k": 1e4,
            "loss.theta_init": -100,
            "loss.tet_phi": 10,
            "run.epochs": 2,
            "optim.warmup_epochs": 1,
        }
    )
    assert cfg.run.seed == 2**32 - 2 and cfg.data.size == 16 and cfg.kd.k == 1e4


def test_a_file_with_a_key_given_twice_across_forms_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("kd.k: 3\nkd:\n  k: 4\n")
    with pytest.raises(UserError) as info:
        Config.from_yaml(path)
    assert str(info.value).startswith(f"{path}: kd.k=")
    assert "given twice" in str(info.value)
    with pytest.raises(UserError) as info:  # the file is wrong, even where an override sets the key
        Config.from_yaml(path, {"kd.k": 5})
    assert str(info.value).startswith(f"{path}: kd.k=")


def test_a_file_with_a_non_string_key_names_the_file_the_key_and_its_value(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("1: 2\n")
    with pytest.raises(UserError) as info:
        Config.from_yaml(path)
    assert str(info.value) == f"{path}: 1=2 must have a string key, not int"
    path.write_text("kd:\n  3: 4.0\n")
    with pytest.raises(UserError) as info:
        Config.from_yaml(path)
    assert str(info.value) == f"{path}: kd.3=4.0 must have a string key, not int"


@pytest.mark.parametrize(
    ("text", "key"), [("? [a, b]\n: 1\n", "['a', 'b']"), ("kd:\n  ? {k: 1}\n  : 2\n", "{'k': 1}")]
)
def test_a_non_scalar_key_is_one_line_naming_the_file_and_the_key(tmp_path, text, key):
    from ckd_search.config import load_yaml_mapping

    path = tmp_path / "k.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:  # was TypeError: unhashable type
        load_yaml_mapping(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line ") and "invalid YAML" in message
    assert f"key {key} is a " in message and "\n" not in message
    with pytest.raises(UserError, match="not a single value"):
        Config.from_yaml(path)


def test_the_cli_refuses_a_too_small_student_at_once(tmp_path, capsys):
    from ckd_search.cli import main

    cache = f"data.cache_dir={tmp_path / 'cache'}"  # where the old code built data and a teacher first
    code = main(["train", "--out", str(tmp_path / "out"), "--set", "data.size=8", "run.device=cpu", cache])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "data.size=8 must be in [16, 512]" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_config_file_reads_leading_zeros_as_decimal_and_refuses_base_60(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  limit: 010\nrun:\n  epochs: 0x3\n")
    config = Config.from_yaml(path)
    assert (config.data.limit, config.run.epochs) == (10, 3)
    path.write_text("data:\n  limit: 1:30\n")
    with pytest.raises(UserError, match="data.limit='1:30' must be an integer"):
        Config.from_yaml(path)
