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
# # 05 · Training DDESeg
#
# Train a configuration (any YAML in `configs/` plus overrides), watch the loss and the validation
# metrics, look at predictions, and evaluate in the three metric conventions. The loss is DDESeg's
# Eq. 18 (`avs_lib.losses.ddeseg_loss`) on the predicted mask $M$ and the ground truth $Y$:
#
# $$\mathcal{L} = 5\,\mathcal{L}_{Dice}(M, Y) + 5\,\mathcal{L}_{BCE}(M, Y) + 2\,\mathcal{L}_{IoU}(M, Y).$$
#
# The optimiser is AdamW with a linear warm-up and a cosine decay (`avs_lib.train`); a second Run All
# reuses the trained model.

# %% tags=["parameters"]
config_file = "configs/tiny_world.yaml"
data_root = "data/default_world"  # relative paths are read from the repository root
epochs = 4
seed = 0
image_size = 96
run_dir = ""  # empty: runs/notebooks/05_training/ under the repository root

# %%

import pandas as pd
import torch

from avs_lib.config import load_config
from avs_lib.data.transforms import normalise_images
from avs_lib.evaluation import evaluation_table
from avs_lib.features import prepare
from avs_lib.paths import notebook_paths, workbench_path
from avs_lib.plots import qualitative, training_curves
from avs_lib.runs import save_metrics
from avs_lib.train import load_trained, train_once

data_root, run_dir = notebook_paths(data_root, run_dir, "05_training")

figures = run_dir / "figures"
config = load_config(workbench_path(config_file), data_root=data_root, epochs=epochs, seed=seed, image_size=image_size,
                     out=run_dir / "model", progress=False)
prepared = prepare(config)
result = train_once(config, prepared)
training_curves(result["history"], figures / "training_curves.png");

# %% [markdown]
# Left: the training loss per epoch; right: validation J (mean IoU), F ($\beta^2 = 0.3$) and J&F.
# The best validation epoch's weights are the ones evaluated below. A validation curve that keeps
# rising says more epochs would help; one that falls while the loss falls says over-fitting.
#
# ## Predictions
# For four test frames: the frame; the prediction against the truth (green: true positives, red:
# false positives, blue: false negatives; the frame's IoU above it); and where each derived audio
# token's cross-attention goes in the last block of stage 1, titled with the class the token was
# derived from. A token whose map lights up the object of its class is one the fusion uses as
# DDESeg intends; maps that look alike for every token mean the tokens are not told apart.

# %%
model, config, _ = load_trained(run_dir / "model" / "best.pt", prepared)
test = prepared.test
pick = list(range(0, len(test), max(1, len(test) // 4)))[:4]
with torch.no_grad():
    out = model(normalise_images(test.images[pick]), test.audio[pick])
attention = out.attention[0]  # [B, N, K]
side = int(round(attention.shape[1] ** 0.5))
attention = attention.transpose(1, 2).reshape(len(pick), -1, side, side).numpy()
token_names = ([[prepared.memory.class_names[c] for c in row] for row in out.derivation.class_indices.tolist()]
               if out.derivation is not None else None)
qualitative(test.images[pick].permute(0, 2, 3, 1).numpy(), test.masks[pick].numpy(), out.logits.numpy(), attention,
            figures / "qualitative.png", token_names=token_names);

# %% [markdown]
# ## Evaluation in every convention, and what a number is worth
# The conventions differ (`avs_lib/metrics.py`): AVSBench's F depends on the test batch size, the
# dataset-level one sums intersections and unions over the whole set, the default is per frame.
# Two trivial baselines (`avs_lib.evaluation`) bound what the numbers mean: every pixel predicted
# as sounding (a model that does not look), and this model with its audio zeroed (a model that does
# not listen). The gap between the first row and "audio zeroed" is what the sound contributes.

# %%
rows = evaluation_table(model, test, config)
table = pd.DataFrame(rows).round(3)
table

# %%
save_metrics(run_dir, {"test": result["test"], "best_epoch": result["best_epoch"], "table": rows})["test"]
