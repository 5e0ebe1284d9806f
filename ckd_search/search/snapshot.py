"""Ray Tune's experiment snapshot on storage: pick one whole snapshot before ``Tuner.restore``.

Each driver session saves four files per snapshot, all named with the session's stamp:
``experiment_state-S.json`` (trials), ``search_gen_state-S.json`` (trial count),
``searcher-state-S.pkl`` (our Optuna searcher) and ``callback-states-S.pkl`` (MLflow tracking). Tune
writes them to a local staging folder and copies that folder to storage in the background, file by
file and not atomically. A driver killed during the copy leaves the newest session's set partial
(some files missing) or a file cut short. Tune's restore then takes the newest file of each kind
separately, so it mixes sessions or finds no searcher, and when the experiment state itself is
unreadable it silently starts the experiment afresh, without its search properties.

:func:`settle_snapshot` runs before a resume. It keeps the newest session whose four files are all
present, whole and of one save (a file the copy never reached still holds the session's previous
save). It renames every file of newer, broken sessions to ``NAME.incomplete``, so Tune
no longer matches it; nothing is deleted. It returns the session it kept, or None when no session is
whole. In that case the search starts the Tune experiment again in the same study, as after a driver
that stopped before the first snapshot.

Tune's ``tuner.pkl`` (the Tuner, written once when the experiment starts) is not one of the four,
but a resumed driver downloads it with them and uploads it again with every snapshot, also not
atomically, so a kill can cut it short too; :func:`keep_tuner_whole` keeps a whole copy of it
beside it (``tuner.pkl.whole``, a name Tune does not download) and puts that back when needed.
"""

from __future__ import annotations

import json
import logging
import pickletools
import re
from dataclasses import dataclass
from dataclasses import field

import pyarrow.fs

log = logging.getLogger(__name__)

#: The kinds of file one snapshot consists of (Tune's ``CKPT_FILE_TMPL`` names, stamp removed).
SNAPSHOT_KINDS = ("experiment_state", "search_gen_state", "searcher-state", "callback-states")
SET_ASIDE_SUFFIX = ".incomplete"
_KIND = "|".join(map(re.escape, SNAPSHOT_KINDS))
_NAME = re.compile(rf"^(?P<kind>{_KIND})-(?P<stamp>.+)\.(?:json|pkl)$")


@dataclass
class Session:
    """One driver session's snapshot files on storage (kind -> file name)."""

    stamp: str
    files: dict[str, str] = field(default_factory=dict)


def settle_snapshot(experiment_path: str) -> str | None:
    """Set aside newer broken snapshots; the stamp of the session Tune will restore, or None.

    ``experiment_path`` is Tune's experiment folder, a local path or a ``pyarrow`` URI (``s3://``).
    """
    fs, root = _filesystem(experiment_path)
    sessions = _sessions(fs, root)
    for stamp in sorted(sessions, reverse=True):  # Tune's stamps sort by time
        session = sessions[stamp]
        problem = _problem(fs, root, session)
        if problem is None:
            return stamp
        log.warning(
            "Ray Tune snapshot %s is %s (the driver stopped while copying it to storage); "
            "trying an older one",
            stamp,
            problem,
        )
        for name in session.files.values():
            _set_aside(fs, f"{root}/{name}")
    return None


TUNER_FILE = "tuner.pkl"
TUNER_COPY = TUNER_FILE + ".whole"


def keep_tuner_whole(experiment_path: str) -> bool:
    """Keep a whole ``tuner.pkl``: refresh its copy when it is whole, put the copy back when a
    killed upload cut it short. False when neither is whole (the experiment cannot be restored)."""
    fs, root = _filesystem(experiment_path)
    main, copy = f"{root}/{TUNER_FILE}", f"{root}/{TUNER_COPY}"
    data = _read(fs, main)
    if data is not None and _whole(TUNER_FILE, data):
        if _read(fs, copy) != data:
            _write_whole(fs, copy, data)
        return True
    saved = _read(fs, copy)
    if saved is None or not _whole(TUNER_FILE, saved):
        return False
    log.warning(
        "%s is %s (the driver stopped while Tune copied it to storage); put back from %s",
        main,
        "missing" if data is None else f"cut short ({len(data)} bytes)",
        TUNER_COPY,
    )
    _write_whole(fs, main, saved)
    return True


def _read(fs: pyarrow.fs.FileSystem, path: str) -> bytes | None:
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return bytes(stream.readall())


def _write_whole(fs: pyarrow.fs.FileSystem, path: str, data: bytes) -> None:
    """Write beside ``path``, then move into place: a reader sees the old file or the new one."""
    partial = path + ".partial"
    with fs.open_output_stream(partial) as stream:
        stream.write(data)
    fs.move(partial, path)


def _filesystem(path: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" in path:
        fs, root = pyarrow.fs.FileSystem.from_uri(path)
        return fs, root.rstrip("/")
    return pyarrow.fs.LocalFileSystem(), path.rstrip("/")


def _sessions(fs: pyarrow.fs.FileSystem, root: str) -> dict[str, Session]:
    selector = pyarrow.fs.FileSelector(root, allow_not_found=True, recursive=False)
    sessions: dict[str, Session] = {}
    for info in fs.get_file_info(selector):
        match = _NAME.match(info.base_name) if info.type == pyarrow.fs.FileType.File else None
        if match:
            session = sessions.setdefault(match["stamp"], Session(match["stamp"]))
            session.files[match["kind"]] = info.base_name
    return sessions


def _problem(fs: pyarrow.fs.FileSystem, root: str, session: Session) -> str | None:
    """Why ``session`` cannot be restored (a missing or cut-short file), or None."""
    missing = [kind for kind in SNAPSHOT_KINDS if kind not in session.files]
    if missing:
        return f"missing {', '.join(missing)}"
    contents: dict[str, bytes] = {}
    for kind, name in session.files.items():
        with fs.open_input_stream(f"{root}/{name}") as stream:
            contents[kind] = stream.readall()
        if not _whole(kind, contents[kind]):
            return f"cut short ({name}, {len(contents[kind])} bytes)"
    return _mismatch(contents)


def _mismatch(contents: dict[str, bytes]) -> str | None:
    """Why whole files of one session do not belong to the same save, or None.

    A file that was not copied at all keeps the session's previous save. Every trial Tune creates
    is first suggested by the searcher and counted by the search generator, in the same step, so in
    one save the generator's count equals the experiment's trials and the searcher knows them all.
    The pickles are read as opcodes only (no object is built: storage is not trusted code).
    """
    try:
        state = json.loads(contents["experiment_state"])
        trials = {json.loads(entry[0])["trial_id"] for entry in state["trial_data"]}
    except (ValueError, KeyError, TypeError, IndexError) as err:
        return f"unreadable experiment state ({type(err).__name__}: {err})"
    counted = _int_after(contents["search_gen_state"], "counter")
    if counted != len(trials):
        return f"mixed (the search generator counted {counted} trials, the experiment has {len(trials)})"
    unknown = trials - _strings(contents["searcher-state"])
    if unknown:
        return f"mixed (the searcher does not know trial(s) {', '.join(sorted(unknown))})"
    return None


def _strings(data: bytes) -> set[str]:
    """Every string a pickle holds (a trial the searcher knows appears as its id)."""
    return {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}


#: Opcodes between a dict key and its value that are bookkeeping, not data.
_BOOKKEEPING = frozenset({"MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "FRAME"})


def _int_after(data: bytes, key: str) -> int | None:
    """The integer that follows the string ``key`` in a pickle (a dict entry ``key: int``)."""
    ops = (op for op in pickletools.genops(data) if op[0].name not in _BOOKKEEPING)
    for _, arg, _ in ops:
        if arg == key:
            value = next(ops, (None, None, None))[1]
            return value if isinstance(value, int) and not isinstance(value, bool) else None
    return None


def _whole(kind: str, data: bytes) -> bool:
    """Whether a snapshot file parses to its end: JSON for the experiment state, else a pickle
    (``search_gen_state-S.json`` is a pickle despite its name) whose opcodes reach STOP."""
    try:
        if kind == "experiment_state":
            json.loads(data)
        else:
            for _ in pickletools.genops(data):  # walks the opcodes without building objects
                pass
    except ValueError:  # json.JSONDecodeError and "pickle exhausted before seeing STOP" alike
        return False
    return True


def _set_aside(fs: pyarrow.fs.FileSystem, path: str) -> None:
    target = path + SET_ASIDE_SUFFIX
    number = 1
    while fs.get_file_info(target).type != pyarrow.fs.FileType.NotFound:
        number += 1
        target = f"{path}{SET_ASIDE_SUFFIX}-{number}"
    fs.move(path, target)
    log.info("set aside %s", target)
