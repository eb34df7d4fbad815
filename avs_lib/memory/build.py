"""DDESeg's semantic memory (Step 1 of the Dynamic Derivation Module, Eq. 2-4).

From single-source audio features of each class c:

* Eq. 2: the class centroid mu^c, the mean of the class's features;
* Eq. 3: k-means partitions the class into k sub-clusters with centroids mu_j^c;
* Eq. 4: in each sub-cluster, the m features nearest its centroid are the class's
  discriminative features x_rep_j^c.

The k-means runs for all classes at once on padded [C, N_max, d] tensors, on the caller's device,
deterministically for a seed (k-means++ seeding from a ``torch.Generator``, best of ``n_init``
restarts by inertia).

Choices where the paper is silent (also in the README's notes):

* a sub-cluster with fewer than m members fills its m slots by repeating its members, nearest
  first (the paper assumes |C_j^c| >= m);
* a class with fewer than k features is an error naming the class, not a silent shrink of k.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch


@dataclass
class SemanticMemory:
    centroids: torch.Tensor  # [C, d]        Eq. 2
    subcentroids: torch.Tensor  # [C, k, d]  Eq. 3
    features: torch.Tensor  # [C, k, m, d]   Eq. 4, the discriminative features
    class_names: list[str]
    inertia: torch.Tensor  # [C] sum of squared distances to the assigned sub-centroid
    meta: dict = field(default_factory=dict)  # encoder, source-data hash, ...

    @property
    def k(self) -> int:
        return self.subcentroids.shape[1]

    @property
    def m(self) -> int:
        return self.features.shape[2]

    @property
    def dim(self) -> int:
        return self.centroids.shape[1]

    def to(self, device: torch.device | str) -> "SemanticMemory":
        return SemanticMemory(self.centroids.to(device), self.subcentroids.to(device), self.features.to(device),
                              list(self.class_names), self.inertia.to(device), dict(self.meta))


# ----------------------------------------------------------------------------- batched k-means
def _squared_distances(x: torch.Tensor, centres: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """[C, N, d] x [C, k, d] -> [C, N, k]; ``x_sq`` [C, N, 1] (the rows' squared norms) when known."""
    x_sq = x.pow(2).sum(-1, keepdim=True) if x_sq is None else x_sq
    return (x_sq - 2 * x @ centres.transpose(1, 2) + centres.pow(2).sum(-1).unsqueeze(1)).clamp_min(0)


def _kmeans_plus_plus(x: torch.Tensor, valid: torch.Tensor, k: int, generator: torch.Generator,
                      x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """k-means++ seeding per class: each new centre drawn with probability proportional to D^2."""
    C, N, d = x.shape
    batch = torch.arange(C, device=x.device)
    weights = valid.float()
    first = torch.multinomial(weights.cpu(), 1, generator=generator).squeeze(1).to(x.device)
    centres = [x[batch, first]]
    closest = _squared_distances(x, centres[0].unsqueeze(1), x_sq).squeeze(-1)
    for _ in range(1, k):
        probs = (closest * valid).cpu()
        # all-duplicate classes have zero D^2 everywhere: fall back to uniform over valid rows
        probs = torch.where(probs.sum(1, keepdim=True) > 0, probs, weights.cpu())
        pick = torch.multinomial(probs, 1, generator=generator).squeeze(1).to(x.device)
        centres.append(x[batch, pick])
        closest = torch.minimum(closest, _squared_distances(x, centres[-1].unsqueeze(1), x_sq).squeeze(-1))
    return torch.stack(centres, dim=1)


CHUNK_BYTES = 1 << 25  # classes are clustered in groups of about this many bytes of features


def batched_kmeans(x: torch.Tensor, valid: torch.Tensor, k: int, seed: int = 0, n_init: int = 4,
                   max_iter: int = 100, tol: float = 1e-4, chunk_bytes: int = CHUNK_BYTES
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on every class at once, in groups of classes.

    x [C, N, d] (rows beyond a class's count are padding), valid [C, N] bool.
    Returns centres [C, k, d], assignment [C, N] (-1 on padding) and inertia [C].

    A restart stops when no class of its group changes an assignment, or when every class's summed
    squared centre shift is at most ``tol`` times its mean per-dimension variance (scikit-learn's
    rule). Why groups: Lloyd's iterations read all features twice and are bound by memory
    bandwidth; a group of ~``chunk_bytes`` stays in the CPU's cache, and a group stops at its own
    slowest class instead of the slowest of all C. The grouping depends only on the shapes, so a CPU
    and a GPU draw the same random numbers. One generator runs through the groups in order.
    """
    generator = torch.Generator().manual_seed(seed)
    per_class = x.shape[1] * x.shape[2] * x.element_size()
    step = max(1, chunk_bytes // max(per_class, 1))
    parts = [_kmeans_group(x[i:i + step], valid[i:i + step], k, generator, n_init, max_iter, tol)
             for i in range(0, x.shape[0], step)]
    return tuple(torch.cat(p) for p in zip(*parts))


def _kmeans_group(x: torch.Tensor, valid: torch.Tensor, k: int, generator: torch.Generator, n_init: int,
                  max_iter: int, tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``batched_kmeans`` on one group of classes. The rows' squared norms are computed once:
    recomputing them each iteration cost more than the distance product itself on a CPU."""
    C = x.shape[0]
    best_centres, best_assign, best_inertia = None, None, torch.full((C,), float("inf"), device=x.device, dtype=x.dtype)
    valid_f = valid.to(x.dtype)
    x_sq = x.pow(2).sum(-1, keepdim=True)  # [C, N, 1]
    counts_all = valid_f.sum(1).clamp_min(1)  # [C]
    mean = (x * valid_f.unsqueeze(-1)).sum(1) / counts_all.unsqueeze(-1)
    variance = ((x_sq.squeeze(-1) * valid_f).sum(1) / counts_all - mean.pow(2).sum(-1)).clamp_min(0) / x.shape[-1]
    threshold = tol * variance  # [C]
    for _ in range(n_init):
        centres = _kmeans_plus_plus(x, valid, k, generator, x_sq)
        assign = None
        for _ in range(max_iter):
            new_assign = _squared_distances(x, centres, x_sq).argmin(-1)  # [C, N]
            if assign is not None and bool(((new_assign == assign) | ~valid).all()):
                break  # a fixed point: the centres are the means of these assignments
            assign = new_assign
            one_hot = torch.nn.functional.one_hot(assign, k).to(x.dtype) * valid_f.unsqueeze(-1)  # [C, N, k]
            counts = one_hot.sum(1)  # [C, k]
            sums = one_hot.transpose(1, 2) @ x  # [C, k, d]
            # an empty cluster keeps its centre rather than collapsing to zero
            new = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp_min(1).unsqueeze(-1), centres)
            shift = (new - centres).pow(2).sum((1, 2))  # [C]
            centres = new
            if bool((shift <= threshold).all()):
                break
        distances = _squared_distances(x, centres, x_sq)
        assign = distances.argmin(-1)
        inertia = (distances.min(-1).values * valid_f).sum(1)
        better = inertia < best_inertia
        if best_centres is None:
            best_centres, best_assign = centres.clone(), assign.clone()
        best_centres[better], best_assign[better] = centres[better], assign[better]
        best_inertia = torch.where(better, inertia, best_inertia)
    best_assign = torch.where(valid, best_assign, torch.full_like(best_assign, -1))
    return best_centres, best_assign, best_inertia


# ----------------------------------------------------------------------------- the memory
def source_hash(features: torch.Tensor, labels: torch.Tensor) -> str:
    digest = hashlib.sha256()
    digest.update(features.detach().cpu().float().numpy().tobytes())
    digest.update(labels.detach().cpu().long().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_semantic_memory(features: torch.Tensor, labels: torch.Tensor, k: int, m: int, seed: int = 0,
                          class_names: list[str] | None = None, n_init: int = 4, encoder: str = "unknown") -> SemanticMemory:
    """Eq. 2-4 from single-source features [N, d] and class labels [N] in 0..C-1."""
    features = features.float()
    labels = labels.long().to(features.device)
    n_classes = int(labels.max()) + 1 if class_names is None else len(class_names)
    class_names = class_names or [f"class_{c}" for c in range(n_classes)]
    counts = torch.bincount(labels, minlength=n_classes)
    short = [f"{class_names[c]} ({int(counts[c])})" for c in range(n_classes) if counts[c] < k]
    if short:
        raise ValueError(f"k={k} sub-clusters need at least {k} features per class; too few for: {', '.join(short)}")
    d = features.shape[1]
    n_max = int(counts.max())
    # Pad each class's features into one [C, N_max, d] tensor, in their original order.
    order = torch.argsort(labels, stable=True)
    position = torch.arange(len(labels), device=features.device) - torch.repeat_interleave(
        torch.cumsum(counts, 0) - counts, counts)
    padded = features.new_zeros(n_classes, n_max, d)
    valid = torch.zeros(n_classes, n_max, dtype=torch.bool, device=features.device)
    padded[labels[order], position] = features[order]
    valid[labels[order], position] = True

    centroids = (padded * valid.unsqueeze(-1)).sum(1) / counts.unsqueeze(-1).to(features.dtype)  # Eq. 2, [C, d]
    subcentroids, assign, inertia = batched_kmeans(padded, valid, k, seed=seed, n_init=n_init)  # Eq. 3

    # Eq. 4: the m members of each sub-cluster nearest its centroid.
    distances = _squared_distances(padded, subcentroids).sqrt()  # [C, N, k]
    member = assign.unsqueeze(-1) == torch.arange(k, device=features.device)  # [C, N, k]
    masked = torch.where(member, distances, torch.full_like(distances, float("inf")))
    sorted_dist, sorted_index = masked.sort(dim=1)  # nearest first along N
    size = member.sum(1)  # [C, k]
    slots = torch.arange(m, device=features.device)
    # slots beyond a small cluster's size repeat its members, nearest first
    take = slots.view(1, m, 1) % size.clamp_min(1).unsqueeze(1)  # [C, m, k]
    chosen = torch.gather(sorted_index, 1, take)  # [C, m, k]
    batch = torch.arange(n_classes, device=features.device).view(-1, 1, 1)
    discriminative = padded[batch, chosen].permute(0, 2, 1, 3).contiguous()  # [C, k, m, d]
    meta = {"encoder": encoder, "source_hash": source_hash(features, labels), "seed": seed, "n_init": n_init,
            "counts": counts.tolist()}
    return SemanticMemory(centroids, subcentroids, discriminative, list(class_names), inertia, meta)


