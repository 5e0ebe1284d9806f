"""What every data set hands the engine: paired DVS frames and RGB images, per split."""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import Any

from torch import Tensor


@dataclass(frozen=True)
class Split:
    """One split of a paired data set, all samples in memory (CPU tensors).

    Attributes:
        frames: [N, T, 2, S, S] float16 DVS event counts per time bin (polarity 0 = OFF, 1 = ON),
            already resized to the student's input size S.
        labels: [N] int64 class of each recording.
        images: [M, 3, h, w] uint8 RGB images of this split (the RGB pool), at the teacher's size.
        image_labels: [M] int64 class of each image.
        pair_index: [N] int64 index into ``images`` of each recording's own image (``same_image``
            pairing). ``same_class_random`` pairing draws among the TRAIN images of the class instead.
    """

    frames: Tensor
    labels: Tensor
    images: Tensor
    image_labels: Tensor
    pair_index: Tensor

    def __post_init__(self) -> None:
        n = self.frames.shape[0]
        if self.labels.shape != (n,) or self.pair_index.shape != (n,):
            raise ValueError(f"labels/pair_index must have shape ({n},)")
        if self.image_labels.shape != (self.images.shape[0],):
            raise ValueError("image_labels must have one entry per image")

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class PairedData:
    """A paired RGB/DVS data set: name, classes, train and test splits, descriptors."""

    name: str
    class_names: tuple[str, ...]
    train: Split
    test: Split
    descriptors: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def timesteps(self) -> int:
        return int(self.train.frames.shape[1])

    @property
    def size(self) -> int:
        return int(self.train.frames.shape[-1])
