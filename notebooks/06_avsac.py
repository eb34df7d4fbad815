# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · AVSAC against DDESeg, and what the AVFS loss does
#
# AVSAC's bidirectional decoder lets the audio branch attend to vision and vision to audio in
# every layer; its frame-wise synchrony loss (AVFS, a KL divergence between audio and audio-guided
# visual features) pushes the visual features to carry the audio. We train AVSAC with and without
# AVFS and DDESeg on the same world and compare.

# %% tags=["parameters"]
data_root = "data/default_world"
epochs = 3
seed = 0
image_size = 96
avfs_weights = [1.0, 0.0]
run_dir = "."

# %%
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from avs_lib.train import load_config, prepare, train

base = load_config("configs/tiny_world.yaml", [f"data_root={data_root}", f"epochs={epochs}", f"seed={seed}",
                                                f"image_size={image_size}", "progress=false"])
prepared = prepare(base)
rows = []
for weight in avfs_weights:
    config = replace(base, model="avsac", ablation=None, avfs_weight=weight, out=str(Path(run_dir) / f"avsac_avfs{weight}"))
    r = train(config, prepared)["test"]
    rows.append({"model": f"AVSAC, AVFS weight {weight}", "J": r["J"], "F": r["F"], "J&F": r["JF"]})
r = train(replace(base, out=str(Path(run_dir) / "ddeseg")), prepared)["test"]
rows.append({"model": "DDESeg (full)", "J": r["J"], "F": r["F"], "J&F": r["JF"]})
table = pd.DataFrame(rows)
table

# %%
Path(run_dir, "metrics.json").write_text(json.dumps({"table": rows}, indent=1))
