"""SegFormer's all-MLP decoder: project each stage to one width, upsample to the finest stage,
concatenate, fuse with a 1x1 conv, predict; the caller upsamples to the input size.

``fine_dim`` adds a stride-2 refinement (not SegFormer's, not the paper's; ``DDESegConfig.decoder_stride=2``):
the fused stride-4 map is upsampled to a stride-2 map of the backbone (EfficientNet-Lite0's first
block, before any fusion), the two are concatenated, mixed by a 1x1 conv and a depthwise 3x3 conv,
and the logits are predicted there. ``refine_blocks`` residual blocks (``RefineBlock``: a depthwise
3x3 at dilation 1, 2, 4, ..., then a 1x1) may follow, to draw an outline from a wider view of the
stride-2 map (``DDESegConfig.decoder_refine_blocks``, default 0). At 96 px a stride-4 decoder
cannot draw an outline finer than 4 pixels: the truth itself, seen at stride 4, scores J&F 0.850 on
the default world's ms3 test masks, and 0.936 at stride 2 (docs/findings.md, "The window"). The fine
map is visual only: it places edges, the fused maps say which objects sound.

``pixel_dim`` adds a stride-1 stage after that refinement (``DDESegConfig.decoder_stride=1``; not
SegFormer's, not the paper's): ``PixelRefine`` reads the frame's own pixels through two 3x3 convs,
upsamples the stride-2 features onto them, mixes the two and predicts at the frame's resolution. At
stride 2 the every-lever ceiling still draws 82 % of its wrong pixels within 2 px of the true
outlines, edges placed a pixel or two off (figures/decoder_refine/); the cut-outs' edges are sharp in
the frame itself, so this stage lets the frame's colours place them."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PIXEL_DIM = 16  # channels of the stride-1 stage (DDESegConfig.decoder_stride=1)


def _norm(channels: int, norm: str) -> nn.Module:
    # "batch" is SegFormer's; "group" has no batch statistics, so a CPU DDP run (where
    # SyncBatchNorm is unavailable) computes exactly what one process computes on the global batch
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.GroupNorm(min(8, channels), channels)


class RefineBlock(nn.Module):
    """x + (depthwise 3x3 at ``dilation``, norm, ReLU, 1x1, norm)(x), then ReLU: each block widens what
    one logit sees by ``2 * dilation`` pixels of the stride-2 map for about ``dim**2`` MACs a pixel."""

    def __init__(self, dim: int, dilation: int, norm: str):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=dilation, dilation=dilation, groups=dim, bias=False), _norm(dim, norm),
            nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1, bias=False), _norm(dim, norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))  # [B, dim, H, W]


class PixelRefine(nn.Module):
    """Stride 1: an image stem (two 3x3 convs on the normalised frame, 5x5 pixels of view) beside the
    coarser features upsampled bilinearly, mixed by a 1x1 conv and a 3x3 conv at ``pixel_dim``
    channels. About ``pixel_dim * (3 * 9 + 2 * 9 * pixel_dim + in_dim + pixel_dim)`` MACs a pixel."""

    def __init__(self, in_dim: int, pixel_dim: int, norm: str):
        super().__init__()
        self.image_stem = nn.Sequential(
            nn.Conv2d(3, pixel_dim, 3, padding=1, bias=False), _norm(pixel_dim, norm), nn.ReLU(inplace=True),
            nn.Conv2d(pixel_dim, pixel_dim, 3, padding=1, bias=False), _norm(pixel_dim, norm), nn.ReLU(inplace=True))
        self.mix = nn.Sequential(
            nn.Conv2d(in_dim + pixel_dim, pixel_dim, 1, bias=False), _norm(pixel_dim, norm), nn.ReLU(inplace=True),
            nn.Conv2d(pixel_dim, pixel_dim, 3, padding=1, bias=False), _norm(pixel_dim, norm), nn.ReLU(inplace=True))

    def forward(self, coarse: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        # coarse [B, in_dim, h, w], image [B, 3, H, W]
        up = F.interpolate(coarse, size=image.shape[-2:], mode="bilinear", align_corners=False)  # [B, in_dim, H, W]
        return self.mix(torch.cat([up, self.image_stem(image)], dim=1))  # [B, pixel_dim, H, W]


class SegFormerHead(nn.Module):
    def __init__(self, in_dims: list[int], embed_dim: int, num_outputs: int, dropout: float = 0.1, norm: str = "batch",
                 fine_dim: int | None = None, refine_dim: int = 32, refine_blocks: int = 0,
                 pixel_dim: int | None = None):
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(d, embed_dim) for d in in_dims)
        self.fuse = nn.Sequential(nn.Conv2d(embed_dim * len(in_dims), embed_dim, 1, bias=False),
                                  _norm(embed_dim, norm), nn.ReLU(inplace=True))
        if fine_dim:
            self.fine_projection = nn.Sequential(nn.Conv2d(fine_dim, fine_dim, 1, bias=False), _norm(fine_dim, norm),
                                                 nn.ReLU(inplace=True))
            self.refine = nn.Sequential(
                nn.Conv2d(embed_dim + fine_dim, refine_dim, 1, bias=False), _norm(refine_dim, norm), nn.ReLU(inplace=True),
                nn.Conv2d(refine_dim, refine_dim, 3, padding=1, groups=refine_dim, bias=False), _norm(refine_dim, norm),
                nn.ReLU(inplace=True))
        # None without blocks, so that the first refinement's checkpoints load unchanged
        self.refine_blocks = (nn.Sequential(*(RefineBlock(refine_dim, 2 ** i, norm) for i in range(refine_blocks)))
                              if fine_dim and refine_blocks else None)
        if pixel_dim and not fine_dim:
            raise ValueError("the stride-1 stage (pixel_dim) follows the stride-2 refinement: give fine_dim too")
        self.pixel_refine = PixelRefine(refine_dim, pixel_dim, norm) if pixel_dim else None
        self.fine_dim = fine_dim
        self.dropout = nn.Dropout2d(dropout)
        self.predict = nn.Conv2d(pixel_dim or (refine_dim if fine_dim else embed_dim), num_outputs, 1)

    def forward(self, features: list[torch.Tensor], fine: torch.Tensor | None = None,
                image: torch.Tensor | None = None) -> torch.Tensor:
        # features: [B, C_i, H_i, W_i], finest first; fine: [B, fine_dim, 2 H_1, 2 W_1] when fine_dim is set;
        # image: the normalised frame [B, 3, 4 H_1, 4 W_1] when pixel_dim is set
        if (fine is None) != (self.fine_dim is None):
            raise ValueError("this decoder was built " + ("with" if self.fine_dim else "without")
                             + " a stride-2 refinement; pass the fine map exactly when it has one")
        if (image is None) != (self.pixel_refine is None):
            raise ValueError("this decoder was built " + ("with" if self.pixel_refine is not None else "without")
                             + " a stride-1 stage; pass the frame exactly when it has one")
        size = features[0].shape[-2:]
        projected = []
        for feature, projection in zip(features, self.projections):
            x = projection(feature.flatten(2).transpose(1, 2))  # [B, N_i, E]
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *feature.shape[-2:])  # [B, E, H_i, W_i]
            projected.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        fused = self.fuse(torch.cat(projected[::-1], dim=1))  # [B, E, H_1, W_1]
        if fine is not None:
            up = F.interpolate(fused, size=fine.shape[-2:], mode="bilinear", align_corners=False)  # [B, E, 2 H_1, 2 W_1]
            fused = self.refine(torch.cat([up, self.fine_projection(fine)], dim=1))  # [B, refine_dim, 2 H_1, 2 W_1]
            if self.refine_blocks is not None:
                fused = self.refine_blocks(fused)  # [B, refine_dim, 2 H_1, 2 W_1]
        if self.pixel_refine is not None:
            fused = self.pixel_refine(fused, image)  # [B, pixel_dim, H, W]
        # [B, outputs, H_1, W_1]; 2 H_1, 2 W_1 with the stride-2 refinement; H, W with the stride-1 stage
        return self.predict(self.dropout(fused))
