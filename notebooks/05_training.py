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
# metrics, look at predictions, and evaluate in the three metric conventions. The conventions differ
# (see `avs_lib/metrics.py`): AVSBench's F depends on the test batch size, the dataset-level one sums
# over the whole set, the default is per frame.

# %% tags=["parameters"]
config_file = "configs/tiny_world.yaml"
data_root = "data/default_world"  # relative paths are read from the repository root
epochs = 4
seed = 0
image_size = 96
run_dir = ""  # empty: runs/notebooks/05_training/ under the repository root

# %%
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avs_lib.paths import notebook_paths, workbench_path
from avs_lib.plots import qualitative, training_curves
from avs_lib.train import evaluate_model, load_config, load_trained, normalise, prepare, train_once

data_root, run_dir = notebook_paths(data_root, run_dir, '05_training')

figures = run_dir / "figures"
config = load_config(workbench_path(config_file), [f"data_root={data_root}", f"epochs={epochs}", f"seed={seed}",
                                   f"image_size={image_size}", f"out={Path(run_dir) / 'model'}", "progress=false"])
prepared = prepare(config)
result = train_once(config, prepared)
training_curves(result["history"], figures / "training_curves.png");

# %% [markdown]
# ## Predictions
# For four test frames: the frame; the prediction against the truth (green: true positives, red:
# false positives, blue: false negatives; the frame's IoU above it); and where each derived audio
# token's cross-attention goes in the last block of stage 1, titled with the class the token was
# derived from. A token whose map lights up the object of its class is one the fusion uses as
# DDESeg intends; maps that look alike for every token mean the tokens are not told apart.

# %%
model, config, _ = load_trained(Path(run_dir) / "model" / "best.pt", prepared)
test = prepared.test
pick = list(range(0, len(test), max(1, len(test) // 4)))[:4]
with torch.no_grad():
    out = model(normalise(test.images[pick]), test.audio[pick])
attention = out.attention[0]  # [B, N, K]
side = int(round(attention.shape[1] ** 0.5))
attention = attention.transpose(1, 2).reshape(len(pick), -1, side, side).numpy()
token_names = ([[prepared.memory.class_names[c] for c in row] for row in out.derivation.class_indices.tolist()]
               if out.derivation is not None else None)
qualitative(test.images[pick].permute(0, 2, 3, 1).numpy(), test.masks[pick].numpy(), out.logits.numpy(), attention,
            figures / "qualitative.png", token_names=token_names);

# %% [markdown]
# ## Evaluation in every convention
# Also two trivial baselines: every pixel foreground, and this model with its audio zeroed.

# %%
rows = []
for convention in ("per_frame", "avsbench", "dataset"):
    r = evaluate_model(model, test, torch.device("cpu"), replace(config, convention=convention))
    rows.append({"convention": convention, "J": r["J"], "F": r["F"], "J&F": r["JF"]})
r = evaluate_model(model, test, torch.device("cpu"), replace(config, zero_audio=True))
rows.append({"convention": "per_frame, audio zeroed", "J": r["J"], "F": r["F"], "J&F": r["JF"]})
from avs_lib.metrics import evaluate
keep = test.valid
r = evaluate(torch.full(test.masks[keep].shape, 20.0), test.masks[keep])
rows.append({"convention": "per_frame, all foreground", "J": r["J"], "F": r["F"], "J&F": r["JF"]})
table = pd.DataFrame(rows)
table

# %%
metrics = {"test": result["test"], "best_epoch": result["best_epoch"], "table": rows}
Path(run_dir, "metrics.json").write_text(json.dumps(metrics, indent=1))
metrics["test"]
