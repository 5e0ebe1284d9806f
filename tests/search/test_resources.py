"""Concurrency plans from per-trial resources (no Ray: the cluster is described by hand)."""

from __future__ import annotations

import logging

import pytest

from ckd_search.errors import UserError
from ckd_search.search.resources import Cluster
from ckd_search.search.resources import plan_trials
from ckd_search.search.space import Resources
from ckd_search.search.space import Study


@pytest.mark.parametrize(
    ("nodes", "share", "expected"),
    [
        (((8.0, 2.0),), 0.4, 4),  # 2 per card (floor(1 / 0.4)), not 2 / 0.4 = 5
        (((16.0, 3.0),), 0.3, 9),  # 3 per card, not floor(3 / 0.3) = 10
        (((16.0, 3.0),), 0.4, 6),  # not floor(3 / 0.4) = 7
        (((8.0, 2.0), (8.0, 1.0)), 0.4, 6),  # per node and card: 4 + 2, not floor(7.5) = 7
        (((8.0, 2.0),), 0.5, 4),  # exact fractions are unchanged
        (((8.0, 2.0),), 1.0, 2),  # whole GPUs are unchanged
        (((8.0, 0.5),), 0.4, 1),  # a node with part of one GPU: what fits in that part
    ],
)
def test_fractional_gpus_are_counted_per_card(nodes, share, expected):
    plan = plan_trials(Resources(1, share), Study("t"), 100, Cluster(False, nodes), gpus=None, cpus=None)
    assert plan.max_concurrent == expected


def test_gpu_budget_still_caps_below_the_cards():
    cluster = Cluster(False, ((8.0, 2.0),))
    plan = plan_trials(Resources(1, 0.4), Study("t"), 100, cluster, gpus=1.0, cpus=None)
    assert plan.max_concurrent == 2  # floor(1.0 / 0.4)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_uncapped_concurrency_over_a_quarter_of_the_study_warns(caplog):
    cluster = Cluster(False, ((16.0, 0.0),))
    with caplog.at_level(logging.INFO, logger="ckd_search.search.resources"):
        plan = plan_trials(Resources(1, 0), Study("t"), 20, cluster, gpus=0, cpus=6.0)
    assert plan.max_concurrent == 6  # the cap itself is what the resources allow
    (message,) = _warnings(caplog)
    assert "6 of 20 trials" in message and "study.max_concurrent" in message


@pytest.mark.parametrize(
    ("study", "num_trials", "cpus"),
    [
        (Study("t", max_concurrent=16), 20, None),  # the user chose the cap
        (Study("t"), 20, 5.0),  # resources allow 5: a quarter of 20, not over it
        (Study("t"), 1, None),  # one trial: nothing to learn from anyway
    ],
)
def test_no_concurrency_warning_when_capped_or_small(caplog, study, num_trials, cpus):
    cluster = Cluster(False, ((16.0, 0.0),))
    with caplog.at_level(logging.INFO, logger="ckd_search.search.resources"):
        plan_trials(Resources(1, 0), study, num_trials, cluster, gpus=0, cpus=cpus)
    assert _warnings(caplog) == []


def test_an_address_nothing_answers_at_is_refused_at_once():
    import socket

    from ckd_search.errors import UserError
    from ckd_search.search.resources import check_reachable

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        check_reachable(f"127.0.0.1:{port}")  # something answers: no error
    with pytest.raises(UserError, match=rf"--address 127.0.0.1:{port}: nothing answers there"):
        check_reachable(f"127.0.0.1:{port}")
    check_reachable("auto")  # left to Ray


def test_a_trial_no_single_node_holds_is_refused():
    # the CPUs on a CPU-only head, the GPUs on workers with fewer CPUs than a trial asks
    cluster = Cluster(False, ((16.0, 0.0), (4.0, 8.0)))
    with pytest.raises(UserError, match=r"8 CPU \+ 0.5 GPU per trial, but no Ray node has both"):
        plan_trials(Resources(8, 0.5), Study("t"), 10, cluster, gpus=None, cpus=None)
    assert plan_trials(Resources(4, 0.5), Study("t"), 10, cluster, gpus=None, cpus=None).max_concurrent == 1


def test_without_address_a_new_local_ray_starts_even_where_ray_address_is_set(monkeypatch, ray_cleanup):
    # RAY_ADDRESS (or a `ray start` on this machine) would make ray.init(address=None) join that
    # cluster, where num_cpus/num_gpus are refused; nothing answers at this one.
    import ray

    from ckd_search.search.resources import start_or_join

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    cluster = start_or_join(None, cpus=1, gpus=0)
    assert cluster.started_here and ray.is_initialized()
    assert cluster.nodes == ((1.0, 0.0),)


def test_cuda_trials_without_a_gpu_share_are_refused():
    from ckd_search.search.resources import check_trial_device

    with pytest.raises(UserError, match=r"run.device=cuda:1 but the trials reserve no GPU"):
        check_trial_device({"auto", "cuda:1"}, 0.0)
    check_trial_device({"cuda"}, 0.5)  # a GPU share: fine
    check_trial_device({"auto", "cpu"}, 0.0)  # auto becomes cpu in a trial without a GPU


def test_the_flagship_command_runs_32_trials_on_16_gpus_without_its_own_warning(caplog):
    """`ckd-search --space search_spaces/switching.yaml --gpus 16` on two 8-GPU nodes (README)."""
    from pathlib import Path

    from ckd_search.search.space import load_space

    space = load_space(Path(__file__).parents[2] / "search_spaces" / "switching.yaml")
    cluster = Cluster(False, ((64.0, 8.0), (64.0, 8.0)))
    with caplog.at_level(logging.INFO, logger="ckd_search.search.resources"):
        plan = plan_trials(space.resources, space.study, space.study.num_trials, cluster, gpus=16, cpus=None)
    assert plan.max_concurrent == 32 and _warnings(caplog) == []
