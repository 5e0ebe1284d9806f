"""Data-set descriptors, including the RGB<->DVS gap seen by an untrained student.

The gap is the linear CKA between the membrane features (the tap the CKA loss uses) of the static
stream (V channel of each recording's paired image, on both polarities and all T steps) and of the
DVS stream, for a freshly initialised, seeded student, averaged over T. Low CKA = large gap: the
transfer has more to bridge. Written next to a search as ``RUN_DIR/descriptors.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ckd_search.analysis.results import plain_scalar
from ckd_search.color import static_value_maps
from ckd_search.config import Config
from ckd_search.losses import linear_cka
from ckd_search.models.cpu_lif import use_fused_cpu_lif
from ckd_search.models.snn import VGGSNN
from ckd_search.prepare import Prepared
from ckd_search.search.settings import DESCRIPTORS_FILE
from ckd_search.step import hybrid_stream
from ckd_search.storage import atomic_write_text

log = logging.getLogger(__name__)

MAX_SAMPLES = 256
FILE_NAME = DESCRIPTORS_FILE
# Config sections the descriptors depend on (data tensors, image size, student, seed).
DESCRIPTOR_PREFIXES = ("data.", "teacher.", "model.", "run.seed")
# Descriptor keys copied from ``PairedData.descriptors`` (the data layer computes them).
COPIED = (
    "name",
    "classes",
    "train_samples",
    "test_samples",
    "timesteps",
    "size",
    "image_size",
    "mean_events_per_sample",
    "event_density",
    "sensor_size",
    "synthetic_events",
    "source",
)


def dataset_descriptors(prepared: Prepared, cfg: Config, max_samples: int = MAX_SAMPLES) -> dict[str, Any]:
    """Classes, samples, events per sample, event density and the RGB<->DVS gap of a data set.

    Args:
        prepared: the prepared data (``ckd_search.prepare.prepare(cfg)``).
        cfg: the run config (student architecture, ``run.seed``).
        max_samples: train samples used for the CKA (evenly spread, seeded).

    Returns:
        A JSON-ready dict: the data layer's descriptors (``classes``, ``train_samples``,
        ``mean_events_per_sample``, ``event_density``, ...), ``cka_rgb_dvs`` (mean over T),
        ``cka_rgb_dvs_per_step`` and ``rgb_dvs_gap`` = 1 - ``cka_rgb_dvs``.
    """
    data = prepared.data
    given = dict(data.descriptors)
    out: dict[str, Any] = {k: given[k] for k in COPIED if k in given}
    out.setdefault("name", data.name)
    out.setdefault("classes", data.num_classes)
    out.setdefault("train_samples", len(data.train))
    out.setdefault("test_samples", len(data.test))
    out.setdefault("timesteps", data.timesteps)
    out.setdefault("size", data.size)
    if "mean_events_per_sample" not in out:  # counts after binning/resizing: a lower bound
        counts = data.train.frames.float().sum(dim=(1, 2, 3, 4))
        out["mean_events_per_sample"] = float(counts.mean()) if len(counts) else 0.0
        out["event_density"] = out["mean_events_per_sample"] / float(data.size * data.size)
    per_step = rgb_dvs_cka(prepared, cfg, max_samples)
    out["cka_samples"] = min(max_samples, len(data.train))
    out["cka_rgb_dvs_per_step"] = per_step
    out["cka_rgb_dvs"] = sum(per_step) / len(per_step) if per_step else float("nan")
    out["rgb_dvs_gap"] = 1.0 - out["cka_rgb_dvs"]
    out["student"] = {"arch": cfg.model.arch, "width": cfg.model.width, "seed": cfg.run.seed}
    return out


@torch.no_grad()
def rgb_dvs_cka(prepared: Prepared, cfg: Config, max_samples: int = MAX_SAMPLES) -> list[float]:
    """Per-step linear CKA between static and DVS membrane features of a fresh seeded student.

    BatchNorm runs in training mode (batch statistics), as the CKA loss sees the two streams at the
    first step of a run; the student is thrown away afterwards. It runs on the CPU with the engine's
    LIF kernel there (``run.cpu_lif``): the fused one gives the same spikes, saves seconds on the
    driver before the first trial starts, and leaves spikingjelly's kernel module (which imports
    torch's compiler stack, about 900 modules) unloaded.
    """
    data = prepared.data
    train = data.train
    n = min(int(max_samples), len(train))
    if n < 2:
        return []
    gen = torch.Generator().manual_seed(cfg.run.seed)
    idx = torch.randperm(len(train), generator=gen)[:n].sort().values
    dvs = train.frames[idx].float().transpose(0, 1).contiguous()  # [T, n, 2, S, S]
    static = static_value_maps(train.images[train.pair_index[idx]], data.size)
    static_seq = hybrid_stream(dvs, static, torch.zeros(n, dtype=torch.bool))
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(cfg.run.seed)
        student = VGGSNN(cfg.model, data.num_classes, data.size)
    if cfg.run.cpu_lif == "fused":
        use_fused_cpu_lif(student)
    student.train()
    student.reset_state()
    m_static = student(static_seq, head="static").membrane
    student.reset_state()
    m_dvs = student(dvs, head="dvs").membrane
    student.reset_state()
    cka = linear_cka(m_static, m_dvs)  # [T]
    return [float(v) for v in cka]


def write_descriptors(run_dir: str | Path, descriptors: dict[str, Any]) -> Path:
    """Write ``RUN_DIR/descriptors.json`` (read by ``ckd-search analyze``)."""
    path = Path(run_dir) / FILE_NAME
    atomic_write_text(path, json.dumps(descriptors, indent=1, default=str))
    return path


def descriptors_for_run(run_dir: str | Path, flat: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """Compute the descriptors a search would have written, from one trial's flat config.

    For a run directory without ``descriptors.json`` (an older search, or the file was lost). Only
    the data and student settings are used and the teacher is skipped (the descriptors do not need
    it). The result is written to ``RUN_DIR/descriptors.json`` when the directory is writable.
    Failure (a data folder not on this machine) leaves them out with a note.
    """
    from ckd_search.prepare import prepare

    trial = flat.get("trial_id", "?")
    try:
        cfg = Config.from_dict(_config_values(flat)).replace(**{"kd.enabled": False})
        descriptors = dataset_descriptors(prepare(cfg), cfg)
    except Exception as err:  # noqa: BLE001 - a report without descriptors beats no report
        message = " ".join(str(err).split())[:300] or type(err).__name__
        notes.append(f"no {FILE_NAME}, and the descriptors could not be computed: {message}")
        return {}
    descriptors["computed_by"] = f"ckd-search analyze, from trial {trial}'s config"
    try:
        write_descriptors(run_dir, descriptors)
        where = f"written to {FILE_NAME}"
    except OSError as err:
        where = f"not saved: {err}"
    notes.append(f"no {FILE_NAME}: data-set descriptors computed from trial {trial}'s config ({where})")
    return descriptors


def _config_values(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The descriptor-relevant config keys of a trial-table row, NaN (a missing value) as None."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if not isinstance(key, str) or not key.startswith(DESCRIPTOR_PREFIXES) or key not in _CONFIG_KEYS:
            continue
        value = plain_scalar(value)  # NumPy scalars from pandas
        out[key] = None if isinstance(value, float) and math.isnan(value) else value
    return out


_CONFIG_KEYS = frozenset(Config().flat())
