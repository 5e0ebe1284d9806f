"""BatchSource: one on-device tensor, vectorised augmentation, reproducible sampling."""

from __future__ import annotations

import pytest
import torch

from ckd_search.data import BatchSource

CPU = torch.device("cpu")


def make_split(n: int = 50, t: int = 3, s: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 5, (n, t, 2, s, s), generator=g).to(torch.float16)
    labels = torch.arange(n) % 5
    return frames, labels


def source(frames: torch.Tensor, labels: torch.Tensor, seed: int = 0, **kw: object) -> BatchSource:
    args: dict[str, object] = {
        "batch_size": 8,
        "device": CPU,
        "train": True,
        "generator": torch.Generator().manual_seed(seed),
    }
    args.update(kw)
    return BatchSource(frames, labels, **args)  # type: ignore[arg-type]


def test_train_batches_shape_dtype_and_drop_last() -> None:
    frames, labels = make_split()
    src = source(frames, labels)
    batches = list(src)
    assert len(src) == len(batches) == 50 // 8
    for b in batches:
        assert b.frames.shape == (3, 8, 2, 8, 8) and b.frames.dtype == torch.float32
        assert b.frames.is_contiguous()
        assert torch.equal(b.labels, labels[b.index])
        assert torch.equal(b.frames.transpose(0, 1), frames[b.index].float())  # no augmentation asked
    seen = torch.cat([b.index for b in batches])
    assert len(set(seen.tolist())) == len(seen) == 48  # a permutation, two dropped
    bf = source(frames, labels, dtype=torch.bfloat16)
    assert next(iter(bf)).frames.dtype == torch.bfloat16


def test_test_mode_is_ordered_complete_and_untouched() -> None:
    frames, labels = make_split()
    src = source(
        frames, labels, train=False, crop_padding=4, flip=True, rotation=30.0, balanced=True, drop_last=True
    )
    batches = list(src)
    assert len(src) == len(batches) == 7
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(50))
    assert torch.equal(torch.cat([b.frames for b in batches], dim=1).transpose(0, 1), frames.float())


def test_same_generator_seed_same_batches() -> None:
    frames, labels = make_split()
    kw = {"crop_padding": 2, "flip": True, "rotation": 15.0}
    a = [b.frames for b in source(frames, labels, seed=3, **kw)]
    b = [b.frames for b in source(frames, labels, seed=3, **kw)]
    c = [b.frames for b in source(frames, labels, seed=4, **kw)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def _shifted(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """x [C, S, S] moved by (dy, dx) with zero fill: what a crop at offset (p+dy, p+dx) gives."""
    out = torch.zeros_like(x)
    s = x.shape[-1]
    src_y = slice(max(0, dy), s + min(0, dy))
    dst_y = slice(max(0, -dy), s + min(0, -dy))
    src_x = slice(max(0, dx), s + min(0, dx))
    dst_x = slice(max(0, -dx), s + min(0, -dx))
    out[:, dst_y, dst_x] = x[:, src_y, src_x]
    return out


def test_random_crop_is_one_shift_per_sample_shared_by_all_frames() -> None:
    frames = torch.rand(64, 4, 2, 10, 10).to(torch.float16) + 0.5  # no zeros: shifts are unique
    labels = torch.zeros(64, dtype=torch.long)
    pad = 2
    batch = next(iter(source(frames, labels, batch_size=64, crop_padding=pad)))
    shifts = set()
    for i, idx in enumerate(batch.index.tolist()):
        original = frames[idx].float().reshape(8, 10, 10)
        got = batch.frames[:, i].reshape(8, 10, 10)
        match = [
            (dy, dx)
            for dy in range(-pad, pad + 1)
            for dx in range(-pad, pad + 1)
            if torch.equal(got, _shifted(original, dy, dx))
        ]
        assert len(match) == 1  # the whole [T, 2] stack moved together
        shifts.add(match[0])
    assert len(shifts) > 5  # different per sample


def test_flip_mirrors_some_samples_whole() -> None:
    frames, labels = make_split(n=64)
    batch = next(iter(source(frames, labels, batch_size=64, flip=True)))
    flipped = 0
    for i, idx in enumerate(batch.index.tolist()):
        original = frames[idx].float()
        got = batch.frames[:, i]
        assert torch.equal(got, original) or torch.equal(got, original.flip(-1))
        flipped += int(not torch.equal(got, original))
    assert 10 < flipped < 54


def test_rotation_rotates_about_the_centre() -> None:
    frames = torch.zeros(32, 2, 2, 9, 9, dtype=torch.float16)
    frames[..., 4, 4] = 1  # centre pixel stays put under any rotation
    frames[..., 4, 8] = 2  # right edge pixel moves for most angles
    labels = torch.zeros(32, dtype=torch.long)
    batch = next(iter(source(frames, labels, batch_size=32, rotation=45.0)))
    assert (batch.frames[..., 4, 4] == 1).all()
    assert (batch.frames[..., 4, 8] != 2).any()
    assert set(batch.frames.unique().tolist()) <= {0.0, 1.0, 2.0}  # nearest: no new values


def test_balanced_sampling_evens_out_classes() -> None:
    frames = torch.zeros(200, 1, 2, 4, 4, dtype=torch.float16)
    labels = torch.cat([torch.zeros(180, dtype=torch.long), torch.ones(20, dtype=torch.long)])
    src = source(frames, labels, batch_size=10, balanced=True)
    assert len(src) == 20  # num_samples = N
    drawn = torch.cat([torch.cat([b.labels for b in src]) for _ in range(5)])
    assert drawn.float().mean().item() == pytest.approx(0.5, abs=0.05)
    plain = torch.cat([b.labels for b in source(frames, labels, batch_size=10)])
    assert plain.float().mean().item() == pytest.approx(0.1)


def test_frames_live_on_the_device_in_storage_dtype() -> None:
    frames, labels = make_split()
    src = source(frames, labels)
    assert src.frames.dtype == torch.float16 and src.frames.device == CPU
    assert src.frames.data_ptr() == frames.data_ptr()  # CPU: no copy at all


def test_too_small_split_gives_no_train_batches_but_all_test_batches() -> None:
    frames, labels = make_split(n=5)
    assert len(source(frames, labels)) == 0
    assert len(source(frames, labels, train=False)) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"crop_padding": -1}, "crop_padding"),
        ({"rotation": -1.0}, "rotation"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    frames, labels = make_split()
    with pytest.raises(ValueError, match=message):
        source(frames, labels, **kwargs)
    with pytest.raises(ValueError, match="frames must be"):
        source(frames[:, :, :1], labels)
    with pytest.raises(ValueError, match="labels must have shape"):
        source(frames, labels[:3])


def test_full_augmentation_covers_an_epoch() -> None:
    frames = torch.rand(640, 6, 2, 32, 32).to(torch.float16)
    labels = torch.arange(640) % 10
    src = source(frames, labels, batch_size=64, crop_padding=4, flip=True, rotation=15.0)
    assert sum(b.frames.shape[1] for b in src) == 640


def test_an_epochs_draws_reach_the_device_in_one_copy_each(monkeypatch) -> None:
    """Order, crop offsets, flips and angles move once an epoch, not once a batch: a per-batch copy
    from pageable memory makes the host wait for the GPU at every step."""
    moved: list[tuple[int, ...]] = []
    to_device = BatchSource._to_device

    def spy(self: BatchSource, values: torch.Tensor) -> torch.Tensor:
        moved.append(tuple(values.shape))
        return to_device(self, values)

    monkeypatch.setattr(BatchSource, "_to_device", spy)
    frames, labels = make_split(n=50)
    src = source(frames, labels, crop_padding=2, flip=True, rotation=10.0)
    assert len(list(src)) == 6
    assert moved == [(48,), (2, 48), (48,), (48,)]
    moved.clear()
    assert len(list(source(frames, labels, train=False))) == 7  # test order: one copy too
    assert moved == [(50,)]


@pytest.mark.parametrize("degrees", [90.0, -90.0, 180.0])
def test_rotation_turns_by_the_drawn_angle_as_torchvision_does(degrees) -> None:
    from torchvision.transforms.functional import InterpolationMode
    from torchvision.transforms.functional import rotate

    frames, labels = make_split()
    x = torch.zeros(1, 2, 9, 9)
    x[0, 0, 1, 6] = 1.0  # off the centre: where it lands shows the angle and its sign
    x[0, 1, 7, 2] = 2.0
    turned = source(frames, labels)._rotate(x, torch.tensor([degrees], dtype=torch.float64))
    assert torch.equal(turned, rotate(x, degrees, interpolation=InterpolationMode.NEAREST))
    assert not torch.equal(turned, x)
