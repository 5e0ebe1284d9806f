"""Prepared data crosses Ray's object store as NumPy arrays: shared per node, not copied per trial."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ckd_search.config import Config
from ckd_search.search.shared_data import as_arrays
from ckd_search.search.shared_data import as_tensors


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_search_config):
    from ckd_search.prepare import prepare

    cfg = Config.from_dict({**tiny_search_config, "data.cache_dir": str(tmp_path_factory.mktemp("cache"))})
    return cfg, prepare(cfg)


def _tensors(p):
    splits = [(name, getattr(p.data, name)) for name in ("train", "test")]
    fields = ("frames", "labels", "images", "image_labels", "pair_index")
    return {f"{n}.{f}": getattr(s, f) for n, s in splits for f in fields} | {"logits": p.teacher_logits}


def test_the_round_trip_keeps_every_tensor_without_copying(prepared):
    _, original = prepared
    shipped = as_arrays(original)
    assert np.shares_memory(shipped.data.train.frames.array, original.data.train.frames.numpy())
    back = as_tensors(shipped)
    assert type(back) is type(original) and back.key == original.key
    assert (
        back.data.class_names == original.data.class_names
        and back.teacher_test_acc == original.teacher_test_acc
    )
    for name, tensor in _tensors(original).items():
        got = _tensors(back)[name]
        assert got.dtype == tensor.dtype and torch.equal(got, tensor), name


def test_a_trial_trains_the_same_from_the_nodes_shared_copy(prepared, ray_cleanup):
    import ray

    from ckd_search.engine import fit

    cfg, original = prepared
    ray.init(num_cpus=1, include_dashboard=False, logging_level="WARNING")
    fetched = ray.get(ray.put(as_arrays(original)))
    assert not fetched.data.train.frames.array.flags.writeable  # mapped from the object store
    cfg = cfg.replace(**{"run.epochs": 1})
    from_store = fit(cfg, prepared=as_tensors(fetched))
    here = fit(cfg, prepared=original)
    assert from_store.metrics[0]["train_loss"] == here.metrics[0]["train_loss"]
    assert from_store.best_test_acc == here.best_test_acc
