"""MLflow for the analysis side: attach a report to a search's parent run; log an ablation study.

Uses ``mlflow.MlflowClient`` against the search's own store (its ``mlflow_uri``: SQLite or a server)
or ``RUN_DIR/mlflow.db``; MLflow is imported lazily so the rest of the analysis works without it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PARENT_TAG = "ckd.role"
PARENT_ROLES = ("parent", "search")  # ckd.role of a parent run: ours, the search layer's
PARENT_ID_TAG = "mlflow.parentRunId"
DB_NAME = "mlflow.db"
MAX_PARAMS = 100  # MLflow's limit per log_batch call
MAX_METRICS = 1000


def sqlite_uri(db: Path) -> str:
    return f"sqlite:///{db.resolve()}"


def find_parent_run(client: Any, study: str | None = None) -> str | None:
    """The search's parent run: with ``study``, the run tagged ``ckd.study=<study>`` and
    ``ckd.role=search``; else one tagged ``ckd.role=parent`` or ``ckd.role=search`` (the search
    layer's tag; newest first); else the one top-level run that has children; else the only
    top-level run. None when there is none or it is ambiguous."""
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None
    filters = [f"tags.`{PARENT_TAG}` = '{role}'" for role in PARENT_ROLES]
    if study:
        filters.insert(0, f"tags.`ckd.study` = '{study}' and tags.`{PARENT_TAG}` = 'search'")
    for filter_string in filters:
        tagged = client.search_runs(
            ids, filter_string=filter_string, order_by=["attributes.start_time DESC"], max_results=10
        )
        if tagged:
            if len(tagged) > 1:
                log.info("%d runs match %s; using the newest", len(tagged), filter_string)
            return str(tagged[0].info.run_id)
    runs = client.search_runs(ids, max_results=5000)
    parents = {r.data.tags.get(PARENT_ID_TAG) for r in runs} - {None}
    top = [r for r in runs if PARENT_ID_TAG not in r.data.tags]
    with_children = [r for r in top if r.info.run_id in parents]
    if len(with_children) == 1:
        return str(with_children[0].info.run_id)
    if len(top) == 1:
        return str(top[0].info.run_id)
    return None


def log_report(
    run_dir: str | Path, report_dir: str | Path, artifact_path: str = "analysis"
) -> tuple[str | None, str | None]:
    """Log the files of ``report_dir`` as artifacts of the search's parent run.

    The store is the search's own (``mlflow_uri`` in ``RUN_DIR/search.yaml``: an ``http://`` server
    too), else ``RUN_DIR/mlflow.db``; the parent is the run tagged with the study's name
    (``ckd.study``) and ``ckd.role=search``, else as :func:`find_parent_run` finds one.

    Returns (run id, None) when logged; (None, why) when there was a store but the report could not
    be logged; (None, None) when the directory has no MLflow store.
    """
    uri, study = _search_store(Path(run_dir))
    if uri is None:
        return None, None
    try:
        import mlflow

        client = mlflow.MlflowClient(uri)
        run_id = find_parent_run(client, study)
        if run_id is None:
            return None, f"no parent run found in {uri}"
        elsewhere = _artifacts_elsewhere(Path(run_dir), uri, client.get_run(run_id).info.artifact_uri)
        if elsewhere is not None:
            return None, elsewhere
        client.log_artifacts(run_id, str(report_dir), artifact_path=artifact_path)
    except Exception as err:  # noqa: BLE001 - tracking is optional; the report is on disk
        log.warning("could not log the report to MLflow (%s): %s", uri, err)
        return None, f"MLflow at {uri} failed: {err}"
    log.info("report logged to MLflow run %s (%s)", run_id, uri)
    return run_id, None


def _artifacts_elsewhere(run_dir: Path, uri: str, artifact_uri: str) -> str | None:
    """Why not to log, when RUN_DIR's own store keeps its artifacts in a local folder outside
    RUN_DIR: the store records absolute paths, so a moved or copied run folder would have its
    report written into the old one. None when logging is fine."""
    from urllib.parse import unquote
    from urllib.parse import urlparse

    root = run_dir.resolve()
    store = Path(uri.removeprefix("sqlite:///")).resolve() if uri.startswith("sqlite:///") else None
    parsed = urlparse(artifact_uri)
    if store is None or not store.is_relative_to(root) or parsed.scheme not in ("", "file"):
        return None  # a shared or remote store: its artifact location is its own business
    artifacts = Path(unquote(parsed.path) if parsed.scheme else artifact_uri).resolve()
    if artifacts.is_relative_to(root):
        return None
    return f"its store keeps artifacts in {artifacts}, outside the folder (was it moved or copied?)"


def _search_store(run_dir: Path) -> tuple[str | None, str | None]:
    """(tracking URI, study name) of a run directory: its search.yaml's, else ``RUN_DIR/mlflow.db``.
    A SQLite store that does not exist is none (opening it would create it)."""
    from ckd_search.errors import UserError
    from ckd_search.search.settings import SETTINGS_FILE
    from ckd_search.search.settings import SearchSettings

    uri, study = None, None
    if (run_dir / SETTINGS_FILE).is_file():
        try:
            settings = SearchSettings.load(run_dir)  # paths moved with the directory
            uri, study = settings.mlflow_uri, settings.study_name
        except UserError as err:
            log.info("%s: %s; looking for %s", run_dir, err, DB_NAME)
    if uri is None and (run_dir / DB_NAME).is_file():
        uri = sqlite_uri(run_dir / DB_NAME)
    if (
        uri is not None
        and uri.startswith("sqlite:///")
        and not Path(uri.removeprefix("sqlite:///")).is_file()
    ):
        return None, None
    return uri, study


class AblationTracker:
    """One parent run per study and one child run per (variant, seed) in ``OUT/mlflow.db``."""

    def __init__(self, out: str | Path, experiment: str, tags: Mapping[str, str] | None = None) -> None:
        import mlflow

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.uri = sqlite_uri(self.out / DB_NAME)
        self.client = mlflow.MlflowClient(self.uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            location = (self.out / "mlartifacts").resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"{experiment}-{time.strftime('%H%M%S')}",
            tags={PARENT_TAG: "parent", **dict(tags or {})},
        )
        self.parent_id = str(run.info.run_id)

    def log_child(
        self,
        name: str,
        flat_config: Mapping[str, Any],
        history: Iterable[Mapping[str, float]],
        summary: Mapping[str, float],
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """A finished child run: config as params, per-epoch metrics by step, summary metrics."""
        from mlflow.entities import Metric
        from mlflow.entities import Param

        run = self.client.create_run(
            self.experiment_id,
            run_name=name,
            tags={PARENT_ID_TAG: self.parent_id, PARENT_TAG: "child", **dict(tags or {})},
        )
        run_id = str(run.info.run_id)
        params = [Param(k, str(v)[:6000]) for k, v in flat_config.items()]
        for i in range(0, len(params), MAX_PARAMS):
            self.client.log_batch(run_id, params=params[i : i + MAX_PARAMS])
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, float(v), now, int(m.get("epoch", step + 1)))
            for step, m in enumerate(history)
            for k, v in m.items()
            if _number(v)
        ]
        metrics += [Metric(k, float(v), now, 0) for k, v in summary.items() if _number(v)]
        for i in range(0, len(metrics), MAX_METRICS):
            self.client.log_batch(run_id, metrics=metrics[i : i + MAX_METRICS])
        self.client.set_terminated(run_id)
        return run_id

    def finish(
        self, metrics: Mapping[str, float], artifacts: Iterable[Path], status: str = "FINISHED"
    ) -> None:
        """Summary metrics and files on the parent run, then close it."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, 0) for k, v in metrics.items() if _number(v)]
        if batch:
            self.client.log_batch(self.parent_id, metrics=batch)
        for path in artifacts:
            self.client.log_artifact(self.parent_id, str(path))
        self.client.set_terminated(self.parent_id, status=status)


def _number(value: Any) -> bool:
    import math

    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
