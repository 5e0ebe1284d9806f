"""Search: YAML spaces, Ray Tune + Optuna + ASHA, MLflow tracking, export.

One job per module:

- :mod:`.space`: the search-space YAML schema, validation and sampling (no Ray);
- :mod:`.settings`: the run directory and the resolved settings saved in it;
- :mod:`.resources`: start/join Ray, per-trial resources, fail-fast checks, concurrency;
- :mod:`.preparation`: data and teacher prepared once per ``prepare_key`` on the driver;
- :mod:`.optuna_search`: seeded Optuna samplers, journal storage, ASHA stops told as PRUNED;
- :mod:`.asha`: ASHA on ``epoch`` with rungs persisted across ``Tuner.restore``;
- :mod:`.tracking`: driver-side MLflow parent/child runs (the only module importing mlflow);
- :mod:`.progress`: one compact log line per trial event;
- :mod:`.ledger`: every result and trial event as the driver saw it (``RUN_DIR/epochs.jsonl``);
- :mod:`.faults`: final (not retried) errors, one-line trial errors, the test-only fault injection;
- :mod:`.chaos`: local multi-node clusters, a node killer and the epoch audit (tests, ``make soak``);
- :mod:`.outcome`: completed / pruned / failed, one rule for all of the above;
- :mod:`.tuner`: create, run and resume a search;
- :mod:`.export`: best configs as YAML, all trials as Parquet.

The trainable itself is ``trainables/ckd.py``.
"""
