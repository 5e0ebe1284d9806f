"""Shared real-data helpers: images of every PIL mode, oversized images, broken links."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ckd_search.data.realdata import Recording
from ckd_search.data.realdata import images_by_stem
from ckd_search.data.realdata import listing_fingerprint
from ckd_search.data.realdata import load_image
from ckd_search.errors import DataError


@pytest.mark.parametrize(
    ("dtype", "full_scale", "suffix", "mode"),
    [
        (np.uint16, 65535, ".png", "I;16"),  # 16-bit gray PNG
        (">u2", 65535, ".tiff", "I;16B"),
        (np.int32, 65535, ".tiff", "I"),  # read as 16-bit (older Pillow decodes 16-bit PNG so)
        (np.float32, 1.0, ".tiff", "F"),  # float images: 0..1
    ],
)
def test_wide_images_are_scaled_to_8_bits_not_clipped(
    tmp_path: Path, dtype: str, full_scale: float, suffix: str, mode: str
) -> None:
    levels = np.array([0, 100, 200, 255])
    values = np.repeat(levels[None, :] * (full_scale / 255), 4, axis=0).astype(dtype)  # 4x4, 4 columns
    path = tmp_path / f"wide{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == mode
    rgb = load_image(path, 4)
    assert rgb.shape == (3, 4, 4)
    np.testing.assert_array_equal(rgb[:, 0, :], np.tile(levels, (3, 1)))  # clipping gave 0/255 only


def test_non_finite_float_pixels_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "nan.tiff"
    Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32)).save(path)
    with pytest.raises(DataError, match=rf"^{path}: cannot read image \(mode F image has non-finite"):
        load_image(path, 4)


def test_a_decompression_bomb_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (30, 30)).save(bomb)  # 900 > 2 x 100 pixels: PIL raises DecompressionBombError
    with pytest.raises(DataError, match=rf"^{bomb}: image too large to read"):
        load_image(bomb, 4)
    big = tmp_path / "big.png"
    Image.new("L", (12, 12)).save(big)  # 144 > 100: only a warning, unless warnings are errors
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(DataError, match=rf"^{big}: image too large to read"):
            load_image(big, 4)


def test_a_broken_image_link_is_one_line_naming_it(tmp_path: Path) -> None:
    events = tmp_path / "a.bin"
    events.write_bytes(b"x" * 5)
    image = tmp_path / "a.jpg"
    image.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(DataError, match=rf"^{image}: missing image \(broken link\)$"):
        listing_fingerprint([Recording(events, image, 0)])


def test_hidden_image_files_are_skipped(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "a.jpg")
    (tmp_path / "._a.jpg").write_bytes(b"\0" * 64)  # macOS AppleDouble: not an image
    (tmp_path / ".b.png").write_bytes(b"\0" * 64)
    assert images_by_stem(tmp_path) == {"a": tmp_path / "a.jpg"}
