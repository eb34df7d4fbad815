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
# # 01 · The world's audio encoder and the semantic memory (DDESeg Eq. 2-4)
#
# DDESeg keeps, for every sound class, a memory built from *single-source* audio features of a
# frozen pre-trained encoder (HTS-AT on AudioSet in the paper): the class centroid (Eq. 2), k
# sub-cluster centroids from k-means (Eq. 3), and in each sub-cluster the m features nearest its
# centroid, the "discriminative features" (Eq. 4). A composed world has no AudioSet, so the
# workbench gives its small encoder the same kind of pretraining from the world's own asset
# library: an unlimited stream of fresh 1 s mixtures of 1-3 sources with multi-label targets.
# Try other `k` and `m`: a larger k follows the class's variety (ten bird species in one class),
# a larger m averages more of it.

# %% tags=["parameters"]
data_root = "data/default_world"  # relative paths are read from the repository root
k = 3
m = 5
audio_dim = 128
encoder_epochs = 15  # pretraining length: encoder_epochs x 40 stream batches (TrainConfig.encoder_epochs)
seed = 0
run_dir = ""  # empty: runs/notebooks/01_semantic_memory/ under the repository root

# %%
from avs_lib.core.kernels import use_portable_kernels

use_portable_kernels()  # first, before NumPy and torch: the CPU kernels `avs` runs, also when opened by hand

from pathlib import Path

import numpy as np
import torch

from avs_lib.audio.encoders import encoder_id
from avs_lib.audio.pretrain import STEPS_PER_EPOCH, PretrainConfig, pretrained_encoder, world_setup
from avs_lib.audio.quality import encode, frame_audio, nearest_centroid
from avs_lib.core.paths import notebook_paths
from avs_lib.experiments.notebooks import save_metrics
from avs_lib.memory.io import build_world_memory
from avs_lib.memory.io import save_memory
from avs_lib.viz.plots import memory_map, pretraining_curves
from avs_lib.world.compose import heldout_member_names

data_root, run_dir = notebook_paths(data_root, run_dir, '01_semantic_memory')
cache = Path(data_root) / "cache"
library, world = world_setup(data_root)
heldout = heldout_member_names(library, world)
print(f"{library.kind} library: {len(library.classes)} classes, {sum(len(c.members) for c in library.classes)} members; "
      f"held out of training: {sum(len(v) for v in heldout.values())} members")

# %% [markdown]
# ## Pretraining: the world's AudioSet
# Every step draws a fresh batch from `avs_lib.audio.pretrain.MixtureStream`: windows of 1, 2 or 3
# sources of distinct classes, each a real recording looped from a random point with a random
# gain, over an ambience bed and white noise at the world's SNR (the mixing recipe of
# `avs_lib.world.compose`); every multi-source window also brings its parts (each source alone over
# the same bed). Log-mels are computed in batches (`torch_log_mel`, the VGGish front end). The
# encoder's embedding $e = \mathrm{normalise}(f_\theta(x))$ is L2-normalised and its head is a cosine
# classifier, $z_c = s\,\cos(e, w_c) + b_c$. `pretrain` minimises
#
# $$\mathcal{L} = \underbrace{-\frac{1}{C}\sum_{c=1}^{C}\Big[y_c\log\sigma(z_c) + (1-y_c)\log\big(1-\sigma(z_c)\big)\Big]}_{\text{multi-label BCE}}
# \;+\; \lambda\,\underbrace{\Big(1-\cos\big(e_{\text{mix}},\ \mathrm{normalise}\big(\tfrac{1}{n}\textstyle\sum_{j=1}^{n} \mathrm{sg}(e_j)\big)\big)\Big)}_{\texttt{parts\_loss}\text{: mixture towards its parts}}$$
#
# where $y$ is the multi-hot set of classes heard, $e_j$ the embeddings of the window's $n$ parts
# and sg stops their gradient. Held-out members never enter the stream. The result is cached in
# `<world>/cache/pretrained_audio_<key>.pt`, keyed by a hash of the asset library, the held-out
# set and the settings (`avs pretrain-audio` runs the same thing from the command line).

# %%
# seed 0, not the notebook's seed: the encoder `avs train` uses, so both find it in the same cache
config = PretrainConfig(steps=encoder_epochs * STEPS_PER_EPOCH, dim=audio_dim, seed=0)
encoder, classes, record = pretrained_encoder(data_root, cache, config, progress=True)
identifier = encoder_id(encoder)
pretraining_curves(record["history"], Path(run_dir) / "figures" / "pretraining_loss.png");
print(f"{config.steps} steps of {config.batch_size} windows took {record['seconds']:.0f} s; "
      f"final BCE {record['history'][-1]['bce']:.3f}, parts term {record['history'][-1]['parts']:.3f}")

# %% [markdown]
# Both losses fall while every batch is new, so what the curve shows is learning, not memorising a
# fixed set of clips.
#
# ## The memory (Eq. 2-4)
# `build_world_memory` embeds the single-source S4 training frames and calls
# `avs_lib.memory.build.build_semantic_memory`, which computes for every class $c$ with features
# $\{x\}_c$:
#
# $$\mu^c = \frac{1}{|\{x\}_c|}\sum_{x\in\{x\}_c} x \quad\text{(Eq. 2)},\qquad
# \{C^c_j,\ \mu^c_j\}_{j=1}^{k} = \text{k-means}(\{x\}_c)\quad\text{(Eq. 3, \texttt{batched\_kmeans})},$$
#
# $$x^c_{\text{rep},j} = \operatorname*{arg\,top\text{-}m}_{x\in C^c_j}\ -\lVert x-\mu^c_j\rVert_2 \quad\text{(Eq. 4)}.$$

# %%
memory = build_world_memory(data_root, encoder, identifier, cache, k=k, m=m, seed=seed, progress=True)
print(f"{len(classes)} classes, centroids {tuple(memory.centroids.shape)}, sub-centroids {tuple(memory.subcentroids.shape)}, "
      f"discriminative features {tuple(memory.features.shape)}")

# %% [markdown]
# ## A map of the memory
# Stars are class centroids, triangles sub-centroids, dots the discriminative features; the faint
# cloud behind them is every single-source training feature. Classes whose clouds overlap are the
# ones derivation will confuse.

# %%
s4_train = frame_audio(data_root, "s4", "train")
features, _ = encode(encoder, s4_train.log_mels)
labels = np.array([s[0][0] if s else -1 for s in s4_train.sounding])
memory_map(memory, features.numpy(), labels, Path(run_dir) / "figures" / "memory_map.png");

# %% [markdown]
# Two dimensions keep only part of a 128-d space (the axis labels say how much): separate clumps here
# mean separable classes, while overlap in 2-D may still be separable in the full space, which the
# accuracy below measures.
#
# ## How well does the frozen encoder separate the classes?
# Nearest-centroid accuracy (`avs_lib.audio.quality.nearest_centroid`) on clean single-source
# frames, with a bootstrap 95 % interval over clips: the ceiling for what derivation can find in a
# mixture. Where the world holds members out (`avs world --holdout-members 1`), frames of those
# members, never heard in training, are scored apart.

# %%
results = {}
for split in ("val", "test"):
    frames = frame_audio(data_root, "s4", split)
    embeddings, _ = encode(encoder, frames.log_mels)
    results[split] = nearest_centroid(embeddings, frames, memory.centroids, {m_ for v in heldout.values() for m_ in v})
    r = results[split]
    line = (f"S4 {split}: {r['accuracy']:.3f} of {r['frames']} clean frames ({r['clips']} clips) are nearest their own "
            f"class centroid (95 % CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}; chance {1 / len(classes):.2f})")
    if "accuracy_heldout_members" in r:
        line += (f"; seen members {r['accuracy_seen_members']:.3f}, held-out members "
                 f"{r['accuracy_heldout_members']:.3f} ({r['heldout_frames']} frames)")
    print(line)
accuracy = results["val"]["accuracy"]

# %% [markdown]
# The gap between seen and held-out members (when the world holds some out) is the gap between
# recognising a recording and recognising a class: in the stamps library a class's members are
# different animals or instruments, most with one recording (a few instruments have three: the
# stamp's own and two Sonic Pi samples).

# %%
path = save_memory(memory, Path(run_dir) / "memory.npz")
metrics = {"classes": len(classes), "k": k, "m": m, "nearest_centroid_accuracy": accuracy,
           "nearest_centroid_accuracy_test": results["test"]["accuracy"],
           "nearest_centroid_test_ci95": results["test"]["ci95"],
           "pretraining_steps": config.steps, "pretraining_seconds": record["seconds"],
           "inertia_mean": float(memory.inertia.mean()), "memory_file": str(path)}
for split in ("val", "test"):
    if "accuracy_heldout_members" in results[split]:
        metrics[f"heldout_members_accuracy_{split}"] = results[split]["accuracy_heldout_members"]
save_metrics(run_dir, metrics)
