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
# # 02 · Dynamic derivation (DDESeg Eq. 5-12): the derived tokens
#
# From one mixed audio feature F_a, derivation picks the K class centres nearest to it, builds an
# edge feature to each, weighs the edges with a softmax, and turns them into compensations that
# move F_a towards each class: K tokens, one per candidate source. Enhancement then scales each
# token using its class's discriminative features. Because this world knows every clip's true
# sources, we can ask: **do the K tokens name the classes that truly sound?**
#
# In the code (`avs_lib/models/derivation.py`), with $\mu^{u_i}$ the $i$-th nearest class centre:
#
# | step | equation | code |
# | --- | --- | --- |
# | Eq. 5 | $u_{1..K} = \operatorname{top-}K_c\,\big(-\lVert F_a-\mu^c\rVert_2\big),\quad e_i = \mathrm{GELU}\big(W_e(\mu^{u_i}-F_a)+b_e\big)$ | `nearest_centres`, `PrototypeDerivation.edge` |
# | Eq. 6 | $w_i = \operatorname{softmax}_i\,(W_{f1}\,e_i)$ over the K centres | `PrototypeDerivation.fusion` |
# | Eq. 7 | $\delta a_{u_i} = \tanh\big(W_{o1}(F_a + w_i e_i) + b_{o1}\big)$ | `PrototypeDerivation.compensation` |
# | Eq. 8 | $a_i = F_a + \delta a_{u_i}$ | `PrototypeDerivation.forward` |
# | Eq. 9-10 | $d_{i,r} = \mathrm{GELU}\big(W_d(x^{u_i}_{\text{rep},r}-a_i)+b_d\big),\quad \beta_{i,r} = \operatorname{softmax}_r(W_{f2}\,d_{i,r})$ over the $k\cdot m$ features | `DiscriminativeEnhancement` |
# | Eq. 11-12 | $\delta a_{c_i} = \tanh\big(W_{o2}\sum_r \beta_{i,r} d_{i,r} + b_{o2}\big),\quad \hat a_i = a_i\,(1+\delta a_{c_i})$ | `DiscriminativeEnhancement.forward` |

# %% tags=["parameters"]
config_file = "configs/tiny_world.yaml"  # the model notebooks 02-05 share (trained once, kept in the data's cache)
data_root = "data/default_world"  # relative paths are read from the repository root
layout = "ms3"
K = 5
image_size = 0  # 0: the config's
train_epochs = 0  # 0: the config's
visual_pretrain_steps = 0  # 0: the config's (batches of the world's visual pretraining, cached per world)
encoder_epochs = 15  # the audio encoder's pretraining length (TrainConfig.encoder_epochs; cached per world)
checkpoint = ""
frame_index = 0
seed = 0
run_dir = ""  # empty: runs/notebooks/02_derivation/ under the repository root

# %%
from avs_lib.core.kernels import use_portable_kernels

use_portable_kernels()  # first, before NumPy and torch: the CPU kernels `avs` runs, also when opened by hand

from pathlib import Path

import pandas as pd
import torch

from IPython.display import Audio, display

from avs_lib.analysis.findings import recall_finding
from avs_lib.analysis.inspect import derivation_recall
from avs_lib.audio.pretrain import prepare_audio_encoder
from avs_lib.audio.pretrain import world_setup
from avs_lib.audio.quality import logit_recall_curve, token_view
from avs_lib.core.config import load_config
from avs_lib.core.paths import notebook_paths, workbench_path
from avs_lib.data.datasets import AVSDataset, read_audio_segment
from avs_lib.experiments.notebooks import save_metrics
from avs_lib.training.loop import train_or_load
from avs_lib.training.runs import shared_run_dir
from avs_lib.viz.plots import recall_curve, token_map
from avs_lib.viz.widgets import derivation_explorer, source_recordings

data_root, run_dir = notebook_paths(data_root, run_dir, '02_derivation')

# a given checkpoint is loaded; otherwise the config's model is trained once into the data's cache
# (shared_run_dir: notebooks 02-05 asking for the same training share one model)
overrides = {k: v for k, v in {"image_size": image_size, "epochs": train_epochs,
                               "visual_pretrain_steps": visual_pretrain_steps}.items() if v}
config = load_config(workbench_path(config_file), data_root=data_root, layout=layout, seed=seed,
                     encoder_epochs=encoder_epochs, switches={"num_tokens": K}, progress=False, **overrides)
model, config, prepared = train_or_load(checkpoint, config, out=shared_run_dir(config))
classes = prepared.memory.class_names
test = prepared.test
trained_k = model.derivation.num_tokens
# the frozen audio encoder (pretrained on the world's stream; cached): its own class logits give
# the ceiling of what any derivation can find
encoder, _, _ = prepare_audio_encoder(data_root, Path(data_root) / "cache", config.audio_dim, config.encoder_epochs)
library, _ = world_setup(data_root)
test_records = AVSDataset(data_root, layout, "test")

# %% [markdown]
# ## One frame, step by step
# The K nearest centres with their distances (Eq. 5), the fusion weights (Eq. 6), the size of each
# compensation (Eq. 7) and of each enhancement offset (Eq. 11), next to each class's truth in the
# clip: **on screen** (seen and sounding), **off screen** (heard, not seen), **silent** (seen, not
# sounding) or **absent** (not in the clip). True classes that were not derived are listed as missed.

# %%
view = token_view(model.derivation, test, frame_index, trained_k, classes)
with torch.no_grad():
    out = model.derivation(test.audio[frame_index:frame_index + 1])
roles = view["roles"]
table = pd.DataFrame({
    "class": [classes[c] for c in view["classes"]],
    "truth": [roles[c] for c in view["classes"]],
    "distance (Eq. 5)": out.distances[0].numpy().round(3),
    "fusion weight (Eq. 6)": out.fusion_weights[0].numpy().round(3),
    "|compensation| (Eq. 7)": out.compensations[0].norm(dim=-1).numpy().round(3),
    "|scale offset| (Eq. 11)": (out.scale_offsets[0].norm(dim=-1).numpy().round(3) if out.scale_offsets is not None else None),
    "token's nearest class": [classes[c] for c in view["token_nearest"]],
})
missed = pd.DataFrame({"class": [classes[c] for c, _ in view["missed"]], "truth": [roles[c] for c, _ in view["missed"]],
                       "distance (Eq. 5)": [round(d, 3) for _, d in view["missed"]]})
sounding = sorted(classes[c] + f" ({r})" for c, r in enumerate(roles) if r in ("on screen", "off screen"))
print(f"{test.clips[frame_index]} frame {test.frames[frame_index] + 1}; truly sounding: {sounding}")
print(f"{len(view['classes']) - sum(roles[c] in ('silent', 'absent') for c in view['classes'])} of the K={trained_k} "
      f"tokens name a class that sounds; {len(view['missed'])} true class(es) missed")
display(table)
missed

# %% [markdown]
# Listen to the frame's mixture and to the recording each of the clip's sources plays (from the
# asset library; the clip loops it from a random point, so it is not time-aligned with the
# mixture). The list holds every source that sounds somewhere in the clip: an ms3 object may pause
# in this frame, and the line "truly sounding" above says which sound in it.

# %%
mixture = read_audio_segment(test_records.records[frame_index], test_records.sample_rate)
print("the frame's mixture (1 s)")
display(Audio(mixture, rate=test_records.sample_rate))
for label, wave in source_recordings(library, test.sources.get(test.clips[frame_index])):
    print(label)
    display(Audio(wave, rate=library.sample_rate))

# %% [markdown]
# ## The tokens on a map of the memory
# The class centres in 2-D (PCA of the centres), the frame's mixture feature F_a (black X), an
# arrow to each derived token before enhancement (Eq. 8, hollow) and after (Eq. 12, filled), each
# numbered (the list under the axes gives each number's nearest class and whether that class
# sounds); on the right each token's distance to its centre, coloured by truth, with its fusion
# weight (Eq. 6) as a dark bar beside it and the missed true classes hatched. This static figure is
# the explorer's view below for the chosen frame, for executed notebooks where widgets do not run.

# %%
token_map(view, Path(run_dir) / "figures" / "token_map.png");

# %% [markdown]
# Tokens start at F_a and move towards their classes: a token that lands near a centre of a class
# that sounds is the derivation working; one that lands near an absent class will carry that
# class's features into the segmentation.
#
# ## Derivation recall as K grows
# For every test frame: the share of its truly sounding classes among the K nearest centres. This
# depends only on the frozen encoder and the memory. Beside it, the ceiling: the same share among
# the encoder's own K highest class logits (what the encoder knows about the mixture), and chance,
# K/C. The model was trained at K = `K`: other K values are what-ifs on that model.

# %%
recalls = [derivation_recall(test, prepared.memory.centroids, k) for k in range(1, len(classes) + 1)]
with torch.no_grad():
    logits = encoder.logits(test.audio) if hasattr(encoder, "logits") else None
ceiling = logit_recall_curve(logits, test) if logits is not None else None
recall_curve(recalls, Path(run_dir) / "figures" / "derivation_recall.png", ceiling=ceiling, num_classes=len(classes),
             trained_k=trained_k);
at_k = next(r for r in recalls if r["K"] == K)
print(f"at K={K}: recall {at_k['recall']:.3f} (on screen {at_k['recall_on_screen']:.3f}), chance {K / len(classes):.3f}"
      + (f", encoder ceiling {ceiling[K - 1]:.3f}" if ceiling else ""))
print(recall_finding(K, at_k["recall"], K / len(classes), ceiling[K - 1] if ceiling else None))

# %% [markdown]
# Where the nearest-centre curve follows the ceiling, the memory loses nothing the encoder knows;
# the distance between the ceiling and 1 is what the encoder itself does not hear in the mixtures.
#
# ## Explorer
# Pick a frame and move K: the map, the bars, the frame and the players follow. Moving K re-runs the
# trained derivation module with a different number of centres: a what-if on a model trained with
# K = `K`.

# %%
explorer = derivation_explorer(model, test, classes, dataset=test_records, library=library)
explorer

# %%
metrics = {"K": K, "recall_at_K": at_k["recall"], "recall_on_screen_at_K": at_k["recall_on_screen"],
           "chance_at_K": K / len(classes), "recall_curve": [r["recall"] for r in recalls]}
if ceiling:
    metrics.update(ceiling_at_K=ceiling[K - 1], ceiling_curve=ceiling)
save_metrics(run_dir, metrics)
