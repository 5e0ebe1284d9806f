"""Fixtures for the data tests: configs with a tmp cache dir and writers of real file formats."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ckd_search.config import Config
from ckd_search.config import DataConfig


@pytest.fixture
def data_cfg(tmp_path: Path) -> Callable[..., DataConfig]:
    """``data_cfg(**dotted_overrides)`` -> DataConfig whose cache lives under tmp_path."""

    def make(**overrides: Any) -> DataConfig:
        values = {"data.cache_dir": str(tmp_path / "cache")}
        values.update({k if k.startswith("data.") else f"data.{k}": v for k, v in overrides.items()})
        return Config.from_dict(values).data

    return make


def atis_bytes(events: list[tuple[int, int, int, int]]) -> bytes:
    """Encode (x, y, p, t) tuples byte by byte in the 5-byte ATIS .bin format."""
    out = bytearray()
    for x, y, p, t in events:
        out += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    return bytes(out)


def random_atis_events(
    rng: np.random.Generator, n: int, w: int = 40, h: int = 30, x0: int = 5, y0: int = 7
) -> list[tuple[int, int, int, int]]:
    t = np.sort(rng.integers(0, 200_000, n))
    return [
        (int(x0 + rng.integers(0, w)), int(y0 + rng.integers(0, h)), int(rng.integers(0, 2)), int(ti))
        for ti in t
    ]


def write_image(path: Path, value: int, size: tuple[int, int] = (20, 16)) -> None:
    """A solid-colour JPEG/PNG whose red channel encodes ``value`` (to check pairing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 255 - value, 128)).save(path)


@pytest.fixture
def ncaltech_root(tmp_path: Path) -> Callable[..., Path]:
    """``ncaltech_root(counts, fill=1, ...)``: a tiny N-Caltech101 + Caltech101.

    ``counts`` gives the recordings of some folders (class names or extra folders); every other
    N-Caltech101 class gets ``fill`` recordings (``fill=0``: no folder), since the loader
    requires all 101 class folders.
    """
    from ckd_search.data.ncaltech101 import CLASS_NAMES

    made: list[Path] = []

    def make(
        counts: dict[str, int],
        events_dir: str = "N-Caltech101",
        images_dir: str = "Caltech101/101_ObjectCategories",
        seed: int = 0,
        fill: int = 1,
    ) -> Path:
        root = tmp_path / f"ncal{len(made)}"
        made.append(root)
        rng = np.random.default_rng(seed)
        value = 0
        for cls, n in {**counts, **{c: fill for c in CLASS_NAMES if c not in counts}}.items():
            for i in range(1, n + 1):
                stem = f"image_{i:04d}"
                (root / events_dir / cls).mkdir(parents=True, exist_ok=True)
                (root / events_dir / cls / f"{stem}.bin").write_bytes(
                    atis_bytes(random_atis_events(rng, int(rng.integers(50, 300))))
                )
                write_image(root / images_dir / cls / f"{stem}.jpg", value % 256)
                value += 10
        return root

    return make


@pytest.fixture
def cep_root(tmp_path: Path) -> Callable[..., Path]:
    """``cep_root(labels)``: a tiny CEP-DVS folder, index i has class ``labels[i]``."""
    import scipy.io

    def make(labels: list[str], seed: int = 0) -> Path:
        root = tmp_path / "cep"
        (root / "data" / "MAT" / "img").mkdir(parents=True)
        (root / "data" / "img").mkdir(parents=True)
        rng = np.random.default_rng(seed)
        rows = ["path a b c label"]
        for i, label in enumerate(labels):
            n = int(rng.integers(50, 200))
            scipy.io.savemat(
                root / "data" / "MAT" / "img" / f"{i}.mat",
                {
                    "x": rng.integers(0, 40, (n, 1)),
                    "y": rng.integers(0, 30, (n, 1)),
                    "ts": np.sort(rng.integers(0, 100_000, (n, 1)), axis=0),
                    "p": rng.choice([-1, 1], (n, 1)),
                },
            )
            write_image(root / "data" / "img" / f"{i}.png", (i * 7) % 256)
            rows.append(f"img/{i}.png MAT/img/{i}.mat x y {label}")
        (root / "pathFile.csv").write_text("\n".join(rows) + "\n")
        return root

    return make


@pytest.fixture
def atis() -> Callable[[list[tuple[int, int, int, int]]], bytes]:
    """The ATIS byte encoder (fixtures, not imports: tests/ has no packages)."""
    return atis_bytes
