"""MLflow tracking of a search from the driver: one parent run per search, one child run per trial.

The only search module that imports mlflow. :class:`MlflowTrackingCallback` is a ``ray.tune.Callback``
on the driver (trainables never talk to MLflow, so the tracking URI need not reach workers: pitfall 6;
one writer, experiment created once on the driver: pitfall 7):

- parent run (``ckd.role=search``): search settings as params, the space file as an artifact; at the
  end the best config (``best_config.yaml``), ``best_*`` metrics and a results table (``results.csv``);
- child run per trial (tag ``mlflow.parentRunId``, ``ckd.trial_id``, ``ckd.study``, ``ckd.experiment``;
  ``ckd.optuna_trial``, the trial's number in the Optuna journal, once the search ends):
  params = the trial's resolved flat config, metrics every epoch with ``step = epoch``, the resolved
  config as ``config.yaml``; status FINISHED (tag ``ckd.status=completed`` or ``pruned`` for ASHA
  stops), FAILED (``failed``), KILLED (``interrupted``/``orphaned``).

Resume (pitfall 5): ``get_state``/``set_state`` keep ``trial_id -> run_id``, so a resumed trial logs into
its old run; a run is also found by its ``ckd.trial_id`` tag before one is created, epochs already
logged are not logged again, and after a restore runs of trials the snapshot never knew (Tune will
never resume them; a new Tune trial adopts their Optuna trial or reruns its parameters) are KILLED with
``ckd.status=orphaned``. Every Tune trial has exactly one child run; orphans belong to none.

A failed trial's run is FAILED with its one-line error in the tag ``ckd.error``
(:func:`ckd_search.search.faults.last_error`).

Outages: every MLflow call is queued; a failing call stops the flush, the queue is kept (and is part
of the callback state) and retried every ``retry_s`` seconds, with one warning when the gap starts
and one line when it closes. The calls run on Tune's driver thread, so each is kept short: while
the search runs, MLflow's HTTP client makes one attempt (its own retries are off) with a
``call_timeout_s`` timeout (a hanging server costs the driver at most that per retry), and one flush
sends queued calls for at most ``flush_budget_s`` seconds before handing the thread back to Tune
(the rest go at the next step). A user's own ``MLFLOW_HTTP_REQUEST_TIMEOUT``/``MAX_RETRIES`` wins;
the variables this callback sets are removed when the search ends. When the search ends during an
outage the callback keeps retrying for up to ``end_wait_s`` seconds, then saves the queue to
``RUN_DIR/mlflow_pending.json``; ``--resume`` sends it, and the file keeps the calls not yet sent
(a driver killed meanwhile loses none).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from ckd_search.config import Config
from ckd_search.errors import UserError
from ckd_search.search.outcome import COMPLETED
from ckd_search.search.outcome import EPOCH_KEY
from ckd_search.search.outcome import TUNE_RESULT_KEYS
from ckd_search.search.outcome import best_first
from ckd_search.search.outcome import classify
from ckd_search.search.outcome import finite
from ckd_search.storage import atomic_write_text

log = logging.getLogger(__name__)
PENDING_FILE = "mlflow_pending.json"
PERMANENT_ERRORS = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_ALREADY_EXISTS",
        "RESOURCE_DOES_NOT_EXIST",
        "BAD_REQUEST",
        "INVALID_STATE",
    }
)


class MlflowTrackingCallback(Callback):
    """Driver-side MLflow logging with parent/child runs, resume-safe and outage-tolerant.

    Args:
        tracking_uri: ``sqlite:///RUN_DIR/mlflow.db`` (default) or ``http://host:5000``.
        experiment_name: MLflow experiment (the study name from the space file).
        study_name: unique name of this search (the parent run's name, Optuna's study name).
        run_dir: the search's run directory (artifact root of a SQLite store; outage spill file).
        metrics, modes: the study's metric(s) and mode(s).
        max_t: ASHA's max_t (None without ASHA), to tell pruned from completed trials.
        search_params: settings logged as params of the parent run.
        space_file: the space YAML, logged as an artifact of the parent run.
        artifact_location: experiment artifact root when the experiment is created (None = server's).
        retry_s: seconds between retries while MLflow is unreachable.
        end_wait_s: at the end of the search, how long to wait for an unreachable MLflow.
        call_timeout_s: timeout of one MLflow HTTP call while the search runs (whole seconds, >= 1).
        flush_budget_s: how long one flush during the search may send queued calls.
        restart: the Tune experiment starts again in an existing search (``--resume`` before Tune's
            first snapshot): child runs of the earlier attempt are reconciled as orphans.
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment_name: str,
        study_name: str,
        run_dir: str | Path,
        metrics: Sequence[str],
        modes: Sequence[str],
        max_t: int | None = None,
        search_params: Mapping[str, Any] | None = None,
        space_file: str | Path | None = None,
        artifact_location: str | None = None,
        retry_s: float = 15.0,
        restart: bool = False,
        end_wait_s: float = 60.0,
        call_timeout_s: float = 3.0,
        flush_budget_s: float = 2.0,
        journal_path: str | Path | None = None,
        base_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.study_name = study_name
        self.run_dir = str(run_dir)
        self.metrics = list(metrics)
        self.modes = list(modes)
        self.max_t = max_t
        self.search_params = dict(search_params or {})
        self.space_file = str(space_file) if space_file else None
        self.artifact_location = artifact_location
        self.retry_s = retry_s
        self.end_wait_s = end_wait_s
        self.call_timeout_s = call_timeout_s
        self.flush_budget_s = flush_budget_s
        self.journal_path = str(journal_path) if journal_path else None
        self.base_config = dict(base_config or {})
        self._client: Any = None
        self._experiment_id: str | None = None
        self._parent_run_id: str | None = None
        self._runs: dict[str, str] = {}
        self._done: dict[str, str] = {}
        self._logged_upto: dict[str, int] = {}
        self._pending: list[dict[str, Any]] = []
        self._spilled = 0  # how many calls at the head of _pending the spill file still holds
        self._restored = False
        self._reconciled = not restart
        self._verified: set[str] = set()
        self._gap_since: float | None = None
        self._next_try = 0.0
        self._total_samples: int | None = None
        self._env_set: list[str] = []  # MLflow variables set by setup, removed at the end

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_client"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A callback restored from an older search's snapshot lacks the settings added since.
        self.__dict__.update(
            end_wait_s=60.0,
            call_timeout_s=3.0,
            flush_budget_s=2.0,
            _env_set=[],
            _spilled=0,
            journal_path=None,
            base_config={},
        )
        self.__dict__.update(state)

    # -- Tune callback API ----------------------------------------------------------------------
    def setup(
        self, stop: Any = None, num_samples: Any = None, total_num_samples: Any = None, **info: Any
    ) -> None:
        self._apply_http_settings()
        for name in ("alembic", "mlflow.store", "mlflow.tracking"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self._total_samples = int(total_num_samples) if total_num_samples else None
        self._load_spilled()
        if self._restored:
            self._reconciled = False
            self._queue({"op": "parent_status", "status": "RUNNING", "tags": {"ckd.status": "running"}})
        else:
            self._queue({"op": "parent_start"})
        self._flush(force=True)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._reconciled:
            self._reconciled = True
            self._queue({"op": "reconcile", "known": sorted(t.trial_id for t in trials)})
        if self._pending:
            self._flush()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._done.pop(trial.trial_id, None)
        if trial.trial_id in self._runs:
            self._queue(
                {
                    "op": "run_status",
                    "trial": trial.trial_id,
                    "status": "RUNNING",
                    "tags": {"ckd.status": "running"},
                }
            )
        else:
            self._queue(self._run_start_op(trial))
        self._flush()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        metrics = {k: v for k, v in result.items() if k not in TUNE_RESULT_KEYS and finite(v) is not None}
        if EPOCH_KEY not in metrics:
            return
        self._queue(
            {
                "op": "metrics",
                "trial": trial.trial_id,
                "step": int(metrics[EPOCH_KEY]),
                "metrics": {k: float(v) for k, v in metrics.items()},
                "ts": int(time.time() * 1000),
            }
        )
        self._flush()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        outcome = classify(trial.last_result, error=False, max_t=self.max_t)
        self._finish_trial(trial, "FINISHED", outcome)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        from ckd_search.search.faults import last_error

        tags = {"ckd.error": last_error(trial.trial_id) or "unknown error"}
        error_file = getattr(getattr(trial, "run_metadata", None), "error_filename", None)
        if error_file:
            tags["ckd.error_file"] = str(error_file)
        self._finish_trial(trial, "FAILED", "failed", tags)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        unfinished = [t for t in trials if t.trial_id not in self._done]
        ended = self._ended_trials()
        journal_rows = self._journal_rows({t.trial_id for t in trials}, ended)
        for trial_id, frozen in ended.items():  # MLflow run <-> Optuna trial (optuna-dashboard's number)
            if trial_id in self._runs:
                self._queue(
                    {"op": "run_tags", "trial": trial_id, "tags": {"ckd.optuna_trial": str(frozen.number)}}
                )
        interrupted = bool(unfinished) or (
            self._total_samples is not None and len(trials) + len(journal_rows) < self._total_samples
        )
        for trial in unfinished:
            if trial.trial_id in self._runs or any(op.get("trial") == trial.trial_id for op in self._pending):
                self._queue(
                    {
                        "op": "run_status",
                        "trial": trial.trial_id,
                        "status": "KILLED",
                        "tags": {"ckd.status": "interrupted"},
                    }
                )
        if interrupted:
            self._queue({"op": "parent_status", "status": "KILLED", "tags": {"ckd.status": "interrupted"}})
        else:
            self._queue(self._summary_op(trials, journal_rows))
            self._queue({"op": "parent_status", "status": "FINISHED", "tags": {"ckd.status": "finished"}})
        wait = float(self.end_wait_s)
        deadline = time.monotonic() + wait
        if not self._flush(force=True):
            log.warning(
                "search ended with %d MLflow calls queued; retrying for up to %g s", len(self._pending), wait
            )
            while time.monotonic() < deadline:
                time.sleep(max(0.1, min(self.retry_s, deadline - time.monotonic())))
                if self._flush(force=True):
                    break
        self._spill()
        self._restore_http_settings()

    def get_state(self) -> dict[str, Any] | None:
        return {
            "experiment_id": self._experiment_id,
            "parent_run_id": self._parent_run_id,
            "runs": dict(self._runs),
            "done": dict(self._done),
            "logged_upto": dict(self._logged_upto),
            "pending": list(self._pending[self._spilled :]),  # the spill file holds the rest
        }

    def set_state(self, state: dict) -> None:
        self._experiment_id = state.get("experiment_id")
        self._parent_run_id = state.get("parent_run_id")
        self._runs = dict(state.get("runs", {}))
        self._done = dict(state.get("done", {}))
        self._logged_upto = {k: int(v) for k, v in state.get("logged_upto", {}).items()}
        self._pending = list(state.get("pending", []))
        self._spilled = 0  # setup loads the spill file in front of these
        self._restored = True
        self._verified = set()

    # -- public helpers -------------------------------------------------------------------------
    @property
    def parent_run_id(self) -> str | None:
        return self._parent_run_id

    @property
    def run_ids(self) -> dict[str, str]:
        """Ray trial id -> MLflow run id."""
        return dict(self._runs)

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- MLflow client settings --------------------------------------------------------------
    def _apply_http_settings(self) -> None:
        """One short attempt per MLflow HTTP call while the search runs (user settings win).

        MLflow reads both variables at every request. Its retries would block the driver for their
        backoff; a failed call stays queued instead and this callback retries it every retry_s.
        """
        timeout = max(1, math.ceil(float(self.call_timeout_s)))  # MLflow wants an int
        wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout)}
        self._env_set = [name for name in wanted if name not in os.environ]
        for name in self._env_set:
            os.environ[name] = wanted[name]

    def _restore_http_settings(self) -> None:
        for name in self._env_set:
            os.environ.pop(name, None)
        self._env_set = []

    # -- queue --------------------------------------------------------------------------------
    def _queue(self, op: dict[str, Any]) -> None:
        self._pending.append(op)

    def _flush(self, force: bool = False) -> bool:
        """Send queued operations in order; False when MLflow failed (the rest stays queued).

        Without ``force`` it stops after ``flush_budget_s`` (True: nothing failed; the rest is sent
        at the next step), so a slow server never holds Tune's driver loop for long.
        """
        before = len(self._pending)
        ok = self._send(force)
        if self._spilled:
            # a call queued while sending makes this count short: the file then keeps a sent call
            # (sent again after a crash) but never loses an unsent one
            self._forget_spilled(before - len(self._pending))
        return ok

    def _send(self, force: bool) -> bool:
        if not self._pending:
            return True
        now = time.monotonic()
        if self._gap_since is not None and not force and now < self._next_try:
            return False
        budget_end = None if force else now + float(self.flush_budget_s)
        sent = 0
        while self._pending:
            if budget_end is not None and sent and time.monotonic() >= budget_end:
                return True
            op = self._pending[0]
            try:
                self._execute(op)
            except Exception as exc:  # noqa: BLE001 - any tracking failure must not stop the search
                if _permanent(exc):
                    log.warning("MLflow refused %s (%s); dropped", op.get("op"), _one_line(exc))
                    self._pending.pop(0)
                    continue
                if self._gap_since is None:
                    self._gap_since = now
                    log.warning(
                        "MLflow at %s unreachable (%s); buffering tracking calls and retrying every %gs",
                        self.tracking_uri,
                        _one_line(exc),
                        self.retry_s,
                    )
                self._next_try = now + self.retry_s
                return False
            self._pending.pop(0)
            sent += 1
        if self._gap_since is not None:
            log.warning(
                "MLflow reachable again after a %.0f s gap; sent %d buffered calls",
                now - self._gap_since,
                sent,
            )
            self._gap_since = None
        return True

    def _spill(self) -> None:
        path = Path(self.run_dir) / PENDING_FILE
        if self._pending:
            atomic_write_text(path, json.dumps(self._pending))
            self._spilled = len(self._pending)
            log.warning(
                "MLflow still unreachable: %d tracking calls saved to %s; `--resume` sends them",
                len(self._pending),
                path,
            )
        else:
            path.unlink(missing_ok=True)
            self._spilled = 0

    def _load_spilled(self) -> None:
        """Queue the calls a search that ended during an outage saved, in front of the restored ones.

        The file stays until they are sent (:meth:`_forget_spilled`): a driver killed before
        that finds them again at the next ``--resume``.
        """
        path = Path(self.run_dir) / PENDING_FILE
        if self._spilled:
            return  # already queued: loading them again would send them twice
        if not path.is_file():
            return
        try:
            spilled = json.loads(path.read_text())
            if not isinstance(spilled, list):
                raise ValueError("not a list of calls")
        except ValueError as err:
            log.warning("%s: unreadable (%s); ignored", path, err)
            path.unlink()
            return
        self._pending = spilled + self._pending
        self._spilled = len(spilled)

    def _forget_spilled(self, sent: int) -> None:
        """Drop the first ``sent`` calls from the spill file (removed once all were sent)."""
        if sent <= 0:
            return
        self._spilled = max(0, self._spilled - sent)
        path = Path(self.run_dir) / PENDING_FILE
        try:
            if self._spilled:
                atomic_write_text(path, json.dumps(self._pending[: self._spilled]))
            else:
                path.unlink(missing_ok=True)
        except OSError as err:  # the old file only holds more: those calls are sent again, not lost
            log.warning("%s: not updated (%s)", path, err)

    # -- operations ---------------------------------------------------------------------------
    def _run_start_op(self, trial: Any) -> dict[str, Any]:
        flat = dict(trial.config)
        try:
            resolved = Config.from_dict(flat)
            params = resolved.flat()
            config_yaml = resolved.to_yaml()
        except UserError:
            params, config_yaml = flat, ""
        return {
            "op": "run_start",
            "trial": trial.trial_id,
            "params": {k: _param_value(v) for k, v in params.items()},
            "sampled": sorted(k for k in flat if not k.startswith("resources.")),
            "config_yaml": config_yaml,
        }

    def _finish_trial(
        self, trial: Any, status: str, outcome: str, tags: Mapping[str, str] | None = None
    ) -> None:
        self._done[trial.trial_id] = outcome
        last = trial.last_result or {}
        all_tags = {"ckd.status": outcome, "ckd.epochs_run": str(int(last.get(EPOCH_KEY, 0)))}
        all_tags.update(tags or {})
        self._queue({"op": "run_status", "trial": trial.trial_id, "status": status, "tags": all_tags})
        self._flush()

    def _journal_rows(self, known: set[str], ended: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Summary rows of the trials the study's journal holds as ended but Tune's list lacks:
        those that ended after the snapshot a resume restored (a restored experiment asks no trial
        past the budget, so it ends with fewer), or in the first experiment of a restarted search."""
        from ckd_search.search.optuna_search import trial_status

        ended = self._ended_trials() if ended is None else ended
        rows = []
        for trial_id, trial in ended.items():
            if trial_id in known:
                continue
            values = list(trial.values or [])
            if not values and trial.intermediate_values and len(self.metrics) == 1:
                values = [trial.intermediate_values[max(trial.intermediate_values)]]
            row: dict[str, Any] = {
                "trial_id": trial_id,
                "run_id": self._runs.get(trial_id, ""),
                "status": trial_status(trial),
                # multi-objective trials keep no intermediate values: the searcher's attribute
                "epochs_run": trial.user_attrs.get("epochs_run", max(trial.intermediate_values, default=0)),
            }
            row.update({m: values[i] if i < len(values) else None for i, m in enumerate(self.metrics)})
            config = {**self.base_config, **trial.params}
            row.update({f"config/{k}": v for k, v in sorted(config.items())})
            rows.append(row)
        return rows

    def _ended_trials(self) -> dict[str, Any]:
        """Tune trial id -> ended Optuna trial, from the study's journal ({} without one)."""
        if not self.journal_path:
            return {}
        from ckd_search.search.optuna_search import ended_trials

        try:
            return ended_trials(self.journal_path, self.study_name)
        except Exception as err:  # noqa: BLE001 - best effort: the journal itself is the record
            log.warning("MLflow: the Optuna journal %s cannot be read (%s)", self.journal_path, err)
            return {}

    def _summary_op(self, trials: list, journal_rows: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        rows = []
        for t in trials:
            last = t.last_result or {}
            row: dict[str, Any] = {
                "trial_id": t.trial_id,
                "run_id": self._runs.get(t.trial_id, ""),
                "status": self._done.get(t.trial_id, "unknown"),
                "epochs_run": int(last.get(EPOCH_KEY, 0)),
            }
            row.update({m: last.get(m) for m in self.metrics})
            row.update({f"config/{k}": v for k, v in sorted(t.config.items())})
            rows.append(row)
        rows.extend(journal_rows)
        best = _best(rows, self.metrics[0], self.modes[0])
        op: dict[str, Any] = {"op": "parent_summary", "table_csv": _csv(rows), "metrics": {}, "tags": {}}
        if best is not None:
            config = {k.removeprefix("config/"): v for k, v in best.items() if k.startswith("config/")}
            op["metrics"] = {
                f"best_{m}": float(best[m]) for m in self.metrics if finite(best.get(m)) is not None
            }
            op["tags"] = {"ckd.best_trial_id": best["trial_id"], "ckd.best_run_id": best["run_id"]}
            try:
                op["best_yaml"] = Config.from_dict(config).to_yaml()
            except UserError:
                op["best_yaml"] = ""
        return op

    def _mlflow(self) -> Any:
        if self._client is None:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _experiment(self) -> str:
        if self._experiment_id is None:
            client = self._mlflow()
            exp = client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                self._experiment_id = client.create_experiment(
                    self.experiment_name, artifact_location=self.artifact_location
                )
            else:
                self._experiment_id = exp.experiment_id
        return self._experiment_id

    def _parent(self) -> str:
        if self._parent_run_id is None:
            self._execute({"op": "parent_start"})
        assert self._parent_run_id is not None
        return self._parent_run_id

    def _execute(self, op: dict[str, Any]) -> None:
        kind = op["op"]
        client = self._mlflow()
        if kind == "parent_start":
            if "created" not in op:  # else a retry after the run was made: log what is still missing
                if self._parent_run_id is not None:
                    return
                found = self._find_runs(
                    f"tags.`ckd.study` = '{self.study_name}' and tags.`ckd.role` = 'search'"
                )
                if found:
                    self._parent_run_id = found[0].info.run_id
                    return
                op["created"] = self._create_parent()
            self._log_params(op["created"], {k: _param_value(v) for k, v in self.search_params.items()})
            if self.space_file and Path(self.space_file).is_file():
                client.log_text(op["created"], Path(self.space_file).read_text(), "space.yaml")
        elif kind == "parent_status":
            parent = self._parent()
            for key, value in op.get("tags", {}).items():
                client.set_tag(parent, key, value)
            _set_status(client, parent, op["status"])
        elif kind == "parent_summary":
            from mlflow.entities import Metric
            from mlflow.entities import RunTag

            parent = self._parent()
            client.log_text(parent, op["table_csv"], "results.csv")  # artifacts: a retry overwrites
            if op.get("best_yaml"):
                client.log_text(parent, op["best_yaml"], "best_config.yaml")
            stamp = int(op.setdefault("time_ms", int(time.time() * 1000)))
            client.log_batch(  # one call: a retry never logs a best_* point twice
                parent,
                metrics=[Metric(k, float(v), stamp, 0) for k, v in op.get("metrics", {}).items()],
                tags=[RunTag(k, str(v)) for k, v in op.get("tags", {}).items()],
            )
        elif kind == "run_start":
            self._start_run(op)
        elif kind in ("run_status", "run_tags"):
            run_id = self._runs.get(op["trial"])
            if run_id is None:
                return
            for key, value in op.get("tags", {}).items():
                client.set_tag(run_id, key, value)
            if kind == "run_status":
                _set_status(client, run_id, op["status"])
        elif kind == "metrics":
            self._log_epoch(op)
        elif kind == "reconcile":
            self._reconcile(set(op["known"]))

    def _create_parent(self) -> str:
        run = self._mlflow().create_run(
            self._experiment(),
            run_name=self.study_name,
            tags={
                "ckd.study": self.study_name,
                "ckd.role": "search",
                "ckd.run_dir": self.run_dir,
                "ckd.status": "running",
            },
        )
        self._parent_run_id = run.info.run_id
        return run.info.run_id

    def _find_runs(self, filter_string: str, max_results: int = 50) -> list:
        return list(
            self._mlflow().search_runs(
                [self._experiment()], filter_string=filter_string, max_results=max_results
            )
        )

    def _start_run(self, op: dict[str, Any]) -> None:
        trial_id = op["trial"]
        client = self._mlflow()
        parent = self._parent()
        if trial_id not in self._runs:
            found = self._find_runs(
                f"tags.`ckd.trial_id` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent}'"
            )
            if found:
                self._runs[trial_id] = found[0].info.run_id
                self._verified.discard(trial_id)
                if found[0].info.status != "RUNNING":
                    _set_status(client, found[0].info.run_id, "RUNNING")
            else:
                run = client.create_run(
                    self._experiment(),
                    run_name=f"trial_{trial_id}",
                    tags={
                        "mlflow.parentRunId": parent,
                        "ckd.trial_id": trial_id,
                        "ckd.study": self.study_name,
                        "ckd.experiment": self.experiment_name,
                        "ckd.status": "running",
                        "ckd.sampled": ",".join(op.get("sampled", [])),
                    },
                )
                self._runs[trial_id] = run.info.run_id
                self._logged_upto[trial_id] = 0
                self._verified.add(trial_id)
        run_id = self._runs[trial_id]
        self._log_params(run_id, op["params"])  # identical values may be logged again (never changed)
        if op.get("config_yaml"):
            client.log_text(run_id, op["config_yaml"], "config.yaml")

    def _log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self._mlflow().log_batch(run_id, params=items[start : start + 100])

    def _log_epoch(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        trial_id = op["trial"]
        run_id = self._runs.get(trial_id)
        if run_id is None:
            return
        client = self._mlflow()
        if trial_id not in self._verified:
            history = client.get_metric_history(run_id, EPOCH_KEY)
            self._logged_upto[trial_id] = max([int(m.step) for m in history], default=0)
            self._verified.add(trial_id)
        step = int(op["step"])
        if step <= self._logged_upto.get(trial_id, 0):
            return  # replayed after a restore: already in MLflow
        metrics = [Metric(k, float(v), int(op["ts"]), step) for k, v in op["metrics"].items()]
        for start in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[start : start + 500])
        self._logged_upto[trial_id] = step

    def _reconcile(self, known: set[str]) -> None:
        """KILL child runs whose trial the restored snapshot does not know (pitfall 5), unless the
        study's journal holds that trial as ended (the driver died before MLflow heard): such a run
        gets the journal's outcome instead."""
        from ckd_search.search.optuna_search import trial_status

        parent = self._parent()
        client = self._mlflow()
        ended = self._ended_trials()
        for run in self._find_runs(f"tags.`mlflow.parentRunId` = '{parent}'", max_results=10000):
            trial_id = run.data.tags.get("ckd.trial_id")
            if trial_id in known or run.info.status not in ("RUNNING", "SCHEDULED"):
                continue
            if trial_id in ended:
                outcome = trial_status(ended[trial_id])
                client.set_tag(run.info.run_id, "ckd.status", outcome)
                _set_status(client, run.info.run_id, "FAILED" if outcome == "failed" else "FINISHED")
                continue
            client.set_tag(run.info.run_id, "ckd.status", "orphaned")
            _set_status(client, run.info.run_id, "KILLED")
            log.info(
                "MLflow run %s of trial %s (started after the last snapshot; Tune will not resume it) "
                "marked KILLED (orphaned)",
                run.info.run_id,
                trial_id,
            )


def _set_status(client: Any, run_id: str, status: str) -> None:
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=status)


def _permanent(exc: Exception) -> bool:
    code = getattr(exc, "error_code", None)
    return isinstance(code, str) and code in PERMANENT_ERRORS


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _best(rows: list[dict[str, Any]], metric: str, mode: str) -> dict[str, Any] | None:
    scored = [r for r in rows if r["status"] == COMPLETED and finite(r.get(metric)) is not None]
    if not scored:
        scored = [r for r in rows if r["status"] != "failed" and finite(r.get(metric)) is not None]
    if not scored:
        return None
    return min(scored, key=lambda r: best_first(float(r[metric]), r.get("trial_id", ""), mode))


def _csv(rows: list[dict[str, Any]]) -> str:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
        )
    return buffer.getvalue()


def check_tracking_uri(uri: str) -> None:
    """Refuse URIs MLflow 3.17 rejects or that cannot work for a search (one line, before Ray starts)."""
    if uri.startswith(("http://", "https://", "sqlite:///", "postgresql", "mysql", "databricks")):
        return
    if uri.startswith("file:") or "://" not in uri:
        raise UserError(
            f"--mlflow-uri {uri}: MLflow >= 3.13 refuses file stores; use sqlite:///PATH.db or http://"
        )
    raise UserError(f"--mlflow-uri {uri}: expected http(s)://, sqlite:///, postgresql:// or mysql://")
