"""argparse with the project's error rule: one line naming the flag and value, exit code 2."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage block), pointing to ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(cast: Callable[[str], float], text: str) -> float:
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a{'n integer' if cast is int else ' number'}"
        ) from None


def positive_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(int, text))
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def positive_float(text: str) -> float:
    value = _number(float, text)
    if not 0 < value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def non_negative_float(text: str) -> float:
    value = _number(float, text)
    if not 0 <= value < math.inf:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def ray_address(text: str) -> str:
    """``auto`` or ``host:port`` of a Ray node; Ray Client (``ray://``) is refused: with it Tune's
    driver loop runs on the head node, which writes the journal, ASHA state and MLflow there, not in
    this machine's run directory."""
    if text.startswith("ray://"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: Ray Client addresses are not supported (Tune would run its loop on the head "
            "node, away from the run directory); run ckd-search on a cluster node with --address auto "
            "or host:port (e.g. through ray job submit)"
        )
    return text
