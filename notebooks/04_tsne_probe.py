# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Audio representations: t-SNE, UMAP and a linear probe (DDESeg Fig. 6)
#
# DDESeg's Fig. 6 asks whether derivation and elimination give the audio a representation that
# names its class better: t-SNE maps of the audio features of the baseline, with derivation, and of
# the full model, and a linear probe that classifies events from them (the paper reports an
# 11-point macro-F1 gain for the full model). We redo it on the default world with
# `avs_lib.analysis.probe`. The representation of a frame is the mean of the K audio tokens that enter the
# last stage,
#
# $$r = \frac{1}{K}\sum_{i=1}^{K} \hat a_i^{(4)},$$
#
# (for the baseline the single projected $F_a$), computed on single-source (S4) frames so that
# each frame has one class to colour by and to predict. With the default
# `elimination_apply="log_bias"` the full model's elimination acts on the fusion's attention (S
# scales a token's write-back weights with the main job's audio queries, log S is added to its
# logit with visual ones), so the tokens read here are the enhanced tokens, unscaled; with
# `elimination_apply="scale"` (Eq. 17 read literally) they are the tokens multiplied by S, which can
# make them tiny without removing any information. Each feature is standardised first, so that
# neither the maps nor the probe depend on that scale.

# %% tags=["parameters"]
config_file = "configs/tiny_world.yaml"  # the model notebooks 02-05 share (trained once, kept in the data's cache)
data_root = "data/default_world"  # relative paths are read from the repository root
settings = ["baseline", "full"]  # any of baseline, derivation, enhancement, full
image_size = 0  # 0: the config's
train_epochs = 0  # 0: the config's
visual_pretrain_steps = 0  # 0: the config's (batches of the world's visual pretraining, cached per world)
perplexity = 20
seed = 0
run_dir = ""  # empty: runs/notebooks/04_tsne_probe/ under the repository root

# %%
from avs_lib.core.kernels import use_portable_kernels

use_portable_kernels()  # first, before NumPy and torch: the CPU kernels `avs` runs, also when opened by hand

from dataclasses import replace
from pathlib import Path

import pandas as pd
import plotly.express as px

from avs_lib.analysis.findings import probe_finding
from avs_lib.analysis.probe import class_labels, last_stage_representation, linear_probe_f1, maps_2d
from avs_lib.core.config import load_config
from avs_lib.core.paths import notebook_paths, workbench_path
from avs_lib.experiments.notebooks import save_metrics
from avs_lib.training.loop import train_once
from avs_lib.training.predict import load_trained
from avs_lib.training.prepare import prepare
from avs_lib.training.runs import shared_run_dir
from avs_lib.viz.plots import embedding_figure, write_interactive_html

data_root, run_dir = notebook_paths(data_root, run_dir, "04_tsne_probe")

figures = run_dir / "figures"
overrides = {k: v for k, v in {"image_size": image_size, "epochs": train_epochs,
                               "visual_pretrain_steps": visual_pretrain_steps}.items() if v}
base = load_config(workbench_path(config_file), data_root=data_root, layout="ms3", seed=seed, progress=False,
                   **overrides)
prepared = prepare(base)  # the models train on MS3 (mixtures), as in the other notebooks
classes = prepared.memory.class_names
s4_sets = prepare(replace(base, layout="s4"))
train_y, test_y = class_labels(s4_sets.train, classes), class_labels(s4_sets.test, classes)

# %% [markdown]
# ## The linear probe
# One model per setting (trained once; a second Run All reuses them), then a logistic regression
# fitted on the S4 training frames' representations and scored on the S4 test frames
# (`linear_probe_f1`, macro-F1 over the classes). Chance is about 1/C.

# %%
features, probe_f1 = {}, {}
for setting in settings:
    config = replace(base, ablation=setting, model="ddeseg")
    config = replace(config, out=str(shared_run_dir(config)))  # "full" is the model of notebooks 02, 03 and 05
    train_once(config, prepared)
    model, _, _ = load_trained(Path(config.out) / "best.pt", prepared)
    train_x = last_stage_representation(model, s4_sets.train)
    features[setting] = last_stage_representation(model, s4_sets.test)
    probe_f1[setting] = round(linear_probe_f1(train_x, train_y, features[setting], test_y), 4)
print(probe_finding(probe_f1, 1 / len(classes)))
pd.Series(probe_f1, name="probe macro-F1").to_frame()

# %% [markdown]
# What to look for: the paper's claim is that the full model's row is clearly above the
# baseline's. Differences of a few points between single training runs are within the spread across
# seeds; `avs sweep` over seeds measures it.
#
# ## t-SNE (openTSNE) and UMAP
# Each dot is one single-source test frame, coloured by the class that sounds. Tighter, better
# separated colours mean audio representations that name their class more clearly. Small tight
# clumps are usually the five frames of one clip (one recording, five neighbouring seconds): they
# show that a representation recognises a recording, not yet that it groups a class.

# %%
maps = maps_2d(features, perplexity, seed)
embedding_figure(maps["t-SNE"], test_y, classes, figures / "tsne.png", method="t-SNE");
embedding_figure(maps["UMAP"], test_y, classes, figures / "umap.png", method="UMAP");

# %% [markdown]
# The same t-SNE maps, interactive (hover for the clip), saved as HTML beside the run.

# %%
rows = pd.concat([pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "setting": s, "class": [classes[c] for c in test_y],
                                "clip": s4_sets.test.clips}) for s, xy in maps["t-SNE"].items()])
interactive = px.scatter(rows, x="x", y="y", color="class", facet_col="setting", hover_data=["clip"], height=420,
                         color_discrete_sequence=px.colors.qualitative.Alphabet)  # 26 distinct colours
write_interactive_html(interactive, figures / "tsne.html")
interactive

# %%
save_metrics(run_dir, {"probe_f1": probe_f1, "settings": settings})
