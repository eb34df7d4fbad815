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
# # 03 · Dynamic elimination (DDESeg Eq. 13-17)
#
# Not every derived token has a match in the frame: a dog may bark off screen. Elimination softly
# assigns every visual feature to a few learnable visual centres with a Gumbel-softmax (Eq. 13),
# refines the centres with the features assigned to them (Eq. 14, see the README's note), lets the
# audio tokens attend to the centres (Eq. 15), and scores each token in [0, 1] (Eq. 16). Tokens are
# scaled by their scores (Eq. 17). Here we check the scores against the truth: a token whose class
# sounds on screen should score higher than one whose class sounds only off screen.

# %% tags=["parameters"]
data_root = "data/default_world"  # relative paths are read from the repository root
layout = "ms3"
image_size = 96
train_epochs = 2
checkpoint = ""
frame_index = 0
taus = [0.25, 1.0, 4.0]
seed = 0
run_dir = ""  # empty: runs/notebooks/03_elimination/ under the repository root

# %%
import json
from pathlib import Path

import numpy as np
import torch

from avs_lib.analysis import elimination_auc
from avs_lib.config import load_config
from avs_lib.paths import notebook_paths
from avs_lib.plots import assignment_maps, roc_figure
from avs_lib.data.transforms import normalise_images
from avs_lib.train import train_or_load

data_root, run_dir = notebook_paths(data_root, run_dir, '03_elimination')

config = load_config(data_root=data_root, layout=layout, image_size=image_size, epochs=train_epochs, seed=seed,
                     progress=False, out=run_dir / "model")
model, config, prepared = train_or_load(checkpoint, config)
test = prepared.test
figures = run_dir / "figures"

# %% [markdown]
# ## Where do the visual centres look?
# The soft assignment O of Eq. 13 at stage 2 (eval mode: no Gumbel noise), one map per centre.

# %%
with torch.no_grad():
    out = model(normalise_images(test.images[frame_index:frame_index + 1]), test.audio[frame_index:frame_index + 1])
assignment = out.eliminations[0].assignment[0].numpy()
side = int(round(assignment.shape[0] ** 0.5))
assignment_maps(test.images[frame_index].permute(1, 2, 0).numpy(), assignment, (side, side), figures / "assignment_maps.png");

# %% [markdown]
# ## Scores against the truth
# Every token of every test frame whose class truly sounds: on screen (positive) or only off screen
# (negative). The ROC curve asks whether the score ranks them apart; 0.5 is chance.

# %%
result = elimination_auc(model, test)
print(f"AUC {result['auc']:.3f} over {result['positives']} on-screen and {result['negatives']} off-screen tokens")
roc_figure(result["labels"], result["scores"], "elimination scores", figures / "elimination_roc.png");

# %% [markdown]
# ## The temperature tau
# tau sharpens (small) or flattens (large) the assignment. The model was trained at tau = 1; here
# we change it at evaluation only and watch the AUC.

# %%
tau_auc = {}
for tau in taus:
    for module in model.eliminations:
        module.tau = tau
    tau_auc[tau] = elimination_auc(model, test)["auc"]
for module in model.eliminations:
    module.tau = config.switches.get("tau", 1.0)
tau_auc

# %%
metrics = {"auc": result["auc"], "positives": result["positives"], "negatives": result["negatives"],
           "auc_by_tau": {str(k): v for k, v in tau_auc.items()}}
Path(run_dir, "metrics.json").write_text(json.dumps(metrics, indent=1))
metrics
