"""Helpers shared by the real-data loaders: root checks, images, per-recording frames, builds."""

from __future__ import annotations

import hashlib
import logging
import os
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
            st = _stat(path, "recording" if path is rec.events else "image")
            digest.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{rec.label}\n".encode())
    return digest.hexdigest()[:16]


def _stat(path: Path, what: str) -> os.stat_result:
    """``path.stat()``, or a DataError naming it (a dangling symlink, a file removed meanwhile)."""
    try:
        return path.stat()
    except OSError as err:
        why = "broken link" if path.is_symlink() else (err.strerror or str(err))
        raise DataError(f"{path}: missing {what} ({why})") from None


def images_by_stem(folder: Path) -> dict[str, Path]:
    """Image file of every stem in ``folder``, the same whatever order the filesystem lists them.

    When stems collide (``a.jpg`` and ``a.png``) the first suffix of :data:`IMAGE_SUFFIXES` wins,
    then the smaller name (``a.JPG`` before ``a.jpg``). Hidden files (macOS ``._a.jpg``
    AppleDouble files) are skipped, as hidden folders are.
    """
    rank = {suffix: i for i, suffix in enumerate(IMAGE_SUFFIXES)}
    found = [p for p in folder.iterdir() if p.suffix.lower() in rank and not p.name.startswith(".")]
    images: dict[str, Path] = {}
    for path in sorted(found, key=lambda p: (rank[p.suffix.lower()], p.name)):
        images.setdefault(path.stem, path)
    return images


# Full scale of the PIL modes wider than 8 bits, mapped linearly onto 0..255 (convert("RGB")
# would clip them instead). "I" is what 16-bit PNG/TIFF gray decodes to in older Pillow, so it
# is read as 16-bit too; "F" (float TIFF) as the usual 0..1 float image range.
_WIDE_MODE_SCALE = {
    "I;16": 65535.0,
    "I;16B": 65535.0,
    "I;16L": 65535.0,
    "I;16N": 65535.0,
    "I": 65535.0,
    "F": 1.0,
}


def _to_8bit(img: Image.Image) -> Image.Image:
    """``img`` itself, or an 8-bit gray copy of a 16-bit / int / float one, scaled, not clipped."""
    full_scale = _WIDE_MODE_SCALE.get(img.mode)
    if full_scale is None:
        return img
    values = np.asarray(img, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"mode {img.mode} image has non-finite pixel values")
    scaled = np.rint(np.clip(values, 0.0, full_scale) * (255.0 / full_scale))  # I;16: v / 257
    return Image.fromarray(scaled.astype(np.uint8))  # 2-D uint8: mode "L"


def load_image(path: Path, size: int) -> np.ndarray:
    """RGB image resized to ``size x size`` (PIL bilinear, as torchvision Resize).

    16-bit, 32-bit int and float images are scaled to 8 bits first (see :data:`_WIDE_MODE_SCALE`).

    Returns:
        [3, size, size] uint8; gray images are copied to three channels.
    """
    try:
        with Image.open(path) as img:
            rgb = _to_8bit(img).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # not an OSError; the warning is only raised when warnings are errors (python -W error)
        raise DataError(f"{path}: image too large to read ({err})") from None
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
