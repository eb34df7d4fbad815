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


SOURCE_ROLES = {(True, True): "on screen, sounding", (True, False): "on screen, silent",
                (False, True): "off screen (heard, not seen)", (False, False): "off screen, silent"}


def _png(fig) -> bytes:
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _wav(wave: np.ndarray, sample_rate: int) -> bytes:
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(wave, np.float32), sample_rate, format="WAV")
    return buffer.getvalue()


def clip_view(dataset, sources: dict, name: str, indices: list[int]) -> tuple[bytes, str, bytes]:
    """(PNG of the clip's frames with their masks, HTML of its true sources and notes, WAV of its
    audio): what the clip browser shows for one clip, usable without widgets."""
    import html

    import matplotlib.pyplot as plt

    from avs_lib.plots import overlay_mask

    samples = [dataset.load_raw(i) for i in indices]
    fig, axes = plt.subplots(1, len(samples), figsize=(2 * len(samples), 2.3), squeeze=False)
    for t, (ax, sample) in enumerate(zip(axes[0], samples)):
        ax.imshow(overlay_mask(sample["image"], sample["mask"]) if sample["mask_valid"] else sample["image"])
        ax.set_title(f"frame {t + 1}" + ("" if sample["mask_valid"] else "\n(no mask)"), fontsize=9)
        ax.axis("off")
    record = sources.get(name, {})
    rows = "".join(
        f"<tr><td>{html.escape(s['class_name'])}</td><td>{html.escape(str(s['member']))}</td>"
        f"<td>{SOURCE_ROLES[(bool(s['on_screen']), bool(s['sounding']))]}</td><td>{s['gain']:.2f}</td></tr>"
        for s in record.get("sources", []))
    table = ("<table><tr><th>class</th><th>member</th><th>role</th><th>gain</th></tr>" + rows + "</table>"
             if rows else "<p>no source record (a real dataset has none)</p>")
    notes = []
    if not all(s["mask_valid"] for s in samples):
        notes.append("Frames marked <i>no mask</i> have no ground truth: AVSBench's S4 training split annotates "
                     "frame 1 only, and the world keeps that convention.")
    if dataset.layout == "vpo":
        notes.append("VPO is image-level: each frame is its own record with its own 1 s of audio; the world's "
                     "sidecar groups them into this clip.")
    category = record.get("subset", dataset.layout)
    header = f"<b>{html.escape(name)}</b> ({html.escape(category)}, {record.get('split', dataset.split)}, " \
             f"{len(samples)} frames, tint = sounding objects' masks)"
    text = header + table + "".join(f"<p style='font-size:90%'>{n}</p>" for n in notes)
    wave = np.concatenate([s["audio"] for s in samples])
    return _png(fig), text, _wav(wave, dataset.sample_rate)


def clip_browser(root):
    """Browse the clips of a written world: subset, split and clip pickers; the frames with their
    masks, the clip's audio and its true sources.

    Built from Image, HTML and Audio widgets whose values are set from Python, never from
    ``widgets.Output``: an Output widget makes nbclient send messages on the shell channel while it
    waits for the cell's reply, which can leave papermill waiting until its timeout
    (jupyter/nbclient#312)."""
    import json
    from pathlib import Path

    import ipywidgets as widgets

    from avs_lib.data.datasets import AVSDataset, DataError, clip_frames, load_sources
    from avs_lib.world.write import world_roots

    roots = world_roots(root)
    written = json.loads((Path(root) / "world.json").read_text())["config"]["subsets"]
    subset_picker = widgets.Dropdown(options=[s for s in ("s4", "ms3", "avss", "msmi") if s in written], description="subset")
    split_picker = widgets.Dropdown(options=["train", "val", "test"], value="train", description="split")
    clip_picker = widgets.Dropdown(options=[], description="clip")
    image, notes = widgets.Image(format="png"), widgets.HTML()
    audio = widgets.Audio(format="wav", autoplay=False, loop=False)
    cache: dict = {}

    def clips(subset: str, split: str):
        if (subset, split) not in cache:
            path, layout = roots[subset]
            try:
                dataset = AVSDataset(path, layout, split)
            except DataError:
                dataset = None  # a small world may have no clip in this split
            sources = load_sources(path, layout)
            cache[subset, split] = (dataset, sources, clip_frames(dataset, sources) if dataset else {})
        return cache[subset, split]

    def show_clip(*_):
        dataset, sources, groups = clips(subset_picker.value, split_picker.value)
        if clip_picker.value is None or clip_picker.value not in groups:
            image.value, audio.value = b"", b""
            notes.value = "<p>no clips in this split</p>"
            return
        image.value, notes.value, audio.value = clip_view(dataset, sources, clip_picker.value, groups[clip_picker.value])

    def list_clips(*_):
        _, sources, groups = clips(subset_picker.value, split_picker.value)
        labels = []
        for name in groups:
            on = sorted({s["class_name"] for s in sources.get(name, {}).get("sources", []) if s["on_screen"] and s["sounding"]})
            labels.append((f"{name} ({', '.join(on)})" if on else name, name))
        clip_picker.unobserve(show_clip, "value")  # new options select their first clip: draw it once
        clip_picker.options = labels
        clip_picker.value = labels[0][1] if labels else None
        clip_picker.observe(show_clip, "value")
        show_clip()

    clip_picker.observe(show_clip, "value")
    subset_picker.observe(list_clips, "value")
    split_picker.observe(list_clips, "value")
    list_clips()
    return widgets.VBox([widgets.HBox([subset_picker, split_picker, clip_picker]), image, audio, notes])
