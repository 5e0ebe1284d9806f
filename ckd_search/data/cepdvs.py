"""CEP-DVS: 10,000 recordings of CIFAR-100 images, 20 superclasses, exact 1:1 RGB pairs.

Local folder only, never downloaded. Expected layout (``root`` may also contain a ``CEP-DVS``
folder holding this)::

    root/pathFile.csv              one header line, then row i (0-based) describes index i;
                                   its 5th whitespace-separated token is the class name
    root/data/MAT/img/<i>.mat      events: fields x, y, ts (us), p in {-1, +1}
    root/data/img/<i>.<png|jpg>    the RGB image of index i

As read by He et al. (Transfer-for-DVS ``cepdvs.py``): p = -1 becomes 0; no coordinate shift; the
sensor window is inferred per recording; labels 0..19 are the superclasses in sorted order.
Recording i pairs with image i (``same_image``). Split per class in index order: the first
``round(0.5 n)`` recordings train, the next ``n - round(0.8 n)`` test (the rest unused).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ckd_search.config import DataConfig
from ckd_search.data.built import BuiltData
from ckd_search.data.built import limit_indices
from ckd_search.data.events import make_events
from ckd_search.data.realdata import Recording
from ckd_search.data.realdata import build_split
from ckd_search.data.realdata import images_by_stem
from ckd_search.data.realdata import listing_fingerprint
from ckd_search.data.realdata import require_root
from ckd_search.errors import DataError

log = logging.getLogger(__name__)

NAME = "cepdvs"
CLASS_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip
TRAIN_FRACTION = 0.5
TEST_END_FRACTION = 0.8
LABEL_TOKEN = 4  # 0-based: the 5th whitespace-separated token of a pathFile.csv row


@dataclass(frozen=True)
class Layout:
    """Resolved folder and recordings sorted by index."""

    root: Path
    recordings: tuple[Recording, ...]


def read_cep_mat(path: str | Path) -> np.ndarray:
    """Read one CEP-DVS ``.mat`` recording (fields x, y, ts, p with p in {-1, 1} -> {0, 1}).

    Returns:
        [E] structured events in file order.

    Raises:
        DataError: unreadable, missing fields, unequal lengths, bad values (not finite, not
            whole numbers, implausible x or y: see :data:`MAX_SENSOR_SIDE`, ...) or no events.
    """
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such .mat file") from None
    except Exception as err:  # scipy raises many types (ValueError, OSError, zlib errors, ...)
        raise DataError(
            f"{path}: cannot read MATLAB .mat file ({type(err).__name__}: {err}); "
            "expected a v5 .mat with fields x, y, ts, p"
        ) from None
    missing = [k for k in ("x", "y", "ts", "p") if k not in mat]
    if missing:
        raise DataError(f"{path}: missing field(s) {missing}; expected fields x, y, ts, p")
    x, y, t, p = (_whole_numbers(path, key, mat[key]) for key in ("x", "y", "ts", "p"))
    if not len(x) == len(y) == len(t) == len(p):
        raise DataError(
            f"{path}: fields x, y, ts, p have lengths {[len(x), len(y), len(t), len(p)]}"
            "; expected equal lengths"
        )
    if len(x) == 0:
        raise DataError(f"{path}: no events (expected at least one)")
    if x.min() < 0 or y.min() < 0:
        raise DataError(f"{path}: negative x or y; expected pixel coordinates >= 0")
    if not np.isin(p, (-1, 0, 1)).all():
        raise DataError(f"{path}: polarity p must be -1 or +1 (or 0/1)")
    for key, values in (("x", x), ("y", y)):
        _check_coordinate_range(path, key, values)
    return make_events(x, y, t, (p > 0).astype(np.int64))


# Largest magnitude accepted in any field: floats hold every integer up to 2**53 exactly, and
# differences of timestamps then stay far from int64 overflow.
_MAX_ABS = 2**53
_UNITS = {"x": "pixel coordinates", "y": "pixel coordinates", "ts": "microseconds", "p": "polarities"}


def _whole_numbers(path: Path, key: str, raw: object) -> np.ndarray:
    """Field ``key`` as [E] int64: numeric, finite, whole and of plausible size, or a DataError."""
    values = np.asarray(raw).reshape(-1)
    if values.dtype.kind not in "biuf":
        raise DataError(f"{path}: fields x, y, ts, p must be numeric (field {key} has dtype {values.dtype})")
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            bad = float(values[~np.isfinite(values)][0])
            raise DataError(f"{path}: {key}={bad} is not a finite number; expected integer {_UNITS[key]}")
        fractional = values != np.round(values)
        if fractional.any():
            # float seconds (or ms) would all truncate to one integer and bin to all-zero frames
            name = "timestamp ts" if key == "ts" else key
            raise DataError(
                f"{path}: {name}={float(values[fractional][0]):g} is not a whole number; "
                f"expected integer {_UNITS[key]}"
            )
    huge = (values > _MAX_ABS) | (values < -_MAX_ABS)  # compared, not abs(): abs(int64 min) < 0
    if huge.any():
        raise DataError(f"{path}: {key}={values[huge][0]:g} is out of range (|{key}| <= 2**53 expected)")
    return values.astype(np.int64)


# The CEP-DVS sensor resolution is not documented (data.md, CEP-DVS section and open items), so
# the window is inferred per recording (max + 1, as He et al. do): a stray event far out squashes
# that recording, as in their code. Only a coordinate no event sensor has (a 16-bit glitch such as
# 65535 would ask for a 384 GiB frame) is refused.
MAX_SENSOR_SIDE = 2048


def _check_coordinate_range(path: Path, key: str, values: np.ndarray) -> None:
    """DataError naming ``path`` and the value when a coordinate is beyond any event sensor."""
    top = int(values.max())
    if top >= MAX_SENSOR_SIDE:
        raise DataError(
            f"{path}: {key}={top} is beyond any event sensor (expected {key} < {MAX_SENSOR_SIDE}); "
            "corrupt recording?"
        )


def read_labels(csv_path: Path) -> list[str]:
    """Class name of every index from ``pathFile.csv`` (header skipped, blank lines ignored)."""
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: missing label file (expected pathFile.csv with one row per index)")
    rows = [line for line in csv_path.read_text(errors="replace").splitlines()[1:] if line.strip()]
    names = []
    for i, row in enumerate(rows):
        tokens = row.split()
        if len(tokens) <= LABEL_TOKEN or tokens[LABEL_TOKEN] not in CLASS_NAMES:
            raise DataError(
                f"{csv_path}: row {i + 2} ({row.strip()[:80]!r}): expected a CIFAR-100 "
                f"superclass as whitespace token {LABEL_TOKEN + 1}"
            )
        names.append(tokens[LABEL_TOKEN])
    return names


def find_layout(root: str | Path | None) -> Layout:
    """Resolve the folder and pair every ``data/MAT/img/<i>.mat`` with ``data/img/<i>.*``.

    Raises:
        DataError: missing root or files, bad names, labels out of range.
    """
    base = require_root(root, NAME)
    if not (base / "data").is_dir() and (base / "CEP-DVS" / "data").is_dir():
        base = base / "CEP-DVS"
    mat_dir, img_dir = base / "data" / "MAT" / "img", base / "data" / "img"
    for folder, what in ((mat_dir, "<index>.mat event files"), (img_dir, "<index>.png images")):
        if not folder.is_dir():
            raise DataError(
                f"{folder}: missing folder (expected {what}; layout: root/pathFile.csv, "
                "root/data/MAT/img/, root/data/img/)"
            )
    # hidden files (macOS "._7.mat") are skipped, as by the N-Caltech101 loader
    found = [p for p in mat_dir.iterdir() if p.suffix.lower() == ".mat" and not p.name.startswith(".")]
    for path in found:
        if not _is_index(path.stem):
            raise DataError(f"{path}: unexpected file name (expected <index>.mat)")
    mats = _by_index(sorted(found), "recording")
    if not mats:
        raise DataError(f"{mat_dir}: no recordings (expected <index>.mat files)")
    images = _by_index([p for stem, p in images_by_stem(img_dir).items() if _is_index(stem)], "image")
    labels = read_labels(base / "pathFile.csv")
    recordings = []
    for index in sorted(mats):
        if index >= len(labels):
            raise DataError(
                f"{base / 'pathFile.csv'}: no row for index {index} "
                f"(has {len(labels)} rows; needed by {mats[index]})"
            )
        if index not in images:
            raise DataError(f"{img_dir / f'{index}.png'}: missing image for recording {mats[index]}")
        recordings.append(Recording(mats[index], images[index], CLASS_NAMES.index(labels[index])))
    return Layout(base, tuple(recordings))


def _is_index(stem: str) -> bool:
    return stem.isascii() and stem.isdigit()  # not str.isdigit alone: int("²") fails


def _by_index(paths: list[Path], what: str) -> dict[int, Path]:
    """``{int(stem): path}``; DataError naming both files when two stems give one index (7, 07)."""
    out: dict[int, Path] = {}
    for path in paths:
        other = out.setdefault(int(path.stem), path)
        if other != path:
            raise DataError(
                f"{path}: same index {int(path.stem)} as {other}; expected one {what} per index "
                "(remove the stray copy)"
            )
    return out


def split_layout(layout: Layout) -> tuple[list[Recording], list[Recording]]:
    """Per class in index order: first 50% train, next 20% test (He et al.)."""
    train: list[Recording] = []
    test: list[Recording] = []
    for label in range(len(CLASS_NAMES)):
        recs = [r for r in layout.recordings if r.label == label]
        n_train, n_test = round(TRAIN_FRACTION * len(recs)), len(recs) - round(TEST_END_FRACTION * len(recs))
        train.extend(recs[:n_train])
        test.extend(recs[n_train : n_train + n_test])
    return train, test


def build_params(cfg: DataConfig, layout: Layout) -> dict[str, Any]:
    return {"root": str(layout.root), "listing": listing_fingerprint(layout.recordings)}


def build_cepdvs(cfg: DataConfig, image_size: int, layout: Layout | None = None) -> BuiltData:
    """Read, bin, resize and pair the train and test recordings."""
    layout = layout or find_layout(cfg.root)
    splits = {}
    for name, recs in zip(("train", "test"), split_layout(layout)):
        labels = np.array([r.label for r in recs], dtype=np.int64)
        chosen = [recs[i] for i in limit_indices(labels, cfg.limit)]
        splits[name] = build_split(
            chosen, read_cep_mat, cfg.timesteps, cfg.size, image_size, f"{NAME} {name}"
        )
    info = {"source": f"CEP-DVS {layout.root}", "synthetic_events": False, "synthetic_images": False}
    return BuiltData(NAME, CLASS_NAMES, splits["train"], splits["test"], info)
