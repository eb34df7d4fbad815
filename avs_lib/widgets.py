"""Interactive explorers for notebooks (ipywidgets + plotly). They need a live kernel; in a
papermill run they render once with their initial values."""
from __future__ import annotations

import numpy as np
import torch


def derivation_explorer(model, frames, class_names: list[str], max_k: int | None = None):
    """A clip picker and a K slider over the derived tokens of one frame: the K nearest class
    centres with their distances and fusion weights (Eq. 5-6), coloured by whether the class truly
    sounds on screen, off screen, or not at all. Returns the widget box (its children: picker,
    slider, figure)."""
    import ipywidgets as widgets
    import plotly.graph_objects as go

    from avs_lib.analysis import true_classes
    from avs_lib.models.derivation import nearest_centres

    derivation = model.derivation
    max_k = max_k or derivation.centroids.shape[0]
    options = [(f"{clip} frame {frame + 1}", i) for i, (clip, frame) in enumerate(zip(frames.clips, frames.frames))]
    picker = widgets.Dropdown(options=options, value=0, description="frame")
    slider = widgets.IntSlider(value=derivation.num_tokens, min=1, max=max_k, description="K")
    figure = go.FigureWidget(layout=dict(height=360, width=720, barmode="group", margin=dict(t=40, b=80)))
    figure.add_bar(name="distance to centre", x=[], y=[], offsetgroup=0)
    figure.add_bar(name="fusion weight (Eq. 6)", x=[], y=[], yaxis="y2", offsetgroup=1)
    figure.update_layout(yaxis=dict(title="Euclidean distance"),
                         yaxis2=dict(title="fusion weight", overlaying="y", side="right", range=[0, 1]))

    def update(*_):
        i, k = picker.value, slider.value
        audio = frames.audio[i:i + 1]
        with torch.no_grad():
            indices, distances = nearest_centres(audio, derivation.centroids, k)
            centres = derivation.centroids[indices]
            _, weights, _ = derivation.derivation(audio, centres)
        on, off = true_classes(frames, i) if frames.sources else (set(), set())
        names = []
        for c in indices[0].tolist():
            tag = "on screen" if c in on else "off screen" if c in off else "silent"
            names.append(f"{class_names[c]}<br>({tag})")
        with figure.batch_update():
            figure.data[0].x, figure.data[0].y = names, distances[0].numpy()
            figure.data[1].x, figure.data[1].y = names, weights[0].numpy()
            figure.layout.title = f"{frames.clips[i]} frame {frames.frames[i] + 1}: K={k} derived tokens"

    picker.observe(update, "value")
    slider.observe(update, "value")
    update()
    return widgets.VBox([widgets.HBox([picker, slider]), figure])


def clip_browser(root):
    """Browse clips of a written world: subset picker and clip slider; frames with masks and sources."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from avs_lib.data.datasets import AVSDataset, load_sources
    from avs_lib.plots import _overlay
    from avs_lib.world.write import world_roots

    import json
    from pathlib import Path

    roots = world_roots(root)
    written = json.loads((Path(root) / "world.json").read_text())["config"]["subsets"]
    datasets = {}
    subset_picker = widgets.Dropdown(options=[s for s in ("s4", "ms3", "avss", "msmi") if s in written], description="subset")
    clip_slider = widgets.IntSlider(value=0, min=0, max=0, description="clip")
    output = widgets.Output()

    def dataset(subset):
        if subset not in datasets:
            path, layout = roots[subset]
            datasets[subset] = (AVSDataset(path, layout, "train"), load_sources(path, layout))
        return datasets[subset]

    def update(*_):
        ds, sources = dataset(subset_picker.value)
        names = list(ds.clips)
        clip_slider.max = len(names) - 1
        name = names[min(clip_slider.value, len(names) - 1)]
        with output:
            output.clear_output(wait=True)
            samples = [ds.load_raw(i) for i in ds.clips[name]]
            fig, axes = plt.subplots(1, len(samples), figsize=(2 * len(samples), 2.2))
            for ax, s in zip(np.atleast_1d(axes), samples):
                ax.imshow(_overlay(s["image"], s["mask"]))
                ax.axis("off")
            fig.suptitle(name)
            plt.show()
            record = sources.get(name, {})
            for s in record.get("sources", []):
                print(f"  {s['class_name']:18s} {s['member']:16s} on screen: {s['on_screen']!s:5s} sounding: {s['sounding']}")

    subset_picker.observe(update, "value")
    clip_slider.observe(update, "value")
    update()
    return widgets.VBox([widgets.HBox([subset_picker, clip_slider]), output])
