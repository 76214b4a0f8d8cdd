"""Losses, optimiser/schedule and checkpoints, against hand-written references."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mambapro.config import TrainConfig
from mambapro.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mambapro.train.losses import ReIDLoss, TripletLoss
from mambapro.train.optim import build_optimizer, build_scheduler


def _triplet_reference(feats: torch.Tensor, labels: torch.Tensor, margin: float | None) -> torch.Tensor:
    """Literal batch-hard triplet: a loop over anchors, positives and negatives."""
    n = len(labels)
    losses = []
    for a in range(n):
        d_ap = max(torch.dist(feats[a], feats[p]) for p in range(n) if labels[p] == labels[a] and p != a)
        d_an = min(torch.dist(feats[a], feats[q]) for q in range(n) if labels[q] != labels[a])
        x = float(d_ap - d_an)
        losses.append(math.log1p(math.exp(x)) if margin is None else max(0.0, x + margin))
    return torch.tensor(sum(losses) / n)


@pytest.mark.parametrize("margin", [None, 0.3])
def test_batch_hard_triplet_matches_loop(margin: float | None) -> None:
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(12, 5, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    got = TripletLoss(margin)(feats, labels)
    assert got.item() == pytest.approx(_triplet_reference(feats, labels, margin).item(), rel=1e-5)


def test_triplet_gradient_is_finite_for_identical_features() -> None:
    feats = torch.zeros(4, 3, requires_grad=True)
    TripletLoss()(feats, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(feats.grad).all()


def test_triplet_needs_two_identities() -> None:
    with pytest.raises(ValueError, match="two identities"):
        TripletLoss()(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_reid_loss_is_weighted_sum_of_label_smoothed_ce_and_triplet() -> None:
    g = torch.Generator().manual_seed(1)
    feats, logits = torch.randn(8, 6, generator=g), torch.randn(8, 5, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    terms = ReIDLoss(ce_weight=0.25, label_smoothing=0.1, triplet_weight=1.0)(
        {"fuse": (feats, logits)}, labels
    )
    # label smoothing by hand: target = (1 - eps) one-hot + eps / K
    k, eps = logits.shape[1], 0.1
    target = torch.full_like(logits, eps / k)
    target[torch.arange(8), labels] += 1 - eps
    ce = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    tri = _triplet_reference(feats, labels, None)
    assert terms["fuse_ce"].item() == pytest.approx(0.25 * ce.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx(0.25 * ce.item() + tri.item(), rel=1e-5)


def test_optimizer_groups_bias_and_backbone_learning_rates() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    cfg = TrainConfig(lr=1e-3, backbone_lr=1e-5, bias_lr_factor=2.0)
    named = list(net.named_parameters()) + list(frozen.named_parameters())
    opt = build_optimizer(named, cfg, backbone_param_ids={id(net[0].weight), id(net[0].bias)})
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(net[0].weight)] == pytest.approx(1e-5)
    # The release gives the fine-tuned encoder's biases the encoder rate, undoubled.
    assert lr_of[id(net[0].bias)] == pytest.approx(1e-5)
    assert lr_of[id(net[1].weight)] == pytest.approx(1e-3)
    assert lr_of[id(net[1].bias)] == pytest.approx(2e-3)
    assert id(frozen.weight) not in lr_of  # frozen parameters are not optimised
    # The doubling of encoder biases stays available as a value.
    doubled = dataclasses.replace(cfg, backbone_bias_lr_factor=2.0)
    opt = build_optimizer(named, doubled, backbone_param_ids={id(net[0].weight), id(net[0].bias)})
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(net[0].bias)] == pytest.approx(2e-5)


def test_schedule_warms_up_linearly_then_follows_cosine() -> None:
    cfg = TrainConfig(lr=1e-3, epochs=20, warmup_epochs=5, warmup_lr_factor=0.01, min_lr_factor=0.001)
    opt = build_optimizer(torch.nn.Linear(2, 2, bias=False).named_parameters(), cfg)
    sched = build_scheduler(opt, cfg)
    lr0, lr_min = 1e-3, 1e-6
    for epoch in range(cfg.epochs):
        sched.step(epoch)
        got = opt.param_groups[0]["lr"]
        if epoch < cfg.warmup_epochs:
            want = 1e-5 + epoch * (lr0 - 1e-5) / cfg.warmup_epochs
        else:  # timm (warmup_prefix=False): the cosine runs over all epochs from 0
            want = lr_min + 0.5 * (lr0 - lr_min) * (1 + math.cos(math.pi * epoch / cfg.epochs))
        assert got == pytest.approx(want, rel=1e-9), epoch


def test_checkpoint_roundtrip_and_atomicity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run" / "last.ckpt"
    state = {"model": {"w": torch.arange(3.0)}, "config": {"a": 1}, "epoch": 2}
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0)) and loaded["epoch"] == 2

    def broken_save(obj, fh):  # a crash half-way through writing
        fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {}, "config": {}, "epoch": 3}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 2  # the previous checkpoint is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_loading_never_unpickles_code(tmp_path: Path) -> None:
    bad = tmp_path / "evil.ckpt"
    with open(bad, "wb") as fh:
        torch.save({"model": {}, "config": {}, "x": _Evil()}, fh, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.ckpt")
    (tmp_path / "foreign.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="foreign.ckpt"):
        load_checkpoint(tmp_path / "foreign.ckpt")


def test_rank_gallery_orders_stably_and_leaves_out_the_query_itself() -> None:
    import numpy as np

    from mambapro.retrieval.features import FeatureSet
    from mambapro.retrieval.search import rank_gallery

    paths = ["g0", "q", "g2", "g3", "g4"]
    gallery = FeatureSet(
        feats=np.zeros((5, 2), np.float32),
        pids=np.array([7, 7, 3, 7, 3]),
        camids=np.array([0, 1, 0, 1, 0]),
        sceneids=np.full(5, -1),
        paths=paths,
    )
    dist = np.array([0.5, 0.0, 0.2, 0.5, 0.9])  # g0 and g3 tie: the lower index ranks first
    matches = rank_gallery(dist, "q", 7, gallery, k=3)
    assert [m.path for m in matches] == ["g2", "g0", "g3"]
    assert [m.rank for m in matches] == [1, 2, 3]
    assert [m.same_identity for m in matches] == [False, True, True]
    assert len(rank_gallery(dist, "q", 7, gallery, k=10)) == 4  # fewer entries than k
