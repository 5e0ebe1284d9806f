"""Checks the driver makes once the data are prepared, before any trial starts."""

from __future__ import annotations

import logging

import pytest

from ckd_search.errors import UserError
from ckd_search.search.preparation import check_batch_fits
from ckd_search.search.space import parse_space


def space(fixed: dict | None = None, searched: dict | None = None):
    raw = {
        "study": {"name": "t"},
        "fixed": fixed or {},
        "space": searched or {"kd.k": {"type": "uniform", "low": 1.0, "high": 9.0}},
    }
    return parse_space(raw, "s.yaml")


def test_a_fixed_batch_larger_than_the_train_split_is_refused_before_any_trial():
    with pytest.raises(
        UserError, match=r"optim.batch_size=200 is larger than the train split \(150 samples\)"
    ):
        check_batch_fits(space({"optim.batch_size": 200}), 150)
    check_batch_fits(space({"optim.batch_size": 150}), 150)  # one full batch is enough


def test_searched_batch_sizes_warn_when_some_fit_and_refuse_when_none_does(caplog):
    searched = {"optim.batch_size": {"type": "choice", "values": [32, 256]}}
    with caplog.at_level(logging.WARNING, logger="ckd_search.search.preparation"):
        check_batch_fits(space(searched=searched), 100, "data.size=32")
    assert "optim.batch_size > 100 will fail: larger than the train split of data.size=32" in caplog.text
    with pytest.raises(UserError, match="optim.batch_size=256"):
        check_batch_fits(space(searched={"optim.batch_size": {"type": "choice", "values": [256, 512]}}), 100)
