"""Helpers shared by the real-data loaders: root checks, images, per-recording frames, builds."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ckd_search.data.built import SplitArrays
from ckd_search.data.frames import events_to_frames
from ckd_search.data.frames import resize_frames
from ckd_search.errors import DataError

log = logging.getLogger(__name__)

# In order of preference when two images share a stem (Caltech101 ships .jpg).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Recording:
    """One event file, its paired image and its class."""

    events: Path
    image: Path
    label: int


def require_root(root: str | Path | None, dataset: str) -> Path:
    """The data set root as an absolute path; DataError if it is not an existing folder."""
    if not root:
        raise DataError(f"data.root is not set: {dataset} needs a local folder (never downloaded)")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DataError(
            f"{path}: {dataset} root does not exist (expected a local folder; nothing is downloaded)"
        )
    return path


def listing_fingerprint(recordings: Sequence[Recording]) -> str:
    """Hash of every file's path, size and mtime: a changed data folder gives a new cache key."""
    digest = hashlib.sha256()
    for rec in recordings:
        for path in (rec.events, rec.image):
            st = path.stat()
            digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{rec.label}\n".encode())
    return digest.hexdigest()[:16]


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Image file of every stem in ``folder``, the same whatever order the filesystem lists them.

    When stems collide (``a.jpg`` and ``a.png``) the first suffix of :data:`IMAGE_SUFFIXES` wins,
    then the smaller name (``a.JPG`` before ``a.jpg``).
    """
    rank = {suffix: i for i, suffix in enumerate(IMAGE_SUFFIXES)}
    found = [p for p in folder.iterdir() if p.suffix.lower() in rank]
    images: dict[str, Path] = {}
    for path in sorted(found, key=lambda p: (rank[p.suffix.lower()], p.name)):
        images.setdefault(path.stem, path)
    return images


def load_image(path: Path, size: int) -> np.ndarray:
    """RGB image resized to ``size x size`` (PIL bilinear, as torchvision Resize).

    Returns:
        [3, size, size] uint8; gray images are copied to three channels.
    """
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: cannot read image ({err}); expected a JPEG or PNG file") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def recording_frames(events: np.ndarray, n_time_bins: int, size: int) -> tuple[np.ndarray, int, int]:
    """tonic ``ToFrame(sensor_size=None, n_time_bins=T)`` then a bilinear resize (He et al.).

    The sensor window is inferred per recording (max x + 1, max y + 1), as He et al. do.

    Returns:
        ([T, 2, S, S] float16, H, W).
    """
    width, height = int(events["x"].max()) + 1, int(events["y"].max()) + 1
    counts = events_to_frames(events, (width, height), n_time_bins)
    return resize_frames(counts[None], size)[0], height, width


def build_split(
    recordings: Sequence[Recording],
    read_events: Callable[[Path], np.ndarray],
    n_time_bins: int,
    size: int,
    image_size: int,
    what: str,
) -> SplitArrays:
    """Read, bin and resize every recording and its image (one Python loop: file I/O bound).

    Recordings that bin to all-zero frames (shorter than T us, or timestamps not in us) are kept
    as He et al. do, but counted in one warning: a student cannot learn from them.
    """
    n = len(recordings)
    frames = np.zeros((n, n_time_bins, 2, size, size), dtype=np.float16)
    images = np.zeros((n, 3, image_size, image_size), dtype=np.uint8)
    n_events = np.zeros(n, dtype=np.int64)
    sensor_hw = np.zeros((n, 2), dtype=np.int64)
    empty: list[Path] = []
    for i, rec in enumerate(recordings):
        events = read_events(rec.events)
        frames[i], sensor_hw[i, 0], sensor_hw[i, 1] = recording_frames(events, n_time_bins, size)
        if not frames[i].any():
            empty.append(rec.events)
        n_events[i] = len(events)
        images[i] = load_image(rec.image, image_size)
        if (i + 1) % 500 == 0:
            log.info("%s: %d/%d recordings read", what, i + 1, n)
    if empty:
        log.warning(
            "%s: %d of %d recordings give all-zero frames (span under T=%d us, or timestamps "
            "not in microseconds?), the first: %s",
            what,
            len(empty),
            n,
            n_time_bins,
            empty[0],
        )
    labels = np.array([rec.label for rec in recordings], dtype=np.int64)
    return SplitArrays(
        frames=frames,
        labels=labels,
        images=images,
        image_labels=labels.copy(),
        pair_index=np.arange(n, dtype=np.int64),
        n_events=n_events,
        sensor_hw=sensor_hw,
    )
