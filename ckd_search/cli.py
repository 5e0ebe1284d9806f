"""``ckd-search``: the command line. Only this module configures logging handlers.

Exit codes: 0 success, 1 crash (traceback shown), 2 bad input (one line, no traceback).
Heavy imports (torch, ray, mlflow) happen inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any
from typing import NoReturn

from ckd_search import __version__
from ckd_search.argtypes import OneLineParser
from ckd_search.argtypes import non_negative_float
from ckd_search.argtypes import port
from ckd_search.argtypes import positive_int
from ckd_search.argtypes import ray_address
from ckd_search.errors import UserError
from ckd_search.errors import exit_code

log = logging.getLogger("ckd_search")

Handler = Callable[[argparse.Namespace], int]


def parse_overrides(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``["kd.k=10", "run.epochs=3"]`` -> ``{"kd.k": 10, ...}``; values read as config files read them."""
    import yaml

    from ckd_search.config import parse_yaml_value

    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r}: expected KEY=VALUE")
        if key.strip() in out:  # as config files refuse a key given twice
            raise UserError(f"--set {key.strip()} is given twice")
        try:
            out[key.strip()] = parse_yaml_value(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


# --- command handlers (lazy imports) -----------------------------------------------------------
def _cmd_train(args: argparse.Namespace) -> int:
    from ckd_search.commands.train import run_train

    return run_train(args)


def _cmd_search(args: argparse.Namespace) -> int:
    from ckd_search.commands.search import run_search_command

    return run_search_command(args)


def _cmd_check_space(args: argparse.Namespace) -> int:
    from ckd_search.commands.search import run_check_space

    return run_check_space(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from ckd_search.commands.search import run_export

    return run_export(args)


def _cmd_analyze(args: argparse.Namespace) -> int:
    from ckd_search.commands.analyze import run_analyze

    return run_analyze(args)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from ckd_search.commands.analyze import run_reproduce

    return run_reproduce(args)


def _cmd_ui(args: argparse.Namespace) -> int:
    from ckd_search.commands.search import run_ui

    return run_ui(args)


def _cmd_data(args: argparse.Namespace) -> int:
    from ckd_search.data.commands import run_data_command

    return run_data_command(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from ckd_search.commands.bench import run_bench

    return run_bench(args)


def _cmd_config(args: argparse.Namespace) -> int:
    import json

    from ckd_search.config import field_docs

    # values as a YAML file or --set takes them (null, true, 1.0e-3 ...)
    rows = [
        (key, json.dumps(default), doc) for key, default, doc in field_docs() if key.startswith(args.prefix)
    ]
    if not rows:
        raise UserError(f"no config key starts with {args.prefix!r} (sections: data, kd, loss, model, ...)")
    width = max(len(f"{k} = {d}") for k, d, _ in rows)
    for key, default, doc in rows:
        print(f"{f'{key} = {default}':<{width}}  # {doc}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ckd_search.commands.demo import run_demo

    return run_demo(args)


# --- parser ------------------------------------------------------------------------------------
def _add_set(p: argparse.ArgumentParser, meaning: str) -> None:
    """``--set KEY=VALUE ...``; the flag may repeat (``--set a=1 --set b=2`` keeps both)."""
    p.add_argument("--set", nargs="*", action="extend", metavar="KEY=VALUE", default=None, help=meaning)


def _add_search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", help="search-space YAML file (see search_spaces/)")
    p.add_argument(
        "--gpus",
        type=non_negative_float,
        default=None,
        help="GPU budget of the search; with per-trial fraction f up to N/f trials run at once "
        "(0 = CPU trials; default: the GPUs Ray sees)",
    )
    p.add_argument(
        "--cpus", type=positive_int, default=None, help="CPU budget in whole cores (default: all Ray sees)"
    )
    p.add_argument(
        "--address",
        type=ray_address,
        default=None,
        help="join the Ray cluster this machine is a node of ('auto' or host:port of its head)",
    )
    p.add_argument("--out", default=None, help="run directory (default: runs/<study name>)")
    p.add_argument("--storage", default=None, help="Ray storage path: local, NFS or s3:// (default: --out)")
    p.add_argument(
        "--mlflow-uri",
        default=None,
        help="MLflow tracking URI (default: SQLite inside the run directory)",
    )
    p.add_argument("--num-trials", type=int, default=None, help="override study.num_trials")
    p.add_argument("--resume", metavar="RUN_DIR", default=None, help="continue an interrupted search")
    p.add_argument(
        "--warm-start-from",
        nargs="+",
        metavar="RUN_DIR",
        default=None,
        help="seed the study with the best configs of earlier searches",
    )
    _add_set(p, "override fixed config values (dotted keys)")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ckd-search",
        description="Hyperparameter search for Cross Knowledge Distillation (ANN teacher on RGB -> "
        "spiking student on DVS events): Ray Tune + Optuna TPE + ASHA + MLflow.",
        epilog="Shortcut: `ckd-search --space FILE --gpus N` runs `ckd-search search`.",
    )
    parser.add_argument("--version", action="version", version=f"ckd-search {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="run one CKD training (no Ray) and write metrics + config")
    p.add_argument("--config", help="config YAML (nested or dotted keys); default: built-in defaults")
    _add_set(p, "override config values")
    p.add_argument("--out", default=None, help="output directory (default: runs/train-<time>)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoint in --out, with its saved config "
        "(--set changes it, --config replaces it)",
    )
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("search", help="run a search: Ray Tune trials of the real CKD loop")
    _add_search_args(p)
    p.set_defaults(handler=_cmd_search)

    p = sub.add_parser("check-space", help="validate a search-space file without starting Ray")
    p.add_argument("space", help="search-space YAML file")
    p.add_argument("--draws", type=positive_int, default=8, help="random configs to build and validate")
    p.set_defaults(handler=_cmd_check_space)

    p = sub.add_parser("export", help="write the best configs (YAML) and all trials (Parquet)")
    p.add_argument("run_dir", help="search run directory")
    p.add_argument("--top", type=positive_int, default=3, help="number of best configs to write")
    p.add_argument("--out", default=None, help="output directory (default: RUN_DIR/export)")
    p.set_defaults(handler=_cmd_export)

    p = sub.add_parser("analyze", help="HTML + Markdown report answering the switching question")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="one or more search run directories")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--fidelity", default=None, help="a .json written by bench/fidelity.py to include")
    p.set_defaults(handler=_cmd_analyze)

    p = sub.add_parser("reproduce", help="the paper's ablation table as mean +- std over seeds")
    p.add_argument("--dataset", default="digits_dvs", help="data set of every variant (default digits_dvs)")
    p.add_argument("--seeds", type=positive_int, default=3, help="runs per variant (default 3)")
    p.add_argument("--config", default=None, help="base config YAML")
    _add_set(p, "override config values")
    p.add_argument("--out", default="runs/reproduce", help="output directory (default runs/reproduce)")
    p.set_defaults(handler=_cmd_reproduce)

    p = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 for a run directory")
    p.add_argument("run_dir", nargs="?", default="runs/demo", help="search run directory (default runs/demo)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=5000, help="port (default 5000)")
    p.set_defaults(handler=_cmd_ui)

    p = sub.add_parser("data", help="build or inspect a data set's frame cache")
    p.add_argument("action", choices=["build", "inspect"], help="build the cache, or print its statistics")
    p.add_argument("--dataset", default="digits_dvs", help="data set name (default digits_dvs)")
    p.add_argument("--root", default=None, help="local folder of a real data set")
    p.add_argument("--timesteps", type=int, default=None, help="T (default: data.timesteps)")
    p.add_argument("--size", type=int, default=None, help="frame size S (default: data.size)")
    _add_set(p, "other data.* values")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(handler=_cmd_data)

    p = sub.add_parser("bench", help="benchmarks: step throughput, trial packing, CPU epoch, profile")
    p.add_argument("what", choices=["step", "packing", "epoch", "profile"], help="which benchmark")
    p.add_argument("--smoke", action="store_true", help="tiny CPU run (CI)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="passed to the benchmark script")
    p.set_defaults(handler=_cmd_bench)

    p = sub.add_parser("config", help="every config key (for --set and YAML files) with default and meaning")
    p.add_argument("prefix", nargs="?", default="", help="only keys starting with this (e.g. kd.)")
    p.set_defaults(handler=_cmd_config)

    p = sub.add_parser("demo", help="the embedded demo: search, export, and how to open the UI")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo; resumed if there)")
    p.add_argument("--space", default=None, help="search space (default: search_spaces/demo.yaml)")
    p.set_defaults(handler=_cmd_demo)
    return parser


def _configure_logging(verbosity: int) -> None:
    level = logging.DEBUG if verbosity > 0 else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("ckd_search")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # `ckd-search [-v] --space FILE ...` is `ckd-search [-v] search --space FILE ...`
    argv = _shortcut(argv, _commands(parser))
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, --version (0) or a bad flag (2, its one line printed)
        return int(stop.code or 0) if isinstance(stop.code, int | None) else 2
    _configure_logging(args.verbose)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return exit_code(lambda: args.handler(args), "ckd-search")
    except KeyboardInterrupt:
        print("ckd-search: interrupted", file=sys.stderr)
        return 130


GLOBAL_FLAGS = ("-v", "--verbose", "-vv", "-vvv")


def _shortcut(argv: list[str], commands: set[str]) -> list[str]:
    """Put ``search`` after the global flags when the first other word is not a command but the
    arguments hold ``--space`` (a value such as ``--out demo`` is no command)."""
    head = 0
    while head < len(argv) and argv[head] in GLOBAL_FLAGS:
        head += 1
    rest = argv[head:]
    has_space = any(a == "--space" or a.startswith("--space=") for a in rest)
    if not rest or not has_space or rest[0] in commands:
        return argv
    return [*argv[:head], "search", *rest]


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    """The subcommand names of a parser made by :func:`build_parser`."""
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def run() -> NoReturn:
    """The ``ckd-search`` program: :func:`main`'s exit code, without the interpreter's final sweep.

    Python's last garbage collection at exit walks every object torch, Ray and MLflow created and
    frees nothing that outlives the process: seconds after ``ckd-search demo`` on 2 cores (a stack
    dump of a 5 s exit showed it). Frozen objects are skipped by it; atexit handlers (Ray, MLflow,
    logging) still run.
    """
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
