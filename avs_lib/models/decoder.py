"""SegFormer's all-MLP decoder: project each stage to one width, upsample to the finest stage,
concatenate, fuse with a 1x1 conv, predict; the caller upsamples to the input size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegFormerHead(nn.Module):
    def __init__(self, in_dims: list[int], embed_dim: int, num_outputs: int, dropout: float = 0.1, norm: str = "batch"):
        super().__init__()
        self.projections = nn.ModuleList(nn.Linear(d, embed_dim) for d in in_dims)
        # "batch" is SegFormer's; "group" has no batch statistics, so a CPU DDP run (where
        # SyncBatchNorm is unavailable) computes exactly what one process computes on the global batch
        norm_layer = nn.BatchNorm2d(embed_dim) if norm == "batch" else nn.GroupNorm(8, embed_dim)
        self.fuse = nn.Sequential(nn.Conv2d(embed_dim * len(in_dims), embed_dim, 1, bias=False),
                                  norm_layer, nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(dropout)
        self.predict = nn.Conv2d(embed_dim, num_outputs, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        # features: [B, C_i, H_i, W_i], finest first
        size = features[0].shape[-2:]
        projected = []
        for feature, projection in zip(features, self.projections):
            x = projection(feature.flatten(2).transpose(1, 2))  # [B, N_i, E]
            x = x.transpose(1, 2).reshape(x.shape[0], -1, *feature.shape[-2:])  # [B, E, H_i, W_i]
            projected.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        fused = self.fuse(torch.cat(projected[::-1], dim=1))  # [B, E, H_1, W_1]
        return self.predict(self.dropout(fused))  # [B, outputs, H_1, W_1]
