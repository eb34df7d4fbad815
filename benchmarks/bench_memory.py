"""Semantic-memory build: batched torch k-means vs scikit-learn KMeans per class.

71 classes x 2000 features x 768 dims (AVSS-sized, HTS-AT-sized) by default; prints JSON with the
time and the summed inertia of each. Usage: python benchmarks/bench_memory.py [--classes 71] [--per-class 2000] [--dim 768]
"""
import argparse
import json
import time

import numpy as np
import torch
from sklearn.cluster import KMeans

from avs_lib.memory.build import build_semantic_memory


def synthetic_features(classes: int, per_class: int, dim: int, k: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """Each class: k Gaussian sub-modes, as single-source audio embeddings of one class are."""
    rng = np.random.default_rng(seed)
    blocks, labels = [], []
    for c in range(classes):
        modes = rng.normal(0, 1, size=(k, dim)).astype(np.float32)
        pick = rng.integers(0, k, size=per_class)
        blocks.append(modes[pick] + 0.5 * rng.normal(0, 1, size=(per_class, dim)).astype(np.float32))
        labels.append(np.full(per_class, c))
    return blocks, np.concatenate(labels)


def run(classes: int = 71, per_class: int = 2000, dim: int = 768, k: int = 5, m: int = 5, n_init: int = 4,
        device: str = "cpu") -> dict:
    """Time the batched torch build (Eq. 2-4) and scikit-learn's KMeans class by class, same data."""
    blocks, labels = synthetic_features(classes, per_class, dim, k)
    x = torch.from_numpy(np.concatenate(blocks)).to(device)
    y = torch.from_numpy(labels).to(device)

    start = time.perf_counter()
    memory = build_semantic_memory(x, y, k=k, m=m, seed=0, n_init=n_init)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    torch_s = time.perf_counter() - start

    start = time.perf_counter()
    sk_inertia = 0.0
    for c in range(classes):
        sk_inertia += KMeans(n_clusters=k, n_init=n_init, random_state=0).fit(blocks[c]).inertia_
    sklearn_s = time.perf_counter() - start
    return {"classes": classes, "per_class": per_class, "dim": dim, "k": k, "m": m, "n_init": n_init, "device": device,
            "torch_threads": torch.get_num_threads(), "torch_s": round(torch_s, 2), "sklearn_s": round(sklearn_s, 2),
            "torch_over_sklearn": round(torch_s / sklearn_s, 3), "torch_inertia": float(memory.inertia.sum()),
            "sklearn_inertia": float(sk_inertia), "inertia_ratio": float(memory.inertia.sum()) / sk_inertia}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=71)
    parser.add_argument("--per-class", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--m", type=int, default=5)
    parser.add_argument("--n-init", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(json.dumps(run(args.classes, args.per_class, args.dim, args.k, args.m, args.n_init, args.device)))


if __name__ == "__main__":
    main()
