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
# # 03 · Dynamic elimination (DDESeg Eq. 13-17)
#
# Not every derived token has a match in the frame: a dog may bark off screen. Elimination assigns
# every visual feature to a few learnable visual centres (Eq. 13-14), lets the audio tokens attend
# to the centres (Eq. 15), scores each token (Eq. 16) and weakens the tokens that score low
# (Eq. 17). Because this world knows every clip's true sources, we can check the scores against the
# truth: **in each frame, does a token whose class sounds on screen score higher than one whose
# class is off screen or silent?**
#
# The paper leaves several choices open; the default model takes the reading that allows a frame's
# tokens to get different scores (whether a trained model makes use of that is what the sections
# below measure; randn centres, Eq. 14 as printed, a residual around Eq. 15, and the
# score acting on the token's attention in the fusion blocks). Set
# `variant = "released"` for the authors' code, and `capacity_check > 0` to train with the world's
# on/off-screen labels (the other switches named below, such as `centre_update` or
# `elimination_residual`, are set on a training, `avs train ... switches.NAME=VALUE`, or with
# notebook 05's `switches` parameter), a check OUTSIDE THE PAPER of whether the module can separate when told
# (README, "Notes and choices").

# %% tags=["parameters"]
config_file = "configs/tiny_world.yaml"  # the model notebooks 02-05 share (trained once, kept in the data's cache)
data_root = "data/default_world"  # relative paths are read from the repository root
layout = "ms3"
image_size = 0  # 0: the config's
train_epochs = 0  # 0: the config's
visual_pretrain_steps = 0  # 0: the config's (batches of the world's visual pretraining, cached per world)
checkpoint = ""
variant = "paper"  # "paper" or "released"
capacity_check = 0.0  # > 0: auxiliary on/off-screen loss (outside the paper)
frame_index = 0
taus = [0.25, 1.0, 4.0]
boot = 1000  # bootstrap draws for the 95 % intervals
seed = 0
run_dir = ""  # empty: runs/notebooks/03_elimination/ under the repository root

# %%
from avs_lib.core.kernels import use_portable_kernels

use_portable_kernels()  # first, before NumPy and torch: the CPU kernels `avs` runs, also when opened by hand

import pandas as pd

from avs_lib.analysis.inspect import (INSPECTION_NAMES, elimination_analysis, elimination_auc, stage_token_scores,
                                      tau_sweep, token_separation)
from avs_lib.analysis.findings import elimination_finding, separation_finding, spread_finding, sweep_finding
from avs_lib.analysis.truth import token_categories
from avs_lib.core.config import load_config
from avs_lib.core.paths import notebook_paths, workbench_path
from avs_lib.experiments.notebooks import save_metrics
from avs_lib.models.hooks import run_with_cache
from avs_lib.training.loop import train_or_load
from avs_lib.training.runs import shared_run_dir
from avs_lib.viz.plots import assignment_overlay, roc_figure, stage_score_distributions

data_root, run_dir = notebook_paths(data_root, run_dir, '03_elimination')

# a given checkpoint is loaded; otherwise the config's model is trained once into the data's cache
# (shared_run_dir: notebooks 02-05 asking for the same training share one model)
overrides = {k: v for k, v in {"image_size": image_size, "epochs": train_epochs,
                               "visual_pretrain_steps": visual_pretrain_steps}.items() if v}
config = load_config(workbench_path(config_file), data_root=data_root, layout=layout, seed=seed, variant=variant,
                     capacity_check=capacity_check, progress=False, **overrides)
model, config, prepared = train_or_load(checkpoint, config, out=shared_run_dir(config))
test = prepared.test
figures = run_dir / "figures"

# %% [markdown]
# ## Soft clustering of the visual features (Eq. 13-14)
#
# Every visual feature $V_n$ of a stage is assigned to $K_c$ learnable centres $C_v$ with a
# Gumbel-softmax (`avs_lib.models.elimination.gumbel_soft_assignment`; no noise in eval mode):
#
# $$O = \mathrm{softmax}\big((V C_v^\top + g)/\tau\big), \qquad g \sim \mathrm{Gumbel}(0, 1) \tag{13}$$
#
# and the centres are refined (`DynamicElimination.forward`): as printed,
#
# $$C_v \leftarrow O\, C_v \tag{14}$$
#
# which gives one reconstruction per pixel ($O C_v \in \mathbb{R}^{N \times d}$); the switch
# `centre_update="assigned_mean"` reads it as $C_v'[k] = \sum_n O_{nk} V_n / \sum_n O_{nk}$ instead.
# Below: each centre's share $O_{:,k}$ over the frame, at the first stage that eliminates.

# %%
# every activation by name (avs_lib.models.hooks): the frame's assignments at every stage that eliminates
one_frame = run_with_cache(model, test, names=["stage*.elimination.assignment"], indices=[frame_index])
first_name = next(iter(one_frame))  # names come in forward order: the first stage that eliminates
first_stage = int(first_name.split(".")[0][len("stage"):])
assignment_overlay(test.images[frame_index].permute(1, 2, 0).numpy(), one_frame[first_name][0].numpy(),
                   one_frame.hw(first_stage), test.masks[frame_index].numpy(), figures / "assignment_maps.png",
                   title=f"stage {first_stage}: soft assignment O (Eq. 13)");

# %% [markdown]
# Centres that each take a different part of the frame (an object, the background) give Eq. 15
# distinct keys to attend to; centres that all take the same pixels, or one centre that takes every
# pixel, leave the keys alike, and then the scores cannot tell a frame's tokens apart.
#
# ## Scores per stage (Eq. 15-16)
#
# The audio tokens $\hat A$ attend to the centres (multi-head cross-attention, with the token added
# back when `elimination_residual` is on) and an MLP scores each token
# (`DynamicElimination.forward`; hook points `stage{i}.elimination.scores`, collected per stage by
# `avs_lib.analysis.inspect.stage_token_scores`):
#
# $$F_{av} = \mathrm{MCA}(\hat A, C_v) \tag{15}$$
#
# $$S = \sigma\big(\mathrm{MLP}(F_{av})\big) \in [0, 1]^K \tag{16}$$
#
# (the released reading: a softmax over the K tokens instead of the sigmoid). Each panel shows the
# scores of every test token, split by what the world says its class does in the frame.

# %%
# one pass over the test split gives every activation the analyses below read
cache = run_with_cache(model, test, names=INSPECTION_NAMES, strict=False)
classes, stage_scores = stage_token_scores(cache, test)
categories = token_categories(test, classes)
stage_score_distributions({k: v.numpy() for k, v in stage_scores.items()}, categories,
                          figures / "score_distributions.png");

# %% [markdown]
# Green clouds above red and grey ones mean the stage keeps on-screen tokens and weakens the others;
# clouds at the same height mean the scores do not depend on what the frame shows; a whole stage
# pressed towards 0 means it switches the audio off rather than choosing.
#
# ## Do the scores differ within a frame?
#
# Elimination can only choose between sources if the K scores of one frame differ. The spread of
# the scores across a frame's tokens, averaged over frames (`avs_lib.analysis.inspect.score_spread`): the
# standard deviation of $S$, its range, and the standard deviation of $\log S$ (the spread of what
# the tokens get in fusion: a factor $S$ on their write-back weights with the main job's audio
# queries, a log-bias $\log S$ on their logits with visual ones).

# %%
analysis = elimination_analysis(cache, test, boot=boot, seed=seed)
spread = pd.DataFrame({stage: a["spread"] for stage, a in analysis.items()}).T
print(spread_finding({stage: a["spread"] for stage, a in analysis.items()}))
spread

# %% [markdown]
# A per-frame gate, one score for all tokens, has all three columns near 0; values of the order of
# the scores themselves mean the frame's tokens are weighed differently.
#
# ## Is there anything to choose between?
#
# Scores that do not differ may be the module's failure, or the loss's indifference: if the K
# tokens derivation gives a frame are nearly one vector, keeping or dropping one changes little
# for the segmentation loss. `avs_lib.analysis.inspect.token_separation` measures it on the test frames:
# the mean distance between two tokens of one frame, the tokens' norm, and the mean distance
# between the mean tokens of two frames (after Eq. 8, `derived`, and after Eq. 12, `enhanced`,
# the tokens that elimination scores).

# %%
separation = token_separation(cache, test)
print(separation_finding(separation))
pd.DataFrame(separation).T

# %% [markdown]
# A within-frame distance far below the between-frame one (a small `ratio`) says the frame's tokens
# are variations of one audio feature: the frame's sound moves them together, its sources barely
# move them apart.
#
# ## Elimination against the truth (Eq. 17)
#
# The scores weaken the tokens (`avs_lib.models.ddeseg.DDESeg.forward`):
#
# $$\hat A \leftarrow S \cdot \hat A \tag{17}$$
#
# either literally (`elimination_apply="scale"`) or, by default, on the token's attention in every
# fusion block: with the tokens as the fusion's queries (the main job's `fusion_query: audio`) $S$
# multiplies the weights with which the token writes into the frame's cells, and with the cells as
# the queries (`fusion_query: visual`) $\log S$ is added to the token's attention logit beside a null
# key. Either way a token with $S \to 0$ leaves the fusion.
# The within-frame AUC compares, in each frame, every token whose class sounds on screen with every
# token whose class is off screen only or silent (0.5: no choice between a frame's tokens), with a
# bootstrap 95 % interval over clips; the pooled AUC pools on-screen and off-screen-only tokens over
# all frames, so a gate that only varies from frame to frame can score well on it
# (`avs_lib.analysis.inspect.elimination_analysis`). An AUC away from 0.5 is an order among the
# scores, and an order can be kept by scores that differ in the sixth digit: each stage's sentence
# weighs it against that stage's spread of $\log S$ above, and where the spread is under 0.1 (the
# tokens weighted alike) it says the order chooses nothing.

# %%
table = pd.DataFrame({stage: {"within-frame AUC": a["within_frame"]["auc"],
                              "95 % CI": a["within_frame"]["ci95"],
                              "frames": a["within_frame"]["frames"], "pairs": a["within_frame"]["pairs"],
                              "clips": a["within_frame"]["clips"],
                              "vs off screen only": a["within_frame_offscreen"]["auc"],
                              "vs silent": a["within_frame_silent"]["auc"], "pooled AUC": a["pooled"]["auc"]}
                      for stage, a in analysis.items()}).T
for stage, a in analysis.items():
    print(elimination_finding(stage, a["within_frame"], a["spread"]))
table

# %% [markdown]
# An interval that contains 0.5 says that, at this stage, the test set cannot tell the scores from a
# coin flip between a frame's tokens. The two columns after the counts split the negatives: tokens
# whose class sounds off screen (what elimination is for) and tokens whose class is silent or absent
# (a wrong derivation, which the audio alone can give away). The ROC curve of the pooled AUC (the scores a token carries
# into the last stage):

# %%
result = elimination_auc(cache, test)
print(f"pooled AUC {result['auc']:.3f} over {result['positives']} on-screen and {result['negatives']} "
      "off-screen-only tokens")
roc_figure(result["labels"], result["scores"], "elimination scores (pooled)", figures / "elimination_roc.png");

# %% [markdown]
# A curve on the diagonal ranks on-screen and off-screen tokens no better than chance.
#
# ## The temperature tau
# $\tau$ in Eq. 13 sharpens (small) or flattens (large) the assignment. The model was trained at
# its own $\tau$; `avs_lib.analysis.inspect.tau_sweep` changes it at evaluation only, with a hook
# that scales $V C_v^\top$ (`stage{i}.elimination.logits`) by the model's $\tau$ over the new one: the
# model itself is not modified.

# %%
tau_auc = tau_sweep(model, test, taus)
print(sweep_finding("The pooled elimination AUC", tau_auc))
tau_auc

# %% [markdown]
# An AUC that does not move with $\tau$ says the scores do not depend on how the frame is clustered.

# %%
metrics = {"auc": result["auc"], "positives": result["positives"], "negatives": result["negatives"],
           "auc_by_tau": {str(k): v for k, v in tau_auc.items()},
           "within_frame": {stage: a["within_frame"] for stage, a in analysis.items()},
           "within_frame_offscreen": {stage: a["within_frame_offscreen"] for stage, a in analysis.items()},
           "within_frame_silent": {stage: a["within_frame_silent"] for stage, a in analysis.items()},
           "pooled_auc": {stage: a["pooled"]["auc"] for stage, a in analysis.items()},
           "spread": {stage: a["spread"] for stage, a in analysis.items()},
           "token_separation": separation, "variant": variant, "capacity_check": capacity_check}
save_metrics(run_dir, metrics)
