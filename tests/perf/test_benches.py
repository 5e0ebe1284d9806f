"""Every benchmark's --smoke mode runs and prints the table it promises (no timing thresholds)."""

import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from ckd_search.errors import UserError
from ckd_search.perf.packing import gpu_sharing
from ckd_search.perf.packing import private_mps
from ckd_search.perf.timing import SMOKE_SHAPE
from ckd_search.perf.timing import cell_number
from ckd_search.perf.timing import format_table
from ckd_search.perf.timing import parse_tables

REPO = Path(__file__).resolve().parents[2]


def positive(cell: str) -> bool:
    value = cell_number(cell)
    return math.isfinite(value) and value > 0


def test_table_round_trip():
    text = "intro\n" + format_table(("a", "b"), [["x", "1,234.5"], ["y", "2.0"]]) + "\ntail\n"
    (rows,) = parse_tables(text)
    assert rows == [{"a": "x", "b": "1,234.5"}, {"a": "y", "b": "2.0"}]
    assert cell_number(rows[0]["b"]) == 1234.5


def test_step_bench_smoke_prints_variants_scaling_and_ratio(capsys):
    from ckd_search.perf.step_bench import COLUMNS
    from ckd_search.perf.step_bench import main

    assert main(["--smoke", "--scaling"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM" in out  # the header says the inputs are random
    main_rows, scaling_rows = parse_tables(out)
    assert [r["variant"] for r in main_rows] == ["ckd-fp32", "base-fp32"]  # CPU: GPU-only ones skipped
    for variant in (
        "ckd-bf16",
        "ckd-bf16-compile",
        "ckd-bf16-graphs",
        "base-bf16-compile",
        "base-bf16-compile-cl",
    ):
        assert re.search(rf"note: skipped {variant}\b.*needs a CUDA device", out)
    smoke_b, smoke_t, smoke_s = (str(SMOKE_SHAPE[k]) for k in ("batch", "timesteps", "size"))
    assert [(r["B"], r["T"], r["size"]) for r in main_rows] == [(smoke_b, smoke_t, smoke_s)] * 2
    assert {r["B"] for r in scaling_rows} == {smoke_b}  # the scaling table varies T and size only
    for row in main_rows + scaling_rows:
        assert tuple(row) == COLUMNS
        assert positive(row["pairs/s"]) and positive(row["ms/step"]) and positive(row["warm-up s"])
        assert row["peak GiB"] == "-"  # CPU
        # pairs/s and ms/step describe the same median step
        assert cell_number(row["pairs/s"]) == pytest.approx(8e3 / cell_number(row["ms/step"]), rel=0.01)
    assert [(r["T"], r["size"]) for r in scaling_rows] == [("2", "16"), ("3", "16"), ("2", "32"), ("3", "32")]
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"ratio CKD/best-baseline = (\d+\.\d\d)", last)
    assert match and float(match.group(1)) > 0


def test_cli_bench_step_passes_smoke_and_extra_args(capsys):
    from ckd_search.cli import main

    assert main(["bench", "step", "--smoke", "--variants", "ckd-fp32", "--steps", "1"]) == 0
    (rows,) = parse_tables(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == ["ckd-fp32"]


def test_cpu_epoch_smoke(capsys):
    from ckd_search.perf.cpu_epoch import COLUMNS
    from ckd_search.perf.cpu_epoch import main

    assert main(["--smoke"]) == 0
    out = capsys.readouterr().out
    (rows,) = parse_tables(out)
    assert len(rows) == 1 and tuple(rows[0]) == COLUMNS
    row = rows[0]
    for key in ("train s", "steps", "pairs", "pairs/s", "ms/step", "eval s", "train loss"):
        assert positive(row[key]), key
    assert 0 <= cell_number(row["test acc"]) <= 1
    assert re.search(r"teacher prep s = \d+\.\d\d", out)
    assert re.search(r"epoch seconds = [\d.]+; pairs/s = [\d.,]+ \(epoch 1\)", out)


def test_cpu_epoch_summarises_the_epochs_after_the_first(capsys):
    from ckd_search.perf.cpu_epoch import main

    assert main(["--smoke", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    (rows,) = parse_tables(out)
    rates = sorted(cell_number(r["pairs/s"]) for r in rows[1:])
    (summary,) = re.findall(r"pairs/s = ([\d.,]+) \(median of epochs 2-3\)", out)
    assert cell_number(summary) == pytest.approx(sum(rates) / 2, abs=0.11)  # the median of two


def test_profile_smoke_variants_match_the_engine(capsys):
    from ckd_search.perf.profile_step import main

    assert main(["--smoke"]) == 0
    out = capsys.readouterr().out
    phases, ops, variants = parse_tables(out)
    assert [r["phase"] for r in phases] == ["inputs", "forward+losses", "backward", "optimizer", "total"]
    assert all(positive(r["ms"]) for r in phases)
    assert len(ops) >= 5 and all(positive(r["self ms/step"]) for r in ops)
    by_name = {r["variant"]: r for r in variants}
    assert list(by_name)[0] == "engine"
    for name, row in by_name.items():
        assert positive(row["ms/step"]) and positive(row["pairs/s"]) and positive(row["speedup"])
        if name != "streams-jointBN":  # the one variant documented as not exact
            assert float(row["dloss"]) < 1e-4 and float(row["rel dgrad"]) < 1e-4, name


def test_packing_names_how_the_gpu_is_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path))
    assert gpu_sharing().startswith("time-sliced")
    (tmp_path / "control").touch()  # the MPS control daemon's pipe
    assert gpu_sharing().startswith(f"MPS daemon found ({tmp_path})")


def test_packing_compile_mode_implies_compile():
    from ckd_search.perf import packing

    args = packing.parse_args(["--smoke", "--compile-mode", "reduce-overhead"])
    assert args.compile and args.compile_mode == "reduce-overhead"
    args = packing.parse_args(["--smoke"])
    assert not args.compile and args.compile_mode == "default"


def _dies_or_waits(rank, n, spec, barrier, results):
    """Rank 0 dies without a report (as under the OOM killer); the others wait at the barrier."""
    import threading

    if rank == 0:
        os._exit(9)
    try:
        barrier.wait()
        results.put({"rank": rank, "status": "ok"})
    except threading.BrokenBarrierError:
        results.put({"rank": rank, "status": "error", "error": "BrokenBarrierError"})


def test_a_packed_trial_that_dies_frees_the_others_from_the_barrier(monkeypatch):
    from ckd_search.perf import packing

    monkeypatch.setattr(packing, "RESULT_TIMEOUT_S", 60.0)  # the old behaviour waited this out
    reports = packing.run_packed(2, None, worker=_dies_or_waits)  # type: ignore[arg-type]
    assert [r["status"] for r in reports] == ["error", "error"]
    assert reports[0]["error"] == "no report (process died)"
    assert reports[1] == {"rank": 1, "status": "error", "error": "BrokenBarrierError"}


FAKE_MPS_CONTROL = """#!/bin/sh
# stands in for nvidia-cuda-mps-control: -d "starts the daemon" (its control pipe), stdin is a command
if [ "$1" = "-d" ]; then
  touch "$CUDA_MPS_PIPE_DIRECTORY/control"; echo "start $CUDA_MPS_LOG_DIRECTORY" >> "$LOG"
else
  read -r cmd; echo "$cmd" >> "$LOG"; rm -f "$CUDA_MPS_PIPE_DIRECTORY/control"
fi
"""


@pytest.fixture
def fake_mps_bin(tmp_path):
    """A folder holding the fake ``nvidia-cuda-mps-control``, to put first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    control = bin_dir / "nvidia-cuda-mps-control"
    control.write_text(FAKE_MPS_CONTROL)
    control.chmod(0o755)
    return bin_dir


def test_private_mps_daemon_lives_under_the_run_and_is_quit(tmp_path, monkeypatch, fake_mps_bin):
    monkeypatch.setenv("PATH", f"{fake_mps_bin}:/usr/bin:/bin")
    monkeypatch.setenv("LOG", str(tmp_path / "calls.log"))
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setenv("CUDA_MPS_LOG_DIRECTORY", "/elsewhere")
    with private_mps(str(tmp_path / "run")) as pipe:
        assert pipe == str(tmp_path / "run" / "mps-pipe")
        assert gpu_sharing().startswith(f"MPS daemon found ({pipe})")  # what spawned trials inherit
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls == [f"start {tmp_path / 'run' / 'mps-log'}", "quit"]
    assert "CUDA_MPS_PIPE_DIRECTORY" not in os.environ  # the environment is restored
    assert os.environ["CUDA_MPS_LOG_DIRECTORY"] == "/elsewhere"


def test_private_mps_daemon_is_quit_when_the_run_is_terminated(tmp_path, fake_mps_bin):
    code = (
        "import os, signal, sys, time\n"
        "from ckd_search.perf.packing import private_mps\n"
        "with private_mps(sys.argv[1]):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)  # as `timeout` stops a run\n"
        "    time.sleep(30)\n"
    )
    env = {**os.environ, "PATH": f"{fake_mps_bin}:{os.environ['PATH']}", "LOG": str(tmp_path / "calls.log")}
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run")],
        env=env,
        cwd=REPO,
        timeout=60,
        capture_output=True,
    )
    assert proc.returncode == 143
    assert (tmp_path / "calls.log").read_text().splitlines()[-1] == "quit"


def test_private_mps_without_the_control_binary_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="nvidia-cuda-mps-control not found"):
        with private_mps(str(tmp_path)):
            pass


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mps", "--device", "cpu"], "--mps needs a CUDA device"),
        (["--trials", "0,x"], "--trials must list"),
        (["--compile-mode", "fast"], "--compile-mode: invalid choice: 'fast'"),
    ],
)
def test_packing_bad_flags_exit_2_naming_the_flag(args, message):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "packing.py"), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2 and message in proc.stderr


def test_step_bench_unknown_variant_is_one_line_exit_2():
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "step_throughput.py"), "--smoke", "--variants", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("step_throughput: error: --variants: unknown variant(s) ['nope']")


@pytest.mark.parametrize("mode", [["--repeats", "2"], ["--epochs", "2"]], ids=["steps", "whole-trials"])
def test_packing_smoke_subprocess(mode):
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "packing.py"), "--smoke", "--trials", "1,2", *mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rows,) = parse_tables(proc.stdout)
    assert [r["trials"] for r in rows] == ["1", "2"]
    for row in rows:
        assert positive(row["pairs/s"]) and positive(row["pairs/s per trial"]) and positive(row["ms/step"])
    assert rows[0]["speedup"] == "1.00" and positive(rows[1]["speedup"])
    # each trial's share of the common span: the aggregate split evenly, never more
    assert cell_number(rows[1]["pairs/s per trial"]) == pytest.approx(
        cell_number(rows[1]["pairs/s"]) / 2, rel=0.01
    )
    if "--repeats" in mode:  # the median of two windows lies in their range
        low, high = (cell_number(x) for x in rows[1]["pairs/s range"].split("-"))
        assert low <= cell_number(rows[1]["pairs/s"]) <= high
    else:
        assert rows[1]["pairs/s range"] == "-"
    if (
        "--epochs" in mode
    ):  # 2 epochs of 32 // 8 steps of 8 pairs each: the aggregate counts exactly those pairs
        assert "whole trials of 2 epochs" in proc.stdout
        per_trial, ms_step = cell_number(rows[0]["pairs/s per trial"]), cell_number(rows[0]["ms/step"])
        assert per_trial == pytest.approx(8e3 / ms_step, rel=0.02)


def test_device_torch_check_script_parses_and_refuses_a_missing_venv(tmp_path):
    script = REPO / "bench" / "device_torch_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    copy = tmp_path / "bench" / "device_torch_check.sh"  # a checkout without .venv
    copy.parent.mkdir()
    copy.write_text(script.read_text())
    done = subprocess.run(["bash", str(copy)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "run make install first" in done.stderr and str(tmp_path / ".venv") in done.stderr


def test_gpu_session_script_parses_and_knows_every_default_part():
    script = REPO / "bench" / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    (default,) = re.findall(r"^PARTS=\$\{PARTS:-(.+)\}$", text, flags=re.M)
    (budget,) = re.findall(r"^BUDGET=\$\{BUDGET:-(\d+)\}", text, flags=re.M)
    (second,) = re.findall(r'^SECOND="(.+)"', text, flags=re.M)  # the second call's parts
    (timeout,) = re.findall(r"^#\s+timeout (\d+) \(the default PARTS and BUDGET\)", text, flags=re.M)
    (second_budget, second_timeout) = re.findall(r"then at once.*BUDGET=(\d+) PARTS=.*timeout (\d+)", text)[0]
    # each part's time limit: "NAME) part NAME SECONDS ...", and prewarm's own
    limits = {name: int(s) for name, s in re.findall(r"^    ([a-z0-9-]+)\) part \1 (\d+) ", text, flags=re.M)}
    (limits["prewarm"],) = (int(s) for s in re.findall(r"limit=\$\(\(BUDGET - SECONDS < (\d+) \?", text))
    assert default.split() and set(default.split()) <= set(limits)
    assert set(second.split()) <= set(limits) and not set(second.split()) & set(default.split())
    listed = text.split("# Parts:\n", 1)[1].split("\n\n", 1)[0].split("\nset ", 1)[0]
    described = set(re.findall(r"^#   ([a-z0-9-]+) ", listed, flags=re.M))
    assert set(limits) == described  # every part is in the header's list
    # each call's parts fit its budget (a part without 3/4 of its limit left is skipped)
    # each call's parts fit its budget with 10 s for the wheel install and the header, and the
    # call's timeout leaves the last part its 15 s kill grace
    calls = ((default, int(budget), int(timeout)), (second, int(second_budget), int(second_timeout)))
    for parts, seconds, call_timeout in calls:
        assert sum(limits[p] for p in parts.split()) <= seconds - 10, (parts, seconds)
        assert call_timeout >= seconds + 25, (seconds, call_timeout)


def test_gpu_session_builds_only_commands_the_benches_accept(tmp_path):
    """A dry run of every part with a fake nvidia-smi and a python3 that records its arguments:
    each command the script builds, prewarm's included, must pass its bench's parser and name known
    variants, since a typo found on the GPU machine costs the session."""
    from ckd_search.perf import packing
    from ckd_search.perf import precision
    from ckd_search.perf import profile_step
    from ckd_search.perf import step_bench

    fake, argv_log = tmp_path / "bin", tmp_path / "argv.txt"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 143771\n")
    (fake / "python3").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {argv_log}\n')
    for tool in fake.iterdir():
        tool.chmod(0o755)
    text = (REPO / "bench" / "gpu_session.sh").read_text()
    parts = [name for name in re.findall(r"^    ([a-z0-9-]+)\)", text, flags=re.M) if "mps" not in name]
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "OUT": str(tmp_path / "out")}
    env.update(BUDGET="100000", PARTS=" ".join(parts))
    script = ["bash", "bench/gpu_session.sh"]
    done = subprocess.run(script, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "unknown part" not in done.stdout, done.stdout[-2000:]
    parsers = {
        "bench/step_throughput.py": step_bench.parse_args,
        "bench/packing.py": packing.parse_args,
        "bench/precision.py": precision.parse_args,
        "-m ckd_search.perf.profile_step": profile_step.parse_args,
    }
    seen = set()
    for line in argv_log.read_text().splitlines():
        if line.startswith(("-c ", "-m pip ")):  # the header's import check, the wheel install
            continue
        (entry,) = (key for key in parsers if line.startswith(key))
        args = parsers[entry](shlex.split(line[len(entry) :]))  # exits 2 on an unknown flag
        if entry == "bench/step_throughput.py":
            step_bench.select_variants(args.variants)  # UserError on an unknown variant
        seen.add(entry)
    assert seen == set(parsers)
