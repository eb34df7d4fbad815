"""A Mix Transformer (MiT / PVT-v2) encoder whose blocks are DDESeg's feature-fusion blocks (Fig. 4).

Each stage: an overlapping patch embedding (conv + LayerNorm), then ``depth`` blocks, then a
LayerNorm. A fusion block is, in order (Fig. 4, Sec. 3.3):

1. cross-attention between the visual tokens and the derived audio tokens,
2. efficient self-attention whose keys and values come from a strided "spatial-reduction"
   convolution (MiT's sr), and
3. a Mix-FFN (linear, 3x3 depthwise conv, GELU, linear),

each with a pre-norm and a residual. Sec. 3.3 says the audio tokens are the queries and the visual
features the keys and values; taken literally the block would output K audio tokens and there would
be no visual map left for the spatial-reduction conv and the next stage. The workbench therefore
uses the visual tokens as queries and the audio tokens as keys and values, so audio information is
written into the visual map (written down in the README's notes).

Parameter names follow the official MiT and PVT-v2 code (``patch_embed1.proj``, ``block1.0.attn.q``,
``block1.0.mlp.dwconv.dwconv``, ``norm1``...), so an ``mit_b5.pth`` or ``pvt_v2_b5.pth`` state dict
loads into the backbone part with no renaming; the fusion parameters (``cross_norm``,
``cross_attn``) are new and reported as such by ``load_backbone_state_dict``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MiTConfig:
    dims: tuple[int, ...] = (64, 128, 320, 512)
    heads: tuple[int, ...] = (1, 2, 5, 8)
    depths: tuple[int, ...] = (3, 6, 40, 3)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    first_stride: int = 4  # MiT's 7x7 stride-4 stem; DDESeg's released code uses 2
    fusion: bool = True  # False: a plain MiT (no audio cross-attention)


MIT_SIZES = {
    "tiny": MiTConfig(dims=(16, 32, 64, 128), heads=(1, 1, 2, 4), depths=(1, 1, 1, 1)),
    "b0": MiTConfig(dims=(32, 64, 160, 256), heads=(1, 2, 5, 8), depths=(2, 2, 2, 2)),
    "b5": MiTConfig(),
}


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, kernel: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor):
        x = self.proj(x)  # [B, C, H, W]
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w  # [B, H*W, C]


class EfficientSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.heads, c // self.heads).transpose(1, 2)  # [B, h, N, c/h]
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
            kv_in = self.norm(reduced)  # [B, N/sr^2, C]
        else:
            kv_in = x
        kv = self.kv(kv_in).reshape(b, -1, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [B, h, N, c/h]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = _DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), h, w)))


class _DepthwiseConv(nn.Module):
    # Wrapped so that the parameter is called mlp.dwconv.dwconv.weight, as in the official code.
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class AudioCrossAttention(nn.Module):
    """Visual tokens [B, N, C] attend to audio tokens [B, K, C]; used by the fusion blocks."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, weights = self.attn(visual, audio, audio, need_weights=True)
        return out, weights  # [B, N, C], [B, N, K]


class FusionBlock(nn.Module):
    """Fig. 4: audio cross-attention, spatial-reduction self-attention, Mix-FFN."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int = 4, fusion: bool = True):
        super().__init__()
        self.fusion = fusion
        if fusion:
            self.cross_norm = nn.LayerNorm(dim)
            self.cross_attn = AudioCrossAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int, audio: torch.Tensor | None = None):
        attention = None
        if self.fusion and audio is not None:
            fused, attention = self.cross_attn(self.cross_norm(x), audio)
            x = x + fused
        x = x + self.attn(self.norm1(x), h, w)
        x = x + self.mlp(self.norm2(x), h, w)
        return x, attention  # [B, N, C], [B, N, K] or None


class MiTEncoder(nn.Module):
    """Four stages, each a patch embedding (``stage``) then fusion blocks and a norm (``run_blocks``);
    DDESeg calls the two in turn so that elimination can act between them (Eq. 1)."""

    def __init__(self, config: MiTConfig, in_channels: int = 3):
        super().__init__()
        self.config = config
        self.dims = list(config.dims)
        previous = in_channels
        for i, (dim, heads, depth, sr) in enumerate(zip(config.dims, config.heads, config.depths, config.sr_ratios), 1):
            kernel, stride = (7, config.first_stride) if i == 1 else (3, 2)
            setattr(self, f"patch_embed{i}", OverlapPatchEmbed(previous, dim, kernel, stride))
            setattr(self, f"block{i}", nn.ModuleList(
                FusionBlock(dim, heads, sr, config.mlp_ratio, config.fusion) for _ in range(depth)))
            setattr(self, f"norm{i}", nn.LayerNorm(dim))
            previous = dim

    @property
    def strides(self) -> list[int]:
        return [self.config.first_stride * 2 ** i for i in range(4)]

    def stage(self, i: int, x: torch.Tensor):
        """Patch-embed the input of stage i (1-based): returns tokens [B, N, C], h, w."""
        return getattr(self, f"patch_embed{i}")(x)

    def run_blocks(self, i: int, tokens: torch.Tensor, h: int, w: int, audio: torch.Tensor | None):
        attentions = []
        for block in getattr(self, f"block{i}"):
            tokens, attention = block(tokens, h, w, audio)
            attentions.append(attention)
        tokens = getattr(self, f"norm{i}")(tokens)
        b, n, c = tokens.shape
        return tokens.transpose(1, 2).reshape(b, c, h, w), attentions  # [B, C, H, W]

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Plain backbone pass (no audio): the four feature maps."""
        features, x = [], image
        for i in range(1, 5):
            tokens, h, w = self.stage(i, x)
            x, _ = self.run_blocks(i, tokens, h, w, None)
            features.append(x)
        return features


# ----------------------------------------------------------------------------- checkpoint loading
@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # expected by the model, absent from the file
    new_in_model: list[str] = field(default_factory=list)  # fusion parameters no backbone file has
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    shape_mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.shape_mismatches)

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors; {len(self.new_in_model)} fusion tensors are new "
                 f"(trained from scratch)"]
        for name, keys in (("missing from the file", self.missing), ("unused from the file", self.unexpected),
                           ("shape mismatches", self.shape_mismatches)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                lines.append(f"{name}: {shown}")
        return "\n".join(lines)


_NEW_PARAMETER_MARKERS = (".cross_norm.", ".cross_attn.")


def read_state_dict(source) -> dict[str, torch.Tensor]:
    """A state dict from a path or a dict, unwrapping the usual ``state_dict``/``model`` nesting."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist; download it (see the README, "
                                    "'Pretrained weights') and pass its local path")
        source = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model", "module"):
        if isinstance(source, dict) and key in source and isinstance(source[key], dict):
            source = source[key]
    return dict(source)


def remap_backbone_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the prefixes training frameworks add (``module.``, ``backbone.``, ``encoder.``)."""
    remapped = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "backbone.", "encoder."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        remapped[key] = value
    return remapped


def load_backbone_state_dict(encoder: nn.Module, source, strict: bool = True,
                             ignore: tuple[str, ...] = ("head.",)) -> LoadReport:
    """Load MiT / PVT-v2 weights into ``encoder``; report what matched and what did not.

    ``strict``: raise when a backbone tensor is missing from the file or has the wrong shape (the
    fusion tensors are new by design and never count as missing). Classification-head tensors
    (``ignore``) are dropped silently; any other unused tensor is reported.
    """
    incoming = remap_backbone_keys(read_state_dict(source))
    own = encoder.state_dict()
    report, to_load = LoadReport(), {}
    for key, value in own.items():
        if key not in incoming:
            (report.new_in_model if any(m in f".{key}" for m in _NEW_PARAMETER_MARKERS) else report.missing).append(key)
        elif tuple(incoming[key].shape) != tuple(value.shape):
            report.shape_mismatches.append(f"{key}: file {tuple(incoming[key].shape)} vs model {tuple(value.shape)}")
        else:
            to_load[key] = incoming[key]
            report.loaded.append(key)
    report.unexpected = [k for k in incoming if k not in own and not k.startswith(ignore)]
    if strict and not report.ok:
        raise ValueError(f"backbone checkpoint does not match the model:\n{report}")
    encoder.load_state_dict(to_load, strict=False)
    return report
