"""Batches from a split held as one tensor on the training device, augmented there.

No DataLoader, no workers, no per-sample Python loop (performance.md TL;DR 3): the split is moved
to ``device`` once in its storage dtype (float16 counts), every batch is gathered with one
``index_select``, augmented in a few batched ops and cast to the compute dtype. All randomness
comes from a CPU ``torch.Generator`` so a run is reproducible on any device: an epoch's indices and
augmentation parameters are drawn on the CPU when the epoch starts and moved in one pinned,
non-blocking copy each. A copy per batch from pageable memory would make the host wait for the GPU
at every step (``copy_`` synchronises the stream), so it could never run ahead of the kernels.

Train recipe (ckd-method.md 4.1/4.3, He et al.): random crop with zero padding (one offset per
sample, shared by its T frames), optional horizontal flip and rotation, optional class-balanced
sampling with replacement (``WeightedRandomSampler`` with weights N / n_class, N draws), and
``drop_last`` so the batch size is fixed (CKA needs it). Test: in order, no augmentation, every
sample exactly once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _EpochDraws:
    """One epoch's random draws on the device, batch after batch (None: that transform is off)."""

    order: Tensor  # [N'] sample positions
    offsets: Tensor | None  # [2, N'] crop offsets (rows, columns)
    mirror: Tensor | None  # [N'] flip or not
    degrees: Tensor | None  # [N'] rotation angle (float64)


@dataclass(frozen=True)
class Batch:
    """One batch on the device.

    Attributes:
        frames: [T, B, 2, S, S] in the source's dtype.
        labels: [B] int64.
        index: [B] int64 positions of the samples in the split (to find their pairs).
    """

    frames: Tensor
    labels: Tensor
    index: Tensor


class BatchSource:
    """Iterable of :class:`Batch` over one split; one pass = one epoch.

    Args:
        frames: [N, T, 2, S, S] (float16 counts from the cache; kept in that dtype on ``device``).
        labels: [N] class indices.
        batch_size: B.
        device: where the split lives and batches are built.
        train: shuffle/sample and augment (True) or iterate in order untouched (False).
        generator: CPU generator for every random draw.
        crop_padding: random crop with this zero padding (0 = off); train only.
        flip: random horizontal flip with probability 0.5; train only.
        rotation: random rotation in [-rotation, rotation] degrees (0 = off); train only.
        balanced: class-balanced sampling with replacement; train only.
        drop_last: drop the last incomplete batch; train only (test keeps every sample).
        dtype: dtype of ``Batch.frames``.
    """

    def __init__(
        self,
        frames: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        device: torch.device,
        train: bool,
        generator: torch.Generator,
        crop_padding: int = 0,
        flip: bool = False,
        rotation: float = 0.0,
        balanced: bool = False,
        drop_last: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if frames.ndim != 5 or frames.shape[2] != 2:
            raise ValueError(f"frames must be [N, T, 2, S, S], got {tuple(frames.shape)}")
        if labels.shape != (frames.shape[0],):
            raise ValueError(f"labels must have shape ({frames.shape[0]},), got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if crop_padding < 0 or rotation < 0:
            raise ValueError("crop_padding and rotation must be >= 0")
        if generator.device.type != "cpu":
            raise ValueError("generator must be a CPU torch.Generator")
        self.device = torch.device(device)
        self.frames = frames.to(self.device)
        self.labels = labels.to(self.device, dtype=torch.int64)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.generator = generator
        self.crop_padding = int(crop_padding) if train else 0
        self.flip = bool(flip) and train
        self.rotation = float(rotation) if train else 0.0
        self.drop_last = bool(drop_last) and train
        self.dtype = dtype
        self._weights: Tensor | None = None
        if balanced and train and len(labels):
            cpu_labels = labels.to("cpu", torch.int64)
            counts = torch.bincount(cpu_labels).double()
            self._weights = len(cpu_labels) / counts[cpu_labels]
        if self.drop_last and len(self) == 0:
            log.warning("%d samples < batch size %d with drop_last: no batches", len(labels), batch_size)

    def __len__(self) -> int:
        n = int(self.frames.shape[0])
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        draws = self._draw_epoch()
        for i in range(len(self)):
            part = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = draws.order[part]
            x = self.frames.index_select(0, idx)
            if self.train:
                x = self._augment(x.float(), draws, part)
            # [B, T, ...] -> [T, B, ...]: the multi-step SNN layout; one copy, with the cast
            frames = x.transpose(0, 1).to(self.dtype, memory_format=torch.contiguous_format)
            labels = self.labels.index_select(0, idx)
            yield Batch(frames=frames.contiguous(), labels=labels, index=idx)

    def _draw_epoch(self) -> _EpochDraws:
        """The epoch's order and per-sample augmentation draws, in the generator order of drawing
        them batch by batch (crop offsets, flips, angles), moved to the device once."""
        order = self._order()[: len(self) * self.batch_size]
        sizes = [len(part) for part in order.split(self.batch_size)]
        offsets: list[Tensor] = []
        mirror: list[Tensor] = []
        degrees: list[Tensor] = []
        g, pad = self.generator, self.crop_padding
        for b in sizes if self.train else ():
            if pad:
                offsets.append(torch.randint(0, 2 * pad + 1, (2, b), generator=g))
            if self.flip:
                mirror.append(torch.rand(b, generator=g) < 0.5)
            if self.rotation:
                degrees.append((torch.rand(b, generator=g, dtype=torch.float64) * 2 - 1) * self.rotation)
        return _EpochDraws(
            order=self._to_device(order),
            offsets=self._to_device(torch.cat(offsets, 1)) if offsets else None,
            mirror=self._to_device(torch.cat(mirror)) if mirror else None,
            degrees=self._to_device(torch.cat(degrees)) if degrees else None,
        )

    def _to_device(self, values: Tensor) -> Tensor:
        if self.device.type != "cuda":
            return values.to(self.device)
        return values.pin_memory().to(self.device, non_blocking=True)

    def _order(self) -> Tensor:
        """Sample positions of one epoch, drawn on the CPU."""
        n = int(self.frames.shape[0])
        if not self.train:
            return torch.arange(n)
        if self._weights is not None:
            return torch.multinomial(self._weights, n, replacement=True, generator=self.generator)
        return torch.randperm(n, generator=self.generator)

    def _augment(self, x: Tensor, draws: _EpochDraws, part: slice) -> Tensor:
        """Crop, flip and rotate a [B, T, 2, S, S] float batch with its samples' draws (``part``)."""
        b, t, p, h, w = x.shape
        x = x.reshape(b, t * p, h, w)  # every frame of a sample gets the same transform
        if draws.offsets is not None or draws.mirror is not None:
            offsets = draws.offsets[:, part] if draws.offsets is not None else None
            x = self._crop_flip(x, offsets, draws.mirror[part] if draws.mirror is not None else None)
        if draws.degrees is not None:
            x = self._rotate(x, draws.degrees[part])
        return x.reshape(b, t, p, h, w)

    def _crop_flip(self, x: Tensor, offsets: Tensor | None, mirror: Tensor | None) -> Tensor:
        """Random crop with zero padding (torchvision ``RandomCrop(S, padding)``), then a flip.

        Both are one gather: the flip only reverses the columns read, so the pair costs a single
        pass over the batch instead of a crop copy plus a ``torch.where`` over flipped copies.
        """
        b, c, h, w = x.shape
        pad = self.crop_padding
        dev = self.device
        if offsets is not None:
            x = F.pad(x, (pad, pad, pad, pad))
        else:
            offsets = torch.zeros(2, b, dtype=torch.int64, device=dev)
        cols = torch.arange(w, device=dev).expand(b, w)
        if mirror is not None:
            cols = torch.where(mirror[:, None], w - 1 - cols, cols)
        rows = offsets[0, :, None] + torch.arange(h, device=dev)  # [B, H] rows of the padded input
        cols = offsets[1, :, None] + cols  # [B, W]
        flat = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # [B, H, W]
        index = flat.reshape(b, 1, h * w).expand(b, c, h * w)
        return x.reshape(b, c, -1).gather(2, index).reshape(b, c, h, w)

    def _rotate(self, x: Tensor, degrees: Tensor) -> Tensor:
        """Rotation by ``degrees`` about the centre, zeros outside, nearest sampling (torchvision's)."""
        rad = torch.deg2rad(degrees).to(x.dtype)
        cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
