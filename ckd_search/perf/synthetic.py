"""Random data of the real shapes and dtypes: enough for throughput, meaningless for accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ckd_search.config import Config
from ckd_search.data.base import PairedData
from ckd_search.data.base import Split
from ckd_search.prepare import Prepared
from ckd_search.prepare import prepare_key

# Share of active (time bin, polarity, pixel) cells: DVS count frames are sparse. The dense
# convolutions do not care; it only keeps the numbers in the range real frames have.
EVENT_DENSITY = 0.1


def _split(n: int, timesteps: int, size: int, image_size: int, classes: int, gen: torch.Generator) -> Split:
    shape = (n, timesteps, 2, size, size)
    frames = (torch.rand(shape, generator=gen) < EVENT_DENSITY).to(torch.float16)
    labels = torch.randint(0, classes, (n,), generator=gen)
    images = torch.randint(0, 256, (n, 3, image_size, image_size), generator=gen, dtype=torch.uint8)
    return Split(
        frames=frames, labels=labels, images=images, image_labels=labels.clone(), pair_index=torch.arange(n)
    )


def synthetic_prepared(cfg: Config, num_classes: int, n_train: int, n_test: int, seed: int = 0) -> Prepared:
    """A :class:`Prepared` of random frames, images and teacher logits shaped as ``cfg`` asks.

    Args:
        cfg: gives T (``data.timesteps``), S (``data.size``) and the image size
            (``teacher.input_size``).
        num_classes: C.
        n_train: train recordings (one image each, ``same_image`` pairing); >= the batch size.
        n_test: test recordings.
        seed: of the random tensors.
    """
    gen = torch.Generator().manual_seed(seed)
    d = cfg.data
    train = _split(n_train, d.timesteps, d.size, cfg.teacher.input_size, num_classes, gen)
    test = _split(n_test, d.timesteps, d.size, cfg.teacher.input_size, num_classes, gen)
    data = PairedData(
        name="synthetic", class_names=tuple(f"class{i}" for i in range(num_classes)), train=train, test=test
    )
    logits = torch.randn(n_train, num_classes, generator=gen)
    return Prepared(key=prepare_key(cfg), data=data, teacher_logits=logits, teacher_test_acc=None)


@dataclass(frozen=True)
class StepBatch:
    """What ``Trainer.step`` takes besides the schedule values, already on the device."""

    frames: Tensor  # [T, B, 2, S, S]
    labels: Tensor  # [B]
    index: Tensor  # [B] into the train split


def device_batches(
    prepared: Prepared, batch: int, count: int, device: torch.device, dtype: torch.dtype, seed: int = 1
) -> list[StepBatch]:
    """``count`` batches of train samples laid out as the engine's batches ([T, B, ...]).

    The benchmarks cycle through a few resident batches so that the timed region holds only the
    training step, as the engine's on-device batch source intends (no host copies per step).
    """
    gen = torch.Generator().manual_seed(seed)
    train = prepared.data.train
    out = []
    for _ in range(count):
        index = torch.randint(0, len(train), (batch,), generator=gen)
        frames = train.frames[index].transpose(0, 1).to(device=device, dtype=dtype).contiguous()
        out.append(StepBatch(frames=frames, labels=train.labels[index].to(device), index=index.to(device)))
    return out
