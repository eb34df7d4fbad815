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
# # 05 · Training DDESeg, inside the window
#
# Train a configuration (any YAML in `configs/` plus overrides), watch the learning curve, place
# the model between a **floor** and a **ceiling**, look at its masks and at where its audio tokens
# attend, and evaluate it in the three metric conventions. The loss is DDESeg's Eq. 18
# (`avs_lib.training.losses.ddeseg_loss`) on the predicted mask $M$ and the ground truth $Y$:
#
# $$\mathcal{L} = 5\,\mathcal{L}_{Dice}(M, Y) + 5\,\mathcal{L}_{BCE}(M, Y) + 2\,\mathcal{L}_{IoU}(M, Y).$$
#
# The optimiser is AdamW with a linear warm-up and a cosine decay (`avs_lib.training.loop`); a second Run All
# reuses the trained models.

# %% tags=["parameters"]
config_file = "configs/tiny_world.yaml"  # the model notebooks 02-05 share (trained once, kept in the data's cache)
data_root = "data/default_world"  # relative paths are read from the repository root
epochs = 0  # 0: the config's
seed = 0
image_size = 0  # 0: the config's
visual_pretrain_steps = 0  # 0: the config's (batches of the world's visual pretraining, cached per world)
attention_supervision = 0.0  # OUTSIDE THE PAPER: > 0 asks the fusion attention to point (docs/findings.md, "The window")
outline_weight = 0.0  # OUTSIDE THE PAPER: > 0 adds a BCE over the pixels near the true outlines (figures/decoder_pixel/)
switches = {}  # model switches over the config's, e.g. {"fusion_query": "visual"} (docs/findings.md, "Which side asks in the fusion attention")
headroom_rows = ["floor", "oracle"]  # trained beside the model: "floor", "oracle", "oracle-heard"
run_dir = ""  # empty: runs/notebooks/05_training/ under the repository root

# %%
from avs_lib.core.kernels import use_portable_kernels

use_portable_kernels()  # first, before NumPy and torch: the CPU kernels `avs` runs, also when opened by hand

from dataclasses import replace
from pathlib import Path

import pandas as pd
from IPython.display import display

from avs_lib.analysis.evaluation import (attention_interventions, blanking_interventions, decoder_stride,
                                         evaluation_table, headroom, resolution_bound)
from avs_lib.analysis.findings import against_reference
from avs_lib.analysis.inspect import attention_anatomy, peak_places, pointing_accuracy
from avs_lib.core.config import load_config
from avs_lib.core.paths import notebook_paths, workbench_path
from avs_lib.data.datasets import world_frame_size
from avs_lib.experiments.notebooks import save_metrics
from avs_lib.models.hooks import run_with_cache
from avs_lib.training.loop import late_gain, late_trend, train_once
from avs_lib.training.predict import load_trained
from avs_lib.training.prepare import prepare
from avs_lib.training.runs import shared_run_dir
from avs_lib.viz.plots import (attention_anatomy_figure, blanking_figure, choice_outline_figure, headroom_figure,
                                peak_places_figure, qualitative, training_curves)

data_root, run_dir = notebook_paths(data_root, run_dir, "05_training")

figures = run_dir / "figures"
overrides = {k: v for k, v in {"epochs": epochs, "image_size": image_size, "visual_pretrain_steps": visual_pretrain_steps,
                               "attention_supervision": attention_supervision, "outline_weight": outline_weight,
                               "switches": switches}.items() if v}
config = load_config(workbench_path(config_file), data_root=data_root, seed=seed, progress=False, **overrides)
config = replace(config, out=str(shared_run_dir(config)))
prepared = prepare(config)
result = train_once(config, prepared)
training_curves(result["history"], figures / "training_curves.png")
gain = late_gain(result["history"])
trend = late_trend(result["history"])
print(f"{len(prepared.train)} training frames, {config.epochs} epochs; validation J&F gained "
      + (f"{gain:+.3f} over the last 20 % of the frames seen: the curve is "
         + ("flat where training stops." if gain < 0.01 else "still rising: more training would help.")
         if gain is not None else "(too few validation points to tell)"))
if trend is not None:
    print(against_reference(
        f"late_trend (mean of the last 20 %'s {trend['late']} readings minus mean of the {trend['before']} "
        "in the 20 % before them)",
        trend["gain"], trend["ci95"], 0.01,
        above="still rising by more than a point (1 point = 0.01 J&F) where training stops.",
        below="flat where training stops: the gain's whole interval lies under a point.",
        inside="the interval contains a point's gain, so these readings cannot tell flat from rising."))

# %% [markdown]
# Left: the training loss between validations (`validations_per_epoch` per epoch; dots: each
# epoch's mean); right: the **learning curve**, validation J&F against the training frames seen,
# with J (mean IoU) and F ($\beta^2 = 0.3$) at each epoch's end. The weights evaluated below are
# those at the end of the epoch whose end-of-epoch validation was best (the points inside an epoch
# draw the curve; they never choose the weights). A curve still rising at the end says more training would help; one that falls
# while the loss falls says over-fitting.
#
# Two readings of "still rising" are printed. `late_gain` is the best reading in the last 20 % of
# the frames seen minus the reading where that part starts; since it takes a maximum, a flat curve
# whose readings scatter by $\sigma$ still shows a gain of about $1.27\sigma$ with six late readings.
# `late_trend` compares the mean of the last 20 %'s readings with the mean of the 20 % before, with
# a 95 % interval from their scatter: zero on average on a flat curve, slightly high on one that is
# bending toward flat. Its verdict sets that interval against the target of one point: "flat" only
# when the whole interval lies under 0.01, "still rising" only when it lies wholly above.
#
# ## The window: floor, model, ceiling
# A comparison of models can only be read inside the range the data allows. Two instruments bound
# it, each trained exactly like the model (`avs_lib.analysis.evaluation.headroom`):
#
# * the **floor**: the same training with the audio zeroed (`zero_audio=true`), a model that never
#   hears; it can still learn which objects tend to sound;
# * the **ceiling**: the same training with an **oracle** audio input (`audio_encoder=oracle`): for
#   each frame the multi-hot vector of the classes sounding on screen, read from the world's true
#   sources (`OracleAudio`). `oracle-heard` adds the classes heard off screen: a perfect derivation
#   with nothing eliminated, which elimination has to clean up.
#
# Headroom = ceiling $-$ floor. Intervals are 95 % bootstrap intervals resampling whole test clips.
#
# Above the ceiling sits a bound no training reaches past: the **resolution bound**
# (`avs_lib.analysis.evaluation.resolution_bound`), the truth itself seen at the decoder's
# resolution (each mask averaged over the decoder's stride x stride cells, upsampled bilinearly as
# the model's logits are, cut at 0.5). A ceiling close to it says the frame size, not the audio or
# the training, is what limits the scores.

# %%
model, config, _ = load_trained(Path(config.out) / "best.pt", prepared)
# a composed world records where each object is: each row then also says where its errors are (below)
source_size = world_frame_size(data_root) if (Path(data_root) / "world.json").exists() else None
rows = headroom(config, model, prepared, rows=tuple(headroom_rows), source_size=source_size)
headroom_figure(rows, figures / "headroom.png")
by_row = {r["row"]: r for r in rows}
window = pd.DataFrame([{"row": r["what"], "test J&F": r["JF"], "95 % low": r["ci95"][0], "95 % high": r["ci95"][1]}
                       for r in rows]).round(3)
if "floor" in by_row and "oracle" in by_row:
    floor, ceiling, ours = by_row["floor"]["JF"], by_row["oracle"]["JF"], by_row["model"]["JF"]
    print(f"Headroom {ceiling - floor:.3f} (ceiling {ceiling:.3f}, floor {floor:.3f}); the model reaches {ours:.3f} "
          f"[{by_row['model']['ci95'][0]:.3f}, {by_row['model']['ci95'][1]:.3f}], "
          f"{(ours - floor) / max(1e-9, ceiling - floor):.0%} of the way from the floor to the ceiling.")
stride = decoder_stride(model, config.image_size)
bound = resolution_bound(prepared.test, stride)
print(f"Resolution bound at {config.image_size} px, decoder stride {stride}: J&F {bound['JF']:.3f} "
      f"(J {bound['J']:.3f}, F {bound['F']:.3f}).")
window

# %% [markdown]
# ## Which objects, or their outlines?
# A row can lose points in two ways: it segments the wrong objects (misses one that sounds, takes
# one that is silent), or it draws the right ones badly. The world's boxes tell them apart
# (`avs_lib.analysis.evaluation.choice_and_outline`): a sounding object counts as *found* when the
# prediction covers at least half of it, a silent one as *taken* when the prediction covers at
# least 30 % of its box outside the sounding pixels. Each row is then scored twice more:
#
# * **choices fixed**: the missed objects added (with their true outlines) and the taken silent
#   ones removed, the other outlines as drawn: what perfect listening would give with this model's masks;
# * **outlines fixed**: each found object drawn exactly, the choices as made: what perfect masks
#   would give with this model's listening.
#
# Where "choices fixed" jumps, the row is limited by what it hears; where "outlines fixed" jumps, by
# how it draws. The floor should be limited by choice (it cannot hear), the ceiling by outline (it
# is told which classes sound).

# %%
errors = None
if all("errors" in r for r in rows):
    errors = pd.DataFrame([{"row": r["what"], "J&F": r["errors"]["JF"], "choices fixed": r["errors"]["choice_fixed_JF"],
                            "outlines fixed": r["errors"]["outline_fixed_JF"], "sounding found": r["errors"]["found"],
                            "sounding missed": r["errors"]["missed"],
                            "silent taken": f"{r['errors']['taken']} of {r['errors']['silent']}"} for r in rows]).round(3)
    choice_outline_figure(rows, figures / "choice_outline.png", bound=bound["JF"])
    display(errors)

# %% [markdown]
# ## Predictions, and where the audio tokens attend
# For four test frames: the frame; the prediction against the truth (green: true positives, red:
# false positives, blue: false negatives; the frame's IoU above it); and where each derived audio
# token's cross-attention goes in the last fusion block of stage 1, titled with the class the token
# was derived from. A token whose map lights up the object of its class is one the fusion uses as
# DDESeg intends.
#
# **Pointing accuracy** (`avs_lib.analysis.inspect.pointing_accuracy`) turns that into a number over the
# whole test split: for each object sounding on screen, does the attention map of the token derived
# for its class peak inside the object? An object whose class no token was derived for counts as a
# miss; chance is roughly the share of the frame the object covers.

# %%
test = prepared.test
pick = list(range(0, len(test), max(1, len(test) // 4)))[:4]
# one pass over the test split: the tokens' classes, every fusion block's attention per head, the logits
cache = run_with_cache(model, test, names=["derivation.classes", "stage*.block*.cross_attn.pattern", "logits"],
                       strict=False)
stage1_blocks = [n for n in cache if n.startswith("stage1.block")]
attention, token_names, pointing = None, None, None
if "derivation.classes" in cache and stage1_blocks:
    h, w = cache.hw(1)  # stage 1's grid
    # the last fusion block of stage 1, mean over heads: [4, HW, K] -> [4, K, h, w]
    attention = cache[stage1_blocks[-1]][pick].mean(1).transpose(1, 2).reshape(len(pick), -1, h, w).numpy()
    token_names = [[prepared.memory.class_names[c] for c in row] for row in cache["derivation.classes"][pick].tolist()]
if attention is not None and source_size is not None:  # AVSBench records no boxes to tell objects apart
    pointing = pointing_accuracy(cache, test, source_size)
    best_stage = max((k for k in pointing if k.startswith("stage")), key=pointing.get)
    print(f"Pointing accuracy over {pointing['objects']} sounding objects: "
          + ", ".join(f"{k} {v:.2f}" for k, v in pointing.items() if k.startswith("stage"))
          + f"; {pointing['derived']:.0%} of the objects had a token of their class. The best stage, "
          f"{best_stage}, points inside the sounding object {pointing[best_stage]:.0%} of the time; maps whose "
          f"peaks fell on random cells would score {pointing['chance']:.0%} (chance).")
qualitative(test.images[pick].permute(0, 2, 3, 1).numpy(), test.masks[pick].numpy(), cache["logits"][pick].numpy(), attention,
            figures / "qualitative.png", token_names=token_names);

# %% [markdown]
# ## What the attention marks: where, or which?
# Pointing asks one thing of a map: does its peak land inside its own object? Four measurements say
# what the fusion's attention does when it does not: two read it, two take it away.
#
# **Places** (`avs_lib.analysis.inspect.peak_places`): where the peak of each sounding object's token
# map lands instead: on another sounding object (the token confuses *which* object), in a sounding
# object's box but off its mask (next to a source), in a silent object's box (an object on screen
# that makes no sound in that frame), on the background, or nowhere because no token was derived
# for the class. The bottom bar is chance: the share of the frame each place covers, where a map
# peaking at random would land. A place well above its chance is one the maps seek out; the red
# part of each bar is the pointing accuracy above.
#
# **Anatomy** (`avs_lib.analysis.inspect.attention_anatomy`): around each sounding object, per stage,
# the mean weight a grid cell gets from the object's own token (inside the object and elsewhere in
# the frame) and from each of the frame's other tokens (inside the object). The main job's tokens are
# the queries (`fusion_query: audio` in `configs/tiny_world.yaml`, Sec. 3.3 as printed): each token
# spreads its own attention over the frame, and a cell's weight is how strongly the token writes
# there (0 to 1). Attention that points puts the red bar (own token, inside) far above the orange
# (each other token, inside) and grey (own token, outside) ones; a token that writes everywhere
# but on its object puts grey above red. With the cells as the queries (`-p switches '{"fusion_query": "visual"}'`)
# a cell's weights are shares of one softmax over the tokens and the **null key**, a learned key
# whose value is zero ("take nothing from the audio here"), and the figure adds the null key's share
# inside and outside the object (blue bars): attention that marks only *where* sound is then gives
# the object's cells the same share of every token (red close to orange) and separates the object
# from the background through the null key (the two blue bars apart).
#
# **Interventions** (`avs_lib.analysis.evaluation.attention_interventions`, hooks on
# `stage*.block*.cross_attn.pattern`): test J&F with every fusion pattern **spread over the frame**
# (each cell gets the frame's mean mixture of tokens: how much each token is used stays, where it is
# used goes) and **zeroed** (the visual tokens take nothing from the audio tokens; the audio reaches
# the masks through this attention alone, elimination's scores included, so the prediction no
# longer depends on the audio). If spreading costs more than zeroing, the model has built its
# segmentation on the shape of the attention. A stage's anatomy counts only the objects that fill
# at least half of one of its cells, so the coarse stages 3 and 4 speak for the larger objects.
#
# **Blanking** (`avs_lib.analysis.evaluation.blanking_interventions`): the attention taken away in one
# kind of place only, in every fusion block: the cells of the silent objects' boxes, of the sounding
# objects' boxes, or, as a control, as many random background cells as the silent boxes cover. The
# left panel is the paired change of test J&F; the right one the share of silent objects the model
# takes and of sounding objects it finds. If the attention written into silent objects tells the
# decoder what *not* to segment, blanking the silent boxes makes the model take them (purple bar up)
# far more than the control does; attention that marks what *to* segment loses sounding objects
# (green bar down) when the sounding boxes are blanked.

# %%
places, anatomy, interventions, blanking = None, None, None, None
if pointing is not None:
    places = peak_places(cache, test, source_size)
    peak_places_figure({"this model": places}, figures / "peak_places.png")
    display(pd.DataFrame([{"": key, **shares} for key, shares in places.items() if key != "objects"]).round(3))
    anatomy = attention_anatomy(cache, test, source_size, queries=model.config.fusion_query)
    attention_anatomy_figure(anatomy, figures / "attention_anatomy.png")
    display(pd.DataFrame([{"stage": stage, **values} for stage, values in anatomy.items()]).round(3))
if attention is not None:  # a model with derived tokens and fusion cross-attention, on AVSBench too
    interventions = attention_interventions(model, test, config)
    display(pd.DataFrame([{"intervention": r["intervention"], "test J&F": r["JF"], "95 % low": r["ci95"][0],
                           "95 % high": r["ci95"][1]} for r in interventions]).round(3))
if pointing is not None:  # the places to blank are a composed world's boxes
    blanking = blanking_interventions(model, test, config, source_size)
    blanking_figure(blanking, figures / "blanking.png")
    display(pd.DataFrame([{"blanked": r["intervention"], "test J&F": r["JF"], "paired change": r["delta"],
                           "95 % low": r["delta_ci95"][0], "95 % high": r["delta_ci95"][1],
                           "silent taken": f"{r['errors']['taken']} of {r['errors']['silent']}",
                           "sounding found": f"{r['errors']['found']} of {r['errors']['found'] + r['errors']['missed']}",
                           "cells blanked": r["cells_blanked"]} for r in blanking]).round(3))

# %% [markdown]
# ## Evaluation in every convention, and what a number is worth
# The conventions differ (`avs_lib/analysis/metrics.py`): AVSBench's F depends on the test batch size, the
# dataset-level one sums intersections and unions over the whole set, the default is per frame.
# Two trivial baselines (`avs_lib.analysis.evaluation`) bound what the numbers mean: every pixel predicted
# as sounding (a model that does not look), and this model with its audio zeroed at test time (a
# model that does not listen, though it was trained to). The floor above is the fairer bound: a
# model trained without sound.

# %%
rows_all = evaluation_table(model, test, config)
table = pd.DataFrame(rows_all).round(3)
table

# %%
save_metrics(run_dir, {"test": result["test"], "best_epoch": result["best_epoch"], "table": rows_all,
                       "headroom": {r["row"]: {"JF": r["JF"], "ci95": list(r["ci95"]),
                                               **({"errors": r["errors"]} if "errors" in r else {})} for r in rows},
                       "late_gain": gain, "late_trend": trend, "pointing": pointing, "peak_places": places, "attention_anatomy": anatomy,
                       "attention_interventions": ({r["intervention"]: {"JF": r["JF"], "ci95": list(r["ci95"])}
                                                    for r in interventions} if interventions else None),
                       "attention_blanking": ({r["intervention"]: {"JF": r["JF"], "delta": r["delta"],
                                                               "delta_ci95": list(r["delta_ci95"]),
                                                               "taken": r["errors"]["taken"], "found": r["errors"]["found"],
                                                               "cells_blanked": r["cells_blanked"]}
                                               for r in blanking} if blanking else None),
                       "resolution_bound": {"stride": stride, "JF": bound["JF"], "J": bound["J"], "F": bound["F"]}})["test"]
