"""GPU tests: the paper model's bf16 training step, the scan backends, extraction, checkpoints, DDP.

Every test here carries the ``gpu`` marker and is skipped when CUDA is not available, so CI (CPU
only) never needs one. On a CUDA machine run them with ``python -m pytest -q -m gpu`` (or through
``bash benchmarks/gpu_check.sh``). The file is sized to run in well under two minutes on one
current GPU (not yet timed on one: no GPU has been lent to this project so far), most of it
Triton's first compilation of the scan kernels and the CPU halves of the comparisons. The DDP
and CPU halves were dry-run on CPU (gloo for NCCL). What each test compares against, and with
which tolerance:

* the full paper model (CLIP ViT-B/16 with random weights, PFA + SRP + MA, batch 16 = 4 x 4,
  RGBNT201 geometry): one training step under bf16 autocast against the same step in fp32
  (TF32 off) from the same weights and inputs: finite loss, gradients and updated weights, the
  same set of parameters with gradients, the features, the loss and every trainable part's
  gradient close (bounds at ``STEP_TOL``);
* the torch, triton and (when importable) mamba-ssm scan backends on CUDA against the literal
  loop (``selective_scan_ref``) at MA's size, fp32 and bf16 inputs;
* test-time extraction on CUDA runs in fp32 (no module returns a reduced-precision tensor) and
  equals extraction of the same weights on CPU within ``EXTRACT_TOL``;
* a checkpoint written by a training run on CUDA loads on CPU through the package's loader,
  with identical weights and the same test features as the same checkpoint loaded on CUDA;
* DistributedDataParallel over NCCL (two or more GPUs): each rank's gradient equals the mean
  of the ranks' single-process gradients, and the ranks hold identical weights after the step.
"""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import warnings

import pytest
import torch

from mambapro.config import load_config
from mambapro.models import MODALITIES, build_model
from mambapro.ops import resolve_backend, selective_scan
from mambapro.ops.scan_reference import selective_scan_ref
from mambapro.retrieval.features import extract_features
from mambapro.runtime import eval_amp, resolve_device
from mambapro.train.checkpoint import load_checkpoint, load_model
from mambapro.train.distributed import cleanup, init_distributed
from mambapro.train.losses import ReIDLoss
from mambapro.train.optim import build_optimizer
from mambapro.train.trainer import run_training

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

#: bf16-autocast step vs fp32 step: relative errors of the loss, relative L2 errors of each head's
#: features and of each trainable part's gradients (``_rel_l2``), and the gradients' cosine. This
#: step, emulated on CPU for two seeds (autocast's bf16 ops fed bf16-rounded inputs, their outputs
#: rounded to bf16), measured loss 0.06%, features 0.6%, gradients 0.5-2.4% (prompts and the
#: aggregator the largest), cosine > 0.9998; CUDA autocast also runs element-wise ops in bf16, and
#: batch-hard mining may pick another positive or negative of nearly equal distance: the bounds
#: leave a factor of 4 or more.
STEP_TOL = {"loss": 0.02, "features": 0.03, "grad": 0.10, "grad_cos": 0.99}
#: CUDA fp32 vs CPU fp32 features: relative max error. cuDNN runs convolutions (the patch
#: embedding, MA's depth-wise convolutions) in TF32 by default (``torch.backends.cudnn.allow_tf32``),
#: everything else is fp32 on both sides; TF32 rounding of those convolutions' inputs and weights,
#: emulated on CPU for this model and batch, moves the features by 5e-5 (relative max).
EXTRACT_TOL = 1e-3
#: scan backends vs the loop (max abs error / max |loop value|, per tensor)
SCAN_TOL = {
    torch.float32: {"out": 1e-4, "last_state": 1e-4, "grad": 1e-3},
    torch.bfloat16: {"out": 2.0**-7, "last_state": 1e-4, "grad": 2.0**-6},
}


def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|."""
    a, b = a.detach().float(), b.detach().float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


@contextlib.contextmanager
def _no_tf32():
    """True fp32 matmuls and convolutions (the reference side of a comparison)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _paper_config(batch: int, k: int = 4):
    """The full paper model as ``benchmarks/bench_train.py`` builds it (RGBNT201 preset, random
    weights), with the scan the GPU picks (``auto``: triton, else mamba_ssm, else torch)."""
    return load_config(
        "rgbnt201", [f"data.batch_size={batch}", f"data.num_instances={k}", "model.scan_backend=auto"]
    )


def _build(cfg, num_classes: int = 171, num_cameras: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no model.weights given, randomly initialised"
        return build_model(cfg, num_classes=num_classes, num_cameras=num_cameras)


def _identity_batch(cfg, batch: int, k: int, seed: int = 0) -> tuple[dict, torch.Tensor]:
    """P x K images: each identity a random image per modality plus per-sample noise, so the
    triplet loss sees positives closer than negatives (pure noise would make every distance
    nearly equal and batch-hard mining arbitrary)."""
    h, w = cfg.img_size()
    g = torch.Generator().manual_seed(seed)
    inputs = {}
    for m in MODALITIES:
        base = torch.randn(batch // k, 3, h, w, generator=g).repeat_interleave(k, 0)
        inputs[m] = base + 0.5 * torch.randn(batch, 3, h, w, generator=g)
    inputs["camids"] = torch.randint(0, 4, (batch,), generator=g)
    return inputs, torch.arange(batch) // k


def _to(batch: dict, device) -> dict:
    return {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _part(name: str) -> str:
    """The trainable part a parameter belongs to (adapters, prompts, camera, aggregator, heads)."""
    for key in ("adapter", "prompt", "camera", "aggregator", "head"):
        if key in name:
            return key
    return name.split(".")[0]


# ----------------------------------------------------------------------------- training step


def _train_step(model, cfg, inputs: dict, labels: torch.Tensor, amp: torch.dtype | None) -> dict:
    """One step as the trainer takes it: autocast forward + loss, backward, optimiser step."""
    opt = build_optimizer(model.named_parameters(), cfg.train)
    loss_fn = ReIDLoss(
        cfg.train.ce_weight, cfg.train.label_smoothing, cfg.train.triplet_weight, cfg.train.triplet_margin
    )
    model.train()
    with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
        outputs = model(inputs)
        terms = loss_fn(outputs, labels)
    opt.zero_grad(set_to_none=True)
    terms["loss"].backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    torch.cuda.synchronize()
    return {
        "loss": terms["loss"].detach().float(),
        "features": {h: f.detach().float() for h, (f, _) in outputs.items()},
        "grads": grads,
        "params_finite": all(torch.isfinite(p).all() for p in model.parameters()),
    }


def test_paper_model_bf16_step_is_finite_and_matches_fp32() -> None:
    batch, k = 16, 4
    cfg = _paper_config(batch, k)
    model = _build(cfg).cuda()
    state = copy.deepcopy(model.state_dict())
    inputs, labels = _identity_batch(cfg, batch, k)
    inputs, labels = _to(inputs, "cuda"), labels.cuda()
    if _triton_importable():  # the step runs the compiled Triton scan
        assert resolve_backend(cfg.model.scan_backend, "cuda") == "triton"

    bf16 = _train_step(model, cfg, inputs, labels, torch.bfloat16)
    model.load_state_dict(state)
    with _no_tf32():
        fp32 = _train_step(model, cfg, inputs, labels, None)

    assert torch.isfinite(bf16["loss"]), bf16["loss"]
    assert bf16["params_finite"] and fp32["params_finite"]
    bad = [n for n, g in bf16["grads"].items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite bf16 gradients: {bad[:5]}"
    assert bf16["grads"].keys() == fp32["grads"].keys()
    parts = {_part(n) for n in fp32["grads"]}
    assert {"adapter", "prompt", "aggregator", "head"} <= parts, parts
    assert any(g.abs().max() > 0 for n, g in bf16["grads"].items() if "aggregator" in n)

    loss_err = abs(bf16["loss"].item() - fp32["loss"].item()) / abs(fp32["loss"].item())
    assert loss_err <= STEP_TOL["loss"], (bf16["loss"].item(), fp32["loss"].item())
    for head, f in fp32["features"].items():
        err = _rel_l2(bf16["features"][head], f)
        assert err <= STEP_TOL["features"], f"features of head {head}: relative L2 error {err:.3g}"
    for part in sorted(parts):
        names = [n for n in fp32["grads"] if _part(n) == part]
        # float64: an fp32 cosine over tens of millions of entries can come out above 1
        a = torch.cat([bf16["grads"][n].flatten() for n in names]).double()
        b = torch.cat([fp32["grads"][n].flatten() for n in names]).double()
        err, cos = _rel_l2(a, b), (a @ b / (a.norm() * b.norm())).item()
        assert err <= STEP_TOL["grad"] and cos >= STEP_TOL["grad_cos"], (
            f"{part} gradients ({len(names)} tensors): bf16 vs fp32 relative L2 error {err:.3g}, "
            f"cosine {cos:.5f} (bounds {STEP_TOL['grad']}, {STEP_TOL['grad_cos']})"
        )


# ----------------------------------------------------------------------------- scan backends


def _scan_backends() -> list[str]:
    backends = ["torch"]
    if _triton_importable():
        backends.append("triton")
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401

        backends.append("mamba_ssm")
    except ImportError:
        pass
    return backends


def _scan_inputs(dtype: torch.dtype, batch: int = 2, dim: int = 1024, length: int = 387, n: int = 16):
    """MA's inter-modality scan: D = 2 x 512, L = 3 x 129, N = 16 (with z too, mamba-ssm's gate)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = {
        "u": torch.randn(batch, dim, length, device="cuda", generator=g),
        "delta": torch.randn(batch, dim, length, device="cuda", generator=g) * 0.5 - 2.0,
        "A": -torch.rand(dim, n, device="cuda", generator=g) * 3 - 0.1,
        "B": torch.randn(batch, n, length, device="cuda", generator=g),
        "C": torch.randn(batch, n, length, device="cuda", generator=g),
        "D": torch.randn(dim, device="cuda", generator=g),
        "z": torch.randn(batch, dim, length, device="cuda", generator=g),
        "delta_bias": torch.randn(dim, device="cuda", generator=g) * 0.1,
    }
    for key in ("u", "delta", "B", "C", "z"):
        x[key] = x[key].to(dtype)
    return x


def _run_scan(fn, inputs: dict, weight: torch.Tensor, **kw):
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    out, last = fn(**leaves, delta_softplus=True, return_last_state=True, **kw)
    (out.float() * weight).sum().backward()
    return out.detach(), last.detach(), {k: v.grad for k, v in leaves.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", ["torch", "triton", "mamba_ssm"])
def test_scan_backends_match_the_loop_on_cuda(backend: str, dtype: torch.dtype) -> None:
    if backend not in _scan_backends():
        pytest.skip(f"{backend} is not importable here")
    inputs = _scan_inputs(dtype)
    weight = torch.randn(inputs["u"].shape, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with _no_tf32():
        # the loop in fp32 on the same (rounded) values: the exact answer for these inputs
        ref = _run_scan(selective_scan_ref, {k: v.float() for k, v in inputs.items()}, weight)
    out, last, grads = _run_scan(selective_scan, inputs, weight, backend=backend)
    tol = SCAN_TOL[dtype]
    assert out.dtype == dtype and out.shape == ref[0].shape and out.is_cuda
    errors = {"out": _rel(out, ref[0])}
    if backend != "mamba_ssm":  # mamba-ssm's kernel returns last_state but drops its gradient
        assert last.dtype == torch.float32
        errors["last_state"] = _rel(last, ref[1])
    for name, g in grads.items():
        assert g is not None and g.dtype == inputs[name].dtype, name
        errors[f"d{name}"] = _rel(g, ref[2][name])
    bad = {k: v for k, v in errors.items() if not v <= tol.get(k, tol["grad"])}
    assert not bad, f"{backend} ({dtype}) vs the loop: {bad}; all errors: {errors}"


# ----------------------------------------------------------------------------- extraction


def _eval_batches(cfg, n_batches: int = 2, batch: int = 3) -> list[dict]:
    """What the test loader yields: images plus the label fields ``extract_features`` collects."""
    out = []
    for i in range(n_batches):
        images, pids = _identity_batch(cfg, batch, 1, seed=10 + i)
        images.update(
            pids=pids + i * batch,
            sceneids=torch.zeros(batch, dtype=torch.long),
            paths=[f"sample_{i}_{j}" for j in range(batch)],
        )
        out.append(images)
    return out


def test_extraction_on_cuda_is_fp32_and_matches_cpu() -> None:
    cfg = _paper_config(batch=8)
    assert eval_amp(cfg, torch.device("cuda")) is None  # test.amp is off: no autocast at test time
    cpu_model = _build(cfg).eval()
    gpu_model = copy.deepcopy(cpu_model).cuda()
    batches = _eval_batches(cfg)

    low_precision = []

    def record(module, args, output) -> None:
        for t in output if isinstance(output, (tuple, list)) else [output]:
            if torch.is_tensor(t) and t.is_floating_point() and t.dtype != torch.float32:
                low_precision.append((type(module).__name__, t.dtype))

    hooks = [m.register_forward_hook(record) for m in gpu_model.modules()]
    try:
        dev = torch.device("cuda")
        gpu = extract_features(gpu_model, batches, dev, eval_amp(cfg, dev))
    finally:
        for h in hooks:
            h.remove()
    cpu = extract_features(cpu_model, batches, torch.device("cpu"), eval_amp(cfg, torch.device("cpu")))

    assert not low_precision, f"modules returned reduced-precision tensors at test time: {low_precision[:5]}"
    assert gpu.feats.dtype == cpu.feats.dtype == "float32"
    assert gpu.feats.shape == cpu.feats.shape == (6, cpu_model.fuse_head.bn.num_features)
    assert (gpu.pids == cpu.pids).all() and gpu.paths == cpu.paths
    err = _rel(torch.from_numpy(gpu.feats), torch.from_numpy(cpu.feats))
    assert err <= EXTRACT_TOL, f"CUDA vs CPU features: relative max error {err:.3g} > {EXTRACT_TOL}"


# ----------------------------------------------------------------------------- checkpoints


def _tensors(obj, prefix: str = ""):
    """Every tensor in a nested checkpoint, with its path."""
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def test_checkpoint_written_on_cuda_loads_on_cpu(tmp_path) -> None:
    """A real training run on CUDA (the demo preset on a small synthetic set) writes last.ckpt;
    the package's loader rebuilds it on CPU with the weights and test features it has on CUDA."""
    overrides = [
        f"data.root={tmp_path / 'data'}",
        "data.synth.ids=16",
        "data.synth.test_ids=4",
        "data.num_workers=0",
        "data.batch_size=16",
        "train.device=cuda",
        "train.epochs=1",
        "train.iters_per_epoch=2",
        f"train.output={tmp_path / 'run'}",
        "model.scan_backend=auto",
    ]
    cfg = load_config("demo", overrides)
    run_training(cfg, quiet=True, show_data=False)
    path = tmp_path / "run" / "last.ckpt"

    ckpt = load_checkpoint(path)  # map_location defaults to the CPU
    assert ckpt["config"]["train"]["device"] == "cuda"
    on_gpu = [name for name, t in _tensors(ckpt) if t.device.type != "cpu"]
    assert not on_gpu, f"tensors not mapped to the CPU: {on_gpu[:5]}"

    cpu_model, _, _ = load_model(path, device=torch.device("cpu"))
    gpu_model, _, _ = load_model(path, device=torch.device("cuda"))
    assert all(p.device.type == "cpu" for p in cpu_model.parameters())
    gpu_state = gpu_model.state_dict()
    for name, t in cpu_model.state_dict().items():
        assert torch.equal(t, gpu_state[name].cpu()), name
        assert torch.equal(t, ckpt["model"][name]), name

    batches = _eval_batches(cfg)
    for b in batches:
        b["camids"] = b["camids"] % ckpt["num_cameras"]
    dev = torch.device("cuda")
    with _no_tf32():
        gpu = extract_features(gpu_model, batches, dev, eval_amp(cfg, dev))
    cpu = extract_features(cpu_model, batches, torch.device("cpu"), None)
    err = _rel(torch.from_numpy(gpu.feats), torch.from_numpy(cpu.feats))
    assert err <= 1e-4, f"the checkpoint's model on CPU vs on CUDA: relative max error {err:.3g}"


# ----------------------------------------------------------------------------- DDP / NCCL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int) -> None:
    """One rank (spawned): the package's init_distributed joins an NCCL group from torchrun's
    environment variables; the model is wrapped as the trainer wraps it."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    info = init_distributed("cuda")
    try:
        assert info.world_size == world_size and info.rank == rank
        assert dist.get_backend() == "nccl"
        device = resolve_device("cuda", info.local_rank)
        assert device == torch.device("cuda", rank)
        cfg = load_config("demo", ["model.scan_backend=auto", "data.batch_size=8"])
        model = _build(cfg, num_classes=10, seed=0).to(device)  # the same weights on every rank
        reference = copy.deepcopy(model)
        inputs, labels = _identity_batch(cfg, 8, 4, seed=100 + rank)  # each rank its own data
        inputs, labels = _to(inputs, device), labels.to(device) + 2 * rank
        loss_fn = ReIDLoss(cfg.train.ce_weight, cfg.train.label_smoothing, cfg.train.triplet_weight)

        # expected: the mean over ranks of each rank's single-process gradient
        reference.train()
        loss_fn(reference(inputs), labels)["loss"].backward()
        expected = {}
        for name, p in reference.named_parameters():
            if p.grad is not None:
                g = p.grad.detach().clone()
                dist.all_reduce(g)
                expected[name] = g / world_size

        assert any("aggregator" in n for n in expected) and len(expected) > 10, sorted(expected)
        ddp = DistributedDataParallel(model, device_ids=[device.index], static_graph=True)
        ddp.train()
        opt = build_optimizer(model.named_parameters(), cfg.train)
        opt.zero_grad(set_to_none=True)
        loss_fn(ddp(inputs), labels)["loss"].backward()
        for name, p in model.named_parameters():
            if name not in expected:
                assert p.grad is None or not p.grad.any(), f"rank {rank}: {name} got a gradient"
                continue
            assert p.grad is not None, f"rank {rank}: DDP left {name} without a gradient"
            err = _rel(p.grad, expected[name])
            assert err <= 1e-3, f"rank {rank}: {name} DDP gradient vs mean of ranks: {err:.3g}"
        opt.step()
        fingerprint = torch.stack(
            [
                torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                for p in model.parameters()
            ]
        )
        gathered = [torch.zeros_like(fingerprint) for _ in range(world_size)]
        dist.all_gather(gathered, fingerprint)
        assert all(torch.equal(g, fingerprint) for g in gathered), (
            f"rank {rank}: weights differ after the step"
        )
    finally:
        cleanup(info)


def test_ddp_nccl_gradients_are_the_mean_over_ranks() -> None:
    world_size = torch.cuda.device_count()
    if world_size < 2:
        pytest.skip(f"DDP needs two or more GPUs, this machine has {world_size}")
    import torch.multiprocessing as mp

    world_size = min(world_size, 4)
    mp.spawn(_ddp_worker, args=(world_size, _free_port()), nprocs=world_size, join=True)
