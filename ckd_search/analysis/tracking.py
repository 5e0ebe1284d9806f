"""MLflow for the analysis side: attach a report to a search's parent run; log an ablation study.

Uses ``mlflow.MlflowClient`` against SQLite stores only (``sqlite:///.../mlflow.db``); MLflow is
imported lazily so the rest of the analysis works without touching it.
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


def find_parent_run(client: Any) -> str | None:
    """The search's parent run: tagged ``ckd.role=parent`` or ``ckd.role=search`` (the search layer's
    tag; newest first); else the one top-level run that has children; else the only top-level run.
    None when there is none or it is ambiguous."""
    ids = [e.experiment_id for e in client.search_experiments()]
    if not ids:
        return None
    for role in PARENT_ROLES:
        tagged = client.search_runs(
            ids,
            filter_string=f"tags.`{PARENT_TAG}` = '{role}'",
            order_by=["attributes.start_time DESC"],
            max_results=10,
        )
        if tagged:
            if len(tagged) > 1:
                log.info("%d runs tagged %s=%s; using the newest", len(tagged), PARENT_TAG, role)
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


def log_report(run_dir: str | Path, report_dir: str | Path, artifact_path: str = "analysis") -> str | None:
    """Log the files of ``report_dir`` as artifacts of the search's parent run.

    Returns the run id, or None (quietly) when ``RUN_DIR/mlflow.db`` is absent, no parent run can
    be found, or MLflow fails.
    """
    db = Path(run_dir) / DB_NAME
    if not db.is_file():
        return None
    try:
        import mlflow

        client = mlflow.MlflowClient(sqlite_uri(db))
        run_id = find_parent_run(client)
        if run_id is None:
            log.info("%s: no parent run found; report not logged to MLflow", db)
            return None
        client.log_artifacts(run_id, str(report_dir), artifact_path=artifact_path)
    except Exception as err:  # noqa: BLE001 - tracking is optional; the report is on disk
        log.warning("could not log the report to MLflow (%s): %s", db, err)
        return None
    log.info("report logged to MLflow run %s (%s)", run_id, db)
    return run_id


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
