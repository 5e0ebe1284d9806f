"""Atomic, verifiable file writes (a reader never sees a half-written file), and tolerant reads of
the JSON files a killed writer may have left damaged."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO
from typing import Any

log = logging.getLogger(__name__)
_UMASK = os.umask(0)
os.umask(_UMASK)


def check_output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file or that this user cannot write to
    (a UserError naming ``flag``)."""
    from ckd_search.errors import UserError

    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {folder}: exists and is not a directory")
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {folder}: not writable (permission denied)")
    return folder


def output_dir(path: str | Path, flag: str = "--out") -> Path:
    """Create a command's output folder (and its parents); a UserError naming ``flag`` and the path
    when it is a file or cannot be created."""
    from ckd_search.errors import UserError

    folder = check_output_dir(path, flag)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{flag} {folder}: cannot be created ({err.strerror or err})") from None
    return folder


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# atomic_write's temp file is ".<name>.<8 random chars>.tmp" (mkstemp: a-z, 0-9 and _).
_TEMP_SUFFIX = ".tmp"
_TEMP_RANDOM = "[a-z0-9_]{8}"


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:
    """Write through ``write(handle)`` into a temp file beside ``path``, fsync, rename over it, then
    fsync the folder (so the rename itself is on disk).

    A writer killed outright (SIGKILL, power cut) leaves its temp file behind; see
    :func:`remove_stale_temp_files`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_TEMP_SUFFIX, dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return target


def stale_temp_files(path: str | Path) -> list[Path]:
    """The temp files :func:`atomic_write` left beside ``path`` (exact name pattern only), sorted."""
    target = Path(path)
    pattern = re.compile(re.escape(f".{target.name}.") + _TEMP_RANDOM + re.escape(_TEMP_SUFFIX))
    try:
        names = os.listdir(target.parent)
    except OSError:  # no folder yet: nothing was left
        return []
    return sorted(target.parent / n for n in names if pattern.fullmatch(n))


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Delete the temp files a killed :func:`atomic_write` of ``path`` left (warned; returns them).

    Only safe while no other process can be writing ``path``: call it under a lock that every
    writer of ``path`` holds.
    """
    removed = []
    for tmp in stale_temp_files(path):
        try:
            tmp.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:  # best effort: a leftover costs disk space, not correctness
            log.warning("%s: cannot remove a leftover temp file (%s)", tmp, err.strerror or err)
            continue
        removed.append(tmp)
    if removed:
        log.warning("removed %d temp file(s) an interrupted write left, e.g. %s", len(removed), removed[0])
    return removed


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` survive a power cut; skipped where a folder cannot be synced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # Windows and some network file systems refuse fsync on a folder
    finally:
        os.close(fd)


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy the bytes of ``src`` to ``dst`` through :func:`atomic_write` (never a half-copied ``dst``)."""
    with open(src, "rb") as source:  # opened first: a missing source creates nothing
        return atomic_write(dst, lambda handle: shutil.copyfileobj(source, handle))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def stable_hash(*parts: object) -> str:
    """Short hex digest of the reprs of ``parts`` (cache keys)."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


@contextmanager
def given_or_temp_dir(path: str | None, prefix: str) -> Iterator[str]:
    """``path`` as is, or a fresh temporary folder removed on exit (benchmarks' throw-away caches)."""
    if path:
        yield path
        return
    tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object file's contents; None when it is missing, unreadable (warned) or not an object."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); ignored", path, err)
        return None
    return data if isinstance(data, dict) else None


def read_json_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON-lines file (Tune's ``result.json``) and how many lines were
    skipped as unreadable (a line cut short by a crash). Raises OSError when the file cannot be read."""
    rows: list[dict[str, Any]] = []
    bad = 0
    for raw in path.read_text().splitlines():
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows, bad
