"""Weight initialisation shared by the models and the aggregators."""

from __future__ import annotations

from torch import nn

__all__ = ["init_linear_"]


def init_linear_(*modules: nn.Module) -> None:
    """Truncated-normal (std 0.02) weights and zero biases for every ``nn.Linear`` in ``modules``:
    the init timm's ViT uses, and the authors' release for its adapters, prompts and aggregator."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
