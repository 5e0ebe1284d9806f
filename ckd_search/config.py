"""One typed configuration tree for every run: frozen dataclasses, validated once at the boundary.

``Config.from_dict`` accepts nested mappings or dotted keys (``{"kd.temperature": 4.0}``, as Ray and
Optuna hand them back), rejects unknown keys, coerces numbers (PyYAML reads ``1e-4`` as a string) and
checks every rule; a broken rule raises :class:`ConfigError` naming the dotted key, the value and the
rule, e.g. ``kd.temperature=-1.0 must be > 0``.

Defaults follow ckd-method.md where the paper or He et al.'s code fixes a value; where that file marks a
choice as a guess the field's comment says ``[GUESS]``. Sizes default to the embedded Digits-DVS set on a
CPU (small width, 32x32, T=6); ``search_spaces/ncaltech101.yaml`` holds the paper's full-size values.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml

from ckd_search.errors import ConfigError
from ckd_search.errors import UserError

# run.compile_mode values; engine.compile_options maps each to Inductor options.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")

# Largest seed numpy and scikit-learn take (random_state in [0, 2**32 - 1]).
MAX_SEED = 2**32 - 1
# VGGSNN's four 2x2 poolings need S >= 2**4 (models/snn.py).
MIN_STUDENT_SIZE = 16

Check = Callable[[Any], str | None]


# --- rules -------------------------------------------------------------------------------------
def _bound(x: float) -> str:
    """A bound as a rule shows it: ints in full (a seed's 4294967295), floats short (1e-05)."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def gt(lo: float) -> Check:
    return lambda v: None if v > lo else f"must be > {_bound(lo)}"


def ge(lo: float) -> Check:
    return lambda v: None if v >= lo else f"must be >= {_bound(lo)}"


def between(lo: float, hi: float, *, open_lo: bool = False, open_hi: bool = False) -> Check:
    """lo <= v <= hi; ``open_lo``/``open_hi`` make that end exclusive (shown as ``(`` / ``)``)."""

    def check(v: Any) -> str | None:
        ok = (v > lo if open_lo else v >= lo) and (v < hi if open_hi else v <= hi)
        span = f"{'(' if open_lo else '['}{_bound(lo)}, {_bound(hi)}{')' if open_hi else ']'}"
        return None if ok else f"must be in {span}"

    return check


def one_of(*choices: str) -> Check:
    return lambda v: None if v in choices else f"must be one of {list(choices)}"


def opt(check: Check) -> Check:
    """Apply ``check`` unless the value is None."""
    return lambda v: None if v is None else check(v)


def f(default: Any, doc: str, check: Check | None = None) -> Any:
    """A dataclass field with a one-line description and an optional validation rule."""
    meta = {"doc": doc, "check": check}
    if isinstance(default, list | tuple):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


# --- sections ----------------------------------------------------------------------------------
DATASETS = ("digits_dvs", "shapes_dvs", "ncaltech101", "cepdvs")


@dataclass(frozen=True)
class SimulatorConfig:
    """ESIM-style saccade simulator (data.md 2.3); used by the embedded sets only.

    Of data.md 2.3's noise (step 8, off by default there) only shot noise is modelled; leak events,
    the photoreceptor low-pass, latency/jitter and v2e's lin_log are not (yet).
    """

    contrast: float = f(0.2, "mean contrast threshold C+ = C- (log units)", gt(0))
    contrast_sigma: float = f(0.03, "per-pixel threshold mismatch sigma (v2e default)", ge(0))
    log_eps: float = f(0.1, "epsilon in log(I + eps); smaller gives more events", gt(0))
    amplitude: float = f(2.0, "saccade triangle size in pixels", gt(0))
    steps_per_leg: int = f(20, "render steps per saccade leg (|dp| per step <= ~0.3 px)", ge(1))
    duration_us: int = f(300_000, "recording length in microseconds (three 100 ms saccades)", ge(1))
    refractory_us: int = f(0, "refractory period per pixel (0 = off)", ge(0))
    shot_noise_hz: float = f(0.0, "shot-noise rate per pixel (0 = off)", ge(0))
    intensity: str = f("luma", "intensity channel: luma (ESIM, Y) or value (HSV V)", one_of("luma", "value"))


@dataclass(frozen=True)
class DataConfig:
    dataset: str = f("digits_dvs", "data set name", one_of(*DATASETS))
    root: str | None = f(None, "local folder of a real data set (never downloaded)")
    cache_dir: str = f("~/.cache/ckd_search", "where frame caches, teachers and logits are stored")
    timesteps: int = f(
        6,
        "T: time bins per recording = SNN steps (paper: 10 N-Caltech101, 6 CEP-DVS)",
        between(1, 64),
    )
    size: int = f(
        32,
        f"student input size S (frames and V channel are S x S; paper: 48); at least "
        f"{MIN_STUDENT_SIZE} for VGGSNN's four 2x2 poolings",
        between(MIN_STUDENT_SIZE, 512),
    )
    pairing: str = f(
        "same_image",
        "RGB partner of a DVS sample: the recording's own image (embedded sets) or, as He et al./CKD, "
        "a random train image of its class (same_class_random; the paper search spaces set it)",
        one_of("same_image", "same_class_random"),
    )
    include_background: bool = f(True, "N-Caltech101: keep BACKGROUND_Google (101 classes) or drop it (100)")
    crop_padding: int = f(4, "train augmentation: random crop with this zero padding (0 = off)", ge(0))
    flip: bool = f(False, "train augmentation: random horizontal flip (CEP-DVS recipe)")
    rotation: float = f(0.0, "train augmentation: random rotation up to this many degrees", between(0, 180))
    balanced_sampler: bool = f(False, "class-balanced sampling with replacement (He et al. N-Caltech101)")
    split_seed: int = f(
        0,
        "seed of the stratified split of the embedded sets (0 .. 2**32 - 1, scikit-learn's range)",
        between(0, MAX_SEED),
    )
    limit: int | None = f(None, "use at most this many samples per split (quick tests)", opt(ge(1)))
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)


@dataclass(frozen=True)
class ModelConfig:
    """Spiking student: VGGSNN 64-128-P-256-256-P-512-512-P-512-512-P-FC (ckd-method.md 3.1)."""

    arch: str = f("vggsnn", "student architecture", one_of("vggsnn"))
    width: float = f(
        0.125,
        "channel multiplier (1.0 = paper; 0.125 suits a CPU)",
        between(0.01, 4.0, open_lo=True),
    )
    tau: float = f(2.0, "LIF time constant (BrainCog/spikingjelly form; > 1)", gt(1))
    v_threshold: float = f(0.5, "LIF firing threshold (He et al.)", gt(0))
    surrogate_alpha: float = f(
        2.0, "PiecewiseQuadratic surrogate alpha (triangle of half-width 1/alpha)", gt(0)
    )
    detach_reset: bool = f(True, "detach the hard reset from the graph (He et al.)")
    shared_head: bool = f(False, "one classifier for both streams instead of separate heads (ablation)")
    conv_bias: bool = f(False, "bias in conv layers (He et al.: none)")
    bn_statistics: str = f(
        "per_step",
        "BatchNorm batch statistics: per_step over the B samples of each time step (He et al., whose "
        "network runs step by step) or joint over all T*B (spikingjelly multi-step, TET; one kernel). "
        "per_step trains on per-step statistics but evaluates with running statistics averaged over "
        "the steps; it gave lower test accuracy in the first epochs (bench/cpu-results.md)",
        one_of("per_step", "joint"),
    )
    cka_tap: str = f(
        "post_reset",
        "CKA features [GUESS, ckd-method.md 7.10]: post_reset membrane of the last conv LIF (He et "
        "al.), or post_pool, that membrane 2x2 average-pooled like the spikes after it",
        one_of("post_reset", "post_pool"),
    )


@dataclass(frozen=True)
class TeacherConfig:
    """ANN teacher fine-tuned on the TRAIN split's images in HSV (ckd-method.md 3.2)."""

    arch: str = f("small_cnn", "teacher network", one_of("small_cnn", "resnet18", "wide_resnet101_2"))
    weights: str | None = f(None, "local weights file to start from (never downloaded)")
    input_size: int = f(28, "teacher input size (paper [GUESS]: 224)", between(8, 512))
    epochs: int = f(8, "fine-tune epochs (paper: 20)", ge(0))
    lr: float = f(
        2e-3,
        "fine-tune learning rate (AdamW, cosine) [GUESS]: 2e-3 trains the small teachers from scratch; "
        "for ImageNet weights ckd-method.md 3.2 suggests AdamW 1e-4 (the paper search spaces set it)",
        gt(0),
    )
    batch_size: int = f(64, "fine-tune batch size [GUESS]: ckd-method.md 3.2 suggests 64", ge(1))
    weight_decay: float = f(1e-4, "fine-tune AdamW weight decay [GUESS]", ge(0))
    shift: float = f(
        0.125,
        "fine-tune augmentation: each image shifted by up to this fraction of the input size, "
        "zero padded [GUESS]; 0 = off",
        between(0, 0.5),
    )
    hsv: bool = f(True, "feed the teacher HSV rather than RGB (paper: HSV)")


@dataclass(frozen=True)
class KDConfig:
    """Logit distillation from the teacher, switched off by gamma (ckd-method.md 2.5-2.6)."""

    enabled: bool = f(True, "use the teacher at all (False = He et al. transfer)")
    alpha: float = f(1.0, "KD weight alpha [GUESS]", ge(0))
    temperature: float = f(4.0, "KD temperature tau [GUESS]", gt(0))
    schedule: str = f(
        "phased",
        "gamma: phased sigma(-k(e-e_th)) [GUESS: the paper's exact form], constant 1, "
        "or adaptive in P_replace",
        one_of("phased", "constant", "adaptive"),
    )
    e_th: float | None = f(
        None,
        "switch point in `units`, counted from 0: gamma = 0.5 at 0-based epoch e_th, logged as epoch "
        "e_th + 1 (None = half the run; paper: 150 of 300 N-Caltech101, 90 of 200 CEP-DVS)",
        opt(ge(0)),
    )
    k: float = f(
        100.0,
        "switch steepness per `unit` (paper: 100 N-Caltech101, 0.001 CEP-DVS); the adaptive schedule "
        "reads it per unit of P_replace (0..1), so one k is not comparable across schedules; at most "
        "1e4 (a few hundred already make gamma a step)",
        between(0, 1e4, open_lo=True),
    )
    units: str = f("epoch", "unit of e and e_th in gamma [GUESS]", one_of("epoch", "iteration"))
    p_th: float = f(0.5, "adaptive schedule: gamma = sigma(-k (P_replace - p_th))", between(0, 1))
    target: str = f(
        "mean",
        "KD on time-averaged static logits (mean) or per step [GUESS: mean]",
        one_of("mean", "per_step"),
    )
    mask_replaced: bool = f(False, "skip KD for samples replaced by DVS (ablation)")


@dataclass(frozen=True)
class LossConfig:
    method: str = f(
        "ckd",
        "ckd: two streams; dvs_only: TET on the DVS stream alone (baseline)",
        one_of("ckd", "dvs_only"),
    )
    beta: float = f(
        0.5,
        "domain-alignment (CKA) weight beta (He et al.); near 0, a learnable theta_t gets only the DVS "
        "loss's push upwards and grows, fading the DVS head's loss weights 1 - sigma(theta_t) (as in He "
        "et al.'s ablation); loss.learnable_theta=false keeps them fixed",
        ge(0),
    )
    tet_lambda: float = f(1e-3, "TET MSE weight lambda", between(0, 1))
    tet_phi: float = f(
        0.5,
        "TET MSE target phi of the logits (He et al.: V_th = 0.5; TET: 1.0), in [-10, 10]",
        between(-10, 10),
    )
    learnable_theta: bool = f(True, "learn the per-step STR weights theta_t (else fixed at theta_init)")
    theta_init: float = f(
        1.0,
        "initial theta_t (sigma = 0.731); in [-100, 100], where sigma(theta_t) is already 0 or 1 in "
        "float32 (He et al.'s fixed-sigma ablations with loss.learnable_theta=false)",
        between(-100, 100),
    )
    replace: str = f(
        "sliding",
        "replacement: sliding P=(progress)^p, step (P=0 for epochs e <= E/2, then 1; He et al.'s "
        "'no sliding' ablation, which also dropped L_DA: set loss.beta=0 for that), none",
        one_of("sliding", "step", "none"),
    )
    replace_power: float = f(3.0, "exponent p of P_replace (He et al.: 3)", gt(0))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up and cosine decay, stepped per epoch (He et al. via timm)."""

    batch_size: int = f(64, "pairs per step (paper: 120); drop_last keeps it fixed for CKA", ge(2))
    lr: float = f(2e-3, "peak learning rate (paper: 5e-3 x B/1024 = 5.86e-4)", gt(0))
    weight_decay: float = f(0.01, "AdamW weight decay (not on 1-D params)", ge(0))
    beta1: float = f(0.9, "AdamW beta1, in [0, 1)", between(0, 1, open_hi=True))
    beta2: float = f(0.999, "AdamW beta2, in [0, 1)", between(0, 1, open_hi=True))
    eps: float = f(1e-8, "AdamW eps", gt(0))
    warmup_epochs: int = f(0, "linear warm-up epochs, fewer than run.epochs (paper: 5 of 300)", ge(0))
    warmup_lr: float = f(1e-6, "learning rate at the start of warm-up", ge(0))
    min_lr: float = f(1e-5, "cosine floor", ge(0))


@dataclass(frozen=True)
class RunConfig:
    epochs: int = f(6, "planned run length E (schedules span it; paper: 300 / 200)", ge(1))
    max_epochs: int | None = f(None, "stop after this many epochs (budget); None = epochs", opt(ge(1)))
    fidelity: str = f(
        "truncate",
        "truncate: schedules span `epochs`; compress: they span the budget (gamma's k steepened to match)",
        one_of("truncate", "compress"),
    )
    seed: int = f(
        42,
        "seed of everything in the run (0 .. 2**32 - 2: the run also seeds a stream with seed + 1)",
        between(0, MAX_SEED - 1),
    )
    device: str = f(
        "auto",
        "auto, cpu, cuda or cuda:N",
        lambda v: (
            None
            if v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:")
            else "must be auto, cpu, cuda or cuda:N"
        ),
    )
    precision: str = f(
        "fp32",
        "bf16: spikingjelly's PrecisionConfig, bf16 autocast with fp32 neuron state (CUDA or CPU)",
        one_of("fp32", "bf16"),
    )
    compile: bool = f(False, "torch.compile the student (CUDA)")
    compile_mode: str = f(
        "default",
        "with run.compile: default; reduce-overhead = CUDA graphs (fewer launches: 2.29x the "
        "compiled step at B=32 on an H200, no gain at B=120); max-autotune-no-cudagraphs",
        one_of(*COMPILE_MODES),
    )
    channels_last: bool = f(
        True,
        "channels_last memory format (exact; the eager plain step 1.27x in fp32 and 1.51x in bf16 on "
        "an H200, docs/performance.md 6; the CPU step 1.06-1.24x, bench/cpu-results.md)",
    )
    cpu_lif: str = f(
        "fused",
        "LIF kernel on a CPU: fused (models.cpu_lif: one autograd function per layer, the same "
        "neuron within float rounding, 1.16-1.25x per step at the demo shape) or spikingjelly (its "
        "own per-step loop). CUDA always uses spikingjelly's fused kernel, and so does a CPU with "
        "model.detach_reset=false (the fused LIF computes the detached reset only)",
        one_of("fused", "spikingjelly"),
    )
    threads: int | None = f(None, "torch CPU threads, 1 .. 1024 (None = leave as is)", opt(between(1, 1024)))
    checkpoint_every: int = f(1, "write a full checkpoint every N epochs (0 = never)", ge(0))
    eval_every: int = f(1, "evaluate on the test split every N epochs (and at the end)", ge(1))


@dataclass(frozen=True)
class ResourcesConfig:
    """Per-trial resources in a search."""

    cpus: float = f(1.0, "CPU cores per trial", gt(0))
    gpu_fraction: float = f(0.0, "share of one GPU per trial (0 = CPU trial)", between(0, 1))


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None = None) -> Config:
        """Build from nested and/or dotted keys; unknown keys and broken rules raise ConfigError."""
        return _build(cls, _nest(values or {}, ""), "")

    @property
    def distils(self) -> bool:
        """Whether the run uses the teacher: CKD's two streams with logit distillation on."""
        return self.kd.enabled and self.loss.method == "ckd"

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (tuples as lists) that ``from_dict`` turns back into an equal Config."""
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """Dotted keys to leaf values, e.g. ``{"kd.temperature": 4.0, ...}`` (MLflow params)."""
        return dict(dotted_items(self.to_dict()))

    def replace(self, **dotted: Any) -> Config:
        """A copy with some dotted keys changed (``cfg.replace(**{"kd.k": 10})``), validated."""
        merged = self.flat()
        merged.update(dotted)
        return Config.from_dict(merged)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> Config:
        data = load_yaml_mapping(path)
        try:
            nested = _nest(data, "")  # a key given twice (kd.k and kd: {k}) or not a string
        except ConfigError as err:
            raise UserError(f"{path}: {err}") from None
        merged = {**dict(dotted_items(nested)), **dict(overrides or {})}
        try:
            return cls.from_dict(merged)
        except ConfigError as err:
            if err.key in (overrides or {}):  # the caller's override, not the file, is wrong
                raise
            raise UserError(f"{path}: {err}") from None


# --- helpers -----------------------------------------------------------------------------------
_LEADING_ZEROS = re.compile(r"[-+]?0[0-9_]+")  # YAML 1.1 octal: 010 -> 8
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")  # YAML 1.1 base 60: 1:30 -> 90


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (PyYAML keeps the last).

    Integers read as YAML 1.2 and people do: ``010`` is ten (YAML 1.1 says eight) and ``1:30`` is
    the text it looks like (YAML 1.1 says 90). ``0x10`` and ``0b10`` keep their bases.
    """

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int | str:  # type: ignore[override]
        text = str(self.construct_scalar(node))  # type: ignore[no-untyped-call]
        if _LEADING_ZEROS.fullmatch(text):
            return int(text.replace("_", ""), 10)
        if _SEXAGESIMAL.fullmatch(text):
            return text
        return super().construct_yaml_int(node)  # type: ignore[no-untyped-call,no-any-return]

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float | str:  # type: ignore[override]
        text = str(self.construct_scalar(node))  # type: ignore[no-untyped-call]
        if _SEXAGESIMAL.fullmatch(text):  # 1:30.5 -> the text, not 90.5
            return text
        return super().construct_yaml_float(node)  # type: ignore[no-untyped-call,no-any-return]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):  # ? [a, b] or ? {a: 1}: unhashable, no config key
                key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is a {type(key).__name__}, not a single value",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)
_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:float", _UniqueKeyLoader.construct_yaml_float)


def parse_yaml_value(text: str) -> Any:
    """One ``--set`` value read as a config file would read it (same integers, no object tags)."""
    loader = _UniqueKeyLoader(text)
    try:
        return loader.get_single_data()  # type: ignore[no-untyped-call]
    finally:
        loader.dispose()  # type: ignore[no-untyped-call]


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely; missing files, duplicate keys and non-mappings are UserErrors."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{p}: {'a directory, not a YAML file' if p.is_dir() else 'no such file'}")
    try:
        loader = _UniqueKeyLoader(p.read_text(encoding="utf-8"))  # a SafeLoader: no object tags
        try:
            data = loader.get_single_data()  # type: ignore[no-untyped-call]
        finally:
            loader.dispose()  # type: ignore[no-untyped-call]
    except UnicodeDecodeError as err:
        raise UserError(f"{p}: not a UTF-8 text file (byte {err.start}); expected YAML") from None
    except OSError as err:
        raise UserError(f"{p}: cannot be read ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise UserError(f"{p}:{where} invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


# Keys naming local paths, and whether each must be a folder (True) or a file (False).
LOCAL_PATH_KEYS = (("data.root", True), ("teacher.weights", False))


def local_path_problem(value: Any, is_dir: bool) -> str | None:
    """Why ``value`` is not an existing folder/file (None when it is)."""
    path = Path(str(value)).expanduser()
    if path.is_dir() if is_dir else path.is_file():
        return None
    return f"is not an existing {'folder' if is_dir else 'file'} ({path.resolve()})"


def check_local_paths(cfg: Config) -> None:
    """``data.root`` must be an existing folder and ``teacher.weights`` an existing file, if set."""
    flat = cfg.flat()
    for key, is_dir in LOCAL_PATH_KEYS:
        if flat[key] is not None and (problem := local_path_problem(flat[key], is_dir)):
            raise ConfigError(key, flat[key], problem)


def field_docs(cls: type = Config, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted key, default, doc) for every leaf field: the documented schema."""
    for fld in dataclasses.fields(cls):
        key = f"{prefix}{fld.name}"
        if dataclasses.is_dataclass(fld.type if isinstance(fld.type, type) else _hint(cls, fld.name)):
            yield from field_docs(_hint(cls, fld.name), key + ".")
        else:
            default = fld.default if fld.default is not dataclasses.MISSING else fld.default_factory()  # type: ignore[misc,operator]
            yield key, default, fld.metadata.get("doc", "")


def leaf_keys() -> set[str]:
    return {key for key, _, _ in field_docs()}


def _hint(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _nest(values: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Turn dotted keys into nested dicts, merging with nested input; conflicts are errors."""
    out: dict[str, Any] = {}
    for raw_key, value in values.items():
        if not isinstance(raw_key, str):
            raise ConfigError(
                f"{path}{raw_key}", value, f"must have a string key, not {type(raw_key).__name__}"
            )
        parts = raw_key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(path + ".".join(parts[: i + 1]), child, "is a value, not a section")
            node = child
        leaf = parts[-1]
        if isinstance(value, Mapping):
            existing = node.setdefault(leaf, {})
            if not isinstance(existing, dict):
                raise ConfigError(path + raw_key, value, "given twice")
            _merge(existing, _nest(value, f"{path}{raw_key}."), f"{path}{raw_key}.")
        else:
            if leaf in node:
                raise ConfigError(path + raw_key, value, "given twice")
            node[leaf] = value
    return out


def _merge(into: dict[str, Any], other: dict[str, Any], path: str) -> None:
    for key, value in other.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value, f"{path}{key}.")
        else:
            raise ConfigError(path + key, value, "given twice")


def _build(cls: type, values: dict[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {fld.name: fld for fld in dataclasses.fields(cls)}
    for key in values:
        if key not in names:
            dotted, value = path + key, values[key]
            while isinstance(value, dict) and len(value) == 1:  # foo.bar=1 names foo.bar, not foo={...}
                ((inner, value),) = value.items()
                dotted += f".{inner}"
            raise ConfigError(
                dotted,
                value,
                f"is not a known key (known in {path or 'the top level'}: {', '.join(sorted(names))})",
            )
    kwargs: dict[str, Any] = {}
    for name, fld in names.items():
        key = path + name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            sub = values.get(name, {})
            if not isinstance(sub, dict):
                raise ConfigError(key, sub, "must be a mapping (a section)")
            kwargs[name] = _build(hint, sub, key + ".")  # type: ignore[arg-type]
            continue
        if name not in values:
            continue
        value = _coerce(key, values[name], hint)
        check = fld.metadata.get("check")
        if check is not None and value is not None:
            problem = check(value)
            if problem:
                raise ConfigError(key, value, problem)
        kwargs[name] = value
    obj = cls(**kwargs)
    _cross_checks(obj, path)
    return obj


def _coerce(key: str, value: Any, hint: Any) -> Any:
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None:
        if optional:
            return None
        raise ConfigError(key, value, "must not be empty")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off"):
            return value.lower() in ("true", "yes", "on")
        raise ConfigError(key, value, "must be true or false")
    if base is int:
        if isinstance(value, bool):
            raise ConfigError(key, value, "must be an integer")
        try:
            number = float(value) if isinstance(value, str) else value
            whole = isinstance(number, int | float) and math.isfinite(number) and number == int(number)
        except (ValueError, OverflowError):  # OverflowError: an int too large for a float
            whole = False
        if not whole:
            raise ConfigError(key, value, "must be an integer")
        return int(number)
    if base is float:
        if isinstance(value, bool):
            raise ConfigError(key, value, "must be a number")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(key, value, "must be a number") from None
        if not math.isfinite(number):
            raise ConfigError(key, value, "must be a finite number")
        return number
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(key, value, "must be a string")
        return value
    return value


def _cross_checks(obj: Any, path: str) -> None:
    """Rules that involve two fields of one section."""
    if isinstance(obj, OptimConfig) and obj.min_lr > obj.lr:
        raise ConfigError(path + "min_lr", obj.min_lr, f"must be <= optim.lr ({obj.lr:g})")
    if isinstance(obj, DataConfig):
        if obj.dataset in ("ncaltech101", "cepdvs") and not obj.root:
            raise ConfigError(
                path + "root",
                obj.root,
                f"must be set for data set {obj.dataset!r} (a local folder)",
            )
    if isinstance(obj, Config):
        if (
            obj.run.max_epochs is not None
            and obj.run.fidelity == "truncate"
            and obj.run.max_epochs > obj.run.epochs
        ):
            raise ConfigError(
                "run.max_epochs", obj.run.max_epochs, f"must be <= run.epochs ({obj.run.epochs})"
            )
        if obj.kd.e_th is not None and obj.kd.units == "epoch" and obj.kd.e_th > obj.run.epochs:
            raise ConfigError(
                "kd.e_th", obj.kd.e_th, f"must be <= run.epochs ({obj.run.epochs}) in epoch units"
            )
        if obj.optim.warmup_epochs >= obj.run.epochs:  # else the whole run trains at warmup_lr
            raise ConfigError(
                "optim.warmup_epochs",
                obj.optim.warmup_epochs,
                f"must be < run.epochs ({obj.run.epochs}): the run needs an epoch after the warm-up",
            )


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any], most: int = 3) -> str:
    """``key: old -> new`` for the first ``most`` dotted keys whose values differ (nested dicts)."""
    a, b = dict(dotted_items(old)), dict(dotted_items(new))
    absent = "(absent)"
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, absent) != b.get(k, absent))
    shown = ", ".join(f"{k}: {a.get(k, absent)} -> {b.get(k, absent)}" for k in keys[:most])
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def dotted_items(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested mappings as (dotted key, leaf value) pairs: ``{"kd": {"k": 10}}`` -> ``("kd.k", 10)``.
    A key met twice (``kd.k`` beside ``kd: {k}``) comes twice, for callers that refuse it."""
    for key, value in values.items():
        if isinstance(value, Mapping):
            yield from dotted_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
