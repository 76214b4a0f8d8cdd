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

The DINOv2 and DINOv3 encoders (``vit_dino.py``) are options of the same module, each off by
default (the CLIP and ImageNet encoders compute what they computed without them):

- ``layer_scale``: LayerScale ``ls_1``/``ls_2`` (timm's ``ls1``/``ls2``, a learned per-channel
  ``gamma``) on the output of the MHSA and of the FFN, inside the residual branch;
- ``registers``: R learned register (DINOv3: storage) tokens ``register_tokens`` ``(R, D)`` after the
  cls token; they get neither the positional embedding nor the camera term (as in DINOv2-reg,
  whose positional table covers cls and patches only) and :meth:`VisionTransformer.project` drops
  them, so the encoder still outputs ``(B, 1 + H*W, C)``;
- ``pos_embed=False``: no absolute positional embedding (DINOv3);
- ``rope="dinov3"``: DINOv3's 2-D rotary position embedding on the queries and keys of the patch
  tokens only (not cls, registers, or prompt tokens appended after the patches), the table from
  timm's ``RotaryEmbeddingDinoV3`` and applied with timm's ``apply_rot_embed_cat``, as timm's
  ``Eva`` does;
- ``qkv_bias=False`` (no ``in_proj_bias``) and ``mask_k_bias`` (the key third of the bias held at
  zero, DINOv3's ``LinearKMaskedBias``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, RotaryEmbeddingDinoV3, apply_rot_embed_cat
from torch import Tensor, nn

from mambapro.parts import ACTIVATIONS, ADAPTER_POSITIONS, CAMERA_TOKENS

__all__ = [
    "ADAPTER_POSITIONS",
    "CAMERA_TOKENS",
    "Attention",
    "ROPES",
    "QuickGELU",
    "ResidualAttentionBlock",
    "VisionTransformer",
    "make_act",
    "rope_table",
]

#: ``VisionTransformer(rope=...)``: the rotary position embeddings it can apply.
ROPES = ("dinov3",)


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


def rope_table(grid: tuple[int, int], head_dim: int, temperature: float = 100.0) -> Tensor:
    """DINOv3's rotary embedding of a ``rows x cols`` patch grid: ``(rows*cols, 2*head_dim)``,
    ``[sin, cos]`` in the half-rotation layout, computed in fp32 on the CPU by timm's
    ``RotaryEmbeddingDinoV3`` exactly as timm's ``vit_*_dinov3`` models compute it for that grid
    (coordinates 0.5-centred and normalised per axis to [-1, 1], periods ``temperature^(4i/head_dim)``,
    no training-time coordinate augmentation)."""
    if head_dim % 4:
        raise ValueError(f"a 2-D rotary embedding needs a head width divisible by 4, got {head_dim}")
    with torch.device("cpu"):  # also under a meta-device build: the table is data, not a weight
        rope = RotaryEmbeddingDinoV3(head_dim, temperature=temperature, rotate_half=True)
        return rope.get_embed(shape=[int(grid[0]), int(grid[1])]).float()


class Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    Keeping ``in_proj_weight``/``in_proj_bias``/``out_proj`` lets OpenAI checkpoints load
    unchanged, while the computation uses ``F.scaled_dot_product_attention`` on ``(B, L, D)``
    (batch first) without ``nn.MultiheadAttention``'s sequence-first transposes.

    ``qkv_bias=False``: no ``in_proj_bias``; ``mask_k_bias``: its key third is held at zero (DINOv3).
    :meth:`set_rope` gives the tokens ``start .. start + N - 1`` a rotary position embedding.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, mask_k_bias: bool = False) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"width {dim} is not divisible by the number of heads {num_heads}")
        if mask_k_bias and not qkv_bias:
            raise ValueError("mask_k_bias needs qkv_bias")
        self.num_heads = num_heads
        self.mask_k_bias = mask_k_bias
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if qkv_bias else None
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)
        self.rope: Tensor | None
        self.register_buffer("rope", None, persistent=False)
        self.rope_start = 0

    def set_rope(self, table: Tensor | None, start: int) -> None:
        """Rotate the queries and keys of tokens ``start .. start + len(table) - 1`` (the patch
        tokens) by ``table`` (:func:`rope_table`); None removes the rotary embedding. A buffer that
        is not saved: the table is a function of the grid."""
        self.register_buffer("rope", table, persistent=False)
        self.rope_start = int(start)

    def _bias(self) -> Tensor | None:
        b = self.in_proj_bias
        if b is None or not self.mask_k_bias:
            return b
        # The key bias does not change the attention (softmax is shift-invariant per query), so
        # DINOv3 masks it; a zero slice keeps a loaded bias's key third without effect or gradient.
        q, k, v = b.chunk(3)
        return torch.cat([q, torch.zeros_like(k), v])

    def _rotate(self, t: Tensor) -> Tensor:
        # Only the patch tokens: cls and register tokens before them, prompt tokens after them
        # get no rotary embedding (timm's Eva rotates everything after its prefix tokens).
        s, n = self.rope_start, self.rope.shape[0]
        rotated = apply_rot_embed_cat(t[:, :, s : s + n], self.rope, half=True)
        return torch.cat([t[:, :, :s], rotated, t[:, :, s + n :]], dim=2)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: ``(B, L, D)`` -> ``(B, L, D)``."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self._bias())
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if self.rope is not None:
            q, k = self._rotate(q), self._rotate(k)
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

    LayerScale (``layer_scale``, DINOv2/v3) is part of the sub-layer: ``x̄ = x + DP(γ₁ ⊙ MHSA(LN₁(x)))``
    (timm's ``ls1``, before the drop path); a ``behind`` adapter reads that scaled output, a
    ``side`` adapter stays outside the branch and is not scaled.

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
        layer_scale: float | None = None,
        qkv_bias: bool = True,
        mask_k_bias: bool = False,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=ln_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, mask_k_bias=mask_k_bias)
        self.ls_1 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
        self.ln_2 = nn.LayerNorm(dim, eps=ln_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)
        self.ls_2 = LayerScale(dim, layer_scale) if layer_scale is not None else nn.Identity()
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
        x = self._residual(x, self.attn, self.ln_1, self.ls_1, "mhsa")
        return self._residual(x, self.mlp, self.ln_2, self.ls_2, "ffn")

    def _residual(
        self, x: Tensor, sublayer: nn.Module, norm: nn.Module, scale: nn.Module, name: str
    ) -> Tensor:
        """``x + branch(x)``, the adapter behind the sub-layer (inside the dropped branch) or
        beside it (reading the branch's input ``x``) when it is placed at this sub-layer."""
        a, pos = self.adapter, self.adapter_position
        h = scale(sublayer(norm(x)))
        if a is not None and pos == f"behind_{name}":
            h = h + a(h)
        h = self.drop_path(h)
        if a is not None and pos == f"side_{name}":
            h = h + a(x)
        return x + h


class Transformer(nn.Module):
    """Holds the blocks under OpenAI's name ``transformer.resblocks``."""

    def __init__(
        self,
        width: int,
        layers: int,
        heads: int,
        mlp_ratio: float,
        act: str,
        ln_eps: float,
        layer_scale: float | None = None,
        qkv_bias: bool = True,
        mask_k_bias: bool = False,
    ) -> None:
        super().__init__()
        options = {"layer_scale": layer_scale, "qkv_bias": qkv_bias, "mask_k_bias": mask_k_bias}
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_ratio, act, ln_eps, **options) for _ in range(layers)]
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

    The forward is split into :meth:`embed` (tokens ``(B, 1 + R + H*W, D)``, R registers), the
    blocks (``transformer.resblocks``) and :meth:`project` (registers dropped, ``ln_post`` then
    ``proj`` on every token: ``(B, 1 + H*W, C)``), so that the multi-modal backbone can run its
    own loop over the blocks with prompt tokens (appended after the patch tokens).

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
        layer_scale: LayerScale on both residual branches with this initial ``gamma`` (timm's
            ``init_values``; 1e-5 in DINOv2/v3); None: none.
        registers: register (storage) tokens after the cls token (4 in DINOv2-reg4 and DINOv3).
        pos_embed: a learned absolute positional embedding on cls and patch tokens.
        rope: a rotary position embedding on the patch tokens' queries and keys, one of
            :data:`ROPES` (``dinov3``); None: none.
        rope_temperature: the rotary embedding's period base (100 in DINOv3).
        qkv_bias: a bias in the attention's input projection.
        mask_k_bias: hold the key third of that bias at zero.
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
        layer_scale: float | None = None,
        registers: int = 0,
        pos_embed: bool = True,
        rope: str | None = None,
        rope_temperature: float = 100.0,
        qkv_bias: bool = True,
        mask_k_bias: bool = False,
    ) -> None:
        super().__init__()
        h, w = (int(s) for s in img_size)
        if h <= 0 or w <= 0 or h % patch_size or w % patch_size:
            raise ValueError(f"image size {h}x{w} must be positive multiples of the patch size {patch_size}")
        if rope is not None and rope not in ROPES:
            raise ValueError(f"rope '{rope}' is not one of: {', '.join(ROPES)}")
        if registers < 0:
            raise ValueError(f"registers = {registers} must be >= 0")
        self.img_size = (h, w)
        self.patch_size = patch_size
        self.grid = (h // patch_size, w // patch_size)
        self.width = width
        self.output_dim = output_dim
        self.out_dim = output_dim if output_dim is not None else width

        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=patch_bias)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        num_pos = 1 + self.grid[0] * self.grid[1]
        self.positional_embedding = nn.Parameter(scale * torch.randn(num_pos, width)) if pos_embed else None
        self.num_registers = int(registers)
        self.register_tokens = nn.Parameter(scale * torch.randn(registers, width)) if registers else None
        self.ln_pre = nn.LayerNorm(width, eps=ln_eps) if ln_pre else nn.Identity()
        self.transformer = Transformer(
            width,
            layers,
            heads,
            mlp_ratio,
            act,
            ln_eps,
            layer_scale,
            qkv_bias=qkv_bias,
            mask_k_bias=mask_k_bias,
        )
        self.ln_post = nn.LayerNorm(width, eps=ln_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if output_dim is not None else None
        self._init_blocks(layers)
        self.set_drop_path(drop_path)
        self.rope_type = rope
        self.rope_temperature = float(rope_temperature)
        self.head_dim = width // heads
        self.init_non_persistent_buffers()

    def init_non_persistent_buffers(self) -> None:
        """(Re)compute the buffers that are not saved (the rotary table), on the device of the
        weights: after loading weights into an encoder built on the meta device, they are real."""
        if self.rope_type is None:
            return
        table = rope_table(self.grid, self.head_dim, self.rope_temperature).to(self.conv1.weight.device)
        for block in self.transformer.resblocks:
            block.attn.set_rope(table, start=1 + self.num_registers)

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

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patch tokens in :meth:`embed`'s output: cls and the registers."""
        return 1 + self.num_registers

    def embed(self, images: Tensor, offset: Tensor | None = None, offset_tokens: str = "cls") -> Tensor:
        """Images ``(B, 3, H, W)`` -> tokens ``(B, 1 + R + H/p * W/p, D)``: cls, the R register
        tokens (none unless ``registers``), the patch tokens.

        ``offset`` ``(B, D)`` (the camera embedding, SIE) is added, before ``ln_pre``, to:

        - ``offset_tokens="cls"``: the cls token only, before the positional embedding, as the
          release's CLIP (``modeling/clip/model.py`` l. 445-447);
        - ``offset_tokens="all"``: every token, after the positional embedding, as the release's
          ImageNet ViT (``modeling/backbones/vit_pytorch.py`` l. 630,
          ``x + pos_embed + sie_xishu * sie_embed[camera_id]``).

        Register tokens are inserted after both: they get no positional embedding (DINOv2-reg's
        table covers cls and patches only; timm adds it before concatenating its registers) and
        no camera term.
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
        if self.positional_embedding is not None:
            x = x + self.positional_embedding.to(x.dtype)
        if offset is not None and offset_tokens == "all":
            x = x + offset.to(x.dtype).unsqueeze(1)
        if self.register_tokens is not None:
            registers = self.register_tokens.to(x.dtype).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)
        return self.ln_pre(x)

    def project(self, x: Tensor) -> Tensor:
        """Tokens ``(B, 1 + R + N, D)`` -> the registers dropped, ``ln_post`` then ``proj`` on
        every other token: ``(B, 1 + N, C)``."""
        if self.num_registers:
            x = torch.cat([x[:, :1], x[:, self.num_prefix_tokens :]], dim=1)
        return self._head(x)

    def _head(self, x: Tensor) -> Tensor:
        x = self.ln_post(x)
        return x @ self.proj if self.proj is not None else x

    def forward(self, images: Tensor) -> Tensor:
        """Images ``(B, 3, H, W)`` -> projected tokens ``(B, 1 + H*W, C)`` (cls first)."""
        return self.project(self.transformer(self.embed(images)))

    def encode(self, images: Tensor) -> Tensor:
        """The image embedding ``(B, C)``: the projected cls token (open_clip's ``encode_image``)."""
        x = self.transformer(self.embed(images))
        return self._head(x[:, 0])

    def extra_repr(self) -> str:
        extra = f", drop_path={self.drop_path}" if self.drop_path else ""
        if self.num_registers:
            extra += f", registers={self.num_registers}"
        if self.rope_type is not None:
            extra += f", rope={self.rope_type}"
        return f"img_size={self.img_size}, grid={self.grid}, out_dim={self.out_dim}{extra}"
