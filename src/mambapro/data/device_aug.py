"""Batched train augmentation on the training device (``data.augment_on=device``).

The loader then yields resized ``uint8`` images plus each item's sampler seed (``batch["seeds"]``)
and modality-dropout setting (``batch["dropped"]``); :class:`DeviceAugment` applies, in the train
step, to the whole batch at once (vectorised tensor ops on an accelerator; see
:func:`apply_params` for the CPU), the same steps as the CPU train transform
(``transforms.build_train_transform``, torchvision v2):

1. horizontal flip with probability ``flip_prob`` (``RandomHorizontalFlip``);
2. zero padding by ``padding`` and a random crop back to (H, W): offsets uniform on
   ``0 .. 2 * padding`` (``Pad`` + ``RandomCrop``);
3. ``x / 255``, then ``(x - mean) / std`` (``ToDtype(scale=True)`` + ``Normalize``);
4. random erasing with probability ``erase_prob`` (``RandomErasing(value="random")``): up to ten
   attempts of area ``U(0.02, 0.33) * H * W`` and aspect ``exp(U(log 0.3, log 3.3))``, side
   lengths rounded, the first attempt that fits is used (none fits: no erasing), position
   uniform; the rectangle is filled with per-pixel N(0, 1) noise;
5. modality dropout: the dropped modalities zeroed after normalisation.

Each step's parameters follow torchvision's distributions exactly (``tests/test_input_pipeline.py``
compares them on many draws) and, given the same parameters, the images equal the CPU
transform's (same test). The draws themselves are different numbers: a counter-based hash
(SplitMix64) of (item seed, modality stream, draw index), so every parameter is a pure function
of the sampler's item seed, i.e. of (seed, epoch, position), vectorised over the batch, and
independent of workers, devices and ranks. With ``independent`` (``data.independent_aug``) the
M modalities of the dataset use streams 0 .. M - 1 (0, 1, 2 for RGB, NI, TI); otherwise all use
stream 0 and stay pixel-aligned.
The erasing noise comes from a generator seeded by a hash of the batch's item seeds (a pure
function of the batch, under DDP of each rank's share: so unlike every other parameter, the
noise of a sample depends on the world size; numpy's generator on the CPU, torch's on an
accelerator, so the noise values also differ between device types).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..modalities import ModalitySet
from .specs import dataset_spec
from .transforms import channel_stats

if TYPE_CHECKING:  # the config imports the data package (dataset specs), not the reverse
    from ..config import DataConfig

__all__ = ["AugParams", "DeviceAugment", "OnDevice", "draw_params", "uniforms"]

ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing defaults
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10
_TAG = np.uint64(0x6465766963656167)  # "deviceag": this module's streams
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
# Draw slots of one (item, stream): flip, crop top, crop left, erase gate, erase row, erase
# column, then (area, log-aspect) of each attempt.
_FLIP, _TOP, _LEFT, _ERASE, _ROW, _COL, _ATTEMPTS = range(7)
N_SLOTS = _ATTEMPTS + 2 * ERASE_ATTEMPTS


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def uniforms(seeds: np.ndarray, streams: np.ndarray, slots: int = N_SLOTS) -> np.ndarray:
    """U[0, 1) doubles of shape ``seeds.shape + (slots,)``, a pure function of (seed, stream, slot)."""
    with np.errstate(over="ignore"):
        s = np.asarray(seeds).astype(np.uint64) ^ _TAG
        base = _mix(_mix(s) + np.asarray(streams).astype(np.uint64))
        bits = _mix(base[..., None] + np.arange(slots, dtype=np.uint64))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass
class AugParams:
    """Per-image parameters, each shaped (M, B): M modalities, B items (int64 / bool)."""

    flip: np.ndarray
    top: np.ndarray
    left: np.ndarray
    erase: np.ndarray
    ei: np.ndarray
    ej: np.ndarray
    eh: np.ndarray
    ew: np.ndarray


def draw_params(
    seeds: np.ndarray | list[int],
    size: tuple[int, int],
    flip_prob: float,
    padding: int,
    erase_prob: float,
    independent: bool,
    num_modalities: int = 3,
) -> AugParams:
    """The augmentation parameters of items with these sampler seeds, for ``num_modalities``
    images each (see the module doc)."""
    h, w = (int(x) for x in size)
    m = int(num_modalities)
    seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
    streams = np.arange(m)[:, None] if independent else np.zeros((m, 1), dtype=np.int64)
    u = uniforms(seeds[None, :], streams)  # (M, B, slots)
    if not independent:
        u = np.broadcast_to(u[:1], (m, *u.shape[1:]))
    # RandomHorizontalFlip: flipped when torch.rand(1) < p.
    flip = u[..., _FLIP] < flip_prob
    # RandomCrop of the padded image: randint(0, 2p + 1) for each offset.
    span = 2 * int(padding) + 1
    top = np.minimum((u[..., _TOP] * span).astype(np.int64), span - 1)
    left = np.minimum((u[..., _LEFT] * span).astype(np.int64), span - 1)
    # RandomErasing: gate, then the first of ten (area, aspect) attempts that fits.
    area = h * w * (ERASE_SCALE[0] + (ERASE_SCALE[1] - ERASE_SCALE[0]) * u[..., _ATTEMPTS::2])
    lo, hi = math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])
    aspect = np.exp(lo + (hi - lo) * u[..., _ATTEMPTS + 1 :: 2])
    eh_all = np.round(np.sqrt(area * aspect)).astype(np.int64)  # Python's round: half to even, as numpy
    ew_all = np.round(np.sqrt(area / aspect)).astype(np.int64)
    fits = (eh_all < h) & (ew_all < w)
    first = np.argmax(fits, axis=-1)
    any_fit = fits.any(axis=-1)
    eh = np.take_along_axis(eh_all, first[..., None], -1)[..., 0]
    ew = np.take_along_axis(ew_all, first[..., None], -1)[..., 0]
    erase = (u[..., _ERASE] < erase_prob) & any_fit
    eh = np.where(erase, eh, 0)
    ew = np.where(erase, ew, 0)
    ei = np.minimum((u[..., _ROW] * (h - eh + 1)).astype(np.int64), h - eh)
    ej = np.minimum((u[..., _COL] * (w - ew + 1)).astype(np.int64), w - ew)
    return AugParams(flip, top, left, erase, ei, ej, eh, ew)


def _noise_seed(seeds: np.ndarray) -> int:
    """One generator seed from all the batch's item seeds (order-sensitive)."""
    with np.errstate(over="ignore"):
        acc = np.uint64(0)
        for x in _mix(np.asarray(seeds).astype(np.uint64) ^ _TAG):
            acc = _mix(np.asarray(acc ^ x))
    return int(acc) & (2**62 - 1)


def _index(a: np.ndarray, dev: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)).to(dev, non_blocking=True)


def normalise_table(
    mean: float | Sequence[float], std: float | Sequence[float], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(3, 256) float32: row c is ``Normalize(ToDtype(v, scale=True))`` of every uint8 value ``v``
    in channel c (``mean``/``std``: one value for all channels or one per channel), computed with
    torchvision's operations, so a table look-up equals the two steps bit for bit."""
    means, stds = channel_stats(mean, std)
    v = torch.arange(256, dtype=torch.float32, device=device).mul_(1.0 / 255).expand(3, 256)
    mean_t = torch.tensor(means, dtype=torch.float32, device=device)[:, None]
    std_t = torch.tensor(stds, dtype=torch.float32, device=device)[:, None]
    return v.sub(mean_t).div_(std_t)


def _fill(count: int, noise_seed: int, dev: torch.device) -> torch.Tensor:
    """``count`` N(0, 1) float32 values, a pure function of ``noise_seed`` and the device type:
    numpy's PCG64 + ziggurat on the CPU (several times faster than torch's CPU normal_), a torch
    generator on an accelerator."""
    if dev.type == "cpu":
        return torch.from_numpy(np.random.default_rng(noise_seed).standard_normal(count, dtype=np.float32))
    return torch.randn(count, generator=torch.Generator(device=dev).manual_seed(noise_seed), device=dev)


def apply_params(
    images: torch.Tensor | list[torch.Tensor],
    p: AugParams,
    padding: int,
    mean: float | Sequence[float],
    std: float | Sequence[float],
    noise: torch.Tensor | None = None,
    noise_seed: int = 0,
    keep: torch.Tensor | None = None,
    shared_noise: bool = False,
    vectorised: bool | None = None,
) -> torch.Tensor:
    """Augment ``images`` (M, B, 3, H, W) uint8 (or M tensors (B, 3, H, W)) on their device with
    the parameters ``p``.

    ``noise`` (M, B, 3, H, W) float: the erasing fill (default: N(0, 1) drawn from ``noise_seed``
    for the erased pixels only, in each image's (channel, row, column) order, as torchvision's
    ``(C, h, w)`` fill). ``keep`` (M, B) bool: False zeroes an image after normalising (modality
    dropout). ``shared_noise``: one fill per item for all its modalities (the aligned CPU
    transform erases all its images with one draw). Returns float32 (M, B, 3, H, W).

    ``vectorised`` (default: on any device but the CPU): flip + pad + crop is one gather over the
    batch, the normalisation one table look-up and the erasing one masked scatter. On the CPU,
    where torch's gathers are slow and its multi-threaded copies stall on busy cores, the same
    results come from one numpy slice per image (``benchmarks/bench_input.py``); the tests check
    that both give identical images.
    """
    parts = list(images.unbind(0)) if torch.is_tensor(images) else list(images)
    m_ = len(parts)
    b_, c_, h, w = parts[0].shape
    dev = parts[0].device
    n = m_ * b_
    if vectorised is None:
        vectorised = dev.type != "cpu"
    flip = np.ascontiguousarray(p.flip).reshape(n)
    top = np.ascontiguousarray(p.top).reshape(n) if padding > 0 else np.zeros(n, np.int64)
    left = np.ascontiguousarray(p.left).reshape(n) if padding > 0 else np.zeros(n, np.int64)
    # pad(flip(x)) = flip(pad(x)) (symmetric zero padding): crop the padded original at column
    # 2p - left for a flipped image, then flip the crop.
    left = np.where(flip, 2 * padding - left, left)
    lut = normalise_table(mean, std, dev)
    erase = np.ascontiguousarray(p.erase).reshape(n)
    ei, ej, eh, ew = (np.ascontiguousarray(a).reshape(n) for a in (p.ei, p.ej, p.eh, p.ew))
    sizes = eh * ew * c_  # eh = ew = 0 where not erased
    fill = None
    if erase.any() and noise is None:
        if shared_noise:  # the parameters are the same for the modalities of an item
            fill = _fill(int(sizes.reshape(m_, b_)[0].sum()), noise_seed, dev).repeat(m_)
        else:
            fill = _fill(int(sizes.sum()), noise_seed, dev)
    if vectorised:
        x = torch.stack(parts).reshape(n, c_, h, w)
        xp = torch.nn.functional.pad(x, (padding,) * 4) if padding > 0 else x  # zeros, as v2.Pad
        ar_h = torch.arange(h, device=dev)
        ar_w = torch.arange(w, device=dev)
        rows = _index(top, dev)[:, None] + ar_h[None, :]
        cols = (
            torch.where(_index(flip, dev).bool()[:, None], ar_w.flip(0)[None, :], ar_w[None, :])
            + _index(left, dev)[:, None]
        )
        idx = torch.arange(n, device=dev)
        crop = xp[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (n, H, W, C)
        channel = torch.arange(c_, device=dev)[None, :, None, None]
        y = lut[channel, crop.permute(0, 3, 1, 2).contiguous().long()]
        if erase.any():
            ti, tj, th, tw = (_index(a, dev) for a in (ei, ej, eh, ew))
            r_in = (ar_h[None, :] >= ti[:, None]) & (ar_h[None, :] < (ti + th)[:, None])
            c_in = (ar_w[None, :] >= tj[:, None]) & (ar_w[None, :] < (tj + tw)[:, None])
            mask = (r_in[:, :, None] & c_in[:, None, :])[:, None].expand(n, c_, h, w)
            if fill is None:
                fill = noise.reshape(n, c_, h, w).to(dev)[mask]  # type: ignore[union-attr]
            y.masked_scatter_(mask, fill)
    else:
        srcs = [t.cpu().numpy() for t in parts]
        table = lut.cpu().numpy()
        out = np.empty((n, c_, h, w), dtype=np.float32)
        for k in range(n):
            img = srcs[k // b_][k % b_]
            # The padded image's crop window [t, t + h) x [l, l + w) in unpadded coordinates.
            r0, c0 = int(top[k]) - padding, int(left[k]) - padding
            ys, ye = max(r0, 0), min(r0 + h, h)
            xs, xe = max(c0, 0), min(c0 + w, w)
            dst = out[k]
            if ys > r0 or ye < r0 + h or xs > c0 or xe < c0 + w:
                dst[:] = table[:, :1, None]  # the zero padding, normalised
            for c in range(c_):
                view = img[c, ys:ye, xs:xe]
                target = dst[c, ys - r0 : ye - r0, xs - c0 : xe - c0]
                np.take(table[c], view, out=target, mode="wrap")
            if flip[k]:
                dst[:] = dst[:, :, ::-1]
        if erase.any():
            fill_np = None if fill is None else fill.cpu().numpy()
            noise_np = None if noise is None else noise.reshape(n, c_, h, w).cpu().numpy()
            offset = 0
            for k in np.flatnonzero(erase):
                box = (slice(None), slice(ei[k], ei[k] + eh[k]), slice(ej[k], ej[k] + ew[k]))
                if noise_np is not None:
                    out[k][box] = noise_np[k][box]
                else:
                    out[k][box] = fill_np[offset : offset + sizes[k]].reshape(c_, eh[k], ew[k])
                    offset += sizes[k]
        y = torch.from_numpy(out).to(dev)
    if keep is not None and not bool(keep.all()):
        gone = _index(np.flatnonzero(~keep.reshape(n).cpu().numpy()), dev)
        y.index_fill_(0, gone, 0.0)
    return y.reshape(m_, b_, c_, h, w)


class DeviceAugment:
    """The train step's batched augmentation of a ``data.augment_on=device`` batch, whose images
    are the ``modalities`` (default: those of ``data_cfg.dataset``)."""

    def __init__(
        self, data_cfg: DataConfig, img_size: tuple[int, int], modalities: ModalitySet | None = None
    ) -> None:
        self.modalities = modalities if modalities is not None else dataset_spec(data_cfg.dataset).modalities
        self.size = (int(img_size[0]), int(img_size[1]))
        self.flip_prob = float(data_cfg.flip_prob)
        self.padding = int(data_cfg.padding)
        self.erase_prob = float(data_cfg.erase_prob)
        self.independent = bool(data_cfg.independent_aug)
        self.mean, self.std = channel_stats(data_cfg.mean, data_cfg.std)

    def params(self, seeds: np.ndarray | list[int]) -> AugParams:
        return draw_params(
            seeds,
            self.size,
            self.flip_prob,
            self.padding,
            self.erase_prob,
            self.independent,
            len(self.modalities),
        )

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A new batch dict with float images; ``batch`` holds uint8 images (on the device),
        ``seeds`` and ``dropped``; the other entries pass through."""
        seeds = batch["seeds"]
        seeds = seeds.cpu().numpy() if torch.is_tensor(seeds) else np.asarray(seeds)
        dropped = batch.get("dropped")
        keys = self.modalities.keys
        keep = None
        if dropped is not None and any(d != "full" for d in dropped):
            gone = [self.modalities.missing(d) for d in dropped]
            keep = torch.from_numpy(np.array([[m not in g for g in gone] for m in keys]))
        out = apply_params(
            [batch[m] for m in keys],
            self.params(seeds),
            self.padding,
            self.mean,
            self.std,
            noise_seed=_noise_seed(seeds),
            keep=keep,
            shared_noise=not self.independent,
        )
        res = {k: v for k, v in batch.items() if k not in ("seeds", "dropped")}
        res.update(zip(keys, out.unbind(0)))
        return res


class OnDevice:
    """A train loader whose batches arrive on ``device``, each moved there once, and augmented
    there by ``augment`` when one is given (``data.augment_on=device``: the loader yields the
    uint8 images). ``len`` and ``batch_sampler`` are the loader's."""

    def __init__(self, loader: Any, device: torch.device, augment: DeviceAugment | None = None) -> None:
        self.loader = loader
        self.device = device
        self.augment = augment

    @property
    def batch_sampler(self) -> Any:
        return self.loader.batch_sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Any:
        for batch in self.loader:
            moved = {
                k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v)
                for k, v in batch.items()
            }
            yield moved if self.augment is None else self.augment(moved)
