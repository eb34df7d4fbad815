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
uses the visual tokens as queries and the audio tokens as keys and values by default, so audio
information is written into the visual map (written down in the README's notes).
``query="audio"`` (DDESeg's ``fusion_query``) keeps the printed direction instead and writes each
token back into the cells its attention chose (``AudioCrossAttention``).

Parameter names follow the official MiT and PVT-v2 code (``patch_embed1.proj``, ``block1.0.attn.q``,
``block1.0.mlp.dwconv.dwconv``, ``norm1``...), so an ``mit_b5.pth`` or ``pvt_v2_b5.pth`` state dict
loads into the backbone part with no renaming; the fusion parameters (``cross_norm``,
``cross_attn``) are new and reported as such by ``load_backbone_state_dict``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import HookPoint, attend, head_logits
from .weights import LoadReport, load_weights, read_state_dict  # noqa: F401 (re-exported)


@dataclass
class MiTConfig:
    dims: tuple[int, ...] = (64, 128, 320, 512)
    heads: tuple[int, ...] = (1, 2, 5, 8)
    depths: tuple[int, ...] = (3, 6, 40, 3)
    sr_ratios: tuple[int, ...] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    first_stride: int = 4  # MiT's 7x7 stride-4 stem; DDESeg's released code uses 2
    fusion: bool = True  # False: a plain MiT (no audio cross-attention)
    null_key: bool = False  # fusion attention with a null key (AudioCrossAttention)
    query: str = "visual"  # which side queries in the fusion attention (AudioCrossAttention)


MIT_SIZES = {
    "tiny": MiTConfig(dims=(16, 32, 64, 128), heads=(1, 1, 2, 4), depths=(1, 1, 1, 1)),
    "b0": MiTConfig(dims=(32, 64, 160, 256), heads=(1, 2, 5, 8), depths=(2, 2, 2, 2)),
    "b5": MiTConfig(),
}


def smallest_input_size(config: MiTConfig) -> int:
    """The smallest square image this backbone takes: each stage's spatial-reduction convolution
    (kernel = stride = ``sr_ratio``) needs a feature map at least ``sr_ratio`` pixels wide, after the
    stem (7x7, ``first_stride``) and the 3x3 stride-2 patch embeddings that precede it."""
    size = 1
    while True:
        side, fits = size, True
        for i, sr in enumerate(config.sr_ratios):
            kernel, stride = (7, config.first_stride) if i == 0 else (3, 2)
            side = (side + 2 * (kernel // 2) - kernel) // stride + 1
            fits = fits and side >= sr
        if fits:
            return size
        size += 1


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


# which side asks in the fusion cross-attention (AudioCrossAttention, DDESegConfig.fusion_query)
FUSION_QUERIES = ("visual", "audio")


class AudioCrossAttention(nn.Module):
    """Cross-attention between the visual tokens [B, N, C] and the audio tokens [B, K, C]; it writes
    audio information into the visual map (the fusion blocks' first step).

    ``query`` says which side asks (DDESeg's ``fusion_query``; the module docstring says why the
    default is not the printed one):

    * ``"visual"`` (default): each visual token attends to the audio tokens (softmax over the K
      tokens) and takes their weighted values. Every cell has to spend its attention on the tokens.
    * ``"audio"``: Sec. 3.3 as printed, "derived audio representations serving as queries and visual
      features as keys": each audio token attends over the N cells (softmax over the frame), so each
      token has to choose *where* to look. Its map P [K, N] then writes the token's value back into
      the cells it chose, with weight W = 1 - exp(-N P) in [0, 1): about 0.63 for a map spread evenly
      over the frame, near 1 on a map concentrated on a region and near 0 elsewhere. The visual map
      is what the next step needs (a literal reading would output K audio tokens and no map).

    Two additions the paper does not have (``avs_lib.models.ddeseg``, ``elimination_apply``):

    * ``bias`` [B, K]: log S_k, Eq. 16's score. With visual queries it is added to every visual
      token's logit for audio token k, so a token with S_k -> 0 leaves the softmax (weight -> 0)
      instead of entering it as a zeroed vector that the key/value biases turn into a constant. With
      audio queries a per-token logit offset would cancel in the softmax over the frame, so the
      token's write-back weights are multiplied by S_k = exp(bias) instead.
    * ``null_key=True``: one learned key (per head, starting at 0) whose value is 0. With visual
      queries a cell can give its attention to no audio token at all (softmax over K + 1); with
      audio queries it is a null *cell*, so a token can look nowhere (softmax over N + 1).

    The pattern hook (``hook_pattern``, [B, heads, N, K]) holds the weights the output is computed
    from: the softmax over the tokens (visual queries) or the write-back weights W (audio queries),
    so that a hook that replaces it changes the output in both readings. With visual queries and
    neither addition, the layer is the ``nn.MultiheadAttention`` call it always was, with the same
    parameter names, so earlier state dicts load unchanged."""

    def __init__(self, dim: int, heads: int, null_key: bool = False, query: str = "visual"):
        super().__init__()
        if query not in FUSION_QUERIES:
            raise ValueError(f"query={query!r}: choose 'visual' (cells attend to tokens) or 'audio' (tokens attend to cells)")
        self.query = query
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        if null_key:
            self.null_key = nn.Parameter(torch.zeros(dim))  # in the projected key space, split over heads
        else:
            self.null_key = None
        self.hook_pattern = HookPoint()  # [B, heads, N, K]

    def forward(self, visual: torch.Tensor, audio: torch.Tensor,
                bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # [B, N, C], [B, N, K] (the head mean, as nn.MultiheadAttention returns it)
        if self.query == "audio":
            return self._audio_queries(visual, audio, bias)
        return attend(self.attn, visual, audio, audio, self.hook_pattern, need_weights=True, bias=bias,
                      null_key=self.null_key)

    def _audio_queries(self, visual: torch.Tensor, audio: torch.Tensor,
                       bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = visual.shape
        # the audio tokens ask, the cells answer (the null key is a cell that is nowhere); the values
        # are the tokens' own, written into the cells: logits [B, h, K, N+1], v [B, h, K, c/h]
        logits, v = head_logits(self.attn, audio, visual, audio, null_key=self.null_key)
        where = torch.softmax(logits, dim=-1)[..., :n]  # [B, h, K, N]: each token's map over the frame
        weights = -torch.expm1(-n * where)  # W = 1 - exp(-N P)
        if bias is not None:
            weights = weights * bias.exp()[:, None, :, None].to(weights.dtype)  # S_k
        weights = self.hook_pattern(weights.transpose(-2, -1))  # [B, h, N, K]
        out = self.attn.out_proj((weights @ v).transpose(1, 2).reshape(b, n, c))
        return out, weights.mean(1)


class FusionBlock(nn.Module):
    """Fig. 4: audio cross-attention, spatial-reduction self-attention, Mix-FFN."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int = 4, fusion: bool = True,
                 null_key: bool = False, query: str = "visual"):
        super().__init__()
        self.fusion = fusion
        if fusion:
            self.cross_norm = nn.LayerNorm(dim)
            self.cross_attn = AudioCrossAttention(dim, heads, null_key, query)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = EfficientSelfAttention(dim, heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x: torch.Tensor, h: int, w: int, audio: torch.Tensor | None = None,
                audio_bias: torch.Tensor | None = None):
        """``audio_bias`` [B, K]: log-bias on each audio token's attention logit (see AudioCrossAttention)."""
        attention = None
        if self.fusion and audio is not None:
            fused, attention = self.cross_attn(self.cross_norm(x), audio, audio_bias)
            x = x + fused
        x = x + self.attn(self.norm1(x), h, w)
        x = x + self.mlp(self.norm2(x), h, w)
        return x, attention  # [B, N, C], [B, N, K] or None

    def zero_residual_outputs(self, audio: bool = True) -> None:
        """Zero the last layer of each residual branch (the audio cross-attention's too unless
        ``audio=False``), so that the block starts as the identity (on a silent input)."""
        last = [self.attn.proj, self.mlp.fc2] + ([self.cross_attn.attn.out_proj] if self.fusion and audio else [])
        for layer in last:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)


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
                FusionBlock(dim, heads, sr, config.mlp_ratio, config.fusion, config.null_key, config.query)
                for _ in range(depth)))
            setattr(self, f"norm{i}", nn.LayerNorm(dim))
            previous = dim

    @property
    def strides(self) -> list[int]:
        return [self.config.first_stride * 2 ** i for i in range(4)]

    def stage(self, i: int, x: torch.Tensor):
        """Patch-embed the input of stage i (1-based): returns tokens [B, N, C], h, w."""
        return getattr(self, f"patch_embed{i}")(x)

    def run_blocks(self, i: int, tokens: torch.Tensor, h: int, w: int, audio: torch.Tensor | None,
                   audio_bias: torch.Tensor | None = None):
        attentions = []
        for block in getattr(self, f"block{i}"):
            tokens, attention = block(tokens, h, w, audio, audio_bias)
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
MIT_PREFIXES = ("module.", "backbone.", "encoder.")  # what training frameworks put before MiT's names
_NEW_PARAMETER_MARKERS = (".cross_norm.", ".cross_attn.")  # the fusion blocks: no backbone file has them


def load_backbone_state_dict(encoder: nn.Module, source, strict: bool = True,
                             ignore: tuple[str, ...] = ("head.",)) -> LoadReport:
    """Load MiT / PVT-v2 weights (official key names) into ``encoder`` through ``load_weights``;
    return its report. The fusion tensors are new by design and never count as missing; the
    classification head (``ignore``) is dropped; any other unused tensor is reported."""
    return load_weights(encoder, source, prefixes=MIT_PREFIXES, new_markers=_NEW_PARAMETER_MARKERS, drop=ignore,
                        strict=strict, what="MiT backbone checkpoint")
