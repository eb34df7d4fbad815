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
# # 04 · Audio representations: t-SNE, UMAP and a linear probe (DDESeg Fig. 6)
#
# DDESeg's Fig. 6 shows t-SNE maps of audio features for the baseline, with derivation, and the
# full model, and a linear probe that classifies audio-visual events from them. We redo it on the
# default world. The representation of a frame is the mean of the audio tokens that enter the last
# stage (after elimination for the full model); for the baseline it is the projected F_a itself.
# The frames are single-source (S4) test frames, so each has one class to colour by. The probe
# standardises each feature first: elimination multiplies the tokens by its scores, which can make
# them tiny without removing any information, and a linear probe should not depend on that scale.

# %% tags=["parameters"]
data_root = "data/default_world"  # relative paths are read from the repository root
settings = ["baseline", "derivation", "full"]
image_size = 96
train_epochs = 2
perplexity = 20
seed = 0
run_dir = ""  # empty: runs/notebooks/04_tsne_probe/ under the repository root

# %%
import json
from pathlib import Path

import numpy as np
import plotly.express as px
import torch
from openTSNE import TSNE
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from umap import UMAP

from avs_lib.paths import notebook_paths
from avs_lib.plots import embedding_figure, write_interactive_html
from avs_lib.train import load_config, load_trained, normalise, prepare, train_once

data_root, run_dir = notebook_paths(data_root, run_dir, '04_tsne_probe')

figures = run_dir / "figures"
base = load_config(None, [f"data_root={data_root}", "layout=ms3", f"image_size={image_size}", f"epochs={train_epochs}",
                          f"seed={seed}", "progress=false"])
prepared = prepare(base)
classes = prepared.memory.class_names
# the probe and the maps use single-source frames, where the class is unambiguous
s4 = load_config(None, [f"data_root={data_root}", "layout=s4", f"image_size={image_size}", "progress=false"])
s4_sets = prepare(s4)


@torch.no_grad()
def representations(model, frames):
    out = model(normalise(frames.images), frames.audio)
    return out.tokens[-1].mean(dim=1).numpy()  # [N, d]: mean of the tokens entering stage 4


def labels_of(frames):
    return np.array([classes.index(c) for c in frames.categories])


# %%
features, probe_f1 = {}, {}
for setting in settings:
    from dataclasses import replace
    config = replace(base, ablation=setting, model="ddeseg", out=str(Path(run_dir) / f"model_{setting}"))
    train_once(config, prepared)
    model, _, _ = load_trained(Path(config.out) / "best.pt", prepared)
    train_x, test_x = representations(model, s4_sets.train), representations(model, s4_sets.test)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(train_x, labels_of(s4_sets.train))
    probe_f1[setting] = f1_score(labels_of(s4_sets.test), probe.predict(test_x), average="macro")
    features[setting] = test_x
    print(f"{setting}: token scale {np.abs(test_x).mean():.2e}, probe macro-F1 {probe_f1[setting]:.3f}")
probe_f1

# %% [markdown]
# ## t-SNE (openTSNE) and UMAP
# Each dot is one single-source test frame, coloured by the class that sounds. Tighter, better
# separated colours mean audio representations that name their class more clearly. Small tight
# clumps are usually the five frames of one clip (one recording, five neighbouring seconds): they
# show that a representation recognises a recording, not yet that it groups a class.

# %%
labels = labels_of(s4_sets.test)
scaled = {s: StandardScaler().fit_transform(f) for s, f in features.items()}  # same reason as for the probe
tsne = {s: np.asarray(TSNE(perplexity=perplexity, random_state=seed).fit(f)) for s, f in scaled.items()}
umap = {s: UMAP(random_state=seed).fit_transform(f) for s, f in scaled.items()}
embedding_figure(tsne, labels, classes, figures / "tsne.png", method="t-SNE");
embedding_figure(umap, labels, classes, figures / "umap.png", method="UMAP");

# %% [markdown]
# The same t-SNE maps, interactive (hover for the clip), saved as HTML beside the run.

# %%
import pandas as pd
rows = pd.concat([pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "setting": s, "class": [classes[l] for l in labels],
                                "clip": s4_sets.test.clips}) for s, xy in tsne.items()])
interactive = px.scatter(rows, x="x", y="y", color="class", facet_col="setting", hover_data=["clip"], height=420,
                         color_discrete_sequence=px.colors.qualitative.Alphabet)  # 26 distinct colours
write_interactive_html(interactive, figures / "tsne.html")
interactive

# %%
metrics = {"probe_f1": probe_f1, "settings": settings}
Path(run_dir, "metrics.json").write_text(json.dumps(metrics, indent=1))
metrics
