# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The semantic memory (DDESeg Eq. 2-4)
#
# DDESeg keeps, for every sound class, a memory built from *single-source* audio features of a
# frozen pre-trained encoder: the class centroid (Eq. 2), k sub-cluster centroids from k-means
# (Eq. 3), and in each sub-cluster the m features nearest its centroid, the "discriminative
# features" (Eq. 4). In the default world the frozen encoder is a small CNN the workbench trains on
# the world's single-source clips. Try other `k` and `m`: a larger k follows the class's variety
# (a dog barks and whines), a larger m averages more of it.

# %% tags=["parameters"]
data_root = "data/default_world"  # relative paths are read from the repository root
k = 3
m = 5
audio_dim = 128
encoder_epochs = 15
seed = 0
run_dir = ""  # empty: runs/notebooks/01_semantic_memory/ under the repository root

# %%
import json
from pathlib import Path

import numpy as np
import torch

from avs_lib.data.datasets import AVSDataset
from avs_lib.features import build_world_memory, embed, frame_log_mels, prepare_audio_encoder, world_classes
from avs_lib.memory import save_memory
from avs_lib.paths import notebook_paths
from avs_lib.plots import memory_map

data_root, run_dir = notebook_paths(data_root, run_dir, '01_semantic_memory')

cache = Path(data_root) / "cache"
encoder, classes, encoder_id = prepare_audio_encoder(data_root, cache, audio_dim, encoder_epochs, seed=0, progress=True)
memory = build_world_memory(data_root, encoder, encoder_id, cache, k=k, m=m, seed=seed, progress=True)
print(f"{len(classes)} classes, centroids {tuple(memory.centroids.shape)}, sub-centroids {tuple(memory.subcentroids.shape)}, "
      f"discriminative features {tuple(memory.features.shape)}")

# %% [markdown]
# ## A map of the memory
# Stars are class centroids, triangles sub-centroids, dots the discriminative features; the faint
# cloud behind them is every single-source training feature. Classes whose clouds overlap are the
# ones derivation will confuse.

# %%
s4 = AVSDataset(data_root, "s4", "train")
features = embed(encoder, frame_log_mels(s4))
labels = np.array([classes.index(r.category) for r in s4.records])
memory_map(memory, features, labels, Path(run_dir) / "figures" / "memory_map.png");

# %% [markdown]
# ## How well does the frozen encoder separate the classes?
# Nearest-centroid accuracy on the single-source validation clips: the ceiling for what derivation
# can find in a mixture.

# %%
s4_val = AVSDataset(data_root, "s4", "val")
val_features = torch.from_numpy(embed(encoder, frame_log_mels(s4_val)))
val_labels = torch.tensor([classes.index(r.category) for r in s4_val.records])
predicted = torch.cdist(val_features, memory.centroids).argmin(1)
accuracy = (predicted == val_labels).float().mean().item()
print(f"nearest-centroid accuracy on single-source val frames: {accuracy:.3f}")

# %%
path = save_memory(memory, Path(run_dir) / "memory.npz")
metrics = {"classes": len(classes), "k": k, "m": m, "nearest_centroid_accuracy": accuracy,
           "inertia_mean": float(memory.inertia.mean()), "memory_file": str(path)}
Path(run_dir, "metrics.json").write_text(json.dumps(metrics, indent=1))
metrics
