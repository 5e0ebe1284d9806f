"""``ckd-search bench ...`` refuses bad input up front: one line on stderr, exit code 2, nothing run."""

from __future__ import annotations

import pytest

from ckd_search.cli import main as cli_main


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line on stderr (and nothing on stdout: no table, no header was printed)."""
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("ckd-search: error: ")
    return line


@pytest.fixture
def no_packed_trials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing must refuse bad input in the parent: starting any trial process fails the test."""
    from ckd_search.perf import packing

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a packed trial was started")

    monkeypatch.setattr(packing, "run_packed", refuse)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch", "1"], "optim.batch_size=1 must be >= 2"),
        (["--seed", "-5"], "run.seed=-5 must be"),
    ],
    ids=["batch-1", "negative-seed"],
)
def test_packing_config_errors_are_one_line_before_any_trial(args, message, capsys, no_packed_trials):
    assert cli_main(["bench", "packing", "--smoke", "--trials", "1", *args]) == 2
    assert message in one_error_line(capsys)


def test_packing_checks_the_seed_of_every_packed_trial(capsys, no_packed_trials):
    """Trial ``rank`` runs seed + rank: a seed valid for rank 0 can break the rule for rank 1."""
    top = 2**32 - 2  # run.seed's largest value (the run also seeds a stream with seed + 1)
    assert cli_main(["bench", "packing", "--smoke", "--trials", "1,2", "--seed", str(top)]) == 2
    assert f"run.seed={top + 1} must be" in one_error_line(capsys)


def test_packing_cache_dir_that_is_a_file_is_refused(tmp_path, capsys, no_packed_trials):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    assert cli_main(["bench", "packing", "--smoke", "--trials", "1", "--cache-dir", str(afile)]) == 2
    line = one_error_line(capsys)
    assert "--cache-dir" in line and str(afile) in line and "not a directory" in line


def test_packing_good_input_reaches_the_trials(tmp_path, monkeypatch):
    """The up-front checks let good input through (the trials themselves are faked here)."""
    from ckd_search.perf import packing

    levels: list[int] = []

    def fake(n, spec, worker=None):
        levels.append(n)
        return [
            {"rank": r, "status": "ok", "start": 0.0, "end": 1.0, "pairs": 8, "peak_gib": None}
            for r in range(n)
        ]

    monkeypatch.setattr(packing, "run_packed", fake)
    cache = tmp_path / "cache"
    assert packing.main(["--smoke", "--trials", "1,2", "--cache-dir", str(cache)]) == 0
    assert levels == [1, 2] and cache.is_dir()


def test_profile_unknown_experiment_is_one_line_listing_the_known(capsys):
    assert cli_main(["bench", "profile", "--smoke", "--only", "nope"]) == 2
    line = one_error_line(capsys)
    assert "--only" in line and "'nope'" in line
    for known in ("engine", "streams-fused", "streams-jointBN", "sj-lif", "compile", "engine-1thread"):
        assert known in line


@pytest.mark.parametrize(
    "only, message",
    [
        (",", "--only: no experiment named"),
        ("compile", "--only compile: needs --compile"),
        ("engine-1thread", "--only engine-1thread: needs --one-thread"),
    ],
)
def test_profile_empty_or_unavailable_only_is_refused(only, message, capsys):
    assert cli_main(["bench", "profile", "--smoke", "--only", only]) == 2
    assert message in one_error_line(capsys)


def test_profile_only_keeps_engine_first():
    import argparse

    import torch

    from ckd_search.perf.profile_step import select_experiments

    def names(only: str | None, **flags: bool) -> list[str]:
        args = argparse.Namespace(only=only, compile=flags.get("compile", False), one_thread=False)
        return [e.name for e in select_experiments(args, torch.device("cpu"))]

    assert names("streams-fused") == ["engine", "streams-fused"]
    assert names("compile, sj-lif", compile=True) == ["engine", "sj-lif", "compile"]
    assert names(None) == ["engine", "streams-fused", "streams-jointBN", "sj-lif"]


@pytest.mark.parametrize("variants", [",", ""], ids=["comma", "empty"])
def test_step_empty_variant_selection_is_refused(variants, capsys):
    assert cli_main(["bench", "step", "--smoke", "--variants", variants]) == 2
    line = one_error_line(capsys)
    assert "--variants: no variant named" in line and "ckd-fp32" in line


@pytest.mark.parametrize("variants", ["ckd-bf16", "ckd-bf16,base-bf16-compile"])
def test_step_selection_that_cannot_run_on_a_cpu_is_refused(variants, capsys):
    assert cli_main(["bench", "step", "--smoke", "--device", "cpu", "--variants", variants]) == 2
    line = one_error_line(capsys)
    assert f"--variants {variants}:" in line and "CUDA device" in line and "cpu" in line


def test_step_runnable_keeps_what_a_cpu_can_run():
    import torch

    from ckd_search.perf.step_bench import VARIANTS
    from ckd_search.perf.step_bench import runnable

    assert [v.name for v in runnable(VARIANTS, torch.device("cpu"))] == ["ckd-fp32", "base-fp32"]
    assert runnable(VARIANTS, torch.device("cuda")) == list(VARIANTS)
