"""``ckd-search demo``: the embedded Digits-DVS search end to end on this machine's CPUs."""

from __future__ import annotations

import argparse
from pathlib import Path

from ckd_search.errors import UserError

DEMO_SPACE = Path(__file__).resolve().parents[2] / "search_spaces" / "demo.yaml"


def run_demo(args: argparse.Namespace) -> int:
    """Search ``search_spaces/demo.yaml`` (local Ray, CPU trials), print the best config, export, analyze."""
    from ckd_search.commands.analyze import analyze_runs
    from ckd_search.commands.search import describe_space
    from ckd_search.commands.search import print_notes
    from ckd_search.commands.search import print_outcome
    from ckd_search.commands.search import remove_unstarted
    from ckd_search.search.export import export_run
    from ckd_search.search.import_ahead import ImportAhead
    from ckd_search.search.settings import DONE_FILE
    from ckd_search.search.settings import SETTINGS_FILE
    from ckd_search.search.settings import SearchSettings
    from ckd_search.search.space import load_space
    from ckd_search.search.tuner import create_search
    from ckd_search.search.tuner import read_outcome
    from ckd_search.search.tuner import run_search

    space_path = Path(args.space).expanduser() if args.space else DEMO_SPACE
    if not space_path.is_file():
        raise UserError(f"{space_path}: demo space not found (run from a source checkout or pass --space)")
    out = Path(args.out).expanduser().resolve()
    if (out / SETTINGS_FILE).exists():
        settings = SearchSettings.load(out, for_resume=True)
        if (out / DONE_FILE).exists():
            print(f"{out} already holds a finished demo search (delete it to run again); its result:")
            outcome = read_outcome(settings)
        else:
            print(f"{out} holds an unfinished demo search; resuming it")
            outcome = run_search(settings, resume=True)
    else:
        space = load_space(space_path)
        print(describe_space(space))
        print_notes(space)
        settings = create_search(space_path, out=out, gpus=0)
        print(f"demo search {settings.study_name} in {out} (CPU trials on this machine's cores)")
        try:
            outcome = run_search(settings, extra_callbacks=[ImportAhead()])  # the report's imports
        except (UserError, KeyboardInterrupt):
            remove_unstarted(settings)  # refused or stopped before its first trial: no half-made demo
            raise
    print_outcome(outcome)
    if not outcome.finished:
        return 130
    exported = export_run(out)
    print(f"exported {exported.trials} trials to {exported.out / 'trials.parquet'}")
    for item in exported.best:
        print(f"  best {item['rank']}: {exported.out / item['file']} (trial {item['trial_id']})")
    if exported.best:
        print(f"retrain the best config: ckd-search train --config {exported.out / exported.best[0]['file']}")
    _, report, _ = analyze_runs([out], out / "report")
    print(f"the switching report: {report.html}   (ckd-search analyze {out} --out DIR writes it anew)")
    print(f"open the MLflow UI: ckd-search ui {out}   (then http://127.0.0.1:5000)")
    return 0
