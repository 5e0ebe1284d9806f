"""Everything a run needs before its first step: paired data, a fine-tuned teacher, teacher logits.

Done once per (data, teacher) setting and cached on disk; a search does it once on the driver and
ships the result to every trial (the engine takes it as ``prepared``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import Tensor

from ckd_search.color import rgb_to_hsv
from ckd_search.config import Config
from ckd_search.data import PairedData
from ckd_search.devices import resolve_device
from ckd_search.models.teachers import create_teacher
from ckd_search.storage import atomic_write
from ckd_search.storage import stable_hash

log = logging.getLogger(__name__)
#: 3: teachers keyed by the RGB side only (teacher_key), logits bound to the images' content hash;
#: 4: the fine-tune shifts each image by its own offset (was one offset per batch).
TEACHER_FORMAT = 4
#: Data settings of the event side only: the teacher never sees them (one teacher for a search over
#: T, or over any simulator setting: the embedded sets' images do not depend on them).
EVENT_ONLY_FIELDS = ("timesteps", "size", "simulator")


@dataclass(frozen=True)
class Prepared:
    """Paired data plus the frozen teacher's logits for every TRAIN image ([M_train, C] fp32)."""

    key: str
    data: PairedData
    teacher_logits: Tensor | None
    teacher_test_acc: float | None


def data_fields(cfg: Config) -> dict[str, Any]:
    """The data settings that change the tensors (augmentation and sampling do not)."""
    d = asdict(cfg.data)
    for name in ("crop_padding", "flip", "rotation", "balanced_sampler", "pairing", "cache_dir"):
        d.pop(name)
    d["image_size"] = cfg.teacher.input_size
    return d


def prepare_key(cfg: Config) -> str:
    """Hash of every config value that affects :class:`Prepared` (data tensors and teacher)."""
    teacher = asdict(cfg.teacher) if cfg.distils else None
    return stable_hash(data_fields(cfg), teacher, cfg.run.seed if teacher else None)


def teacher_key(cfg: Config) -> str:
    """Hash of what the teacher's fine-tune depends on: the RGB side of the data, the teacher and the
    seed. The images' content hash (:func:`images_identity`) is checked as well, so a field wrongly
    left out here costs a rebuild, never stale logits."""
    rgb_side = {k: v for k, v in data_fields(cfg).items() if k not in EVENT_ONLY_FIELDS}
    return stable_hash(rgb_side, asdict(cfg.teacher), cfg.run.seed, TEACHER_FORMAT)


def teacher_input(images_uint8: Tensor, hsv: bool, size: int) -> Tensor:
    """uint8 RGB [N, 3, h, w] -> float [N, 3, size, size] in [0, 1], HSV when asked (paper)."""
    x = images_uint8.float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return rgb_to_hsv(x) if hsv else x


def prepare(cfg: Config) -> Prepared:
    """Load the data set and, when the run distils, fine-tune (or load) the teacher and its logits."""
    from ckd_search.data import load_paired

    data = load_paired(cfg.data, image_size=cfg.teacher.input_size)
    key = prepare_key(cfg)
    if not cfg.distils:
        return Prepared(key, data, None, None)
    logits, acc = _teacher_logits(cfg, data)
    return Prepared(key, data, logits, acc)


def _teacher_logits(cfg: Config, data: PairedData) -> tuple[Tensor, float]:
    folder = Path(cfg.data.cache_dir).expanduser() / "teachers" / teacher_key(cfg)
    logits_path = folder / "logits.arrow"
    data_id = images_identity(data)
    cached = _read_logits(logits_path, len(data.train.images), data.num_classes, data_id)
    if cached is not None:
        return cached
    tc = cfg.teacher
    device = resolve_device(cfg.run.device)  # a WRN-101-2 fine-tune takes hours on a CPU, minutes on a GPU
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # the caller's RNG moves the same on a cache hit or miss
        torch.manual_seed(cfg.run.seed)  # the init is drawn on the CPU whatever the device
        net = create_teacher(tc.arch, data.num_classes, tc.weights).to(device)
        if device.type == "cuda":
            net = net.to(memory_format=torch.channels_last)
        _finetune(net, cfg, data, device)
    net.eval()
    train_logits = _predict(net, data.train.images, tc.hsv, tc.input_size, device)
    test_logits = _predict(net, data.test.images, tc.hsv, tc.input_size, device)
    test_acc = _accuracy(test_logits, data.test.image_labels)
    train_acc = _accuracy(train_logits, data.train.image_labels)
    log.info(
        "teacher %s on %s: train acc %.3f, test acc %.3f (%.1fs)",
        tc.arch,
        device,
        train_acc,
        test_acc,
        time.perf_counter() - start,
    )
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    atomic_write(folder / "teacher.pt", lambda fh: torch.save(state, fh))
    meta = {"test_acc": test_acc, "train_acc": train_acc, "arch": tc.arch, "data": data_id}
    _write_logits(logits_path, train_logits, meta)
    return train_logits, test_acc


def images_identity(data: PairedData) -> str:
    """SHA-256 of the images and labels the teacher is trained and evaluated on, in order: logits
    are reused only for exactly these images (a rebuilt or reordered data cache never meets stale
    ones). About a second per GB of images."""
    digest = hashlib.sha256()
    for split in (data.train, data.test):
        for tensor in (split.images, split.image_labels):
            array = tensor.contiguous().numpy()
            digest.update(f"{array.dtype.str}{array.shape};".encode())
            digest.update(array.reshape(-1).view(np.uint8).data)
    return digest.hexdigest()[:32]


def _finetune(net: torch.nn.Module, cfg: Config, data: PairedData, device: torch.device) -> None:
    """AdamW + cosine on the TRAIN images only (no test leakage), each image randomly shifted."""
    tc = cfg.teacher
    if tc.epochs == 0:
        return
    x_all = teacher_input(data.train.images, tc.hsv, tc.input_size)
    y_all = data.train.image_labels
    steps_per_epoch = max(1, math.ceil(len(x_all) / tc.batch_size))
    opt = torch.optim.AdamW(net.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    pad = int(tc.shift * tc.input_size)  # 3 px at 28, 28 px at 224
    net.train()
    for _ in range(tc.epochs):
        order = torch.randperm(len(x_all), generator=gen)
        for i in range(steps_per_epoch):
            idx = order[i * tc.batch_size : (i + 1) * tc.batch_size]
            x = random_shift(x_all[idx], pad, gen).to(device, non_blocking=True)
            loss = F.cross_entropy(net(x), y_all[idx].to(device, non_blocking=True))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def random_shift(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Each image of ``x`` [N, C, S, S] shifted by its own (dx, dy) in [-pad, pad], zero filled."""
    if pad == 0:
        return x
    n, size = x.shape[0], x.shape[-1]
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # [N, S+2p, S+2p, C]
    offsets = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=gen)
    span = torch.arange(size)
    rows, cols = offsets[0] + span, offsets[1] + span  # [N, S] each
    out = padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


@torch.no_grad()
def _predict(
    net: torch.nn.Module, images: Tensor, hsv: bool, size: int, device: torch.device, batch: int = 256
) -> Tensor:
    """Logits [N, C] fp32 on the CPU; images go to ``device`` a batch at a time, as uint8."""
    out = [
        net(teacher_input(images[i : i + batch].to(device), hsv, size)).float().cpu()
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out) if out else torch.zeros(0)


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(1) == labels).float().mean()) if len(labels) else float("nan")


def _write_logits(path: Path, logits: Tensor, meta: dict[str, Any]) -> None:
    arr = logits.numpy().astype("float32")
    table = pa.table({"logits": pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1)), arr.shape[1])})
    meta = {
        **meta,
        "format": TEACHER_FORMAT,
        "rows": arr.shape[0],
        "classes": arr.shape[1],
        "checksum": stable_hash(arr.tobytes()),
    }
    table = table.replace_schema_metadata({"ckd_search": json.dumps(meta)})

    def write(handle: Any) -> None:
        with pa.ipc.new_file(handle, table.schema) as writer:
            writer.write_table(table)

    atomic_write(path, write)


def _read_logits(path: Path, rows: int, classes: int, data_id: str) -> tuple[Tensor, float] | None:
    """Cached logits if present, intact (shape and checksum match), of this format and of these
    data files, else None (rebuild)."""
    if not path.is_file():
        return None
    try:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        meta = json.loads(table.schema.metadata[b"ckd_search"])
        flat = table.column("logits").combine_chunks().flatten().to_numpy()
        arr = flat.reshape(meta["rows"], meta["classes"]).copy()
        if meta.get("format") != TEACHER_FORMAT or meta.get("data") != data_id:
            raise ValueError(f"made by format {meta.get('format')} or for other data files")
        if (
            meta["rows"] != rows
            or meta["classes"] != classes
            or stable_hash(arr.tobytes()) != meta["checksum"]
        ):
            raise ValueError("shape or checksum mismatch")
    except Exception as err:  # noqa: BLE001 - any damage means: rebuild
        log.warning("teacher logits cache %s is unusable (%s); rebuilding", path, err)
        return None
    return torch.from_numpy(arr), float(meta["test_acc"])
