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
# # 00 · A tour of the data
#
# An AVS sample is a video frame, the second of sound that goes with it, and a mask of the objects
# that make that sound. The default world is *composed*: real photo cut-outs and real recordings are
# placed on real backgrounds, so we know every source of every sound, including the ones that are
# heard but not seen (off-screen). This notebook shows frames, masks, spectrograms and the true
# sources, and gives you a browser over the clips of every subset.

# %% tags=["parameters"]
data_root = "data/default_world"  # relative paths are read from the repository root
subset = "ms3"
clip_index = 0
run_dir = ""  # empty: runs/notebooks/00_data_tour/ under the repository root

# %%
from avs_lib.core.kernels import use_portable_kernels

use_portable_kernels()  # first, before NumPy and torch: the CPU kernels `avs` runs, also when opened by hand

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Audio, display

from avs_lib.audio.frontends import vggish_log_mel
from avs_lib.core.paths import notebook_paths
from avs_lib.data.datasets import AVSDataset, clip_frames, load_sources
from avs_lib.experiments.notebooks import save_metrics
from avs_lib.viz.plots import overlay_mask, save
from avs_lib.viz.widgets import clip_browser
from avs_lib.world.write import world_roots

data_root, run_dir = notebook_paths(data_root, run_dir, '00_data_tour')

figures = run_dir / "figures"
roots = world_roots(data_root)
path, layout = roots[subset]
dataset = AVSDataset(path, layout, "train")
sources = load_sources(path, layout)
clip = list(clip_frames(dataset, sources))[clip_index]

# %% [markdown]
# ## One clip: frames and masks
# Each frame is tinted where the ground truth says an object sounds. In `ms3` several objects may
# sound at once, some objects are silent, and half of the clips also carry an off-screen source.
# In the default world a sounding object also pauses in some frames (`avs world --ms3-pause`): it
# stays in the picture, but for that second it is silent, so it leaves the mask and the audio.

# %%
samples = [dataset.load_raw(i) for i in clip_frames(dataset, sources)[clip]]
fig, axes = plt.subplots(2, len(samples), figsize=(2.2 * len(samples), 4.4))
for t, s in enumerate(samples):
    axes[0, t].imshow(s["image"]); axes[0, t].set_title(f"frame {t + 1}")
    axes[1, t].imshow(overlay_mask(s["image"], s["mask"]))
for ax in axes.ravel():
    ax.axis("off")
save(fig, figures / "clip_masks.png")

# %% [markdown]
# ## What is heard
# The log-mel spectrogram (VGGish's front end: 25 ms windows, 64 mel bands) of the clip's audio,
# and the audio itself. Then the true sources: which are on screen and which sound.

# %%
wave = np.concatenate([s["audio"] for s in samples])
fig, ax = plt.subplots(figsize=(9, 2.5))
ax.imshow(vggish_log_mel(wave, 16000).T, origin="lower", aspect="auto", cmap="magma")
ax.set_xlabel("10 ms frames"); ax.set_ylabel("mel band")
save(fig, figures / "clip_spectrogram.png")
display(Audio(wave, rate=16000))
record = sources.get(clip, {"sources": []})
for s in record["sources"]:
    print(f"{s['class_name']:18s} {s['member']:16s} on screen: {s['on_screen']!s:5s} sounding: {s['sounding']}")

# %% [markdown]
# ## Browse
# Pick a subset, a split and a clip: its frames with the sounding objects tinted, its audio, and
# its true sources with their roles. The pickers need a live kernel (in an executed notebook the
# browser shows its first clip only).

# %%
clip_browser(data_root)

# %% [markdown]
# ## The numbers of this split
# Clips and frames of the chosen subset's training split, and how many of those clips carry a
# source that is heard but not seen (the sounds DDESeg's elimination is meant to discard).

# %%
train_clips = clip_frames(dataset, sources)
metrics = {"subset": subset, "split": "train", "clips": len(train_clips), "frames": len(dataset),
           "offscreen_clips": sum(any(s["sounding"] and not s["on_screen"] for s in sources[name]["sources"])
                                  for name in train_clips if name in sources)}
save_metrics(run_dir, metrics)
