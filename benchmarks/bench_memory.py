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

from avs_lib.memory import build_semantic_memory


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
    rng = np.random.default_rng(0)
    # each class: a few Gaussian sub-modes, as single-source audio embeddings of one class are
    blocks, labels = [], []
    for c in range(args.classes):
        modes = rng.normal(0, 1, size=(args.k, args.dim)).astype(np.float32)
        pick = rng.integers(0, args.k, size=args.per_class)
        blocks.append(modes[pick] + 0.5 * rng.normal(0, 1, size=(args.per_class, args.dim)).astype(np.float32))
        labels.append(np.full(args.per_class, c))
    x = torch.from_numpy(np.concatenate(blocks)).to(args.device)
    y = torch.from_numpy(np.concatenate(labels)).to(args.device)

    start = time.perf_counter()
    memory = build_semantic_memory(x, y, k=args.k, m=args.m, seed=0, n_init=args.n_init)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    torch_s = time.perf_counter() - start

    start = time.perf_counter()
    sk_inertia = 0.0
    for c in range(args.classes):
        sk_inertia += KMeans(n_clusters=args.k, n_init=args.n_init, random_state=0).fit(blocks[c]).inertia_
    sklearn_s = time.perf_counter() - start
    print(json.dumps({"classes": args.classes, "per_class": args.per_class, "dim": args.dim, "k": args.k, "m": args.m,
                      "n_init": args.n_init, "device": args.device, "torch_s": round(torch_s, 2),
                      "sklearn_s": round(sklearn_s, 2), "torch_inertia": float(memory.inertia.sum()),
                      "sklearn_inertia": float(sk_inertia),
                      "inertia_ratio": float(memory.inertia.sum()) / sk_inertia}))


if __name__ == "__main__":
    main()
