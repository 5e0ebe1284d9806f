"""Exceptions that the CLI turns into one-line messages and exit code 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(ValueError):
    """Bad input from the user (file, flag, value): reported in one line, exit code 2."""


class ConfigError(UserError):
    """A configuration value breaks a rule; the message names the dotted key, value and rule."""

    def __init__(self, key: str, value: object, rule: str) -> None:
        self.key, self.value, self.rule = key, value, rule
        super().__init__(f"{key}={value!r} {rule}")


class DataError(UserError):
    """A data set on disk is missing, laid out wrongly or corrupt; the message names the path."""


class TrialFailure(RuntimeError):
    """A training run cannot go on (non-finite loss, ...); ends that trial only."""


def exit_code(run: Callable[[], int | None], prog: str) -> int:
    """``run()``'s exit code; a :class:`UserError` or a ``PermissionError`` becomes one line on
    stderr and exit code 2.

    argparse's own exit (``--help``: 0, a bad flag: 2, its line already printed) becomes the
    return value too, so a caller in the same process gets a code, not an exception.
    """
    try:
        return int(run() or 0)
    except UserError as err:
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except PermissionError as err:  # a folder or file this user may not write: the path, not a traceback
        print(f"{prog}: error: {err.filename or err}: permission denied", file=sys.stderr)
        return 2
    except SystemExit as stop:
        if isinstance(stop.code, int | None):
            return int(stop.code or 0)
        raise
