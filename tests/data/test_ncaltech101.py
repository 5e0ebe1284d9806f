"""N-Caltech101 + Caltech101 loader on tiny fixtures in the real formats."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ckd_search.config import DataConfig
from ckd_search.data import load_paired
from ckd_search.data.frames import events_to_frames
from ckd_search.data.ncaltech101 import CLASS_NAMES
from ckd_search.data.ncaltech101 import find_layout
from ckd_search.data.ncaltech101 import read_atis_bin
from ckd_search.data.ncaltech101 import split_layout
from ckd_search.errors import DataError

Atis = Callable[[list[tuple[int, int, int, int]]], bytes]
# every other class gets one recording (the fixture's fill): 21 + 97 recordings
COUNTS = {"BACKGROUND_Google": 4, "Faces_easy": 10, "accordion": 3, "airplanes": 6}
LABELS = [CLASS_NAMES.index(c) for c in COUNTS]  # 0, 1, 4, 5


def test_reader_decodes_bytes_and_overflow_markers(tmp_path: Path, atis: Atis) -> None:
    path = tmp_path / "a.bin"
    events = [(3, 4, 1, 100), (250, 239, 0, (1 << 23) - 1), (0, 240, 0, 0), (7, 8, 1, 5)]
    path.write_bytes(atis(events))
    ev = read_atis_bin(path)
    assert ev["x"].tolist() == [3, 250, 7] and ev["y"].tolist() == [4, 239, 8]
    assert ev["p"].tolist() == [1, 0, 1]
    assert ev["t"].tolist() == [100, (1 << 23) - 1, 5 + 8192]  # after the marker: + 2**13


def test_reader_matches_tonic(tmp_path: Path, atis: Atis) -> None:
    import tonic

    rng = np.random.default_rng(0)
    events = [
        (
            int(rng.integers(0, 240)),
            int(rng.integers(0, 241)),
            int(rng.integers(0, 2)),
            int(rng.integers(0, 1 << 23)),
        )
        for _ in range(500)
    ]
    path = tmp_path / "b.bin"
    path.write_bytes(atis(events))
    ours = read_atis_bin(path)
    theirs = tonic.io.read_mnist_file(str(path), dtype=ours.dtype)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x01\x02\x03", "truncated ATIS .bin file (3 bytes is not a multiple of the 5-byte"),
        (b"", "no events"),
        (bytes([1, 241, 0, 0, 5]), "corrupt ATIS .bin file (event 0 has y=241"),
    ],
)
def test_reader_rejects_bad_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(content)
    with pytest.raises(DataError, match="^" + re.escape(str(path))) as err:
        read_atis_bin(path)
    assert message in str(err.value)
    with pytest.raises(DataError, match="cannot read"):
        read_atis_bin(tmp_path / "missing.bin")


def test_layout_classes_split_and_pairs(
    ncaltech_root: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = ncaltech_root({**COUNTS, "Faces": 2})
    with caplog.at_level(logging.WARNING):
        layout = find_layout(root)
    assert "skipping folder(s) that are not N-Caltech101 classes: Faces" in caplog.text
    assert layout.class_names == CLASS_NAMES and len(CLASS_NAMES) == 101
    assert list(CLASS_NAMES) == sorted(CLASS_NAMES) and "Faces" not in CLASS_NAMES
    assert layout.event_dir == root / "N-Caltech101"
    assert layout.image_dir == root / "Caltech101" / "101_ObjectCategories"
    stems = [r.events.stem for r in layout.recordings[1]]
    assert stems == sorted(stems) and len(stems) == 10
    assert all(
        r.image.stem == r.events.stem and r.image.parent.name == r.events.parent.name
        for recs in layout.recordings
        for r in recs
    )
    train, test = split_layout(layout)
    # per class: first round(0.9 n) train -> 4:0 (round(3.6)=4), 9:1, 3:0, 5:1 (round(5.4)=5)
    assert [sum(r.label == c for r in train) for c in LABELS] == [4, 9, 3, 5]
    assert [sum(r.label == c for r in test) for c in LABELS] == [0, 1, 0, 1]
    assert [r.events.stem for r in test] == ["image_0010", "image_0006"]
    no_bg = find_layout(root, include_background=False)
    assert no_bg.class_names == CLASS_NAMES[1:]


def test_tonic_style_layout_is_accepted(ncaltech_root: Callable[..., Path]) -> None:
    root = ncaltech_root({}, events_dir="NCALTECH101/Caltech101", images_dir="101_ObjectCategories")
    layout = find_layout(root)
    assert layout.event_dir == root / "NCALTECH101" / "Caltech101"
    assert layout.image_dir == root / "101_ObjectCategories"


def test_load_paired_end_to_end(
    ncaltech_root: Callable[..., Path], data_cfg: Callable[..., DataConfig]
) -> None:
    root = ncaltech_root(COUNTS)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    cfg = data_cfg(dataset="ncaltech101", root=str(root), timesteps=5, size=16)
    data = load_paired(cfg, 24)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written there
    assert data.class_names[0] == "BACKGROUND_Google" and data.num_classes == 101
    assert (len(data.train), len(data.test)) == (118, 2)
    assert data.train.frames.shape == (118, 5, 2, 16, 16) and data.train.images.shape == (118, 3, 24, 24)
    np.testing.assert_array_equal(data.train.image_labels[data.train.pair_index], data.train.labels)
    # pairs: the fixture's red channel counts up by 10 per recording in class/file order
    red = data.train.images[data.train.pair_index][:, 0, 12, 12].numpy().astype(int)
    assert (np.diff(red[:4]) > 0).all()
    # frames follow tonic ToFrame on the shifted events, then a bilinear resize
    first = find_layout(root).recordings[0][0].events
    ev = read_atis_bin(first)
    ev["x"] -= ev["x"].min()
    ev["y"] -= ev["y"].min()
    counts = events_to_frames(ev, (int(ev["x"].max()) + 1, int(ev["y"].max()) + 1), 5)
    assert data.train.frames[0].float().sum().item() > 0
    assert counts.sum() > 0
    d = data.descriptors
    assert d["classes"] == 101 and d["train_samples"] == 118 and d["test_samples"] == 2
    assert 50 <= d["mean_events_per_sample"] <= 300 and d["sensor_size"][0] <= 40
    assert not d["synthetic_events"]
    limited = load_paired(data_cfg(dataset="ncaltech101", root=str(root), limit=4), 24)
    assert sorted(limited.train.labels.tolist()) == [0, 1, 2, 3]


def test_changed_files_rebuild_the_cache(
    ncaltech_root: Callable[..., Path], data_cfg: Callable[..., DataConfig], atis: Atis
) -> None:
    root = ncaltech_root({})
    cfg = data_cfg(dataset="ncaltech101", root=str(root), limit=4)
    first = load_paired(cfg, 16).descriptors["cache_files"]["train"]
    (root / "N-Caltech101" / "ant" / "image_0001.bin").write_bytes(atis([(1, 1, 1, 1), (2, 2, 0, 9)]))
    second = load_paired(cfg, 16).descriptors["cache_files"]["train"]
    assert first != second


def test_bad_layouts_name_the_path(ncaltech_root: Callable[..., Path], tmp_path: Path, atis: Atis) -> None:
    with pytest.raises(DataError, match=r"data.root is not set: ncaltech101 needs a local folder"):
        find_layout(None)
    only_bg = ncaltech_root({"BACKGROUND_Google": 2}, fill=0)
    with pytest.raises(
        DataError,
        match=r"N-Caltech101: missing class folder\(s\) Faces_easy, Leopards, Motorbikes, accordion, "
        r"airplanes and 95 more \(expected N-Caltech101's 100 class folders",
    ):
        find_layout(only_bg, include_background=False)
    with pytest.raises(
        DataError, match=r"nowhere: ncaltech101 root does not exist \(expected a local folder"
    ):
        find_layout(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no N-Caltech101 event folder found \(expected <class>/\*\.bin"):
        find_layout(empty)

    events_only = ncaltech_root({}, images_dir="elsewhere")
    with pytest.raises(DataError, match=r"no Caltech101 image folder found \(expected <class>/\*\.jpg"):
        find_layout(events_only)

    root = ncaltech_root({"ant": 2, "bass": 2})
    import shutil

    shutil.rmtree(root / "Caltech101" / "101_ObjectCategories" / "bass")
    with pytest.raises(
        DataError, match=r"101_ObjectCategories/bass: missing Caltech101 image folder for class 'bass'"
    ):
        find_layout(root)
    root = ncaltech_root({"ant": 2, "bass": 2, "cup": 0})
    (root / "N-Caltech101" / "cup").mkdir()
    with pytest.raises(
        DataError, match=r"N-Caltech101/cup: class folder has no recordings \(expected at least one \*\.bin"
    ):
        find_layout(root)
    (root / "N-Caltech101" / "cup").rmdir()
    with pytest.raises(DataError, match=r"N-Caltech101: missing class folder\(s\) cup \(expected"):
        find_layout(root)
    (root / "N-Caltech101" / "cup").mkdir()
    shutil.copy(root / "N-Caltech101" / "ant" / "image_0001.bin", root / "N-Caltech101" / "cup")
    shutil.copytree(
        root / "Caltech101" / "101_ObjectCategories" / "ant",
        root / "Caltech101" / "101_ObjectCategories" / "cup",
    )

    (root / "Caltech101" / "101_ObjectCategories" / "bass" / "image_0002.jpg").unlink()
    with pytest.raises(
        DataError, match=r"bass/image_0002\.jpg: missing image for recording .*image_0002\.bin"
    ):
        find_layout(root)


def test_bad_files_name_the_path_at_build(
    ncaltech_root: Callable[..., Path], data_cfg: Callable[..., DataConfig]
) -> None:
    root = ncaltech_root({})
    bad = root / "N-Caltech101" / "ant" / "image_0001.bin"
    bad.write_bytes(bad.read_bytes()[:-2])
    cfg = data_cfg(dataset="ncaltech101", root=str(root))
    with pytest.raises(DataError, match=re.escape(str(bad)) + ": truncated ATIS"):
        load_paired(cfg, 16)
    assert not list(Path(cfg.cache_dir).glob("data/ncaltech101/*.arrow"))  # nothing half-written

    root2 = ncaltech_root({})
    img = root2 / "Caltech101" / "101_ObjectCategories" / "ant" / "image_0001.jpg"
    img.write_bytes(b"not a jpeg")
    with pytest.raises(
        DataError, match=re.escape(str(img)) + r": cannot read image .*expected a JPEG or PNG"
    ):
        load_paired(data_cfg(dataset="ncaltech101", root=str(root2)), 16)


def test_extra_folders_and_file_count_are_warned_about(
    ncaltech_root: Callable[..., Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = ncaltech_root({"zebra": 2, "Faces": 1})
    with caplog.at_level(logging.WARNING):
        layout = find_layout(root)
    assert layout.class_names == CLASS_NAMES  # extra folders shift no label
    assert "N-Caltech101: skipping folder(s) that are not N-Caltech101 classes: Faces, zebra" in caplog.text
    assert (
        "N-Caltech101: 101 recordings, but N-Caltech101 has 8709; results are not comparable" in caplog.text
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        find_layout(root, include_background=False)
    assert "100 recordings, but N-Caltech101 has 8242 without BACKGROUND_Google" in caplog.text


def test_image_stem_collisions_resolve_the_same_in_any_listing_order(
    ncaltech_root: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = ncaltech_root({})
    folder = root / "Caltech101" / "101_ObjectCategories" / "ant"
    (folder / "image_0001.png").write_bytes((folder / "image_0001.jpg").read_bytes())
    (folder / "image_0001.JPG").write_bytes((folder / "image_0001.jpg").read_bytes())
    listing = Path.iterdir
    picked = []
    for reverse in (False, True):
        monkeypatch.setattr(Path, "iterdir", lambda p, r=reverse: iter(sorted(listing(p), reverse=r)))
        picked.append(find_layout(root).recordings[CLASS_NAMES.index("ant")][0].image.name)
    assert picked == ["image_0001.JPG", "image_0001.JPG"]  # .jpg (any case) first, then by name


def test_upper_case_bin_counts_and_hidden_files_are_skipped(ncaltech_root: Callable[..., Path]) -> None:
    root = ncaltech_root({"accordion": 3})
    events = root / "N-Caltech101" / "accordion"
    images = root / "Caltech101" / "101_ObjectCategories" / "accordion"
    (events / "image_0001.bin").rename(events / "image_0001.BIN")  # _first_dir already took it
    (events / "._image_0002.bin").write_bytes(b"\0" * 4096)  # macOS AppleDouble files
    (images / "._image_0002.jpg").write_bytes(b"\0" * 4096)
    recs = find_layout(root).recordings[CLASS_NAMES.index("accordion")]
    assert [r.events.name for r in recs] == ["image_0001.BIN", "image_0002.bin", "image_0003.bin"]
    assert [r.image.name for r in recs] == ["image_0001.jpg", "image_0002.jpg", "image_0003.jpg"]


def test_broken_links_are_refused_naming_them(
    ncaltech_root: Callable[..., Path], data_cfg: Callable[..., DataConfig], tmp_path: Path
) -> None:
    root = ncaltech_root({"ant": 2})
    recording = root / "N-Caltech101" / "ant" / "image_0002.bin"
    recording.unlink()
    recording.symlink_to(tmp_path / "gone.bin")  # was skipped: the class silently lost a recording
    with pytest.raises(DataError, match=rf"^{recording}: missing recording \(broken link\)$"):
        find_layout(root)
    root = ncaltech_root({"ant": 2})
    image = root / "Caltech101" / "101_ObjectCategories" / "ant" / "image_0002.jpg"
    image.unlink()
    image.symlink_to(tmp_path / "gone.jpg")  # was a FileNotFoundError traceback
    with pytest.raises(DataError, match=rf"^{image}: missing image \(broken link\)$"):
        load_paired(data_cfg(dataset="ncaltech101", root=str(root)), 16)
