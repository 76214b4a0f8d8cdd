"""A compact ViT image encoder in OpenAI CLIP's own key layout.

Why not timm's ``VisionTransformer`` or open_clip's tower: MambaPro changes the inside of every
block (an adapter beside or behind the MHSA/FFN sub-layers) and the sequence between blocks
(prompt tokens enter before a layer and leave after it). Both are plain to read when the block's
forward is ours, a dozen lines, rather than patched into a library module by hooks or
subclass overrides that depend on its private call structure. timm and open_clip stay the test
oracles (``tests/test_models_weights.py`` checks equality with open_clip's ``encode_image``
and timm's ``forward_features``).

The parameter names are OpenAI's (``conv1``, ``class_embedding``, ``positional_embedding``,
``ln_pre``, ``transformer.resblocks.{i}.{ln_1, attn.in_proj_weight, attn.in_proj_bias,
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``proj``), so an OpenAI visual state
dict loads with ``strict=True``. Attention goes through ``F.scaled_dot_product_attention``
(fused kernels on GPU, no attention mask: prompts and image tokens attend to each other).

The same module also expresses the ImageNet ViT of Table 9 (GELU, LayerNorm eps 1e-6, a patch
embedding with bias, no ``ln_pre``, no ``proj``) through constructor flags; see
``vit_imagenet.py``.

Stochastic depth (``drop_path``, off by default): timm's ``DropPath`` on the residual branches of
the MHSA and the FFN, at the rate ``torch.linspace(0, drop_path, layers)[i]`` in block ``i``, as
the authors' ImageNet ViT (release ``modeling/backbones/vit_pytorch.py``: rule at l. 582, the
branches at l. 218-225). At rate 0 a block holds ``nn.Identity``, so the CLIP path computes
exactly what it computed without the option, and no rate adds parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import Tensor, nn

from mambapro.parts import ACTIVATIONS, ADAPTER_POSITIONS, CAMERA_TOKENS

__all__ = [
    "ADAPTER_POSITIONS",
    "CAMERA_TOKENS",
    "Attention",
    "QuickGELU",
    "ResidualAttentionBlock",
    "VisionTransformer",
    "make_act",
]


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    """A new activation module registered in ``mambapro.parts.ACTIVATIONS``: ``quick_gelu``
    (CLIP and the authors' release) or ``gelu`` (exact erf GELU, the paper)."""
    if name not in ACTIVATIONS.names():
        raise ValueError(f"unknown activation '{name}'; choose one of: {', '.join(ACTIVATIONS.names())}")
    return ACTIVATIONS.build(name)


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Keeping ``in_proj_weight``/``in_proj_bias``/``out_proj`` lets OpenAI checkpoints load
    unchanged, while the computation uses ``F.scaled_dot_product_attention`` on ``(B, L, D)``
    (batch first) without ``nn.MultiheadAttention``'s sequence-first transposes.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, L, D)`` -> ``(B, L, D)``."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, D/heads)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Sequential):
    """The block's FFN, ``c_fc`` -> act -> ``c_proj`` (OpenAI names)."""

    def __init__(self, dim: int, hidden: int, act: str) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.gelu = make_act(act)
        self.c_proj = nn.Linear(hidden, dim)


class ResidualAttentionBlock(nn.Module):
    """A pre-norm transformer block with an optional adapter (PFA, BNA or LoRA).

    With ``x̄ = x + MHSA(LN₁(x))`` and ``x̂ = x̄ + FFN(LN₂(x̄))``, the adapter ``A`` enters at
    ``adapter_position`` (Table 8):

    - ``side_ffn`` (PFA's place): ``x̂ = x̄ + FFN(LN₂(x̄)) + A(x̄)``: input ``x̄`` itself, not
      ``LN₂(x̄)``, as the authors' release does;
    - ``behind_ffn``: ``h = FFN(LN₂(x̄))``, ``x̂ = x̄ + h + A(h)``;
    - ``side_mhsa``: ``x̄ = x + MHSA(LN₁(x)) + A(x)``;
    - ``behind_mhsa``: ``a = MHSA(LN₁(x))``, ``x̄ = x + a + A(a)``.

    "Behind" is the sequential (Houlsby) placement: the adapter transforms the sub-layer's
    output and keeps its own skip connection, so that the pre-trained path is not cut.

    Stochastic depth ``DP`` (``drop_path`` > 0) drops the sub-layer's branch per sample:
    ``x̄ = x + DP(MHSA(LN₁(x)))``, ``x̂ = x̄ + DP(FFN(LN₂(x̄)))``. A ``side`` adapter stays outside
    it, ``x̂ = x̄ + DP(FFN(LN₂(x̄))) + A(x̄)``, as the release's ViT block does with its
    ``adapter_ffn`` (``modeling/backbones/vit_pytorch.py`` l. 222-225, 366-368); a ``behind``
    adapter is part of the branch it transforms, so the branch ``h + A(h)`` is dropped as a whole
    (the release has no behind placement).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        act: str = "quick_gelu",
        ln_eps: float = 1e-5,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self.adapter: nn.Module | None = None
        self.adapter_position = "side_ffn"
        self.drop_path: nn.Module = nn.Identity()
        self.set_drop_path(drop_path)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth at ``rate`` on both residual branches (0: ``nn.Identity``)."""
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate {rate} must be in [0, 1)")
        self.drop_path = DropPath(rate) if rate > 0.0 else nn.Identity()

    def set_adapter(self, adapter: nn.Module | None, position: str) -> None:
        """Attach ``adapter`` (or remove it with None) at one of :data:`ADAPTER_POSITIONS`."""
        if position not in ADAPTER_POSITIONS:
            raise ValueError(f"adapter position '{position}' is not one of: {', '.join(ADAPTER_POSITIONS)}")
        self.adapter = adapter
        self.adapter_position = position

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, L, D)`` -> ``(B, L, D)``."""
        x = self._residual(x, self.attn, self.ln_1, "mhsa")
        return self._residual(x, self.mlp, self.ln_2, "ffn")

    def _residual(self, x: Tensor, sublayer: nn.Module, norm: nn.Module, name: str) -> Tensor:
        """``x + branch(x)``, the adapter behind the sub-layer (inside the dropped branch) or
        beside it (reading the branch's input ``x``) when it is placed at this sub-layer."""
        a, pos = self.adapter, self.adapter_position
        h = sublayer(norm(x))
        if a is not None and pos == f"behind_{name}":
            h = h + a(h)
        h = self.drop_path(h)
        if a is not None and pos == f"side_{name}":
            h = h + a(x)
        return x + h


class Transformer(nn.Module):
    """Holds the blocks under OpenAI's name ``transformer.resblocks``."""

    def __init__(
        self, width: int, layers: int, heads: int, mlp_ratio: float, act: str, ln_eps: float
    ) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, act, ln_eps) for _ in range(layers)]
        )

    def set_drop_path(self, rate: float) -> None:
        """Block ``i`` drops its branches at ``torch.linspace(0, rate, layers)[i]`` (the release's
        stochastic depth decay rule, ``modeling/backbones/vit_pytorch.py`` l. 582)."""
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"model.drop_path = {rate} must be in [0, 1)")
        rates = torch.linspace(0, rate, len(self.resblocks), device="cpu").tolist()
        for block, block_rate in zip(self.resblocks, rates):
            block.set_drop_path(block_rate)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    """ViT image encoder: patch embedding, cls token, positional embedding, blocks, projection.

    The forward is split into :meth:`embed` (tokens ``(B, 1 + H*W, D)``), the blocks
    (``transformer.resblocks``) and :meth:`project` (``ln_post`` then ``proj`` on every token),
    so that the multi-modal backbone can run its own loop over the blocks with prompt tokens.

    Args:
        img_size: input ``(H, W)``; both must be multiples of ``patch_size``.
        patch_size: side of a square patch (16 for ViT-B/16).
        width: token width D.
        layers: number of blocks.
        heads: attention heads.
        output_dim: projected width C; None: no ``proj`` (the encoder then outputs D).
        act: FFN activation, ``quick_gelu`` (CLIP) or ``gelu`` (ImageNet ViT).
        ln_eps: LayerNorm epsilon (1e-5 in CLIP, 1e-6 in timm's ViT).
        ln_pre: LayerNorm on the embedded tokens before the blocks (CLIP has it).
        patch_bias: bias in the patch embedding convolution (timm's ViT has it, CLIP not).
        mlp_ratio: FFN hidden width over D.
        drop_path: stochastic depth rate of the last block (linear from 0 in the first); 0: off.
    """

    def __init__(
        self,
        img_size: tuple[int, int] = (224, 224),
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        output_dim: int | None = 512,
        act: str = "quick_gelu",
        ln_eps: float = 1e-5,
        ln_pre: bool = True,
        patch_bias: bool = False,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        h, w = (int(s) for s in img_size)
        if h <= 0 or w <= 0 or h % patch_size or w % patch_size:
            raise ValueError(f"image size {h}x{w} must be positive multiples of the patch size {patch_size}")
        self.img_size = (h, w)
        self.patch_size = patch_size
        self.grid = (h // patch_size, w // patch_size)
        self.width = width
        self.output_dim = output_dim
        self.out_dim = output_dim if output_dim is not None else width

        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=patch_bias)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(1 + self.grid[0] * self.grid[1], width))
        self.ln_pre = nn.LayerNorm(width, eps=ln_eps) if ln_pre else nn.Identity()
        self.transformer = Transformer(width, layers, heads, mlp_ratio, act, ln_eps)
        self.ln_post = nn.LayerNorm(width, eps=ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if output_dim is not None else None
        self._init_blocks(layers)
        self.set_drop_path(drop_path)

    def set_drop_path(self, rate: float) -> None:
        """Stochastic depth: block ``i`` at ``linspace(0, rate, layers)[i]``; 0 turns it off."""
        self.transformer.set_drop_path(rate)
        self.drop_path = float(rate)

    def _init_blocks(self, layers: int) -> None:
        # OpenAI's CLIP initialisation for the vision tower (std scaled by depth), so that a
        # randomly initialised encoder (tiny preset, no weights) trains from a sane start.
        width = self.width
        proj_std = width**-0.5 * (2 * layers) ** -0.5
        attn_std = width**-0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    @property
    def num_layers(self) -> int:
        return len(self.transformer.resblocks)

    def embed(self, images: Tensor, offset: Tensor | None = None, offset_tokens: str = "cls") -> Tensor:
        """Images ``(B, 3, H, W)`` -> tokens ``(B, 1 + H/p * W/p, D)`` (cls first).

        ``offset`` ``(B, D)`` (the camera embedding, SIE) is added, before ``ln_pre``, to:

        - ``offset_tokens="cls"``: the cls token only, before the positional embedding, as the
          release's CLIP (``modeling/clip/model.py`` l. 445-447);
        - ``offset_tokens="all"``: every token, after the positional embedding, as the release's
          ImageNet ViT (``modeling/backbones/vit_pytorch.py`` l. 630,
          ``x + pos_embed + sie_xishu * sie_embed[camera_id]``).
        """
        if offset_tokens not in CAMERA_TOKENS:
            raise ValueError(f"offset_tokens '{offset_tokens}' is not one of: {', '.join(CAMERA_TOKENS)}")
        if images.shape[-2:] != self.img_size:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} (H, W) but the encoder was built for {self.img_size}"
            )
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (B, H*W, D)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], -1)
        if offset is not None and offset_tokens == "cls":
            cls = cls + offset.to(x.dtype)
        x = torch.cat([cls.unsqueeze(1), x], dim=1)
        x = x + self.positional_embedding.to(x.dtype)
        if offset is not None and offset_tokens == "all":
            x = x + offset.to(x.dtype).unsqueeze(1)
        return self.ln_pre(x)

    def project(self, x: Tensor) -> Tensor:
        """Tokens ``(B, L, D)`` -> ``ln_post`` then ``proj`` on every token: ``(B, L, C)``."""
        x = self.ln_post(x)
        return x @ self.proj if self.proj is not None else x

    def forward(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> projected tokens ``(B, 1 + H*W, C)`` (cls first)."""
        return self.project(self.transformer(self.embed(images)))

    def encode(self, images: Tensor) -> Tensor:
        """The image embedding ``(B, C)``: the projected cls token (open_clip's ``encode_image``)."""
        x = self.transformer(self.embed(images))
        return self.project(x[:, 0])

    def extra_repr(self) -> str:
        extra = f", drop_path={self.drop_path}" if self.drop_path else ""
        return f"img_size={self.img_size}, grid={self.grid}, out_dim={self.out_dim}{extra}"
