"""Interactive explorers for notebooks (ipywidgets + plotly). They need a live kernel; in a
papermill run they render once with their initial values."""
from __future__ import annotations

import numpy as np

from avs_lib.audio.quality import centre_basis, token_view
from avs_lib.core.errors import DataError
from avs_lib.core.files import read_json
from avs_lib.data.datasets import AVSDataset, clip_frames, load_sources, read_audio_segment
from avs_lib.viz.plots import TRUTH_COLOURS, overlay_mask, tint_sounding
from avs_lib.world.write import world_roots


def source_recordings(library, record: dict | None) -> list[tuple[str, np.ndarray]]:
    """(label, recording) of every sounding source of a clip, read from the asset library: the
    recording each source plays (the clip loops it from a random point, so it is not time-aligned)."""
    out = []
    for s in (record or {}).get("sources", []):
        if not s["sounding"] or library is None:
            continue
        member = next((m for m in library.classes[s["class_index"]].members if m.name == s["member"]), None)
        if member is None or s["sound"] not in member.sound_names:
            continue
        wave = member.sounds[member.sound_names.index(s["sound"])][: 3 * library.sample_rate]
        where = "on screen" if s["on_screen"] else "off screen"
        out.append((f"{s['class_name']} ({where}): {s['member']}", wave / (np.abs(wave).max() + 1e-9) * 0.9))
    return out


def derivation_explorer(model, frames, class_names: list[str], max_k: int | None = None, dataset=None, library=None):
    """The derived tokens of one frame, explorable: a frame picker and a K slider; a 2-D map of the
    memory's class centres with the frame's mixture feature F_a, its K derived tokens before and after
    enhancement and an arrow from F_a to each (labelled with the token's nearest class and whether that
    class truly sounds); bars of the distance to each derived class centre (Eq. 5) and its fusion weight
    (Eq. 6), coloured by the class's truth in the clip (on screen / off screen / silent / absent), with
    the true classes that were not derived shown as missed; the frame itself; the mixture and each true
    source to listen to (``dataset``: the frames' AVSDataset; ``library``: the world's asset library).

    Built from passive widgets (Dropdown, IntSlider, FigureWidget, Image, Audio, HTML) whose values are
    set from Python: no ``widgets.Output`` (see ``clip_browser``). Returns the VBox."""
    import ipywidgets as widgets
    import plotly.graph_objects as go


    derivation = model.derivation
    trained_k = derivation.num_tokens
    max_k = max_k or derivation.centroids.shape[0]
    basis = centre_basis(derivation.centroids)
    options = [(f"{clip} frame {frame + 1}", i) for i, (clip, frame) in enumerate(zip(frames.clips, frames.frames))]
    picker = widgets.Dropdown(options=options, value=0, description="frame")
    slider = widgets.IntSlider(value=trained_k, min=1, max=max_k, description="K")
    note = widgets.HTML(f"<p style='font-size:90%'>The model was trained with K={trained_k} tokens; other K values "
                        "are a what-if on that model (the same learned weights, the fusion softmax of Eq. 6 over "
                        "a different set of centres).</p>")
    bars = go.FigureWidget(layout=dict(height=380, width=560, barmode="group", margin=dict(t=50, b=40, r=60),
                                       legend=dict(orientation="h", y=-0.12, x=0, yanchor="top")))
    bars.add_bar(name="distance to centre (Eq. 5)", x=[], y=[], offsetgroup=0, marker=dict(line=dict(width=1)))
    bars.add_bar(name="fusion weight (Eq. 6)", x=[], y=[], xaxis="x2", offsetgroup=1, marker_color="#444")
    bars.update_layout(xaxis=dict(title="Euclidean distance to the class centre", rangemode="tozero"),
                       xaxis2=dict(title="fusion weight", overlaying="x", side="top", range=[0, 1],
                                   tickvals=[0, 0.25, 0.5, 0.75, 1.0]),
                       yaxis=dict(autorange="reversed"))
    bars.update_traces(orientation="h")
    tokens_map = go.FigureWidget(layout=dict(height=460, width=620, margin=dict(t=50, l=50, r=20, b=40),
                                             xaxis=dict(title="PC 1 of the class centres"),
                                             yaxis=dict(title="PC 2 of the class centres"),
                                             legend=dict(orientation="h", y=-0.15, font=dict(size=10))))
    tokens_map.add_scatter(name="class centres", x=[], y=[], mode="markers+text", textposition="top center",
                           textfont=dict(size=9), marker=dict(size=9, line=dict(width=0.5, color="black")))
    tokens_map.add_scatter(name="F_a (mixture)", x=[], y=[], mode="markers", marker=dict(symbol="x", size=14, color="black"))
    tokens_map.add_scatter(name="tokens before enhancement (Eq. 8)", x=[], y=[], mode="markers",
                           marker=dict(size=10, color="rgba(0,0,0,0)", line=dict(width=2)))
    tokens_map.add_scatter(name="tokens after enhancement (Eq. 12)", x=[], y=[], mode="markers", text=[],
                           hoverinfo="text", marker=dict(size=8, line=dict(width=0.5, color="black")))
    image = widgets.Image(format="png", width=192)
    truth = widgets.HTML()
    players = widgets.VBox()

    def update(*_):
        i, k = picker.value, slider.value
        view = token_view(derivation, frames, i, k, class_names, basis)
        roles = view["roles"]
        colour = lambda c: TRUTH_COLOURS[roles[c]]  # noqa: E731
        rows = [(class_names[c], roles[c], d, w, colour(c), "black") for c, d, w in
                zip(view["classes"], view["distances"], view["weights"])]
        rows += [(f"{class_names[c]} (missed)", roles[c], d, 0.0, "white", colour(c)) for c, d in view["missed"]]
        labels = [f"{name} · {role}" for name, role, *_ in rows]
        centres, fa = view["centres_xy"], view["fa_xy"]
        before = view["derived_xy"]
        after = view["enhanced_xy"] if view["enhanced_xy"] is not None else before
        nearest_text = [f"token {t + 1} → {class_names[n]} ({'sounds' if roles[n] in ('on screen', 'off screen') else roles[n]})"
                        for t, n in enumerate(view["token_nearest"])]
        title = f"{frames.clips[i]} frame {frames.frames[i] + 1}: K={k} derived tokens"
        with bars.batch_update():
            bars.data[0].y, bars.data[0].x = labels, [r[2] for r in rows]
            bars.data[0].marker.color = [r[4] for r in rows]
            bars.data[0].marker.line.color = [r[5] for r in rows]
            bars.data[1].y, bars.data[1].x = labels, [r[3] for r in rows]
            bars.layout.title = title
        with tokens_map.batch_update():
            tokens_map.data[0].x, tokens_map.data[0].y = centres[:, 0], centres[:, 1]
            tokens_map.data[0].text = [n if roles[c] != "absent" else "" for c, n in enumerate(class_names)]
            tokens_map.data[0].hovertext = [f"{n} ({roles[c]})" for c, n in enumerate(class_names)]
            tokens_map.data[0].marker.color = [TRUTH_COLOURS[r] for r in roles]
            tokens_map.data[1].x, tokens_map.data[1].y = [fa[0]], [fa[1]]
            tokens_map.data[2].x, tokens_map.data[2].y = before[:, 0], before[:, 1]
            tokens_map.data[2].marker.line.color = [colour(c) for c in view["classes"]]
            tokens_map.data[3].x, tokens_map.data[3].y = after[:, 0], after[:, 1]
            tokens_map.data[3].marker.color = [colour(c) for c in view["classes"]]
            tokens_map.data[3].text = nearest_text
            tokens_map.layout.annotations = [
                dict(x=float(b[0]), y=float(b[1]), ax=float(fa[0]), ay=float(fa[1]), xref="x", yref="y", axref="x",
                     ayref="y", showarrow=True, arrowhead=2, arrowwidth=1.3, arrowcolor=colour(c), text="")
                for b, c in zip(before, view["classes"])] + [
                dict(x=float(a[0]), y=float(a[1]), text=txt, showarrow=False, font=dict(size=9, color=colour(c)),
                     xanchor="left", yanchor="top")
                for a, c, txt in zip(after, view["classes"], nearest_text)]
            tokens_map.layout.title = f"the memory's class centres, F_a and its K={k} tokens"
        image.value = _png(_frame_figure(tint_sounding(frames.images[i].permute(1, 2, 0).numpy(),
                                                      frames.masks[i].numpy()), title))
        sounding = [class_names[c] + f" ({r})" for c, r in enumerate(roles) if r in ("on screen", "off screen")]
        silent = [class_names[c] for c, r in enumerate(roles) if r == "silent"]
        missed = [class_names[c] for c, _ in view["missed"]]
        truth.value = (f"<b>truly sounding:</b> {', '.join(sounding) or 'nothing'}<br><b>silent on screen:</b> "
                       f"{', '.join(silent) or 'none'}<br><b>missed at K={k}:</b> {', '.join(missed) or 'none'}")
        if dataset is not None:
            mixture = read_audio_segment(dataset.records[i], dataset.sample_rate)
            items = [("the frame's mixture (1 s)", mixture)]
            items += source_recordings(library, frames.sources.get(frames.clips[i]))
            sr = dataset.sample_rate
            players.children = [widgets.VBox([widgets.HTML(f"<small>{label}</small>"),
                                              widgets.Audio(value=_wav(wave, sr), format="wav", autoplay=False, loop=False)])
                                for label, wave in items]

    picker.observe(update, "value")
    slider.observe(update, "value")
    update()
    return widgets.VBox([widgets.HBox([picker, slider]), note, widgets.HBox([tokens_map, bars]),
                         widgets.HBox([image, widgets.VBox([truth, players])])])


def _frame_figure(image: np.ndarray, title: str):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.4, 2.6))
    ax.imshow(image)
    ax.set_title(title.split(":")[0], fontsize=7)
    ax.axis("off")
    return fig


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


def _pauses(source: dict) -> str:
    """``, pauses in frames 2, 4`` for a source that pauses (``avs world --ms3-pause``), else nothing."""
    quiet = [str(t + 1) for t, on in enumerate(source.get("active") or []) if not on]
    return f", pauses in frame{'s' if len(quiet) > 1 else ''} {', '.join(quiet)}" if quiet else ""


def clip_view(dataset, sources: dict, name: str, indices: list[int]) -> tuple[bytes, str, bytes]:
    """(PNG of the clip's frames with their masks, HTML of its true sources and notes, WAV of its
    audio): what the clip browser shows for one clip, usable without widgets."""
    import html

    import matplotlib.pyplot as plt


    samples = [dataset.load_raw(i) for i in indices]
    fig, axes = plt.subplots(1, len(samples), figsize=(2 * len(samples), 2.3), squeeze=False)
    for t, (ax, sample) in enumerate(zip(axes[0], samples)):
        ax.imshow(overlay_mask(sample["image"], sample["mask"]) if sample["mask_valid"] else sample["image"])
        ax.set_title(f"frame {t + 1}" + ("" if sample["mask_valid"] else "\n(no mask)"), fontsize=9)
        ax.axis("off")
    record = sources.get(name, {})
    rows = "".join(
        f"<tr><td>{html.escape(s['class_name'])}</td><td>{html.escape(str(s['member']))}</td>"
        f"<td>{SOURCE_ROLES[(bool(s['on_screen']), bool(s['sounding']))]}{_pauses(s)}</td><td>{s['gain']:.2f}</td></tr>"
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
    from pathlib import Path

    import ipywidgets as widgets


    roots = world_roots(root)
    written = read_json(Path(root) / "world.json")["config"]["subsets"]
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
