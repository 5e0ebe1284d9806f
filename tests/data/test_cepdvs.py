"""CEP-DVS loader on tiny fixtures: .mat events, pathFile.csv labels, PNG images."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ckd_search.config import DataConfig
from ckd_search.data import load_paired
from ckd_search.data.cepdvs import CLASS_NAMES
from ckd_search.data.cepdvs import find_layout
from ckd_search.data.cepdvs import read_cep_mat
from ckd_search.data.cepdvs import split_layout
from ckd_search.errors import DataError

# 10 "fish" and 10 "trees" recordings, interleaved so the per-class split is exercised
LABELS = ["fish", "trees"] * 10


def test_reader_maps_polarity_and_keeps_coordinates(tmp_path: Path) -> None:
    path = tmp_path / "0.mat"
    scipy.io.savemat(
        path,
        {
            "x": np.array([[3], [0]]),
            "y": np.array([[1], [2]]),
            "ts": np.array([[10], [20]]),
            "p": np.array([[-1], [1]]),
        },
    )
    ev = read_cep_mat(path)
    assert ev["x"].tolist() == [3, 0] and ev["y"].tolist() == [1, 2]
    assert ev["t"].tolist() == [10, 20] and ev["p"].tolist() == [0, 1]
    # MATLAB stores whole numbers as doubles: those are microseconds too
    scipy.io.savemat(path, {"x": [[3]], "y": [[1]], "ts": np.array([[10.0]]), "p": [[1]]})
    assert read_cep_mat(path)["t"].tolist() == [10]


def test_layout_labels_and_split(cep_root: Callable[..., Path]) -> None:
    layout = find_layout(cep_root(LABELS))
    assert len(layout.recordings) == 20
    assert [r.label for r in layout.recordings[:2]] == [CLASS_NAMES.index("fish"), CLASS_NAMES.index("trees")]
    train, test = split_layout(layout)
    # per class of 10 in index order: first round(0.5 * 10) = 5 train, next 10 - round(8) = 2 test
    fish = CLASS_NAMES.index("fish")
    assert [int(r.events.stem) for r in train if r.label == fish] == [0, 2, 4, 6, 8]
    assert [int(r.events.stem) for r in test if r.label == fish] == [10, 12]
    assert len(train) == 10 and len(test) == 4


def test_load_paired_end_to_end(cep_root: Callable[..., Path], data_cfg: Callable[..., DataConfig]) -> None:
    root = cep_root(LABELS)
    data = load_paired(data_cfg(dataset="cepdvs", root=str(root), timesteps=6, size=16), 20)
    assert data.num_classes == 20 and data.class_names[1] == "fish"
    assert (len(data.train), len(data.test)) == (10, 4)
    assert data.train.frames.shape == (10, 6, 2, 16, 16) and data.train.images.shape == (10, 3, 20, 20)
    np.testing.assert_array_equal(data.train.image_labels[data.train.pair_index], data.train.labels)
    # pair by index: the fixture's red channel is (7 * index) % 256; train = fish 0,2,.. then trees 1,3,..
    red = data.train.images[data.train.pair_index][:, 0, 10, 10].numpy().astype(int)
    np.testing.assert_allclose(red, [7 * i for i in (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)], atol=2)
    assert data.descriptors["class_counts"]["train"][CLASS_NAMES.index("trees")] == 5


def test_nested_folder_is_found(cep_root: Callable[..., Path], tmp_path: Path) -> None:
    root = cep_root(LABELS[:4])
    outer = tmp_path / "outer"
    outer.mkdir()
    root.rename(outer / "CEP-DVS")
    assert find_layout(outer).root == outer / "CEP-DVS"


def test_bad_inputs_name_the_path(cep_root: Callable[..., Path], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: cepdvs root does not exist"):
        find_layout(tmp_path / "nowhere")
    root = cep_root(LABELS[:4])
    (root / "pathFile.csv").write_text("header\nimg/0.png MAT/0.mat x y not_a_class\n")
    with pytest.raises(
        DataError, match=r"pathFile\.csv: row 2 .*expected a CIFAR-100 superclass as whitespace token 5"
    ):
        find_layout(root)
    (root / "pathFile.csv").write_text("header\n" + "a b c d fish\n" * 2)
    with pytest.raises(DataError, match=r"pathFile\.csv: no row for index 2"):
        find_layout(root)
    (root / "pathFile.csv").unlink()
    with pytest.raises(DataError, match=r"pathFile\.csv: missing label file"):
        find_layout(root)


def test_missing_pieces_name_the_path(cep_root: Callable[..., Path]) -> None:
    root = cep_root(LABELS[:4])
    (root / "data" / "img" / "3.png").unlink()
    with pytest.raises(DataError, match=r"img/3\.png: missing image for recording .*3\.mat"):
        find_layout(root)
    (root / "data" / "MAT" / "img" / "junk.mat").write_bytes(b"x")
    with pytest.raises(DataError, match=r"junk\.mat: unexpected file name \(expected <index>\.mat\)"):
        find_layout(root)
    import shutil

    shutil.rmtree(root / "data" / "MAT")
    with pytest.raises(DataError, match=r"data/MAT/img: missing folder \(expected <index>\.mat event files"):
        find_layout(root)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read MATLAB .mat file"),
        ({"x": np.zeros(3), "y": np.zeros(3), "ts": np.zeros(3)}, "missing field(s) ['p']"),
        ({"x": np.zeros(3), "y": np.zeros(2), "ts": np.zeros(3), "p": np.ones(3)}, "expected equal lengths"),
        ({"x": np.zeros(0), "y": np.zeros(0), "ts": np.zeros(0), "p": np.zeros(0)}, "no events"),
        (
            {"x": np.zeros(2), "y": np.zeros(2), "ts": np.zeros(2), "p": np.array([2, 1])},
            "polarity p must be",
        ),
        ({"x": -np.ones(2), "y": np.zeros(2), "ts": np.zeros(2), "p": np.ones(2)}, "negative x or y"),
        ({"x": "abc", "y": np.zeros(2), "ts": np.zeros(2), "p": np.ones(2)}, "must be numeric"),
        (
            {"x": np.zeros(3), "y": np.zeros(3), "ts": np.array([0.0, 0.1, 0.2]), "p": np.ones(3)},
            "timestamp ts=0.1 is not a whole number; expected integer microseconds",
        ),
        # inf passed the whole-number test and overflowed in the binning
        (
            {"x": np.zeros(3), "y": np.zeros(3), "ts": np.array([0.0, 1.0, np.inf]), "p": np.ones(3)},
            "ts=inf is not a finite number; expected integer microseconds",
        ),
        (
            {"x": np.array([0.0, np.nan]), "y": np.zeros(2), "ts": np.zeros(2), "p": np.ones(2)},
            "x=nan is not a finite number; expected integer pixel coordinates",
        ),
        (
            {"x": np.zeros(2), "y": np.array([1.0, 2.5]), "ts": np.zeros(2), "p": np.ones(2)},
            "y=2.5 is not a whole number; expected integer pixel coordinates",
        ),
        (
            {"x": np.zeros(2), "y": np.zeros(2), "ts": np.zeros(2), "p": np.array([1.0, 0.5])},
            "p=0.5 is not a whole number; expected integer polarities",
        ),
        (
            {"x": np.zeros(2), "y": np.zeros(2), "ts": np.array([0.0, 1e30]), "p": np.ones(2)},
            "ts=1e+30 is out of range",
        ),
        # a 16-bit glitch: the inferred sensor window would need a 384 GiB frame
        (
            {"x": np.array([3, 65535]), "y": np.zeros(2), "ts": np.zeros(2), "p": np.ones(2)},
            "x=65535 is beyond any event sensor (expected x < 2048)",
        ),
    ],
)
def test_bad_mat_files(tmp_path: Path, content: dict[str, np.ndarray] | None, message: str) -> None:
    path = tmp_path / "5.mat"
    if content is None:
        scipy.io.savemat(path, {"x": np.zeros(3)})
        path.write_bytes(path.read_bytes()[:100])  # truncated
    else:
        scipy.io.savemat(path, content)
    with pytest.raises(DataError, match="^" + re.escape(str(path))) as err:
        read_cep_mat(path)
    assert message in str(err.value)


def test_corrupt_recording_fails_the_build_naming_it(
    cep_root: Callable[..., Path], data_cfg: Callable[..., DataConfig]
) -> None:
    root = cep_root(LABELS[:4])
    bad = root / "data" / "MAT" / "img" / "0.mat"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match=re.escape(str(bad)) + ": cannot read MATLAB"):
        load_paired(data_cfg(dataset="cepdvs", root=str(root)), 16)


def test_recordings_with_all_zero_frames_are_counted_in_one_warning(
    cep_root: Callable[..., Path], data_cfg: Callable[..., DataConfig], caplog: pytest.LogCaptureFixture
) -> None:
    root = cep_root(LABELS[:4])  # train: index 0 (fish) and 1 (trees)
    short = root / "data" / "MAT" / "img" / "1.mat"
    scipy.io.savemat(short, {"x": [[1], [2]], "y": [[1], [2]], "ts": [[7], [9]], "p": [[1], [-1]]})
    with caplog.at_level(logging.WARNING):
        data = load_paired(data_cfg(dataset="cepdvs", root=str(root), timesteps=6), 16)
    assert data.train.frames[1].float().abs().sum() == 0  # a 2 us span has no 6 bins of >= 1 us
    warnings = [r.getMessage() for r in caplog.records if "all-zero frames" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith("cepdvs train: 1 of 2 recordings give all-zero frames")
    assert warnings[0].endswith(f"the first: {short}")


def test_duplicate_indices_name_both_files(cep_root: Callable[..., Path]) -> None:
    import shutil

    root = cep_root(LABELS[:4])
    mats, imgs = root / "data" / "MAT" / "img", root / "data" / "img"
    shutil.copy(mats / "2.mat", mats / "01.mat")  # 1.mat and 01.mat: one silently replaced the other
    with pytest.raises(
        DataError, match=rf"^{mats / '1.mat'}: same index 1 as {mats / '01.mat'}; expected one recording"
    ):
        find_layout(root)
    (mats / "01.mat").unlink()
    shutil.copy(imgs / "2.png", imgs / "001.jpg")
    with pytest.raises(DataError, match=rf"^{imgs / '1.png'}: same index 1 as {imgs / '001.jpg'}; .* image"):
        find_layout(root)


def test_hidden_files_are_skipped_and_upper_case_mat_accepted(cep_root: Callable[..., Path]) -> None:
    root = cep_root(LABELS[:4])
    mats, imgs = root / "data" / "MAT" / "img", root / "data" / "img"
    (mats / "._0.mat").write_bytes(b"\0" * 4096)  # macOS AppleDouble files
    (imgs / "._0.png").write_bytes(b"\0" * 4096)
    (mats / "3.mat").rename(mats / "3.MAT")
    layout = find_layout(root)
    assert [r.events.name for r in layout.recordings] == ["0.mat", "1.mat", "2.mat", "3.MAT"]
    assert [r.image.name for r in layout.recordings] == ["0.png", "1.png", "2.png", "3.png"]
