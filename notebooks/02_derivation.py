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
# # 02 · Dynamic derivation (DDESeg Eq. 5-12)
#
# From one mixed audio feature F_a, derivation picks the K class centres nearest to it (Euclidean
# distance), builds an edge feature to each (Eq. 5), weighs the edges with a softmax (Eq. 6), and
# turns them into compensations that move F_a towards each class (Eq. 7-8): K tokens, one per
# candidate source. Enhancement then scales each token using its class's discriminative features
# (Eq. 9-12). Because this world knows every clip's true sources, we can ask: **do the K tokens
# cover the classes that actually sound?**

# %% tags=["parameters"]
data_root = "data/default_world"  # relative paths are read from the repository root
layout = "ms3"
K = 5
image_size = 96
train_epochs = 2
checkpoint = ""
frame_index = 0
seed = 0
run_dir = ""  # empty: runs/notebooks/02_derivation/ under the repository root

# %%
import json
from pathlib import Path

import pandas as pd
import torch

from avs_lib.analysis import derivation_recall, true_classes
from avs_lib.config import load_config
from avs_lib.paths import notebook_paths
from avs_lib.plots import recall_curve
from avs_lib.train import train_or_load
from avs_lib.widgets import derivation_explorer

data_root, run_dir = notebook_paths(data_root, run_dir, '02_derivation')

# a given checkpoint is loaded; otherwise a short run trains one into run_dir/model
config = load_config(data_root=data_root, layout=layout, image_size=image_size, epochs=train_epochs, seed=seed,
                     switches={"num_tokens": K}, progress=False, out=run_dir / "model")
model, config, prepared = train_or_load(checkpoint, config)
classes = prepared.memory.class_names
test = prepared.test

# %% [markdown]
# ## One frame, step by step
# The K nearest centres with their distances, the fusion weights of Eq. 6, the size of each
# compensation (Eq. 7) and of each enhancement offset (Eq. 11), next to the truth.

# %%
with torch.no_grad():
    out = model.derivation(test.audio[frame_index:frame_index + 1])
on, off = true_classes(test, frame_index)
table = pd.DataFrame({
    "class": [classes[c] for c in out.class_indices[0].tolist()],
    "truth": ["on screen" if c in on else "off screen" if c in off else "silent" for c in out.class_indices[0].tolist()],
    "distance": out.distances[0].numpy().round(3),
    "fusion weight (Eq. 6)": out.fusion_weights[0].numpy().round(3),
    "|compensation| (Eq. 7)": out.compensations[0].norm(dim=-1).numpy().round(3),
    "|scale offset| (Eq. 11)": (out.scale_offsets[0].norm(dim=-1).numpy().round(3) if out.scale_offsets is not None else None),
})
print(f"{test.clips[frame_index]} frame {test.frames[frame_index] + 1}; true sounding classes: "
      f"{sorted(classes[c] for c in on | off)}")
table

# %% [markdown]
# ## Derivation recall as K grows
# For every test frame: the share of its truly sounding classes among the K nearest centres. This
# depends only on the frozen encoder and the memory. A low curve means the encoder's features of a
# mixture are not near the centres of its parts, and no later module can recover a class that was
# never derived.

# %%
recalls = [derivation_recall(test, prepared.memory.centroids, k) for k in range(1, len(classes) + 1)]
recall_curve(recalls, Path(run_dir) / "figures" / "derivation_recall.png");

# %% [markdown]
# ## Explorer
# Pick a frame and move K: the bars show the distance to each derived class centre and its fusion
# weight, labelled with the truth.

# %%
explorer = derivation_explorer(model, test, classes)
explorer

# %%
at_k = next(r for r in recalls if r["K"] == K)
metrics = {"K": K, "recall_at_K": at_k["recall"], "recall_on_screen_at_K": at_k["recall_on_screen"],
           "recall_curve": [r["recall"] for r in recalls]}
Path(run_dir, "metrics.json").write_text(json.dumps(metrics, indent=1))
metrics
