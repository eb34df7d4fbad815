"""DDESeg's Dynamic Elimination Module (Eq. 13-17) and the alternative schemes of Table 4.

Given K audio tokens A [B, K, d] and a stage's visual features V [B, N, d] (N = H*W):

* Eq. 13: soft assignment O [B, N, Kc] of every visual feature to Kc learnable visual centres C_v
  with a Gumbel-softmax at temperature tau. In eval mode no Gumbel noise is drawn, so O is the
  plain softmax of (V C_v^T) / tau and evaluation is deterministic.
* Eq. 14 as printed (C_v = O C_v) does not type-check as an update of the centres: O C_v is
  [N, d], one reconstruction per pixel. The workbench's default (``centre_update="assigned_mean"``)
  reads it as centres refined by the visual features assigned to them,
  C_v'[k] = sum_n O[n, k] V[n] / sum_n O[n, k]. ``centre_update="printed"`` uses O C_v literally,
  so the cross-attention of Eq. 15 attends over N per-pixel reconstructions instead of Kc centres.
* Eq. 15: F_av = multi-head cross-attention, audio tokens as queries, centres as keys and values.
* Eq. 16: S = sigmoid(MLP(F_av)) in [0, 1]^K.
* Eq. 17: A_hat = S * A.

Table 4's schemes (``scheme``): ``"none"`` (tokens pass unchanged), ``"fc"`` (S = sigmoid(FC(A))),
``"ca_fc"`` (cross-attention over all N visual features, then FC + sigmoid), ``"softkmeans_ca_fc"``
(soft assignment without Gumbel noise), ``"gumbel_ca_fc"`` (the paper's full module, default).

``score="softmax"`` follows the authors' released code: the scores are a softmax over the K
tokens (they sum to 1, and the released model sums the scaled tokens into one pooled token).
Here the scaled tokens are kept separate, so the fusion blocks still see K tokens; their sum is
that pooled token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SCHEMES = ("none", "fc", "ca_fc", "softkmeans_ca_fc", "gumbel_ca_fc")


@dataclass
class EliminationOutput:
    tokens: torch.Tensor  # [B, K, d]  Eq. 17
    scores: torch.Tensor | None  # [B, K]  Eq. 16 (None for scheme "none")
    assignment: torch.Tensor | None  # [B, N, Kc]  Eq. 13 (None when the scheme does no clustering)


def gumbel_soft_assignment(logits: torch.Tensor, tau: float, noise: bool,
                           generator: torch.Generator | None = None) -> torch.Tensor:
    """Eq. 13: softmax((logits + g) / tau) over the last axis, g ~ Gumbel(0, 1) when ``noise``."""
    if noise:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        gumbel = -torch.log((-torch.log(uniform.clamp_min(1e-20))).clamp_min(1e-20))
        logits = logits + gumbel
    return torch.softmax(logits / tau, dim=-1)


class DynamicElimination(nn.Module):
    def __init__(self, dim: int, num_centres: int = 5, num_heads: int = 1, tau: float = 1.0,
                 scheme: str = "gumbel_ca_fc", centre_update: str = "assigned_mean", score: str = "sigmoid"):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"elimination scheme must be one of {SCHEMES}, got {scheme!r}")
        if centre_update not in ("assigned_mean", "printed"):
            raise ValueError(f"centre_update must be 'assigned_mean' or 'printed', got {centre_update!r}")
        if score not in ("sigmoid", "softmax"):
            raise ValueError(f"score must be 'sigmoid' or 'softmax', got {score!r}")
        self.scheme, self.tau, self.centre_update, self.score = scheme, tau, centre_update, score
        if scheme == "none":
            return
        if scheme in ("softkmeans_ca_fc", "gumbel_ca_fc"):
            self.centres = nn.Parameter(torch.randn(num_centres, dim) * dim ** -0.5)  # C_v [Kc, d]
        if scheme != "fc":
            self.norm_audio = nn.LayerNorm(dim)
            self.norm_visual = nn.LayerNorm(dim)
            self.cross_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)  # Eq. 15
        self.score_mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))  # Eq. 16

    def forward(self, tokens: torch.Tensor, visual: torch.Tensor) -> EliminationOutput:
        # tokens [B, K, d], visual [B, N, d]
        if self.scheme == "none":
            return EliminationOutput(tokens, None, None)
        assignment = None
        if self.scheme == "fc":
            interacted = tokens
        else:
            keys = self.norm_visual(visual)  # [B, N, d]
            if self.scheme in ("softkmeans_ca_fc", "gumbel_ca_fc"):
                logits = keys @ self.centres.t()  # V C_v^T   [B, N, Kc]
                noise = self.scheme == "gumbel_ca_fc" and self.training
                assignment = gumbel_soft_assignment(logits, self.tau, noise)  # Eq. 13
                if self.centre_update == "assigned_mean":  # Eq. 14, the workbench's reading
                    mass = assignment.sum(dim=1).clamp_min(1e-6)  # [B, Kc]
                    keys = torch.einsum("bnk,bnd->bkd", assignment, keys) / mass[..., None]  # [B, Kc, d]
                else:  # Eq. 14 as printed: O C_v
                    keys = assignment @ self.centres  # [B, N, d]
            interacted, _ = self.cross_attention(self.norm_audio(tokens), keys, keys)  # Eq. 15   [B, K, d]
        logits = self.score_mlp(interacted).squeeze(-1)  # [B, K]
        scores = torch.sigmoid(logits) if self.score == "sigmoid" else torch.softmax(logits, dim=-1)  # Eq. 16
        return EliminationOutput(scores[..., None] * tokens, scores, assignment)  # Eq. 17
