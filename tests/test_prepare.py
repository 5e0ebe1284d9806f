"""Teacher logits cached on disk: one teacher per RGB side of the data, reused only for the images
and format they were made for."""

from __future__ import annotations

import torch

from ckd_search.prepare import TEACHER_FORMAT
from ckd_search.prepare import _read_logits
from ckd_search.prepare import _write_logits


def test_cached_logits_belong_to_their_images_and_format(tmp_path):
    path = tmp_path / "logits.arrow"
    logits = torch.randn(6, 3)
    _write_logits(path, logits, {"test_acc": 0.5, "train_acc": 0.6, "arch": "small_cnn", "data": "abc"})
    cached = _read_logits(path, 6, 3, "abc")
    assert cached is not None and torch.equal(cached[0], logits) and cached[1] == 0.5
    assert _read_logits(path, 6, 3, "rebuilt-data") is None  # other images: train again
    assert _read_logits(path, 7, 3, "abc") is None


def test_logits_of_an_older_format_are_rebuilt(tmp_path, monkeypatch):
    import ckd_search.prepare as prepare

    path = tmp_path / "logits.arrow"
    monkeypatch.setattr(prepare, "TEACHER_FORMAT", TEACHER_FORMAT - 1)
    _write_logits(path, torch.randn(4, 2), {"test_acc": 0.5, "data": "abc"})
    monkeypatch.setattr(prepare, "TEACHER_FORMAT", TEACHER_FORMAT)
    assert _read_logits(path, 4, 2, "abc") is None


def _cfg(tmp_path, **extra):
    from ckd_search.config import Config

    values = {
        "data.limit": 96,
        "data.size": 16,
        "data.timesteps": 2,
        "teacher.epochs": 1,
        "data.cache_dir": str(tmp_path / "cache"),
        "run.device": "cpu",
    }
    return Config.from_dict({**values, **extra})


def test_one_teacher_serves_every_timestep_count_and_frame_size(tmp_path, monkeypatch):
    import ckd_search.prepare as prepare

    fine_tunes = []
    finetune = prepare._finetune
    monkeypatch.setattr(prepare, "_finetune", lambda *a: fine_tunes.append(a) or finetune(*a))
    first = prepare.prepare(_cfg(tmp_path))
    other = prepare.prepare(_cfg(tmp_path, **{"data.timesteps": 3, "data.size": 20}))
    assert first.key != other.key and other.data.train.frames.shape[1:] == (3, 2, 20, 20)
    assert len(fine_tunes) == 1  # the second T and size reuse the teacher: its images are the same
    assert torch.equal(first.teacher_logits, other.teacher_logits)
    prepare.prepare(_cfg(tmp_path, **{"teacher.epochs": 2}))
    assert len(fine_tunes) == 2  # a teacher setting is part of the key


def test_the_images_identity_sees_content_and_order(tmp_path):
    import dataclasses

    from ckd_search.prepare import images_identity
    from ckd_search.prepare import prepare

    data = prepare(_cfg(tmp_path, **{"kd.enabled": False})).data
    same = images_identity(data)
    assert images_identity(data) == same

    def with_train_images(images):
        return dataclasses.replace(data, train=dataclasses.replace(data.train, images=images))

    changed = data.train.images.clone()
    changed[0, 0, 0, 0] ^= 1
    assert images_identity(with_train_images(changed)) != same
    assert images_identity(with_train_images(data.train.images.flip(0))) != same


def test_the_prepare_key_changes_with_what_the_tensors_and_teacher_depend_on(tmp_path):
    from ckd_search.prepare import prepare_key

    base = _cfg(tmp_path)
    key = prepare_key(base)
    changed = [
        {"data.timesteps": 3},
        {"data.size": 20},
        {"data.limit": 50},
        {"teacher.epochs": 2},
        {"teacher.lr": 1e-3},
        {"run.seed": 1},
        {"kd.enabled": False},
    ]
    for values in changed:
        assert prepare_key(base.replace(**values)) != key, values
    same = [
        {"data.crop_padding": 0},
        {"data.flip": True},
        {"data.rotation": 10.0},
        {"data.balanced_sampler": True},
        {"data.cache_dir": str(tmp_path / "elsewhere")},
        {"kd.k": 3.0},
    ]
    for values in same:
        assert prepare_key(base.replace(**values)) == key, values
    no_kd = base.replace(**{"kd.enabled": False})  # without a teacher the seed does not matter
    assert prepare_key(no_kd.replace(**{"run.seed": 1})) == prepare_key(no_kd)


def test_random_shift_moves_each_image_by_its_own_offset():
    from ckd_search.prepare import random_shift

    x = torch.zeros(64, 3, 9, 9)
    x[:, :, 4, 4] = torch.arange(1, 65, dtype=torch.float32)[:, None]  # one bright pixel per image
    out = random_shift(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    where = [divmod(int(img[0].argmax()), 9) for img in out]
    assert all(2 <= r <= 6 and 2 <= c <= 6 for r, c in where)  # within +-2 of the centre
    assert len(set(where)) > 10  # not one offset for the whole batch
    assert torch.equal(out.amax(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)))  # each keeps its own pixel
    assert random_shift(x, 0, torch.Generator()) is x


def test_one_teacher_serves_every_event_side_setting():
    from ckd_search.config import Config
    from ckd_search.prepare import teacher_key

    base = Config.from_dict({})
    same = {
        "data.timesteps": 4,
        "data.size": 48,
        "data.simulator.contrast": 0.3,
        "data.simulator.intensity": "value",
    }
    assert teacher_key(base.replace(**same)) == teacher_key(base)
    for other in ({"data.split_seed": 1}, {"teacher.input_size": 32}, {"run.seed": 1}):
        assert teacher_key(base.replace(**other)) != teacher_key(base), other
