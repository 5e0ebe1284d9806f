"""`ckd-search search --resume`: what may change when a search continues."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ckd_search.commands.search import _check_gpu_share_kept
from ckd_search.errors import UserError
from tests.helpers import two_key_space


@pytest.mark.parametrize(
    ("share", "was", "now", "refused"),
    [
        (0.5, None, 0, True),  # GPU trials restored as CPU trials: PENDING for GPUs they hold
        (0.5, 0, 4, True),  # CPU trials restored onto a GPU cluster: still CPU trials
        (0.5, 8, 4, False),  # fewer GPUs: the share is the same
        (0.5, None, None, False),  # no --gpus on resume: as it was
        (0.0, None, 0, False),  # CPU trials either way
    ],
)
def test_a_resume_keeps_cpu_or_gpu_trials(tmp_path, share, was, now, refused):
    space = two_key_space(tmp_path, {}, resources={"cpu": 1, "gpu": share})
    settings = SimpleNamespace(gpus=was, space_file=str(space), overrides={})
    if refused:
        with pytest.raises(UserError, match=f"--gpus {now}: this search started"):
            _check_gpu_share_kept(settings, now)
    else:
        _check_gpu_share_kept(settings, now)


def test_the_optuna_dashboard_the_search_points_to_is_installed():
    """The search's last lines and docs/cluster.md say `optuna-dashboard RUN_DIR/optuna.journal`."""
    import shutil
    import sys
    from pathlib import Path

    assert shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) is not None
