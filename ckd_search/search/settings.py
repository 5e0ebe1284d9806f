"""The run directory of a search and the resolved settings saved in it (so resume needs only the dir).

Layout of ``RUN_DIR``::

    search.yaml          resolved settings (this module): study name, budgets, URIs, paths
    space.yaml           copy of the search-space file as given
    optuna.journal       the Optuna study (``optuna-dashboard RUN_DIR/optuna.journal``)
    asha_state.json      ASHA rungs (restored on --resume)
    concurrency.json     trials at once on the current cluster (search/concurrency.py)
    mlflow.db            MLflow tracking store (default; ``ckd-search ui RUN_DIR``)
    mlartifacts/         MLflow artifacts of the SQLite store
    <study name>/        Ray Tune experiment (unless --storage puts it elsewhere), a folder
                         ``trial_<id>`` per trial (trial_folder)
    export/              ``ckd-search export`` output
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

import yaml

from ckd_search.config import load_yaml_mapping
from ckd_search.errors import UserError
from ckd_search.storage import atomic_write_text
from ckd_search.storage import sha256_file

SETTINGS_FILE = "search.yaml"
SPACE_FILE = "space.yaml"
JOURNAL_FILE = "optuna.journal"
ASHA_FILE = "asha_state.json"
CONCURRENCY_FILE = "concurrency.json"
MLFLOW_DB = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
DONE_FILE = "search_done.json"
DRIVER_LOCK = "driver.lock"
DESCRIPTORS_FILE = "descriptors.json"  # the data set's descriptors, for analyze
TRIAL_DIR_PREFIX = "trial_"
FORMAT = 1
#: search.yaml fields: (accepted types, required).
_FIELD_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {
    "run_dir": ((str,), True),
    "study_name": ((str,), True),
    "experiment_name": ((str,), True),
    "num_trials": ((int,), True),
    "storage_path": ((str,), True),
    "mlflow_uri": ((str,), True),
    "address": ((str, type(None)), False),
    "cpus": ((int, float, type(None)), False),
    "gpus": ((int, float, type(None)), False),
    "overrides": ((dict,), False),
    "warm_start": ((list,), False),
    "created": ((str,), False),
    "space_sha256": ((str,), False),
    "format": ((int,), False),
}


@dataclass
class SearchSettings:
    """Everything a search needs besides the space file; saved as ``RUN_DIR/search.yaml``."""

    run_dir: str
    study_name: str
    experiment_name: str
    num_trials: int
    storage_path: str
    mlflow_uri: str
    address: str | None = None
    cpus: float | None = None
    gpus: float | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    warm_start: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""
    space_sha256: str = ""  # of RUN_DIR/space.yaml as the search started ("" in older searches)
    format: int = FORMAT

    # -- paths --------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.run_dir)

    @property
    def space_file(self) -> Path:
        return self.root / SPACE_FILE

    @property
    def journal_path(self) -> Path:
        return self.root / JOURNAL_FILE

    @property
    def asha_path(self) -> Path:
        return self.root / ASHA_FILE

    @property
    def concurrency_path(self) -> Path:
        return self.root / CONCURRENCY_FILE

    @property
    def experiment_path(self) -> str:
        """Ray Tune's experiment directory (local path or URI)."""
        return join_storage(self.storage_path, self.study_name)

    # -- io -----------------------------------------------------------------------------------
    def save(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        text = "# ckd-search: resolved settings of this search (read by --resume and export)\n"
        text += yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)
        return atomic_write_text(self.root / SETTINGS_FILE, text)

    @staticmethod
    def raw(run_dir: str | Path) -> dict[str, Any]:
        """``RUN_DIR/search.yaml`` as written, unchecked ({} without one; a UserError if unreadable):
        for readers such as ``analyze`` that take what they can from a run directory."""
        path = Path(run_dir) / SETTINGS_FILE
        return load_yaml_mapping(path) if path.is_file() else {}

    def check_space_unchanged(self) -> None:
        """A UserError when ``RUN_DIR/space.yaml`` was edited since the search started: a resumed
        search must draw from the space its study, searcher state and trials came from."""
        if self.space_sha256 and sha256_file(self.space_file) != self.space_sha256:
            raise UserError(
                f"{self.space_file}: edited since the search started (its SHA-256 differs from the one in "
                f"{SETTINGS_FILE}); put the original back to resume, or start a new search with the edit"
            )

    @classmethod
    def load(cls, run_dir: str | Path, *, for_resume: bool = False) -> SearchSettings:
        """Read ``RUN_DIR/search.yaml``; a moved directory is fine except for ``--resume``."""
        root = Path(run_dir).expanduser().resolve()
        path = root / SETTINGS_FILE
        if not root.is_dir():
            raise UserError(f"{run_dir}: no such run directory")
        if not path.is_file():
            raise UserError(f"{root}: not a search run directory (no {SETTINGS_FILE})")
        data = load_yaml_mapping(path)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - names)
        if unknown:
            raise UserError(
                f"{path}: unknown settings {unknown} (corrupt, or written by a newer ckd-search?)"
            )
        _check_fields(path, data)
        settings = cls(**data)
        old = settings.run_dir
        if Path(old).resolve() != root:
            if for_resume:
                # Ray's tuner.pkl and the searcher snapshot hold absolute paths into the run directory.
                raise UserError(f"{root}: this search ran in {old}; move it back there to resume it")
            settings.run_dir = str(root)
            settings.storage_path = _rebase(settings.storage_path, old, str(root))
            settings.mlflow_uri = _rebase(settings.mlflow_uri, old, str(root))
        return settings


def _rebase(value: str, old: str, new: str) -> str:
    """``value`` (a path, or a URI holding one) with the folder ``old`` moved to ``new``; a path that
    only starts with the same letters (``RUN-ray`` beside ``RUN``) is left alone."""
    start = value.find(old)
    end = start + len(old)
    if start < 0 or (end < len(value) and value[end] != "/"):
        return value
    return value[:start] + new + value[end:]


def _check_fields(path: Path, data: dict[str, Any]) -> None:
    """One-line UserError for a missing or mistyped field of a (damaged) search.yaml."""
    missing = sorted(k for k, (_, required) in _FIELD_TYPES.items() if required and k not in data)
    if missing:
        raise UserError(f"{path}: missing settings {missing} (the file is truncated or damaged)")
    for key, (types, _) in _FIELD_TYPES.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise UserError(f"{path}: {key}={value!r} has the wrong type (the file is damaged)")
        if (
            isinstance(value, str)
            and types == (str,)
            and key not in ("created", "space_sha256")
            and not value
        ):
            raise UserError(f"{path}: {key} is empty (the file is damaged)")
    if data["num_trials"] < 1:
        raise UserError(f"{path}: num_trials={data['num_trials']} must be >= 1 (the file is damaged)")


def trial_folder(trial_id: str) -> str:
    """The folder of one trial in the Tune experiment: ``trial_<id>`` (Tune's default names embed
    the config and grow too long)."""
    return f"{TRIAL_DIR_PREFIX}{trial_id}"


def unique_study_name(name: str) -> str:
    """``name-YYYYmmdd-HHMMSS-xxxxxx``: unique per search (pitfall 3: never merge two sweeps)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}-{uuid.uuid4().hex[:6]}"


def default_mlflow_uri(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"


def is_uri(path: str) -> bool:
    return "://" in path


def join_storage(storage: str, name: str) -> str:
    """``storage/name`` for a local path or a URI; a URI's query (``s3://b/p?endpoint_override=...``,
    for MinIO) stays at the end, where pyarrow reads it."""
    if not is_uri(storage):
        return f"{storage.rstrip('/')}/{name}"
    parts = urlsplit(storage)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))
