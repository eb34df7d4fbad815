"""DDESeg's Dynamic Derivation Module: prototype derivation (Eq. 5-8) and discriminative
enhancement (Eq. 9-12).

Input: one audio feature F_a per frame ([B, d]) and a semantic memory (``avs_lib.memory.build``).
Output: K derived audio tokens per frame ([B, K, d]) plus everything the notebooks show.

Two readings, chosen with ``variant``:

* ``"paper"``: the equations as printed. Eq. 8 is additive, a_i = F_a + delta_i.
* ``"released"``: the authors' code. Eq. 8 is multiplicative, a_i = F_a * (1 + delta_i), and the
  enhancement runs over one flat bank of features per class (the memory's k*m features are used
  as that bank; build the memory with k=1 for the released [C, m, d] bank).

Where the paper is ambiguous (also in the README's notes):

* Eq. 6: the softmax runs over the K selected centres (index i), so the fusion weights of a frame
  sum to 1 over its K edges.
* Eq. 9-12 index the discriminative features by sub-cluster j, and Eq. 12 applies "the" offset
  without saying how the k sub-clusters combine. The workbench takes the softmax of Eq. 10 over all
  k*m discriminative features of the class at once, which gives one offset per token. The switch
  ``enhancement_pooling="per_subcluster"`` instead computes one offset per sub-cluster (softmax
  over its m features) and averages the k offsets.
* The class used for token i in Step 3 is the class of the i-th nearest centre from Step 2.

Not a reading of the paper but a what-if for the look inside (``anchor``): Eq. 8 starts every token
from the frame's own feature F_a, so the K tokens of a frame share that vector and differ only by
their bounded compensations (``avs_lib.analysis.inspect.token_separation``'s ``cosine``;
docs/findings.md's "The window" gives it for the oracle ceiling: 0.9998). ``anchor="centre"`` starts token i from its class centre c_{u_i}
instead, a_i = c_{u_i} + delta_i (the compensation still reads F_a, Eq. 7), so each token carries
its own class. The default, ``"audio"``, is Eq. 8 as printed.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .hooks import HookPoint, name_hook_points

VARIANTS = ("paper", "released")
ANCHORS = ("audio", "centre")


@dataclass
class DerivationOutput:
    tokens: torch.Tensor  # [B, K, d] enhanced tokens a_hat (or a when enhancement is off)
    derived: torch.Tensor  # [B, K, d] a_i after Eq. 8
    class_indices: torch.Tensor  # [B, K] the K nearest class centres (nearest first)
    distances: torch.Tensor  # [B, K] Euclidean distances to them
    fusion_weights: torch.Tensor  # [B, K] Eq. 6
    compensations: torch.Tensor  # [B, K, d] delta a_{u_i}, Eq. 7
    enhancement_weights: torch.Tensor | None  # [B, K, k*m] Eq. 10 (None when enhancement is off)
    scale_offsets: torch.Tensor | None  # [B, K, d] delta a_{c_i}, Eq. 11


def nearest_centres(audio: torch.Tensor, centroids: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [B, K] and Euclidean distances [B, K] of the K class centres nearest each feature."""
    distances = torch.cdist(audio.float(), centroids.float())  # [B, C]
    values, indices = distances.topk(k, dim=1, largest=False, sorted=True)
    return indices, values.to(audio.dtype)


class PrototypeDerivation(nn.Module):
    """Step 2 (Eq. 5-8): derive K tokens from F_a and its K nearest class centres."""

    def __init__(self, dim: int, variant: str = "paper", anchor: str = "audio"):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        self.variant = variant
        self.anchor = anchor
        self.edge = nn.Linear(dim, dim)  # W_e, b_e (Eq. 5)
        self.fusion = nn.Linear(dim, 1, bias=False)  # W_f1 (Eq. 6)
        self.compensation = nn.Linear(dim, dim)  # W_o1, b_o1 (Eq. 7)
        self.hook_fusion_weights = HookPoint()  # [B, K]
        self.hook_derived = HookPoint()  # [B, K, d]

    def forward(self, audio: torch.Tensor, centres: torch.Tensor):
        # audio [B, d], centres [B, K, d]
        f_a = audio[:, None, :]  # [B, 1, d]
        edges = F.gelu(self.edge(centres - f_a))  # Eq. 5   [B, K, d]
        weights = self.hook_fusion_weights(torch.softmax(self.fusion(edges).squeeze(-1), dim=1))  # Eq. 6   [B, K]
        weighted_edges = weights[..., None] * edges  # [B, K, d]
        compensation = torch.tanh(self.compensation(f_a + weighted_edges))  # Eq. 7   [B, K, d]
        start = f_a if self.anchor == "audio" else centres  # [B, 1 or K, d]; "centre": see the module's notes
        if self.variant == "paper":
            derived = start + compensation  # Eq. 8
        else:
            derived = start * (1 + compensation)  # released code: multiplicative
        return self.hook_derived(derived), weights, compensation


class DiscriminativeEnhancement(nn.Module):
    """Step 3 (Eq. 9-12): scale each derived token using its class's discriminative features."""

    def __init__(self, dim: int, pooling: str = "all"):
        super().__init__()
        if pooling not in ("all", "per_subcluster"):
            raise ValueError(f"enhancement_pooling must be 'all' or 'per_subcluster', got {pooling!r}")
        self.pooling = pooling
        self.edge = nn.Linear(dim, dim)  # W_d, b_d (Eq. 9)
        self.fusion = nn.Linear(dim, 1, bias=False)  # W_f2 (Eq. 10)
        self.offset = nn.Linear(dim, dim)  # W_o2, b_o2 (Eq. 11)
        self.hook_weights = HookPoint()  # [B, K, k*m]

    def forward(self, derived: torch.Tensor, features: torch.Tensor):
        # derived [B, K, d]; features [B, K, k, m, d], the discriminative features of each token's class
        b, n_tokens, k, m, d = features.shape
        edges = F.gelu(self.edge(features - derived[:, :, None, None, :]))  # Eq. 9   [B, K, k, m, d]
        logits = self.fusion(edges).squeeze(-1)  # [B, K, k, m]
        if self.pooling == "all":
            weights = self.hook_weights(torch.softmax(logits.reshape(b, n_tokens, k * m), dim=-1))  # Eq. 10   [B, K, k*m]
            pooled = torch.einsum("bnf,bnfd->bnd", weights, edges.reshape(b, n_tokens, k * m, d))
            offsets = torch.tanh(self.offset(pooled))  # Eq. 11   [B, K, d]
        else:
            weights_j = torch.softmax(logits, dim=-1)  # [B, K, k, m]
            pooled = torch.einsum("bnjm,bnjmd->bnjd", weights_j, edges)
            offsets = torch.tanh(self.offset(pooled)).mean(dim=2)  # one offset per sub-cluster, averaged
            weights = self.hook_weights(weights_j.reshape(b, n_tokens, k * m) / k)  # read only: the offsets are pooled
        enhanced = derived * (1 + offsets)  # Eq. 12
        return enhanced, weights, offsets


class DynamicDerivation(nn.Module):
    """Steps 2 and 3 together, reading the class centres and features from a semantic memory.

    The memory's tensors are registered as buffers (moved with the model, saved in its state dict,
    never trained). ``enhancement=False`` stops after Eq. 8 (the "+derivation" row of Table 3).
    """

    def __init__(self, dim: int, num_classes: int, k: int, m: int, num_tokens: int = 5,
                 variant: str = "paper", enhancement: bool = True, enhancement_pooling: str = "all",
                 anchor: str = "audio"):
        super().__init__()
        if num_tokens > num_classes:
            raise ValueError(f"num_tokens K={num_tokens} exceeds the memory's {num_classes} classes")
        self.num_tokens = num_tokens
        self.derivation = PrototypeDerivation(dim, variant, anchor)
        self.enhancement = DiscriminativeEnhancement(dim, enhancement_pooling) if enhancement else None
        self.register_buffer("centroids", torch.zeros(num_classes, dim))
        self.register_buffer("features", torch.zeros(num_classes, k, m, dim))
        self.hook_distances = HookPoint()  # [B, K]
        self.hook_classes = HookPoint()  # [B, K] class indices: replace them to force the tokens' classes
        self.hook_tokens = HookPoint()  # [B, K, d] the module's output
        self.name_hook_points("derivation")

    def name_hook_points(self, prefix: str) -> None:
        name_hook_points(self, prefix)
        self.derivation.hook_fusion_weights.name = f"{prefix}.fusion_weights"
        self.derivation.hook_derived.name = f"{prefix}.derived"
        if self.enhancement is not None:
            self.enhancement.hook_weights.name = f"{prefix}.enhancement_weights"

    def set_memory(self, memory) -> None:
        """Copy a ``SemanticMemory`` into the buffers; its shape must match the module's."""
        if tuple(memory.centroids.shape) != tuple(self.centroids.shape) or tuple(memory.features.shape) != tuple(self.features.shape):
            raise ValueError(
                f"semantic memory has centroids {tuple(memory.centroids.shape)} and features "
                f"{tuple(memory.features.shape)}, the model expects {tuple(self.centroids.shape)} and "
                f"{tuple(self.features.shape)}; rebuild the memory with the model's classes, dim, k and m")
        self.centroids.copy_(memory.centroids.to(self.centroids))
        self.features.copy_(memory.features.to(self.features))

    def forward(self, audio: torch.Tensor, num_tokens: int | None = None) -> DerivationOutput:
        """``num_tokens``: K for this call only (a what-if: the learned weights do not depend on K,
        Eq. 6's softmax over the K edges does); default the module's own."""
        # audio [B, d]
        k = self.num_tokens if num_tokens is None else num_tokens
        if not 1 <= k <= self.centroids.shape[0]:
            raise ValueError(f"num_tokens K={k} must be between 1 and the memory's {self.centroids.shape[0]} classes")
        indices, distances = nearest_centres(audio, self.centroids, k)  # [B, K]
        indices, distances = self.hook_classes(indices), self.hook_distances(distances)
        centres = self.centroids[indices]  # [B, K, d]
        derived, weights, compensation = self.derivation(audio, centres)
        if self.enhancement is None:
            return DerivationOutput(self.hook_tokens(derived), derived, indices, distances, weights, compensation,
                                    None, None)
        class_features = self.features[indices]  # [B, K, k, m, d]
        enhanced, enhancement_weights, offsets = self.enhancement(derived, class_features)
        return DerivationOutput(self.hook_tokens(enhanced), derived, indices, distances, weights, compensation,
                                enhancement_weights, offsets)
