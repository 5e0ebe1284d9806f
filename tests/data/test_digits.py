"""Embedded Digits-DVS (and the SYNTHETIC shapes set): build, split, pairs, events."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ckd_search.config import Config
from ckd_search.config import DataConfig
from ckd_search.data import PairedData
from ckd_search.data import load_paired
from ckd_search.data.digits import digits_images
from ckd_search.data.digits import split_indices
from ckd_search.data.frames import resize_images


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[PairedData, DataConfig]:
    cache_dir = tmp_path_factory.mktemp("digits_cache")
    cfg = Config.from_dict({"data.cache_dir": str(cache_dir), "data.timesteps": 4, "data.size": 34}).data
    return load_paired(cfg, 32), cfg


def test_builds_ten_classes_and_the_stratified_split(full: tuple[PairedData, DataConfig]) -> None:
    data, _ = full
    assert data.name == "digits_dvs" and data.num_classes == 10
    assert data.class_names == tuple("0123456789")
    assert (len(data.train), len(data.test)) == (1437, 360)
    train_counts = np.bincount(data.train.labels.numpy(), minlength=10)
    test_counts = np.bincount(data.test.labels.numpy(), minlength=10)
    ratio = test_counts / (train_counts + test_counts)
    assert np.all(np.abs(ratio - 0.2) < 0.02)  # stratified


def test_shapes_and_dtypes(full: tuple[PairedData, DataConfig]) -> None:
    data, _ = full
    assert data.timesteps == 4 and data.size == 34
    for split in (data.train, data.test):
        n = len(split)
        assert split.frames.shape == (n, 4, 2, 34, 34) and str(split.frames.dtype) == "torch.float16"
        assert split.images.shape == (n, 3, 32, 32) and str(split.images.dtype) == "torch.uint8"
        assert str(split.labels.dtype) == "torch.int64"


def test_pairs_are_the_same_image(full: tuple[PairedData, DataConfig]) -> None:
    data, cfg = full
    images, labels = digits_images()
    train_idx, test_idx = split_indices(labels, cfg.split_seed)
    for split, idx in ((data.train, train_idx), (data.test, test_idx)):
        pair = split.pair_index.numpy()
        np.testing.assert_array_equal(split.image_labels.numpy()[pair], split.labels.numpy())
        np.testing.assert_array_equal(split.images.numpy()[pair], resize_images(images[idx], 32))
        np.testing.assert_array_equal(split.labels.numpy(), labels[idx])
        rgb = split.images.numpy()
        assert (rgb[:, 0] == rgb[:, 1]).all() and (rgb[:, 1] == rgb[:, 2]).all()  # gray on 3 channels


def test_events_are_non_trivial(full: tuple[PairedData, DataConfig]) -> None:
    data, _ = full
    frames = data.train.frames.float()
    per_sample = frames.sum(dim=(1, 2, 3, 4))
    assert per_sample.min() > 1000
    per_bin_pol = frames.sum(dim=(3, 4))  # [N, T, 2]
    assert (per_bin_pol > 0).all()  # every bin, both polarities, every sample
    d = data.descriptors
    assert d["mean_events_per_sample"] > 3000
    assert d["event_density"] == pytest.approx(d["mean_events_per_sample"] / 34**2)
    assert d["sensor_size"] == [34, 34]
    assert d["classes"] == 10 and d["train_samples"] == 1437 and d["test_samples"] == 360
    assert d["synthetic_events"] and not d["synthetic_images"]
    # the digit identity is visible in the events: class means differ
    labels = data.train.labels.numpy()
    means = np.stack([frames.numpy()[labels == c].sum(axis=(1, 2)).mean(0) for c in range(10)])
    assert np.corrcoef(means.reshape(10, -1)).min() < 0.9


def test_second_load_uses_the_cache(
    full: tuple[PairedData, DataConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ckd_search.data import digits

    data, cfg = full
    files = sorted(Path(cfg.cache_dir).expanduser().rglob("*.arrow"))
    stamps = [f.stat().st_mtime_ns for f in files]

    def no_build(*args: object) -> None:
        raise AssertionError("built again")

    monkeypatch.setattr(digits, "build_digits_dvs", no_build)
    again = load_paired(cfg, 32)
    assert np.array_equal(again.train.frames.numpy(), data.train.frames.numpy())
    assert files and [f.stat().st_mtime_ns for f in files] == stamps


def test_limit_and_parameters_key_the_cache(data_cfg: Callable[..., DataConfig]) -> None:
    small = load_paired(data_cfg(limit=20), 28)
    assert (len(small.train), len(small.test)) == (20, 20)
    assert set(small.train.labels.tolist()) == set(range(10))  # round-robin over classes
    other = load_paired(data_cfg(limit=20, **{"simulator.contrast": 0.3}), 28)
    assert other.descriptors["cache_files"] != small.descriptors["cache_files"]
    assert other.descriptors["mean_events_per_sample"] < small.descriptors["mean_events_per_sample"]
    assert len(list(Path(data_cfg().cache_dir, "data", "digits_dvs").glob("*.arrow"))) == 4


def test_shapes_dvs_is_labelled_synthetic_and_coloured(data_cfg: Callable[..., DataConfig]) -> None:
    from ckd_search.data import shapes

    assert "SYNTHETIC" in (shapes.__doc__ or "")
    data = load_paired(data_cfg(dataset="shapes_dvs", limit=30), 28)
    assert data.num_classes == 6 and len(data.train) == 30
    assert "SYNTHETIC" in data.descriptors["source"] and data.descriptors["synthetic_images"]
    rgb = data.train.images.numpy().astype(int)
    assert np.abs(rgb[:, 0] - rgb[:, 2]).mean() > 10  # not gray
    assert data.train.frames.float().sum(dim=(1, 2, 3, 4)).min() > 100


def test_shapes_images_stand_out_in_both_intensity_channels() -> None:
    # simulator.intensity then changes the events only, never the RGB side the teacher learns from
    from ckd_search.data import shapes
    from ckd_search.data.simulator import intensity

    images, _ = shapes.shapes_images()
    rgb = images[:300].astype(float) / 255
    for mode in ("luma", "value"):
        level = intensity(rgb, mode)  # [N, 1, 28, 28]: background and shape pixels at their extremes
        spread = level.reshape(len(rgb), -1).max(1) - level.reshape(len(rgb), -1).min(1)
        assert spread.min() > 0.15, mode
