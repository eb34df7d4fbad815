"""DDESeg's Dynamic Elimination Module (Eq. 13-17), the alternative schemes of Table 4, and the
authors' released module (``ReleasedAligner``).

Given K audio tokens A [B, K, d] and a stage's visual features V [B, N, d] (N = H*W):

* Eq. 13: soft assignment O [B, N, Kc] of every visual feature to Kc learnable visual centres C_v
  with a Gumbel-softmax at temperature tau, softmax over the centres. In eval mode no Gumbel noise
  is drawn, so O is the plain softmax of (V C_v^T) / tau and evaluation is deterministic.
  ``hard=True`` is the straight-through Gumbel-softmax: the forward pass uses the one-hot argmax,
  the gradient is the soft one's (in eval: the one-hot argmax of V C_v^T).
* Eq. 14 as printed, C_v = O C_v, does not type-check as an update of the centres: O C_v is
  [N, d], one reconstruction per pixel. ``centre_update="printed"`` uses it literally, as the
  authors' code does: the cross-attention of Eq. 15 attends over the N per-pixel reconstructions,
  so what the frame contributes is how many pixels pick each centre. ``"assigned_mean"`` reads it as
  centres refined by the visual features assigned to them, C_v'[k] = sum_n O[n,k] V[n] / sum_n O[n,k].
* Centre initialisation (``centre_init``), where the paper is silent: ``"unit"`` draws C_v from
  randn, as the authors' code does, so V C_v^T has a spread of about sqrt(d) per logit and the
  assignment is sharp at tau = 1; ``"scaled"`` draws randn * d^-0.5 (logits of spread about 1):
  at tau = 1 every pixel is spread over all centres, and under ``assigned_mean`` every centre
  lands near the frame's mean feature.
* Eq. 15: F_av = multi-head cross-attention, audio tokens as queries, centres as keys and values.
  ``residual=True`` (the paper is silent) adds the token itself, F_av = A + MCA(A, C_v). Without
  it, a token enters F_av only through its attention weights; when the keys are alike, every
  token's F_av is the same convex mix of values and so is its score.
* Eq. 16: S = sigmoid(MLP(F_av)) in [0, 1]^K (``score="softmax"``: a softmax over the K tokens).
* Eq. 17: A_hat = S * A. The module returns both the scaled tokens and log S (``log_scores``), so
  that the caller can instead remove a token from fusion with log S as a bias on its attention
  logit (``avs_lib.models.ddeseg``, ``elimination_apply="log_bias"``).

Table 4's schemes (``scheme``): ``"none"`` (tokens pass unchanged), ``"fc"`` (S = sigmoid(FC(A))),
``"ca_fc"`` (cross-attention over all N visual features, then FC + sigmoid), ``"softkmeans_ca_fc"``
(soft assignment without Gumbel noise), ``"gumbel_ca_fc"`` (the paper's full module, default).

``ReleasedAligner`` is what the authors' code runs at each of the four stages instead (the README's
"Notes and choices", from the authors' released code): the printed Eq. 14 reconstruction with randn centres and a
soft Gumbel-softmax at tau 1; audio-query cross-attention over the reconstruction (q/k/v without
bias, no output projection); a Linear(C, 1) score per token with a softmax over the K tokens; the
K tokens pooled into one with those weights; and the visual tokens gated by a sigmoid attention to
the pooled token, plus a residual.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import HookPoint, attend

SCHEMES = ("none", "fc", "ca_fc", "softkmeans_ca_fc", "gumbel_ca_fc")
CENTRE_UPDATES = ("assigned_mean", "printed")
CENTRE_INITS = ("unit", "scaled")
SCORES = ("sigmoid", "softmax")


@dataclass
class EliminationOutput:
    tokens: torch.Tensor  # [B, K, d]  Eq. 17 (the released aligner: the tokens unchanged)
    scores: torch.Tensor | None  # [B, K]  Eq. 16 (None for scheme "none")
    assignment: torch.Tensor | None  # [B, N, Kc]  Eq. 13 (None when the scheme does no clustering)
    log_scores: torch.Tensor | None = None  # [B, K]  log S, computed stably (log-sigmoid / log-softmax)
    gate: torch.Tensor | None = None  # [B, N]  released aligner: sigmoid gate of each visual token (head mean)


def gumbel_soft_assignment(logits: torch.Tensor, tau: float, noise: bool,
                           generator: torch.Generator | None = None, hard: bool = False) -> torch.Tensor:
    """Eq. 13: softmax((logits + g) / tau) over the last axis, g ~ Gumbel(0, 1) when ``noise``.

    ``hard``: straight-through, the forward value is the one-hot argmax of the soft assignment and
    the gradient is the soft assignment's."""
    if noise:
        uniform = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        gumbel = -torch.log((-torch.log(uniform.clamp_min(1e-20))).clamp_min(1e-20))
        logits = logits + gumbel
    soft = torch.softmax(logits / tau, dim=-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return one_hot + soft - soft.detach()


def _scores(logits: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, log S) over the token axis: sigmoid per token, or softmax across the K tokens."""
    if kind == "sigmoid":
        return torch.sigmoid(logits), F.logsigmoid(logits)
    return torch.softmax(logits, dim=-1), torch.log_softmax(logits, dim=-1)


class DynamicElimination(nn.Module):
    """Eq. 13-17 (the paper's reading; every choice the paper leaves open is an argument, see the
    module docstring). Input tokens [B, K, d] and visual features [B, N, d]. The module's defaults
    are the workbench's first reading (centres that collapse to the frame mean, no residual);
    ``DDESegConfig``'s defaults are the reading that can choose between tokens."""

    def __init__(self, dim: int, num_centres: int = 5, num_heads: int = 1, tau: float = 1.0,
                 scheme: str = "gumbel_ca_fc", centre_update: str = "assigned_mean", score: str = "sigmoid",
                 centre_init: str = "scaled", hard: bool = False, residual: bool = False):
        super().__init__()
        for name, value, allowed in (("scheme", scheme, SCHEMES), ("centre_update", centre_update, CENTRE_UPDATES),
                                     ("score", score, SCORES), ("centre_init", centre_init, CENTRE_INITS)):
            if value not in allowed:
                raise ValueError(f"elimination {name} must be one of {allowed}, got {value!r}")
        self.scheme, self.tau, self.centre_update, self.score = scheme, tau, centre_update, score
        self.hard, self.residual = hard, residual
        if scheme == "none":
            return
        if scheme in ("softkmeans_ca_fc", "gumbel_ca_fc"):
            scale = 1.0 if centre_init == "unit" else dim ** -0.5
            self.centres = nn.Parameter(torch.randn(num_centres, dim) * scale)  # C_v [Kc, d]
            self.hook_logits = HookPoint()  # [B, N, Kc] V C_v^T, before the temperature
            self.hook_assignment = HookPoint()  # [B, N, Kc]
            self.hook_centres = HookPoint()  # [B, Kc, d] (assigned_mean) or [B, N, d] (printed)
        if scheme != "fc":
            self.norm_audio = nn.LayerNorm(dim)
            self.norm_visual = nn.LayerNorm(dim)
            self.cross_attention = nn.MultiheadAttention(dim, num_heads, batch_first=True)  # Eq. 15
            self.hook_attention = HookPoint()  # [B, heads, K, keys]
        self.score_mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))  # Eq. 16
        self.hook_scores = HookPoint()  # [B, K]; acts on the tokens under elimination_apply="scale"
        self.hook_log_scores = HookPoint()  # [B, K]; acts on the fusion under elimination_apply="log_bias"

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
                logits = self.hook_logits(keys @ self.centres.t())  # V C_v^T   [B, N, Kc]
                noise = self.scheme == "gumbel_ca_fc" and self.training
                assignment = self.hook_assignment(gumbel_soft_assignment(logits, self.tau, noise, hard=self.hard))  # Eq. 13
                if self.centre_update == "assigned_mean":  # Eq. 14, centres refined by their pixels
                    mass = assignment.sum(dim=1).clamp_min(1e-6)  # [B, Kc]
                    keys = torch.einsum("bnk,bnd->bkd", assignment, keys) / mass[..., None]  # [B, Kc, d]
                else:  # Eq. 14 as printed: O C_v, one reconstruction per pixel
                    keys = assignment @ self.centres  # [B, N, d]
                keys = self.hook_centres(keys)
            attended, _ = attend(self.cross_attention, self.norm_audio(tokens), keys, keys, self.hook_attention,
                                 need_weights=False)  # Eq. 15
            interacted = tokens + attended if self.residual else attended  # [B, K, d]
        logits = self.score_mlp(interacted).squeeze(-1)  # [B, K]
        scores, log_scores = _scores(logits, self.score)  # Eq. 16
        scores, log_scores = self.hook_scores(scores), self.hook_log_scores(log_scores)
        return EliminationOutput(scores[..., None] * tokens, scores, assignment, log_scores)  # Eq. 17


class _ReleasedAttention(nn.Module):
    """The authors' cross-modal attention: q/k/v projections without bias, scale head_dim^-0.5, and
    no output projection applied. ``gate="softmax"`` normalises over the keys; ``"sigmoid"`` squashes
    each logit on its own (used with a single key, the pooled audio token)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"released aligner: width {dim} is not divisible by its {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        for layer in (self.q, self.k, self.v):
            nn.init.trunc_normal_(layer.weight, std=0.02)

    def forward(self, query: torch.Tensor, key: torch.Tensor, gate: str,
                pattern: HookPoint | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, c = query.shape
        split = lambda x: x.reshape(b, x.shape[1], self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(query)), split(self.k(key)), split(self.v(key))  # [B, h, *, c/h]
        logits = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5  # [B, h, n, m]
        weights = logits.softmax(-1) if gate == "softmax" else torch.sigmoid(logits)
        if pattern is not None:
            weights = pattern(weights)
        return (weights @ v).transpose(1, 2).reshape(b, n, c), weights


class ReleasedAligner(nn.Module):
    """Elimination as the authors' code runs it (``variant="released"``), at every stage, from the
    stage's projection of the original derived tokens:

    1. Eq. 13-14 as printed: O = Gumbel-softmax(V C_v^T, tau) over Kc centres (C_v ~ randn), and the
       per-pixel reconstruction R = O C_v [B, N, C];
    2. F_av = attention of the K audio tokens over R (softmax over the N pixels);
    3. S = softmax over the K tokens of Linear(C, 1)(F_av), and the pooled token a = sum_k S_k A_k;
    4. the visual tokens are gated: V' = V + sigmoid(q(V) k(a)^T / sqrt(c_h)) v(a), per head.

    Schemes other than Gumbel+CA+FC change step 1-3 as in Table 4 (``fc``: S from the tokens alone;
    ``ca_fc``: attention over V itself; ``softkmeans_ca_fc``: no Gumbel noise; ``none``: uniform
    pooling). The released code also draws Gumbel noise at evaluation; here evaluation draws none,
    so that it is deterministic (the one departure)."""

    def __init__(self, dim: int, num_centres: int = 5, heads: int = 8, tau: float = 1.0,
                 scheme: str = "gumbel_ca_fc", hard: bool = False):
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"elimination scheme must be one of {SCHEMES}, got {scheme!r}")
        self.scheme, self.tau, self.hard = scheme, tau, hard
        if scheme in ("softkmeans_ca_fc", "gumbel_ca_fc"):
            self.centres = nn.Parameter(torch.randn(num_centres, dim))
            self.hook_logits = HookPoint()  # [B, N, Kc]
            self.hook_assignment = HookPoint()  # [B, N, Kc]
            self.hook_centres = HookPoint()  # [B, N, C] the reconstruction O C_v
        if scheme in ("ca_fc", "softkmeans_ca_fc", "gumbel_ca_fc"):
            self.audio_visual = _ReleasedAttention(dim, heads)
            self.hook_attention = HookPoint()  # [B, heads, K, N]
        if scheme != "none":
            self.fc = nn.Linear(dim, 1)
            self.hook_scores = HookPoint()  # [B, K] the pooling weights
            self.hook_log_scores = HookPoint()  # [B, K] (read only: the pooling uses the scores)
        self.visual_audio = _ReleasedAttention(dim, heads)
        self.hook_gate = HookPoint()  # [B, heads, N, 1]

    def forward(self, tokens: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, EliminationOutput]:
        """(gated visual tokens [B, N, C], the elimination's output); tokens [B, K, C], visual [B, N, C]."""
        assignment = None
        if self.scheme == "none":
            scores = torch.full(tokens.shape[:2], 1.0 / tokens.shape[1], dtype=tokens.dtype, device=tokens.device)
            log_scores = scores.log()
        else:
            if self.scheme == "fc":
                interacted = tokens
            else:
                keys = visual
                if self.scheme in ("softkmeans_ca_fc", "gumbel_ca_fc"):
                    noise = self.scheme == "gumbel_ca_fc" and self.training
                    logits = self.hook_logits(visual @ self.centres.t())
                    assignment = self.hook_assignment(gumbel_soft_assignment(logits, self.tau, noise, hard=self.hard))
                    keys = self.hook_centres(assignment @ self.centres)  # [B, N, C]
                interacted, _ = self.audio_visual(tokens, keys, "softmax", self.hook_attention)  # [B, K, C]
            scores, log_scores = _scores(self.fc(interacted).squeeze(-1), "softmax")  # [B, K]
            scores, log_scores = self.hook_scores(scores), self.hook_log_scores(log_scores)
        pooled = (scores[..., None] * tokens).sum(1, keepdim=True)  # [B, 1, C]
        gated, gate = self.visual_audio(visual, pooled, "sigmoid", self.hook_gate)  # [B, N, C], [B, h, N, 1]
        return visual + gated, EliminationOutput(tokens, None if self.scheme == "none" else scores, assignment,
                                                 None if self.scheme == "none" else log_scores,
                                                 gate[..., 0].mean(1))
