"""N-Caltech101 events paired with their Caltech101 images (local folder only, never downloaded).

Expected layout under ``root`` (the first match of each list is used)::

    events (<class>/*.bin):              images (<class>/*.jpg):
      root/N-Caltech101/                   root/Caltech101/101_ObjectCategories/
      root/NCaltech101/                    root/101_ObjectCategories/
      root/NCALTECH101/Caltech101/  (tonic) root/caltech101/101_ObjectCategories/
      root/N-Caltech101/Caltech101/        root/Caltech101/  (only if it holds images)
      root/Caltech101/  (only if it holds .bin files)

Classes are N-Caltech101's 101 folders (:data:`CLASS_NAMES`) in sorted (ASCII) order, He et
al.'s label map (BrainCog's NCALTECH101): 101 with ``BACKGROUND_Google`` (``include_background``), ``Faces``
absent (N-Caltech101 removed it). A missing class folder is an error, since labels and teacher
logits would no longer line up with the paper's; any other folder (a stray ``Faces``, ...) is
skipped with a warning. Files are sorted by name. Recording
``<class>/<stem>.bin`` pairs with image ``<class>/<stem>.jpg`` (``same_image``); the split takes
the first ``round(0.9 n)`` files of every class for training, the rest for testing (He et al.).
Frames follow He et al.: x and y shifted to start at 0, the sensor window inferred per recording,
``ToFrame(n_time_bins=T)``, bilinear resize to S x S.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckd_search.config import DataConfig
from ckd_search.data.built import BuiltData
from ckd_search.data.built import limit_indices
from ckd_search.data.events import make_events
from ckd_search.data.realdata import IMAGE_SUFFIXES
from ckd_search.data.realdata import Recording
from ckd_search.data.realdata import build_split
from ckd_search.data.realdata import images_by_stem
from ckd_search.data.realdata import listing_fingerprint
from ckd_search.data.realdata import require_root
from ckd_search.errors import DataError

log = logging.getLogger(__name__)

NAME = "ncaltech101"
BACKGROUND = "BACKGROUND_Google"
CLASS_NAMES = (
    "BACKGROUND_Google", "Faces_easy", "Leopards", "Motorbikes", "accordion", "airplanes", "anchor",
    "ant", "barrel", "bass", "beaver", "binocular", "bonsai", "brain", "brontosaurus", "buddha",
    "butterfly", "camera", "cannon", "car_side", "ceiling_fan", "cellphone", "chair", "chandelier",
    "cougar_body", "cougar_face", "crab", "crayfish", "crocodile", "crocodile_head", "cup",
    "dalmatian", "dollar_bill", "dolphin", "dragonfly", "electric_guitar", "elephant", "emu",
    "euphonium", "ewer", "ferry", "flamingo", "flamingo_head", "garfield", "gerenuk", "gramophone",
    "grand_piano", "hawksbill", "headphone", "hedgehog", "helicopter", "ibis", "inline_skate",
    "joshua_tree", "kangaroo", "ketch", "lamp", "laptop", "llama", "lobster", "lotus", "mandolin",
    "mayfly", "menorah", "metronome", "minaret", "nautilus", "octopus", "okapi", "pagoda", "panda",
    "pigeon", "pizza", "platypus", "pyramid", "revolver", "rhino", "rooster", "saxophone",
    "schooner", "scissors", "scorpion", "sea_horse", "snoopy", "soccer_ball", "stapler", "starfish",
    "stegosaurus", "stop_sign", "strawberry", "sunflower", "tick", "trilobite", "umbrella", "watch",
    "water_lilly", "wheelchair", "wild_cat", "windsor_chair", "wrench", "yin_yang",
)  # fmt: skip
# .bin files of the full set and of BACKGROUND_Google (data.md 1: 8,709, or 8,242 without it)
N_FILES = 8709
BACKGROUND_FILES = 467
TRAIN_FRACTION = 0.9
EVENT_DIRS = (
    "N-Caltech101",
    "NCaltech101",
    "NCALTECH101/Caltech101",
    "N-Caltech101/Caltech101",
    "Caltech101",
)
IMAGE_DIRS = (
    "Caltech101/101_ObjectCategories",
    "101_ObjectCategories",
    "caltech101/101_ObjectCategories",
    "Caltech101",
)
# ATIS .bin: y == 240 marks a timestamp overflow; every later t gains 2**13 us (tonic's reader).
OVERFLOW_Y = 240
OVERFLOW_US = 1 << 13


@dataclass(frozen=True)
class Layout:
    """Resolved folders, classes (N-Caltech101 order) and sorted recordings per class."""

    event_dir: Path
    image_dir: Path
    class_names: tuple[str, ...]
    recordings: tuple[tuple[Recording, ...], ...]


def read_atis_bin(path: str | Path) -> np.ndarray:
    """Read an N-MNIST/N-Caltech101 ATIS ``.bin`` file (5 bytes per event).

    Byte 0 = x, byte 1 = y, bit 7 of byte 2 = polarity (1 = ON), the other 23 bits = t in us.
    Events with y == 240 are overflow markers: they add 2**13 us to their own and every later
    timestamp and are dropped (as ``tonic.io.read_mnist_file``).

    Returns:
        [E] structured events (raw sensor coordinates, file order).

    Raises:
        DataError: missing, truncated, empty or corrupt file.
    """
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as err:
        raise DataError(f"{path}: cannot read ATIS .bin file ({err.strerror or err})") from None
    if raw.size % 5:
        raise DataError(
            f"{path}: truncated ATIS .bin file ({raw.size} bytes is not a multiple of the 5-byte event size)"
        )
    rec = raw.reshape(-1, 5).astype(np.int64)
    x, y = rec[:, 0], rec[:, 1]
    bad = np.flatnonzero(y > OVERFLOW_Y)
    if bad.size:
        raise DataError(
            f"{path}: corrupt ATIS .bin file (event {bad[0]} has y={y[bad[0]]}; "
            f"expected y < {OVERFLOW_Y} or the overflow marker {OVERFLOW_Y})"
        )
    marker = y == OVERFLOW_Y
    t = ((rec[:, 2] & 0x7F) << 16) | (rec[:, 3] << 8) | rec[:, 4]
    t = t + np.cumsum(marker) * OVERFLOW_US
    keep = ~marker
    if not keep.any():
        raise DataError(f"{path}: no events (expected at least one 5-byte ATIS event)")
    return make_events(x[keep], y[keep], t[keep], rec[keep, 2] >> 7)


def read_recording(path: Path) -> np.ndarray:
    """:func:`read_atis_bin` with x and y shifted to start at 0 (tonic's NCALTECH101 does this)."""
    events = read_atis_bin(path)
    events["x"] -= events["x"].min()
    events["y"] -= events["y"].min()
    return events


def find_layout(root: str | Path | None, include_background: bool = True) -> Layout:
    """Resolve the folders under ``root`` and list classes and recordings.

    Raises:
        DataError: missing root, no event or image folder, missing or empty class folder,
            missing image.
    """
    base = require_root(root, NAME)
    event_dir = _first_dir(base, EVENT_DIRS, (".bin",), "N-Caltech101 event", "<class>/*.bin")
    image_dir = _first_dir(base, IMAGE_DIRS, IMAGE_SUFFIXES, "Caltech101 image", "<class>/*.jpg")
    names = _class_names(event_dir, include_background)
    per_class = tuple(
        _class_recordings(event_dir / name, image_dir / name, label) for label, name in enumerate(names)
    )
    n_files = sum(len(recs) for recs in per_class)
    expected = N_FILES - (0 if include_background else BACKGROUND_FILES)
    if n_files != expected:
        log.warning(
            "%s: %d recordings, but N-Caltech101 has %d%s; results are not comparable with published ones",
            event_dir,
            n_files,
            expected,
            "" if include_background else f" without {BACKGROUND}",
        )
    return Layout(event_dir, image_dir, names, per_class)


def split_layout(layout: Layout) -> tuple[list[Recording], list[Recording]]:
    """Per class in sorted order: first ``round(0.9 n)`` recordings train, the rest test."""
    train: list[Recording] = []
    test: list[Recording] = []
    for recs in layout.recordings:
        cut = round(TRAIN_FRACTION * len(recs))
        train.extend(recs[:cut])
        test.extend(recs[cut:])
    return train, test


def build_params(cfg: DataConfig, layout: Layout) -> dict[str, Any]:
    return {
        "event_dir": str(layout.event_dir),
        "image_dir": str(layout.image_dir),
        "include_background": cfg.include_background,
        "listing": listing_fingerprint([r for recs in layout.recordings for r in recs]),
    }


def build_ncaltech101(cfg: DataConfig, image_size: int, layout: Layout | None = None) -> BuiltData:
    """Read, bin, resize and pair every recording (``cfg.limit`` caps each split, round-robin)."""
    layout = layout or find_layout(cfg.root, cfg.include_background)
    splits = {}
    for name, recs in zip(("train", "test"), split_layout(layout)):
        labels = np.array([r.label for r in recs], dtype=np.int64)
        chosen = [recs[i] for i in limit_indices(labels, cfg.limit)]
        splits[name] = build_split(
            chosen, read_recording, cfg.timesteps, cfg.size, image_size, f"{NAME} {name}"
        )
    info = {
        "source": f"N-Caltech101 {layout.event_dir} + Caltech101 {layout.image_dir}",
        "synthetic_events": False,
        "synthetic_images": False,
    }
    return BuiltData(NAME, layout.class_names, splits["train"], splits["test"], info)


def _class_names(event_dir: Path, include_background: bool) -> tuple[str, ...]:
    """The classes in label order, checked against :data:`CLASS_NAMES`.

    A missing class folder is an error: labels would silently differ from the paper's map and
    from teachers trained elsewhere. Other folders cannot shift labels, so they are only skipped
    with a warning (a stray ``Faces`` or an unpacked extra should not stop a run).
    """
    present = {d.name for d in _subdirs(event_dir)}
    expected = tuple(n for n in CLASS_NAMES if include_background or n != BACKGROUND)
    missing = [n for n in expected if n not in present]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{event_dir}: missing class folder(s) {shown} (expected N-Caltech101's "
            f"{len(expected)} class folders <class>/*.bin)"
        )
    extra = sorted(present - set(CLASS_NAMES))
    if extra:
        log.warning(
            "%s: skipping folder(s) that are not N-Caltech101 classes: %s", event_dir, ", ".join(extra)
        )
    return expected


def _subdirs(path: Path) -> list[Path]:
    return [Path(e.path) for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]


def _first_dir(
    base: Path, candidates: tuple[str, ...], suffixes: tuple[str, ...], what: str, pattern: str
) -> Path:
    """First candidate folder whose class sub-folders hold files with one of ``suffixes``."""
    for rel in candidates:
        path = base / rel
        if path.is_dir() and any(_has_files(d, suffixes) for d in _subdirs(path)):
            return path
    tried = ", ".join(str(base / rel) for rel in candidates)
    raise DataError(f"{base}: no {what} folder found (expected {pattern} under one of: {tried})")


def _has_files(path: Path, suffixes: tuple[str, ...]) -> bool:
    return any(
        e.is_file() and e.name.lower().endswith(suffixes) and not e.name.startswith(".")
        for e in os.scandir(path)
    )


def _class_recordings(event_dir: Path, image_dir: Path, label: int) -> tuple[Recording, ...]:
    # .bin in any case, as _first_dir finds folders; hidden files (macOS "._image_0001.bin") skipped
    bins = sorted(
        p
        for p in event_dir.iterdir()
        if p.suffix.lower() == ".bin" and not p.name.startswith((".", "annotation")) and not p.is_dir()
    )
    for path in bins:
        if not path.exists():  # a dangling symlink: refused like a missing recording, not skipped
            raise DataError(f"{path}: missing recording (broken link)")
    if not bins:
        raise DataError(f"{event_dir}: class folder has no recordings (expected at least one *.bin)")
    if not image_dir.is_dir():
        raise DataError(f"{image_dir}: missing Caltech101 image folder for class {event_dir.name!r}")
    images = images_by_stem(image_dir)
    out = []
    for path in bins:
        image = images.get(path.stem)
        if image is None:
            raise DataError(
                f"{image_dir / (path.stem + '.jpg')}: missing image for recording "
                f"{path} (expected the same file stem)"
            )
        out.append(Recording(path, image, label))
    return tuple(out)
