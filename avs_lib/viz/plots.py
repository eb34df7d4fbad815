"""Figures of the workbench (matplotlib, written to files; notebooks show the same objects)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from avs_lib.analysis.truth import source_role
from avs_lib.audio.frontends import vggish_log_mel
from avs_lib.core.errors import DataError
from avs_lib.core.paths import repo_root
from avs_lib.data.datasets import AVSDataset, clip_frames, load_sources
from avs_lib.data.palette import voc_palette
from avs_lib.world.write import world_roots


def overlay_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Colour the mask's classes over the frame (binary masks use class 1's red)."""
    colours = voc_palette(256).astype(np.float32)
    out = image.astype(np.float32).copy()
    on = mask > 0
    out[on] = 0.45 * out[on] + 0.55 * colours[mask[on]]
    return out.astype(np.uint8)


ROLE_COLOURS = {"on screen": "#ffd60a", "silent": "#8ecae6", "off screen": "#ff5d8f"}  # by source_role
ROLE_LABELS = {"on screen": "sounding", "silent": "silent"}  # the legend's words for a source in the frame
TINT = np.array([255, 214, 10])  # the sounding pixels, one colour for every subset


def tint_sounding(image: np.ndarray, mask: np.ndarray, strength: float = 0.5) -> np.ndarray:
    """The frame with every ground-truth sounding pixel (mask > 0, any class or instance) tinted in
    one colour, so that frames of every subset read the same way."""
    out = image.astype(np.float32).copy()
    on = mask > 0
    out[on] = (1 - strength) * out[on] + strength * TINT
    return out.astype(np.uint8)


def world_overview(root: str | Path, out_png: str | Path, clips_per_subset: int = 2) -> Path:
    """What a composed world holds, at a glance: for each subset, ``clips_per_subset`` val clips,
    each as its first frame (sounding pixels tinted; every on-screen source boxed and labelled with
    its class and role; off-screen sources named under the frame) beside the log-mel of its audio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt


    rows = []
    for subset, (sub_root, layout) in world_roots(root).items():
        if not Path(sub_root).is_dir():
            continue  # a world written with fewer subsets
        try:
            dataset = AVSDataset(sub_root, layout, "val")
        except DataError:
            continue
        sources = load_sources(sub_root, layout)
        groups = list(clip_frames(dataset, sources).items())[:clips_per_subset]
        rows.append((subset, [(name, [dataset.load_raw(i) for i in indices], sources.get(name)) for name, indices in groups]))
    if not rows:
        raise FileNotFoundError(f"{root}: no subset of a world found to draw")
    fig, axes = plt.subplots(len(rows), 2 * clips_per_subset, figsize=(5.2 * clips_per_subset, 2.9 * len(rows)),
                             gridspec_kw={"width_ratios": [1, 1.15] * clips_per_subset}, squeeze=False)
    for r, (subset, clips) in enumerate(rows):
        for c in range(clips_per_subset):
            frame_ax, mel_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
            frame_ax.axis("off")
            mel_ax.axis("off")
            if c >= len(clips):
                continue
            name, frames, record = clips[c]
            first = frames[0]
            frame_ax.imshow(tint_sounding(first["image"], first["mask"]))
            frame_ax.set_title(f"{subset} · {name}", fontsize=10, loc="left")
            off_screen = []
            for s in (record or {}).get("sources", []):
                role = source_role(s, 0)  # the first frame is the one drawn
                if role == "off screen":
                    off_screen.append(s["class_name"])
                    continue
                if not s.get("bboxes") or not s["bboxes"][0]:
                    continue
                x0, y0, x1, y1 = s["bboxes"][0]
                frame_ax.add_patch(patches.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False,
                                                     edgecolor=ROLE_COLOURS[role], linewidth=1.5))
                frame_ax.text(x0, y0 - 1, s["class_name"], color="black", fontsize=8, va="bottom",
                              bbox=dict(facecolor=ROLE_COLOURS[role], edgecolor="none", pad=1, alpha=0.9))
            if off_screen:
                frame_ax.text(0.5, -0.04, "heard off screen: " + ", ".join(off_screen), transform=frame_ax.transAxes,
                              ha="center", va="top", fontsize=8, color=ROLE_COLOURS["off screen"], weight="bold")
            audio = np.concatenate([f["audio"] for f in frames])
            mel_ax.imshow(vggish_log_mel(audio).T, origin="lower", aspect="auto", cmap="magma")
            mel_ax.set_title(f"its sound, {len(frames)} s (log-mel)", fontsize=9)
    handles = [patches.Patch(facecolor=TINT / 255, alpha=0.6, label="ground-truth mask (sounding pixels)")]
    handles += [patches.Patch(facecolor="none", edgecolor=colour, linewidth=2, label=f"source: {ROLE_LABELS[role]}")
                for role, colour in ROLE_COLOURS.items() if role != "off screen"]
    handles.append(patches.Patch(facecolor=ROLE_COLOURS["off screen"], label="source heard off screen (named under the frame)"))
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1), h_pad=2.2)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


# ----------------------------------------------------------------------------- model figures
def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and "inline" not in matplotlib.get_backend().lower():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | Path | None) -> None:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")


def memory_map(memory, features=None, labels=None, path=None):
    """A 2-D PCA map of the memory: class centroids (stars), sub-centroids (triangles) and the
    discriminative features (dots), with the training features faint behind them. The legend sits
    outside the axes, so it never covers data; the axes name the components and their variance."""
    from sklearn.decomposition import PCA

    plt = _pyplot()
    c, k, m, d = memory.features.shape
    points = [memory.centroids.numpy(), memory.subcentroids.reshape(-1, d).numpy(), memory.features.reshape(-1, d).numpy()]
    pca = PCA(2, random_state=0).fit(np.concatenate(points + ([features] if features is not None else [])))
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(8.5, 6))
    if features is not None:
        xy = pca.transform(features)
        ax.scatter(xy[:, 0], xy[:, 1], c=[cmap(int(l) % 20) for l in labels], s=4, alpha=0.15)
    disc = pca.transform(points[2]).reshape(c, k * m, 2)
    sub = pca.transform(points[1]).reshape(c, k, 2)
    cen = pca.transform(points[0])
    for i, name in enumerate(memory.class_names):
        ax.scatter(disc[i, :, 0], disc[i, :, 1], color=cmap(i % 20), s=10)
        ax.scatter(sub[i, :, 0], sub[i, :, 1], color=cmap(i % 20), marker="^", s=50, edgecolor="k")
        ax.scatter(cen[i, 0], cen[i, 1], color=cmap(i % 20), marker="*", s=220, edgecolor="k", label=name)
    ratio = pca.explained_variance_ratio_
    ax.set_xlabel(f"principal component 1 ({100 * ratio[0]:.0f} % of the variance)")
    ax.set_ylabel(f"principal component 2 ({100 * ratio[1]:.0f} % of the variance)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="class centroid (Eq. 2)",
              title_fontsize=7, frameon=False)
    ax.set_title(f"semantic memory (PCA): {c} classes, k={k} sub-clusters (Eq. 3), m={m} features each (Eq. 4)",
                 fontsize=9)
    save(fig, path)
    return fig


def pretraining_curves(history: list[dict], path=None):
    """The audio pretraining's losses against the step: multi-label BCE and the mixture-to-parts term."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["bce"] for h in history], label="multi-label BCE")
    ax.plot(steps, [h["parts"] for h in history], label="mixture-to-parts (1 - cos)")
    ax.set_xlabel("step (one fresh batch of the stream each)")
    ax.set_ylabel("loss (mean over 10 steps)")
    ax.set_yscale("log")
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    save(fig, path)
    return fig


def draw_recall(ax, recalls: list[dict], ceiling: list[float] | None = None, num_classes: int | None = None,
                trained_k: int | None = None) -> None:
    """Derivation recall against K (overall, on screen, off screen) on ``ax``; with ``num_classes``
    the chance line K/C, with ``ceiling`` the encoder's own top-K logit recall, with ``trained_k``
    a mark at the K the model was trained with."""
    ks = [r["K"] for r in recalls]
    ax.plot(ks, [r["recall"] for r in recalls], "o-", label="all sounding classes")
    ax.plot(ks, [r["recall_on_screen"] for r in recalls], "s--", label="on screen")
    if all(r["recall_off_screen"] is not None for r in recalls):
        ax.plot(ks, [r["recall_off_screen"] for r in recalls], "^:", label="off screen only")
    if ceiling is not None:
        ax.plot(ks, ceiling, color="0.35", lw=2, alpha=0.6, label="ceiling: encoder's top-K logits")
    if num_classes:
        ax.plot(ks, [min(1.0, k / num_classes) for k in ks], color="0.6", ls="--", lw=1, label="chance K/C")
    if trained_k:
        ax.axvline(trained_k, color="0.8", lw=1, zorder=0)
    ax.set_xlabel("K nearest class centres")
    ax.set_ylabel("recall of the true classes")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, frameon=False, loc="lower right")


def recall_curve(recalls: list[dict], path=None, ceiling: list[float] | None = None, num_classes: int | None = None,
                 trained_k: int | None = None):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    draw_recall(ax, recalls, ceiling, num_classes, trained_k)
    save(fig, path)
    return fig


TRUTH_COLOURS = {"on screen": "#2a9d8f", "off screen": "#e76f51", "silent": "#8ecae6", "absent": "#adb5bd"}


def token_map(view: dict, path=None):
    """The static figure of notebook 02's explorer for one frame (``audio_eval.token_view``).

    Left: the memory's class centres in 2-D (PCA of the centres), the frame's mixture feature F_a,
    an arrow from F_a to each derived token before enhancement (Eq. 8, hollow) and after (Eq. 12,
    filled); every centre coloured by its class's truth in the clip. Right: each derived class's
    distance (Eq. 5), coloured by truth, beside its fusion weight (Eq. 6, a dark bar), with the true
    classes that were not derived drawn as missed (hatched)."""
    plt = _pyplot()
    fig, (ax, bars) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.25, 1]})
    names, roles = view["class_names"], view["roles"]
    centres = view["centres_xy"]
    for c, (x, y) in enumerate(centres):
        colour = TRUTH_COLOURS[roles[c]]
        ax.scatter(x, y, s=70 if roles[c] != "absent" else 30, color=colour, edgecolor="k", lw=0.5, zorder=2)
        ax.annotate(names[c], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points",
                    color="k" if roles[c] != "absent" else "0.5")
    fa = view["fa_xy"]
    ax.scatter(*fa, marker="X", s=160, color="k", zorder=4, label="F_a (the frame's mixture)")
    for i, (before, cls) in enumerate(zip(view["derived_xy"], view["classes"])):
        colour = TRUTH_COLOURS[roles[cls]]
        ax.annotate("", xy=before, xytext=fa, arrowprops=dict(arrowstyle="->", color=colour, lw=1.2), zorder=3)
        ax.scatter(*before, s=60, facecolor="none", edgecolor=colour, lw=1.5, zorder=3)
        if view["enhanced_xy"] is not None:
            after = view["enhanced_xy"][i]
            ax.plot([before[0], after[0]], [before[1], after[1]], color=colour, lw=0.8, ls=":")
            ax.scatter(*after, s=45, color=colour, edgecolor="k", lw=0.5, zorder=3)
        # tokens often land close together: number them on the map, name them in the list below
        ax.annotate(str(i + 1), after if view["enhanced_xy"] is not None else before, fontsize=8, fontweight="bold",
                    xytext=(4 + 7 * i, -10), textcoords="offset points", color=colour)
    listing = []
    for i, nearest in enumerate(view["token_nearest"]):
        mark = "sounds " + roles[nearest] if roles[nearest] in ("on screen", "off screen") else roles[nearest]
        listing.append(f"token {i + 1} (from {names[view['classes'][i]]}) lands nearest {names[nearest]}: {mark}")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=f"class {r}") for r, c in TRUTH_COLOURS.items()]
    handles += [plt.Line2D([], [], marker="X", ls="", color="k", label="F_a"),
                plt.Line2D([], [], marker="o", ls="", mfc="none", color="k", label="token before enhancement (Eq. 8)"),
                plt.Line2D([], [], marker="o", ls="", color="k", label="token after enhancement (Eq. 12)")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.1), ncol=3, frameon=False)
    ax.text(0, -0.3, "\n".join(listing), transform=ax.transAxes, fontsize=7, va="top")
    ax.set_xlabel("PC 1 of the class centres")
    ax.set_ylabel("PC 2 of the class centres")
    ax.set_title(f"{view['clip']} frame {view['frame'] + 1}: K={view['K']} derived tokens", fontsize=10)

    rows = [(names[c], view["distances"][i], view["weights"][i], roles[c]) for i, c in enumerate(view["classes"])]
    rows += [(f"{names[c]} (missed)", d, 0.0, roles[c]) for c, d in view["missed"]]
    y = np.arange(len(rows))[::-1]
    bars.barh(y + 0.2, [r[1] for r in rows], height=0.4, color=[TRUTH_COLOURS[r[3]] for r in rows],
              edgecolor=["k" if "missed" not in r[0] else "r" for r in rows],
              hatch=None, label="distance to the class centre (Eq. 5)")
    for yy, r in zip(y, rows):
        if "missed" in r[0]:
            bars.barh(yy + 0.2, r[1], height=0.4, color="none", edgecolor="r", hatch="//")
    twin = bars.twiny()
    twin.barh(y - 0.2, [r[2] for r in rows], height=0.4, color="0.3", label="fusion weight (Eq. 6)")
    twin.set_xlim(0, 1)
    twin.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    twin.set_xlabel("fusion weight (Eq. 6), dark bars")
    bars.set_yticks(y)
    bars.set_yticklabels([f"{r[0]} · {r[3]}" for r in rows], fontsize=8)
    bars.set_xlabel("Euclidean distance to the class centre (Eq. 5), coloured bars")
    save(fig, path)
    return fig


def assignment_maps(image: np.ndarray, assignment: np.ndarray, grid: tuple[int, int], path=None):
    """The frame and, for each visual centre, the soft assignment O[:, c] over the stage's grid."""
    plt = _pyplot()
    n = assignment.shape[1]
    fig, axes = plt.subplots(1, n + 1, figsize=(2.2 * (n + 1), 2.4))
    axes[0].imshow(image)
    axes[0].set_title("frame")
    for c in range(n):
        axes[c + 1].imshow(assignment[:, c].reshape(grid), vmin=0, vmax=1, cmap="magma")
        axes[c + 1].set_title(f"centre {c}")
    for ax in axes:
        ax.axis("off")
    save(fig, path)
    return fig


def roc_figure(labels, scores, title: str, path=None):
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, label=f"AUC {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate (off-screen kept)")
    ax.set_ylabel("true positive rate (on-screen kept)")
    ax.set_title(title)
    ax.legend()
    save(fig, path)
    return fig


def _validation_points(history: list[dict]) -> list[dict]:
    """[{"frames_seen", "JF"}]: ``learning_curve``, or for a history recorded before frames were
    counted, one point per epoch end at its epoch number."""
    from avs_lib.training.loop import learning_curve

    return learning_curve(history) or [{"frames_seen": h.get("frames_seen", h["epoch"]), "JF": h["val"]["JF"]}
                                       for h in history]


def training_curves(history: list[dict], path=None):
    """Training loss per epoch and the learning curve: validation J&F against the training frames
    seen (every validation, ``validations_per_epoch`` of them per epoch), J and F at epoch ends."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    ends = [h.get("frames_seen", h["epoch"]) for h in history]
    # the loss between two validations, plotted at the second: the epoch's points, then its mean
    loss_points = [(p["frames_seen"], p["loss"]) for h in history for p in h.get("curve", []) if "loss" in p]
    if loss_points:
        axes[0].plot(*zip(*sorted(loss_points)), ".-", label="since the previous validation")
    axes[0].plot(ends, [h["loss"] for h in history], "o", label="epoch mean")
    axes[0].set_ylabel("training loss")
    axes[0].legend(fontsize=8)
    points = _validation_points(history)
    axes[1].plot([p["frames_seen"] for p in points], [p["JF"] for p in points], ".-", label="J&F")
    for key in ("J", "F"):
        axes[1].plot(ends, [h["val"][key] for h in history], "o", label=f"{key} (epoch end)", alpha=0.7)
    axes[1].set_ylabel("validation")
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("training frames seen" if "frames_seen" in history[0] else "epoch")
    save(fig, path)
    return fig


def compared_learning_curves(curves: dict[str, list[dict]], path: str | Path | None = None):
    """Several runs' learning curves on one axis: validation J&F against the training frames seen
    (``learning_curve`` of each run's metrics.json history; the epoch ends where a run validated
    once per epoch). Fifteen runs get fifteen colours (matplotlib's ten, then five dark ones); past
    that the colours repeat, dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    colours = [f"C{i}" for i in range(10)] + ["black", "darkred", "darkgreen", "navy", "darkgoldenrod"]
    for index, (label, history) in enumerate(curves.items()):
        points = _validation_points(history)
        ax.plot([p["frames_seen"] for p in points], [p["JF"] for p in points], marker=".",
                color=colours[index % len(colours)], linestyle="-" if index < len(colours) else "--", label=label)
    ax.set_xlabel("training frames seen")
    ax.set_ylabel("validation J&F")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the axis: curves cross
    save(fig, path)
    return fig


def headroom_figure(rows: list[dict], path=None):
    """The window: each row's test J&F (dot) with its 95 % interval over clips (bar), floor at the
    bottom and ceiling at the top, the space between them shaded."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(rows) + 1.1))
    by_row = {r["row"]: r for r in rows}
    if "floor" in by_row and "oracle" in by_row:
        ax.axvspan(by_row["floor"]["JF"], by_row["oracle"]["JF"], color="tab:green", alpha=0.12,
                   label=f"headroom {by_row['oracle']['JF'] - by_row['floor']['JF']:.2f}")
        ax.legend(loc="lower right", fontsize=8)
    for y, r in enumerate(rows):
        low, high = r["ci95"]
        ax.errorbar(r["JF"], y, xerr=[[r["JF"] - low], [high - r["JF"]]], fmt="o", capsize=4,
                    color="tab:red" if r["row"] == "model" else "tab:gray")
        ax.text(high + 0.01, y, f"{r['JF']:.3f} [{low:.3f}, {high:.3f}]", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r["what"] for r in rows], fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("test J&F (per frame), 95 % interval over clips")
    save(fig, path)
    return fig


CHOICE_OUTLINE_BARS = (("JF", "as trained", "tab:gray"), ("choice_fixed_JF", "choices fixed", "tab:blue"),
                       ("outline_fixed_JF", "outlines fixed", "tab:orange"))


def choice_outline_figure(rows: list[dict], path: str | Path | None = None, bound: float | None = None):
    """``avs_lib.analysis.evaluation.choice_and_outline`` for each row of the window (the rows of
    ``headroom`` with ``errors``): its test J&F as trained, with perfect choices of objects, and with
    perfect outlines of the objects it found; ``bound``, the resolution bound, as a dashed line. The
    longer of the two coloured bars names what limits the row."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.9 * len(rows) + 1.2))
    height = 0.8 / len(CHOICE_OUTLINE_BARS)
    for y, r in enumerate(rows):
        for j, (key, label, colour) in enumerate(CHOICE_OUTLINE_BARS):
            value = r["errors"][key]
            offset = (j - (len(CHOICE_OUTLINE_BARS) - 1) / 2) * height
            ax.barh(y + offset, value, height, color=colour, label=label if y == 0 else None)
            ax.text(value + 0.01, y + offset, f"{value:.3f}", va="center", fontsize=7)
    if bound is not None:
        ax.axvline(bound, color="black", linestyle="--", linewidth=1, label=f"resolution bound {bound:.3f}")
    ax.set_yticks(range(len(rows)), [r["what"] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.08)
    ax.set_xlabel("test J&F (per frame)")
    # above the axes: inside, it would cover the longest bars
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=7, frameon=False)
    save(fig, path)
    return fig


ANATOMY_BARS = {"own_inside": ("its token, inside the object", "tab:red"),
                "other_inside": ("each other token, inside the object", "tab:orange"),
                "own_outside": ("its token, outside the object", "tab:gray"),
                "null_inside": ("null key, inside the object", "tab:blue"),
                "null_outside": ("null key, outside the object", "lightsteelblue")}


def attention_anatomy_figure(anatomy: dict, path=None):
    """``avs_lib.analysis.inspect.attention_anatomy`` as grouped bars: per stage, the mean attention
    weight a cell gives the sounding object's own token (inside and outside the object), each other
    token (inside) and the null key (inside and outside; left out where the anatomy has none, as
    with audio queries). Pointing attention has the red bar far above the orange and grey ones."""
    plt = _pyplot()
    stages = list(anatomy)  # a stage with no object (means None) keeps its label and gets no bars
    # a key no stage has (the null key's with audio queries, fusion_query="audio") gets no bar and no legend entry
    bars = {key: bar for key, bar in ANATOMY_BARS.items()
            if any(anatomy[s][key] is not None for s in stages) or all(not anatomy[s]["objects"] for s in stages)}
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    width = 0.8 / len(bars)
    for j, (key, (label, colour)) in enumerate(bars.items()):
        ax.bar(np.arange(len(stages)) + (j - (len(bars) - 1) / 2) * width,
               [np.nan if anatomy[s][key] is None else anatomy[s][key] for s in stages], width, label=label,
               color=colour)
    ax.set_xticks(range(len(stages)), [f"{s}\n({anatomy[s]['objects']} objects)" for s in stages], fontsize=8)
    ax.set_ylabel("mean attention weight of a cell")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=3, frameon=False)
    save(fig, path)
    return fig


# in the order of avs_lib.analysis.inspect.PEAK_PLACES: own object, another sounding object, a
# sounding object's box off its mask, a silent object's box, background, no token
PLACE_COLOURS = ("tab:red", "tab:orange", "navajowhite", "tab:purple", "tab:gray", "black")


def peak_places_figure(runs: dict[str, dict], path=None):
    """``avs_lib.analysis.inspect.peak_places`` of one or more runs ({label: places}) as stacked
    bars, one per stage and one for chance (where a map peaking at random would land): the red part
    is the pointing accuracy, the others say where the rest of the peaks went."""
    # imported here, not at the top: inspect pulls in scikit-learn, which nothing else here needs
    from avs_lib.analysis.inspect import PEAK_PLACES

    plt = _pyplot()
    rows = [(label, key) for label, places in runs.items()
            for key in [k for k in places if k.startswith("stage")] + ["chance"]]
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    left = np.zeros(len(rows))
    for place, colour in zip(PEAK_PLACES, PLACE_COLOURS, strict=True):
        widths = np.array([runs[label][key][place] for label, key in rows])
        ax.barh(np.arange(len(rows)), widths, left=left, color=colour, label=place, height=0.8)
        left += widths
    ax.set_yticks(range(len(rows)), [f"{label}: {key}" for label, key in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the sounding objects: where the peak of their token's map lands")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)
    save(fig, path)
    return fig


def blanking_figure(rows: list[dict], path=None, title: str | None = None):
    """``avs_lib.analysis.evaluation.blanking_interventions`` of one run: left, each blanking's paired
    change of test J&F with its 95 % interval over clips; right, the share of the silent objects the
    model takes and of the sounding objects it finds (``errors``), as trained and under each
    blanking. Attention that tells the decoder what not to segment makes "silent boxes" raise the
    share taken well above what the background control does."""
    plt = _pyplot()
    names = [r["intervention"] for r in rows]
    y = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 0.5 * len(rows) + 1.4), sharey=True)
    delta = np.array([100 * r["delta"] for r in rows])
    low, high = (np.array([100 * r["delta_ci95"][i] for r in rows]) for i in (0, 1))
    left.barh(y, delta, 0.6, xerr=[delta - low, high - delta], color="tab:blue", capsize=3)
    left.axvline(0, color="black", lw=0.8)
    left.set_yticks(y, names, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("test J&F change, points (paired, 95 % over clips)")
    errors = [r["errors"] for r in rows]
    right.barh(y - 0.15, [e["taken"] / max(1, e["silent"]) for e in errors], 0.3, color="tab:purple",
               label="silent objects taken")
    right.barh(y + 0.15, [e["found"] / max(1, e["found"] + e["missed"]) for e in errors], 0.3, color="tab:green",
               label="sounding objects found")
    right.set_xlim(0, 1)
    right.set_xlabel("share of the objects")
    right.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    if title:
        left.set_title(title, fontsize=9)
    save(fig, path)
    return fig


ERROR_COLOURS = {"true positive": (46, 204, 113), "false positive": (231, 76, 60), "false negative": (52, 152, 219)}


def error_overlay(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The frame with true positives, false positives and false negatives in ERROR_COLOURS."""
    out = image.astype(np.float32).copy()
    truth, predicted = truth > 0, predicted > 0
    for name, where in (("true positive", truth & predicted), ("false positive", ~truth & predicted),
                        ("false negative", truth & ~predicted)):
        out[where] = 0.4 * out[where] + 0.6 * np.array(ERROR_COLOURS[name])
    return out.astype(np.uint8)


def qualitative(images: np.ndarray, masks: np.ndarray, logits: np.ndarray, attention: np.ndarray | None = None,
                path=None, token_names: list[list[str]] | None = None):
    """Rows: frames. Columns: the frame; the prediction against the truth (true positives, false
    positives, false negatives in three colours, the frame's IoU in the title); and, when given,
    each audio token's attention map (titled with the token's class, one shared colour bar)."""
    import matplotlib.patches as patches

    plt = _pyplot()
    n = len(images)
    extra = 0 if attention is None else attention.shape[1]
    fig, axes = plt.subplots(n, 2 + extra, figsize=(2.2 * (2 + extra) + 0.8, 2.2 * n + 0.6), squeeze=False)
    vmax = float(attention.max()) if extra else 1.0
    for r in range(n):
        truth, predicted = masks[r] > 0, logits[r] > 0
        union = (truth | predicted).sum()
        iou = (truth & predicted).sum() / union if union else 1.0
        axes[r, 0].imshow(images[r])
        axes[r, 1].imshow(error_overlay(images[r], truth, predicted))
        axes[r, 1].set_title(f"IoU {iou:.2f}", fontsize=9)
        for t in range(extra):
            shown = axes[r, 2 + t].imshow(attention[r, t], cmap="viridis", vmin=0, vmax=vmax)
            name = token_names[r][t] if token_names else f"token {t}"
            axes[r, 2 + t].set_title(name, fontsize=8)
    axes[0, 0].set_title("frame", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    handles = [patches.Patch(color=np.array(c) / 255, label=name) for name, c in ERROR_COLOURS.items()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    if extra:
        fig.colorbar(shown, ax=axes[:, 2:].ravel().tolist(), shrink=0.8, label="attention weight")
    save(fig, path)
    return fig


def embedding_figure(xy: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str], path=None,
                     method: str = "t-SNE"):
    """Side-by-side 2-D embeddings (e.g. t-SNE of baseline / +derivation / full), one colour per
    class (a palette with as many distinct colours as classes), titled with the method."""
    plt = _pyplot()
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab20" if len(classes) <= 20 else "gist_ncar")
    colours = {int(c): cmap(i / max(len(classes) - 1, 1) if len(classes) > 20 else i) for i, c in enumerate(classes)}
    fig, axes = plt.subplots(1, len(xy), figsize=(4.4 * len(xy) + 2, 4.4))
    for ax, (name, points) in zip(np.atleast_1d(axes), xy.items()):
        for c in classes:
            sel = labels == c
            ax.scatter(points[sel, 0], points[sel, 1], s=8, color=colours[int(c)], label=class_names[int(c)])
        ax.set_title(f"{method}: {name}", fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].legend(fontsize=9, markerscale=2.5, loc="center left", bbox_to_anchor=(1, 0.5))
    save(fig, path)
    return fig


# ----------------------------------------------------------------------------- interactive figures
PLOTLY_JS = Path("figures") / "plotly.min.js"  # one shared copy, under the repository root


def _plotlyjs_src(html_path: Path) -> str:
    """The relative path from ``html_path``'s folder to the shared plotly.min.js, written once."""
    import os

    import plotly.offline


    shared = repo_root() / PLOTLY_JS
    if not shared.exists():
        shared.parent.mkdir(parents=True, exist_ok=True)
        shared.write_text(plotly.offline.get_plotlyjs())
    return Path(os.path.relpath(shared, html_path.resolve().parent)).as_posix()


def write_interactive_html(figure, path: str | Path) -> Path:
    """A plotly figure as HTML that loads the repository's one shared plotly.min.js instead of
    embedding its own 4.7 MB copy. The figure's element id is the file's name, not plotly's random
    one, so the same figure gives the same bytes in every run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(path, include_plotlyjs=_plotlyjs_src(path), div_id=f"figure-{path.stem}")
    return path


def relink_plotlyjs(path: str | Path) -> None:
    """Point a copied HTML figure (see ``write_interactive_html``) at the shared plotly.min.js from
    its new folder."""
    import re

    path = Path(path)
    text = path.read_text()
    path.write_text(re.sub(r'src="[^"]*plotly\.min\.js"', f'src="{_plotlyjs_src(path)}"', text, count=1))


# ----------------------------------------------------------------------------- elimination (notebook 03, issue 13)
def assignment_overlay(image: np.ndarray, assignment: np.ndarray, grid: tuple[int, int], mask: np.ndarray | None = None,
                       path=None, title: str = "soft assignment O (Eq. 13)"):
    """The frame, then each visual centre's assignment O[:, c] upsampled and laid over the frame,
    with the ground truth's outline (white) and one colour bar for all centres."""
    import torch.nn.functional as F
    import torch

    plt = _pyplot()
    n = assignment.shape[1]
    size = image.shape[:2]
    maps = torch.tensor(assignment.T.reshape(n, 1, *grid), dtype=torch.float32)
    maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()
    fig, axes = plt.subplots(1, n + 1, figsize=(2.3 * (n + 1) + 0.8, 2.7))
    axes[0].imshow(image)
    axes[0].set_title("frame", fontsize=9)
    for c in range(n):
        axes[c + 1].imshow(image)
        shown = axes[c + 1].imshow(maps[c], vmin=0, vmax=1, cmap="magma", alpha=0.65)
        axes[c + 1].set_title(f"centre {c}: {assignment[:, c].mean():.0%} of pixels", fontsize=8)
    for ax in axes:
        if mask is not None and (mask > 0).any():
            ax.contour(mask > 0, levels=[0.5], colors="white", linewidths=1.2)
        ax.axis("off")
    fig.colorbar(shown, ax=axes.ravel().tolist(), shrink=0.8, label="assignment weight")
    fig.suptitle(title + "; white: ground-truth outline", fontsize=9)
    save(fig, path)
    return fig


def stage_score_distributions(stage_scores: dict, categories: np.ndarray, path=None):
    """One panel per stage: the scores of tokens whose class sounds on screen, sounds only off screen,
    or is silent / absent (``analysis.token_categories``), as strip plots with their medians. The
    scores are shown on a log axis, since a per-frame gate can push them to 1e-6."""
    plt = _pyplot()
    names = list(stage_scores)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.4), squeeze=False)
    rng = np.random.default_rng(0)
    labels = ["on screen", "off screen only", "silent / absent"]
    colours = ["#2a9d4b", "#d1495b", "#8d8d8d"]
    for ax, name in zip(axes[0], names):
        values = np.asarray(stage_scores[name])
        for k, (label, colour) in enumerate(zip(labels, colours)):
            v = values[categories == k]
            if len(v):
                ax.scatter(k + rng.uniform(-0.25, 0.25, len(v)), np.clip(v, 1e-12, None), s=4, alpha=0.35, color=colour)
                ax.plot([k - 0.3, k + 0.3], [np.median(v)] * 2, color="k", lw=2)
        ax.set_yscale("log")
        ax.set_xticks(range(3), ["on", "off only", "silent"], fontsize=8)
        ax.set_title(name, fontsize=9)
    axes[0, 0].set_ylabel("elimination score S (log axis; bar: median)")
    fig.tight_layout()
    save(fig, path)
    return fig
