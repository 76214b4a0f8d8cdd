"""One typed configuration tree for every command.

The tree has four sections, ``data``, ``model``, ``train`` and ``test``, each a dataclass.
A YAML file overrides only what differs from the defaults and may name a base file with
``_base_: other.yaml`` (relative to itself); command-line overrides ``key.sub=value`` come
last. Values on the command line are parsed as YAML scalars (``null``, ``true``, ``[1, 2]``).

Every key is checked: an unknown key, a badly typed value or a value outside a fixed set of
choices raises :class:`ConfigError` naming the dotted key and where it came from; the fields'
types, ranges and choices are checked by :mod:`mambapro.typed_fields`, this module holds the
schema, the files and the cross-field checks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mambapro import parts
from mambapro.data.spec_file import is_spec_file
from mambapro.data.specs import dataset_names, dataset_spec
from mambapro.data.synth import SynthParams as SynthConfig
from mambapro.data.synth import check_params as check_synth_params
from mambapro.errors import ConfigError
from mambapro.modalities import ModalitySet
from mambapro.typed_fields import apply_updates, choice_field, field_choices, range_field

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "TestConfig",
    "TrainConfig",
    "check_dataset",
    "SynthConfig",
    "load_config",
    "config_diff",
    "config_to_dict",
    "dump_config",
    "PRESETS_DIR",
    "choices",
    "resolve_config_path",
]


def _device_problem(name: str) -> str | None:
    """Why ``name`` is not a device spec (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``), or None."""
    kind, _, index = name.partition(":")
    if kind in ("auto", "cpu", "mps") and not index:
        return None
    if kind == "cuda" and (not index or index.isdigit()):
        return None
    return "is not a device: use auto, cpu, cuda, cuda:N or mps"


# The choices of the model's parts are the names of the registries in ``mambapro.parts`` (no
# torch there: the constructors load when a part is built), read when a value is checked; the
# smaller vocabularies (adapter positions, heads, ...) and the scan backends come from there too.


@dataclass
class DataConfig:
    # A registered dataset (mambapro.data.specs: RGBNT201, RGBNT100, MSVR310, ...; any case) or
    # a dataset spec file (a path ending in .yaml or .yml; mambapro.data.spec_file).
    dataset: str = "RGBNT201"
    root: str = "data"
    # Generate the embedded synthetic dataset under ``root`` when it is absent.
    synthetic: bool = False
    synth: SynthConfig = field(default_factory=SynthConfig)
    # (H, W) per modality; null takes the dataset's geometry, each side rounded to the nearest
    # multiple of the backbone's patch size (Config.img_size).
    img_size: list[int] | None = None
    batch_size: int = range_field(64, ge=1)  # P x K with K = num_instances
    num_instances: int = range_field(4, ge=1)
    # Loader worker processes: ``auto`` picks from the CPUs this process may use (0 with one CPU;
    # see mambapro.data.loader.resolve_num_workers), or an explicit count >= 0.
    num_workers: int | str = "auto"
    # Decoded-image cache: none (decode every item), memory (decode + resize each image once
    # into RAM), disk (the same, a memory-mapped uint8 file under cache_dir, rebuilt when the
    # dataset's files change). The cached pixels equal what the uncached pipeline produces.
    cache: str = choice_field("none", "memory", "disk", default="none")
    # Folder of data.cache=disk files; null: $XDG_CACHE_HOME/mambapro (~/.cache/mambapro).
    cache_dir: str | None = None
    # Where the train augmentation (flip, pad + crop, normalise, erasing) runs: per item on
    # the CPU in the loader, or batched on the training device in the train step (the same
    # distributions, other random draws; mambapro.data.device_aug).
    augment_on: str = choice_field("cpu", "device", default="cpu")
    # Draw flip/crop/erase separately per modality (the authors' release); false: one draw
    # shared by the three pixel-aligned modalities.
    independent_aug: bool = True
    flip_prob: float = range_field(0.5, ge=0, le=1)
    padding: int = range_field(10, ge=0)
    erase_prob: float = range_field(0.5, ge=0, le=1)
    # Test-time resize filter (the release: PIL bilinear); training always resizes bicubic.
    test_interpolation: str = choice_field("bilinear", "bicubic", default="bilinear")
    # Input normalisation: one value for the three channels, or [R, G, B] (DINO's ImageNet
    # statistics); every modality's image is normalised the same way.
    mean: float | list[float] = 0.5
    std: float | list[float] = range_field(0.5, gt=0)
    # Decode every image once before training (progress bar); a broken file is an error naming
    # all of them, or with skip_broken a counted warning (`mambapro check-data` does the same).
    verify: bool = False
    # Skip triplets with a missing modality file, an unparsable name or (with verify) an
    # unreadable image, with a counted warning, instead of failing.
    skip_broken: bool = False
    # Training identities held out as a validation query/gallery when train.select_best=val.
    val_ids: int = range_field(0, ge=0)


@dataclass
class ModelConfig:
    # A registered backbone (mambapro.parts.BACKBONES: its names are the choices).
    backbone: str = choice_field(parts.BACKBONES.names, default="clip_vit_b16")
    weights: str | None = None
    freeze: str = choice_field(*parts.FREEZE_MODES, default="frozen")
    # A registered adapter (mambapro.parts.ADAPTERS).
    adapter: str = choice_field(parts.ADAPTERS.names, default="pfa")
    # Where an adapter sits in a block (Table 8): beside (parallel to) or behind (after) a sub-layer.
    adapter_position: str = choice_field(*parts.ADAPTER_POSITIONS, default="side_ffn")
    adapter_act: str = choice_field(parts.ACTIVATIONS.names, default="quick_gelu")
    lora_rank: int = range_field(64, ge=1)
    # LoRA's update is scaled by lora_alpha / lora_rank (the release's LoRA_Linear, alpha = 1).
    lora_alpha: float = range_field(1.0, gt=0)
    # Layer indices (0-based) that get an adapter / prompts; null means every layer.
    adapter_layers: list[int] | None = range_field(None, ge=0)
    # A registered prompt variant (mambapro.parts.PROMPTS).
    prompt: str = choice_field(parts.PROMPTS.names, default="srp_fusion")
    prompt_tokens: int = range_field(4, ge=1)
    prompt_layers: list[int] | None = range_field(None, ge=0)
    prompt_act: str = choice_field(parts.ACTIVATIONS.names, default="quick_gelu")
    camera_embedding: bool = True
    camera_coef: float = range_field(1.0, ge=0)
    # Tokens the camera embedding is added to: the cls token (the release's CLIP) or every
    # token (the release's ImageNet ViT, Table 9).
    camera_tokens: str = choice_field(*parts.CAMERA_TOKENS, default="cls")
    # Stochastic depth of the encoder's blocks (linearly rising to this rate; the release's
    # ImageNet ViT uses 0.1, its CLIP none).
    drop_path: float = range_field(0.0, ge=0, lt=1)
    # Supervision of the backbone's cls features: one BNNeck head on their concatenation
    # (the release's MODEL.DIRECT = 1) or one head shared by the three modalities, each
    # modality's feature supervised separately (DIRECT = 0, the vehicle datasets).
    ori_head: str = choice_field(*parts.ORI_HEADS, default="concat")
    # A registered aggregator (mambapro.parts.AGGREGATORS). The ma_* keys and scan_backend below
    # reach it together, as one mambapro.parts.MASettings.
    aggregator: str = choice_field(parts.AGGREGATORS.names, default="ma")
    ma_depth: int = range_field(2, ge=1)
    ma_d_state: int = range_field(16, ge=1)
    ma_dt_rank: int = range_field(32, ge=1)
    ma_expand: int = range_field(2, ge=1)
    ma_bidirectional: bool = False
    # MA initialisation: ``release`` re-initialises every Linear of the aggregator trunc-normal
    # (std 0.02, zero bias; dt_proj included, so the initial step is softplus(0)) as the
    # authors' AAM does; ``mamba`` keeps Mamba's dt_proj init (steps in 1e-3..1e-1).
    ma_init: str = choice_field(*parts.MA_INITS, default="release")
    # Selective-scan implementation: pure PyTorch, Triton kernels (CUDA), mamba-ssm's CUDA kernel, or
    # auto (on CUDA: triton when it imports, else mamba_ssm when importable, else torch), or the
    # plain-operator forms exported models use (unrolled, hop, parallel; ops/scan_export.py).
    # A runtime choice, not part of the weights: a checkpoint may be evaluated with another one.
    scan_backend: str = choice_field(*parts.SCAN_BACKENDS, default="auto")


@dataclass
class TrainConfig:
    seed: int = range_field(1111, ge=0, le=2**32 - 1)  # the release's SOLVER.SEED
    epochs: int = range_field(60, ge=1)
    warmup_epochs: int = range_field(10, ge=0)
    lr: float = range_field(3.5e-4, gt=0)
    backbone_lr: float = range_field(5e-6, ge=0)
    weight_decay: float = range_field(1e-4, ge=0)
    bias_lr_factor: float = range_field(2.0, ge=0)  # for biases outside the fine-tuned encoder
    # The encoder's biases get backbone_lr x this when fine-tuning (the release: 1, no doubling).
    backbone_bias_lr_factor: float = range_field(1.0, ge=0)
    warmup_lr_factor: float = range_field(0.01, ge=0)
    min_lr_factor: float = range_field(0.001, ge=0)
    # Scheduler index of the first epoch: the release calls scheduler.step(epoch) with epochs
    # counted from 1, so its first epoch already runs one warm-up step in; 0 starts at the
    # warm-up's initial rate.
    schedule_start: int = choice_field(0, 1, default=1)
    ce_weight: float = range_field(0.25, ge=0)
    label_smoothing: float = range_field(0.1, ge=0, lt=1)
    triplet_weight: float = range_field(1.0, ge=0)
    # null: soft-margin (softplus) triplet, the default; a number: hinge with that margin.
    triplet_margin: float | None = range_field(None, gt=0)
    amp: str = choice_field("auto", "off", "bf16", "fp16", default="auto")
    grad_clip: float | None = range_field(None, gt=0)
    # auto, cpu, cuda, cuda:N or mps; a GPU that is absent is refused when the run starts.
    device: str = "auto"
    # Beyond the paper: probability that a training sample loses one or two modalities (one of
    # the six missing settings, uniformly), zeroed as at test time; 0 in the paper presets.
    modality_dropout: float = range_field(0.0, ge=0, lt=1)
    # What a dropped (and at test time a missing) modality becomes before MA: ``input``, the
    # backbone's tokens of the zeroed image; ``feature``, learned tokens (models/missing.py;
    # adds parameters, so it is part of the model a checkpoint stores).
    modality_dropout_mode: str = choice_field("input", "feature", default="input")
    # Iterations per epoch; null: one pass over the training identities' samples.
    iters_per_epoch: int | None = range_field(None, ge=1)
    eval_period: int = range_field(0, ge=0)  # evaluate every N epochs (0: only at the end)
    checkpoint_period: int = range_field(1, ge=1)
    # final: report the last epoch; val: keep the best by a held-out validation split;
    # test_set_optimistic: select on the test set, as published recipes do (labelled as such).
    select_best: str = choice_field("final", "val", "test_set_optimistic", default="final")
    output: str = "runs/default"
    # TensorBoard scalars (iter/*: loss terms, accuracy, lr) every N training steps; 0: off.
    log_period: int = range_field(10, ge=0)
    # After the final evaluation, run ``mambapro analyze`` (default options) on the reported
    # checkpoint into <output>/analysis/ and link its report.html from report.txt.
    analyze: bool = False


@dataclass
class TestConfig:
    batch_size: int = range_field(128, ge=1)
    # A missing-modality setting of the dataset's modalities (full, R, N, T, RN, RT, NT for RGB,
    # NI and TI); mambapro.modalities.
    missing: str = "full"
    distance: str = choice_field(*parts.DISTANCES, default="euclidean")
    rerank: bool = False
    rerank_k1: int = range_field(20, ge=1)
    rerank_k2: int = range_field(6, ge=1)
    rerank_lambda: float = range_field(0.3, ge=0, le=1)
    max_rank: int = range_field(50, ge=1)
    # Autocast at test time (train.amp's dtype); off: fp32 features, as the release evaluates.
    amp: bool = False
    # The test feature before its BNNeck's BatchNorm (the release) or after it.
    neck_feat: str = choice_field(*parts.NECK_FEATS, default="before")
    # Which feature is evaluated: the MA feature when an aggregator exists, else the ori concat.
    feature: str = choice_field(*parts.TEST_FEATURES, default="auto")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)

    def img_size(self) -> tuple[int, int]:
        """The resolved (H, W) per modality: ``data.img_size``, or the dataset's size with each
        side rounded to the nearest multiple of the backbone's patch size (256 x 128 is 252 x 126
        for a patch of 14; unchanged for 16). Every image is resized to it (training, testing,
        export, serve), and checkpoints store the config it is resolved from."""
        if self.data.img_size is not None:
            return (int(self.data.img_size[0]), int(self.data.img_size[1]))
        info = parts.BACKBONES.info(self.model.backbone)
        patch = info.patch_size if info is not None else 1
        h, w = dataset_spec(self.data.dataset).img_size
        return (nearest_multiple(h, patch), nearest_multiple(w, patch))

    def modalities(self) -> ModalitySet:
        """The dataset's modalities, in batch order."""
        return dataset_spec(self.data.dataset).modalities


def nearest_multiple(size: int, patch: int) -> int:
    """The multiple of ``patch`` nearest to ``size`` (ties go up; never below one patch)."""
    return max(patch, patch * int(size / patch + 0.5))


def choices(key: str) -> tuple[Any, ...] | None:
    """The values the dotted ``key`` accepts (``model.aggregator``: the registered aggregators'
    names, as they are now), or None for a key without a fixed set; ``KeyError`` for an unknown key."""
    return field_choices(Config(), key)


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
        # PyYAML's own message spans several lines with a source excerpt: keep where and what.
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
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
    base: tuple[dict[str, Any], str] | None = None,
) -> Config:
    """Build the resolved configuration: defaults, then ``base`` (a nested dict and the name of
    its source, e.g. a checkpoint's stored config), then ``path`` (and its bases), then ``extra``
    (a nested dict, e.g. from command-line flags), then ``overrides``."""
    cfg = Config()
    if base is not None:
        apply_updates(cfg, base[0], base[1])
    if path is not None:
        path = resolve_config_path(path)
        apply_updates(cfg, _read_yaml(path), str(path))
    if extra:
        apply_updates(cfg, extra, "command line")
    for text in overrides or []:
        key, value = parse_override(text)
        apply_updates(cfg, _nest(key, value), "command line")
    _check(cfg)
    return cfg


def check_dataset(name: str, field: str = "data.dataset") -> str:
    """A registered dataset's canonical name, or a spec file's absolute path once the file reads
    as a spec (absolute: a run's stored config then finds it from any working folder)."""
    if is_spec_file(name):
        dataset_spec(name)  # a bad spec file: a ConfigError naming the file and the field
        return str(Path(name).expanduser().resolve())
    try:
        return dataset_spec(name).name
    except ConfigError:  # an unknown name: said with the config key (or option) that gave it
        raise ConfigError(
            f"'{field}' = {name!r} is not one of: {', '.join(dataset_names())} "
            "(or a dataset spec file ending in .yaml or .yml)"
        ) from None


def _check(cfg: Config) -> None:
    """Cross-field checks that a single type or range cannot express."""
    d, m, t = cfg.data, cfg.model, cfg.train
    d.dataset = check_dataset(d.dataset)
    for key in ("mean", "std"):
        value = getattr(d, key)
        if isinstance(value, list) and len(value) != 3:
            raise ConfigError(f"'data.{key}' = {value} must be one number or three (R, G, B)")
    try:
        cfg.test.missing = cfg.modalities().parse_missing(cfg.test.missing)
    except ConfigError as err:
        raise ConfigError(f"'test.missing': {err}") from None
    backbone = parts.BACKBONES.info(m.backbone)  # its BackboneInfo (None: registered without one)
    patch = backbone.patch_size if backbone is not None else 1
    size = d.img_size
    if size is not None and (len(size) != 2 or any(x <= 0 or x % patch for x in size)):
        raise ConfigError(
            f"'data.img_size' = {size} must be [H, W], positive multiples of the patch size {patch}"
        )
    if d.batch_size % d.num_instances != 0:
        raise ConfigError(
            f"'data.batch_size' = {d.batch_size} must be a multiple of "
            f"'data.num_instances' = {d.num_instances} (P identities x K instances)"
        )
    if d.batch_size // d.num_instances < 2:
        raise ConfigError(
            f"'data.batch_size' = {d.batch_size} holds one identity of 'data.num_instances' = "
            f"{d.num_instances}; the triplet loss needs at least two identities per batch"
        )
    nw = d.num_workers
    if isinstance(nw, str) and nw.lower() == "auto":
        d.num_workers = "auto"
    elif isinstance(nw, str) or nw < 0:
        raise ConfigError(f"'data.num_workers' = {nw!r} must be auto or an integer >= 0")
    for key in ("data.root", "train.output"):
        section, name = key.split(".")
        if not str(getattr(getattr(cfg, section), name)).strip():
            raise ConfigError(f"'{key}' is empty")
    if t.select_best == "val" and d.val_ids <= 0:
        raise ConfigError("'train.select_best' = val needs 'data.val_ids' > 0 held-out training identities")
    problem = _device_problem(t.device)
    if problem:
        raise ConfigError(f"'train.device' = {t.device!r} {problem}")
    depth = backbone.layers if backbone is not None else None
    for name in ("adapter_layers", "prompt_layers"):
        layers = getattr(m, name)
        if depth is not None and layers is not None and any(i >= depth for i in layers):
            raise ConfigError(
                f"'model.{name}' = {layers}: the {m.backbone} backbone has layers 0..{depth - 1}"
            )
    if cfg.test.feature == "fuse" and m.aggregator == "none":
        raise ConfigError("'test.feature' = fuse needs an aggregator ('model.aggregator' is none)")
    if d.synthetic:
        check_synth_params(d.dataset, d.synth, prefix="data.synth.")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict of the configuration (JSON/YAML serialisable)."""
    return dataclasses.asdict(cfg)


def config_diff(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: before -> after`` for every dotted key whose value differs (nested dicts walked);
    a key present on one side only shows ``<absent>`` on the other."""
    out = []
    for key in sorted(set(before) | set(after), key=str):
        a, b = before.get(key, "<absent>"), after.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def dump_config(cfg: Config) -> str:
    """The resolved tree as YAML text."""
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
