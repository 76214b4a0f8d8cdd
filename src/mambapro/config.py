"""One typed configuration tree for every command.

The tree has four sections, ``data``, ``model``, ``train`` and ``test``, each a dataclass.
A YAML file overrides only what differs from the defaults and may name a base file with
``_base_: other.yaml`` (relative to itself); command-line overrides ``key.sub=value`` come
last. Values on the command line are parsed as YAML scalars (``null``, ``true``, ``[1, 2]``).

Every key is checked: an unknown key, a badly typed value or a value outside a fixed set of
choices raises :class:`ConfigError` naming the dotted key and where it came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from mambapro.data.specs import dataset_names, dataset_spec
from mambapro.data.synth import SynthParams as SynthConfig
from mambapro.modalities import MISSING_SETTINGS

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TestConfig",
    "TrainConfig",
    "SynthConfig",
    "load_config",
    "config_to_dict",
    "dump_config",
    "PRESETS_DIR",
    "resolve_config_path",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names it."""


def _choices(*values: str | Callable[[], list[str]], default: Any) -> Any:
    """A field whose value must be one of ``values`` (or of ``values[0]()``, a registry's names)."""
    choices = values[0] if len(values) == 1 and callable(values[0]) else values
    return field(default=default, metadata={"choices": choices})


ADAPTERS = ("none", "pfa", "bna", "lora")
#: Where an adapter sits in a block (Table 8): beside (parallel to) or behind (after) a sub-layer.
ADAPTER_POSITIONS = ("side_ffn", "behind_ffn", "side_mhsa", "behind_mhsa")
PROMPTS = ("none", "ip", "sp", "srp_separation", "srp_fusion")
AGGREGATORS = ("none", "sum", "concat", "transformer", "intra_ma", "inter_ma", "ma", "ma_transformer")
BACKBONES = ("clip_vit_b16", "vit_b16_imagenet", "tiny")
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass
class DataConfig:
    # A registered dataset spec (mambapro.data.specs): RGBNT201, RGBNT100, MSVR310.
    dataset: str = _choices(dataset_names, default="RGBNT201")
    root: str = "data"
    # Generate the embedded synthetic dataset under ``root`` when it is absent.
    synthetic: bool = False
    synth: SynthConfig = field(default_factory=SynthConfig)
    # (H, W) per modality; null takes the dataset's geometry (SPEC §1).
    img_size: list[int] | None = None
    batch_size: int = 64  # P x K with K = num_instances
    num_instances: int = 4
    num_workers: int = 0
    # Draw flip/crop/erase separately per modality (the authors' release); false: one draw
    # shared by the three pixel-aligned modalities.
    independent_aug: bool = True
    flip_prob: float = 0.5
    padding: int = 10
    erase_prob: float = 0.5
    # Test-time resize filter (the release: PIL bilinear); training always resizes bicubic.
    test_interpolation: str = _choices("bilinear", "bicubic", default="bilinear")
    mean: float = 0.5
    std: float = 0.5
    # Decode every image once before training (progress bar); a broken file is an error naming
    # all of them, or with skip_broken a counted warning (`mambapro check-data` does the same).
    verify: bool = False
    # Skip triplets with a missing modality file, an unparsable name or (with verify) an
    # unreadable image, with a counted warning, instead of failing.
    skip_broken: bool = False
    # Training identities held out as a validation query/gallery when train.select_best=val.
    val_ids: int = 0


@dataclass
class ModelConfig:
    backbone: str = _choices(*BACKBONES, default="clip_vit_b16")
    weights: str | None = None
    freeze: str = _choices("frozen", "finetune", default="frozen")
    adapter: str = _choices(*ADAPTERS, default="pfa")
    adapter_position: str = _choices(*ADAPTER_POSITIONS, default="side_ffn")
    adapter_act: str = _choices(*ACTIVATIONS, default="quick_gelu")
    lora_rank: int = 64
    # LoRA's update is scaled by lora_alpha / lora_rank (the release's LoRA_Linear, alpha = 1).
    lora_alpha: float = 1.0
    # Layer indices (0-based) that get an adapter / prompts; null means every layer.
    adapter_layers: list[int] | None = None
    prompt: str = _choices(*PROMPTS, default="srp_fusion")
    prompt_tokens: int = 4
    prompt_layers: list[int] | None = None
    prompt_act: str = _choices(*ACTIVATIONS, default="quick_gelu")
    camera_embedding: bool = True
    camera_coef: float = 1.0
    # Tokens the camera embedding is added to: the cls token (the release's CLIP) or every
    # token (the release's ImageNet ViT, Table 9).
    camera_tokens: str = _choices("cls", "all", default="cls")
    # Stochastic depth of the encoder's blocks (linearly rising to this rate; the release's
    # ImageNet ViT uses 0.1, its CLIP none).
    drop_path: float = 0.0
    # Supervision of the backbone's cls features: one BNNeck head on their concatenation
    # (the release's MODEL.DIRECT = 1) or one head shared by the three modalities, each
    # modality's feature supervised separately (DIRECT = 0, the vehicle datasets).
    ori_head: str = _choices("concat", "per_modality", default="concat")
    aggregator: str = _choices(*AGGREGATORS, default="ma")
    ma_depth: int = 2
    ma_d_state: int = 16
    ma_dt_rank: int = 32
    ma_expand: int = 2
    ma_bidirectional: bool = False
    # MA initialisation: ``release`` re-initialises every Linear of the aggregator trunc-normal
    # (std 0.02, zero bias; dt_proj included, so the initial step is softplus(0)) as the
    # authors' AAM does; ``mamba`` keeps Mamba's dt_proj init (steps in 1e-3..1e-1).
    ma_init: str = _choices("release", "mamba", default="release")
    # Selective-scan implementation: pure PyTorch, Triton kernels (CUDA), mamba-ssm's CUDA kernel, or
    # auto (on CUDA: triton when it imports, else mamba_ssm when importable, else torch).
    scan_backend: str = _choices("auto", "torch", "mamba_ssm", "triton", default="torch")


@dataclass
class TrainConfig:
    seed: int = 1111  # the release's SOLVER.SEED
    epochs: int = 60
    warmup_epochs: int = 10
    lr: float = 3.5e-4
    backbone_lr: float = 5e-6
    weight_decay: float = 1e-4
    bias_lr_factor: float = 2.0  # for biases outside the fine-tuned encoder
    # The encoder's biases get backbone_lr x this when fine-tuning (the release: 1, no doubling).
    backbone_bias_lr_factor: float = 1.0
    warmup_lr_factor: float = 0.01
    min_lr_factor: float = 0.001
    # Scheduler index of the first epoch: the release calls scheduler.step(epoch) with epochs
    # counted from 1, so its first epoch already runs one warm-up step in; 0 starts at the
    # warm-up's initial rate.
    schedule_start: int = 1
    ce_weight: float = 0.25
    label_smoothing: float = 0.1
    triplet_weight: float = 1.0
    # null: soft-margin (softplus) triplet, the default; a number: hinge with that margin.
    triplet_margin: float | None = None
    amp: str = _choices("auto", "off", "bf16", "fp16", default="auto")
    grad_clip: float | None = None
    device: str = "auto"
    # Iterations per epoch; null: one pass over the training identities' samples.
    iters_per_epoch: int | None = None
    eval_period: int = 0  # evaluate every N epochs (0: only at the end)
    checkpoint_period: int = 1
    # final: report the last epoch; val: keep the best by a held-out validation split;
    # test_set_optimistic: select on the test set, as published recipes do (labelled as such).
    select_best: str = _choices("final", "val", "test_set_optimistic", default="final")
    output: str = "runs/default"
    # TensorBoard scalars (iter/*: loss terms, accuracy, lr) every N training steps; 0: off.
    log_period: int = 10


@dataclass
class TestConfig:
    batch_size: int = 128
    missing: str = _choices(*MISSING_SETTINGS, default="full")
    distance: str = _choices("euclidean", "cosine", default="euclidean")
    rerank: bool = False
    rerank_k1: int = 20
    rerank_k2: int = 6
    rerank_lambda: float = 0.3
    max_rank: int = 50
    # Autocast at test time (train.amp's dtype); off: fp32 features, as the release evaluates.
    amp: bool = False
    # The test feature before its BNNeck's BatchNorm (the release) or after it.
    neck_feat: str = _choices("before", "after", default="before")
    # Which feature is evaluated: the MA feature when an aggregator exists, else the ori concat.
    feature: str = _choices("auto", "ori", "fuse", default="auto")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def img_size(self) -> tuple[int, int]:
        """The resolved (H, W) per modality."""
        if self.data.img_size is not None:
            return (int(self.data.img_size[0]), int(self.data.img_size[1]))
        return dataset_spec(self.data.dataset).img_size


# --------------------------------------------------------------------------- typing helpers


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted where lossless."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        candidates = [a for a in args if a is not type(None)]
        if len(candidates) == 1:
            return _coerce(value, candidates[0], key, source)
        for arg in candidates:
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: '{key}' = {value!r} is not a valid {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' = {value!r} must be a list, got {type(value).__name__}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' = {value!r} must be true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: '{key}' = {value!r} must be an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads '1e-4' (no dot) as a string.
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: '{key}' = {value!r} must be a number")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: '{key}' = {value!r} must be a string")
    raise ConfigError(f"{source}: '{key}' has an unsupported type {tp}")


def _apply(obj: Any, updates: dict[str, Any], prefix: str, source: str) -> None:
    """Write ``updates`` into the dataclass ``obj`` in place, validating every key."""
    if not isinstance(updates, dict):
        raise ConfigError(f"{source}: '{prefix or '<root>'}' must be a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{key}' (known keys here: {known})")
        tp = hints[name]
        current = getattr(obj, name)
        if dataclasses.is_dataclass(current):
            _apply(current, value, f"{key}.", source)
            continue
        value = _coerce(value, tp, key, source)
        choices = fields[name].metadata.get("choices")
        if callable(choices):  # a registry's names, read when the value is checked
            choices = tuple(choices())
        if choices is not None:
            # Names are matched case-insensitively so 'rgbnt201' and 'RGBNT201' both work.
            match = [c for c in choices if c.lower() == str(value).lower()]
            if not match:
                raise ConfigError(f"{source}: '{key}' = {value!r} is not one of: {', '.join(choices)}")
            value = match[0]
        setattr(obj, name, value)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML file and its ``_base_`` chain, merged base-first."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config files include each other in a cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is None:
        return data
    bases = base if isinstance(base, list) else [base]
    merged: dict[str, Any] = {}
    for b in bases:
        merged = _deep_merge(merged, _read_yaml(path.parent / str(b), (*seen, path)))
    return _deep_merge(merged, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``key.sub=value`` into the dotted key and its YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _nest(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    cur = out
    parts = key.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = value
    return out


#: The presets shipped with the package (``configs/`` in the repository links here).
PRESETS_DIR = Path(__file__).resolve().parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config file path, or the name of a shipped preset (``demo``, ``ablations/table4_ip``)."""
    p = Path(path)
    if p.is_file():
        return p
    for candidate in (PRESETS_DIR / p, PRESETS_DIR / f"{p}.yaml"):
        if candidate.is_file():
            return candidate
    presets = sorted(str(f.relative_to(PRESETS_DIR).with_suffix("")) for f in PRESETS_DIR.rglob("*.yaml"))
    raise ConfigError(f"config file not found: {p} (nor a shipped preset; presets: {', '.join(presets)})")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Config:
    """Build the resolved configuration: defaults, then ``path`` (and its bases), then
    ``extra`` (a nested dict, e.g. from command-line flags), then ``overrides``."""
    cfg = Config()
    if path is not None:
        path = resolve_config_path(path)
        _apply(cfg, _read_yaml(path), "", str(path))
    if extra:
        _apply(cfg, extra, "", "command line")
    for text in overrides or []:
        key, value = parse_override(text)
        _apply(cfg, _nest(key, value), "", "command line")
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    """Cross-field checks that a single type cannot express."""
    d = cfg.data
    if d.img_size is not None and (len(d.img_size) != 2 or min(d.img_size) <= 0):
        raise ConfigError(f"'data.img_size' = {d.img_size} must be [H, W] with positive sizes")
    if d.num_instances <= 0 or d.batch_size <= 0:
        raise ConfigError("'data.batch_size' and 'data.num_instances' must be positive")
    if d.batch_size % d.num_instances != 0:
        raise ConfigError(
            f"'data.batch_size' = {d.batch_size} must be a multiple of "
            f"'data.num_instances' = {d.num_instances} (P identities x K instances)"
        )
    if cfg.train.select_best == "val" and d.val_ids <= 0:
        raise ConfigError("'train.select_best' = val needs 'data.val_ids' > 0 held-out training identities")
    if cfg.train.schedule_start not in (0, 1):
        raise ConfigError(f"'train.schedule_start' = {cfg.train.schedule_start} must be 0 or 1")
    for name in ("adapter_layers", "prompt_layers"):
        layers = getattr(cfg.model, name)
        if layers is not None and any(i < 0 for i in layers):
            raise ConfigError(f"'model.{name}' = {layers} must hold 0-based layer indices")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of the configuration (JSON/YAML serialisable)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    """The resolved tree as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
