"""Figures of the workbench (matplotlib, written to files; notebooks show the same objects)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from avs_lib.audio import vggish_log_mel
from avs_lib.data.datasets import AVSDataset, DataError, clip_frames, load_sources
from avs_lib.data.palette import voc_palette


def overlay_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Colour the mask's classes over the frame (binary masks use class 1's red)."""
    colours = voc_palette(256).astype(np.float32)
    out = image.astype(np.float32).copy()
    on = mask > 0
    out[on] = 0.45 * out[on] + 0.55 * colours[mask[on]]
    return out.astype(np.uint8)


def world_overview(root: str | Path, out_png: str | Path, clips_per_subset: int = 2) -> Path:
    """One row per clip of each subset: frames with the sounding objects tinted, the log-mel of the
    clip's audio, and its true sources (what is heard, seen, or heard but not seen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from avs_lib.world.write import world_roots

    rows = []
    for subset, (sub_root, layout) in world_roots(root).items():
        if not Path(sub_root).is_dir():
            continue  # a world written with fewer subsets
        try:
            dataset = AVSDataset(sub_root, layout, "val")
        except DataError:
            continue
        sources = load_sources(sub_root, layout)
        groups = [(name, indices, sources.get(name)) for name, indices in clip_frames(dataset, sources).items()]
        for name, indices, record in groups[:clips_per_subset]:
            rows.append((subset, name, [dataset.load_raw(i) for i in indices], record))
    if not rows:
        raise FileNotFoundError(f"{root}: no subset of a world found to draw")
    n_frames = min(5, max(len(f) for _, _, f, _ in rows))
    fig, axes = plt.subplots(len(rows), n_frames + 2, figsize=(2.0 * (n_frames + 2) + 2, 2.1 * len(rows)),
                             gridspec_kw={"width_ratios": [1] * n_frames + [1.6, 1.8]})
    axes = np.atleast_2d(axes)
    for r, (subset, name, frames, record) in enumerate(rows):
        for t in range(n_frames):
            ax = axes[r, t]
            ax.axis("off")
            if t < len(frames):
                sample = frames[t]
                ax.imshow(overlay_mask(sample["image"], sample["mask"]) if sample["mask_valid"] else sample["image"])
                if t == 0:
                    ax.set_title(f"{subset}: {name}", fontsize=8, loc="left")
        audio = np.concatenate([f["audio"] for f in frames])
        axes[r, n_frames].imshow(vggish_log_mel(audio).T, origin="lower", aspect="auto", cmap="magma")
        axes[r, n_frames].set_title("log-mel (VGGish)", fontsize=8)
        axes[r, n_frames].axis("off")
        ax = axes[r, n_frames + 1]
        ax.axis("off")
        if record is not None:
            lines = []
            for s in record["sources"]:
                where = "off-screen" if not s["on_screen"] else ("sounding" if s["sounding"] else "silent")
                lines.append(f"{s['class_name']} / {s['member']}: {where}")
            ax.text(0, 1, "\n".join(lines), va="top", fontsize=7, family="monospace", transform=ax.transAxes)
    fig.suptitle(f"composed AVS world at {root} (val clips; tint = ground-truth sounding pixels)", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
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
    discriminative features (dots), with the training features faint behind them."""
    from sklearn.decomposition import PCA

    plt = _pyplot()
    c, k, m, d = memory.features.shape
    points = [memory.centroids.numpy(), memory.subcentroids.reshape(-1, d).numpy(), memory.features.reshape(-1, d).numpy()]
    pca = PCA(2, random_state=0).fit(np.concatenate(points + ([features] if features is not None else [])))
    cmap = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(7, 6))
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
    ax.legend(fontsize=7, ncol=2, loc="best")
    ax.set_title(f"semantic memory (PCA): {c} classes, k={k} sub-clusters, m={m} features each")
    save(fig, path)
    return fig


def draw_recall(ax, recalls: list[dict]) -> None:
    """Derivation recall against K (overall, on screen, off screen) on ``ax``."""
    ks = [r["K"] for r in recalls]
    ax.plot(ks, [r["recall"] for r in recalls], "o-", label="all sounding classes")
    ax.plot(ks, [r["recall_on_screen"] for r in recalls], "s--", label="on screen")
    if all(r["recall_off_screen"] is not None for r in recalls):
        ax.plot(ks, [r["recall_off_screen"] for r in recalls], "^:", label="off screen only")
    ax.set_xlabel("K nearest class centres")
    ax.set_ylabel("recall of the true classes")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)


def recall_curve(recalls: list[dict], path=None):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    draw_recall(ax, recalls)
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


def training_curves(history: list[dict], path=None):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = [h["epoch"] for h in history]
    axes[0].plot(epochs, [h["loss"] for h in history], "o-")
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("training loss")
    for key in ("J", "F", "JF"):
        axes[1].plot(epochs, [h["val"][key] for h in history], "o-", label=key)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel("validation")
    axes[1].legend()
    save(fig, path)
    return fig


def qualitative(images: np.ndarray, masks: np.ndarray, logits: np.ndarray, attention: np.ndarray | None = None, path=None):
    """Rows: frames. Columns: frame, ground truth, prediction, and (optionally) each token's attention."""
    plt = _pyplot()
    n = len(images)
    extra = 0 if attention is None else attention.shape[1]
    fig, axes = plt.subplots(n, 3 + extra, figsize=(2 * (3 + extra), 2 * n), squeeze=False)
    for r in range(n):
        axes[r, 0].imshow(images[r])
        axes[r, 1].imshow(overlay_mask(images[r], masks[r]))
        axes[r, 2].imshow(overlay_mask(images[r], (logits[r] > 0).astype(np.int64)))
        for t in range(extra):
            axes[r, 3 + t].imshow(attention[r, t], cmap="viridis")
        if r == 0:
            for c, title in enumerate(["frame", "ground truth", "prediction"] + [f"token {t}" for t in range(extra)]):
                axes[0, c].set_title(title, fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    save(fig, path)
    return fig


def embedding_figure(xy: dict[str, np.ndarray], labels: np.ndarray, class_names: list[str], path=None):
    """Side-by-side 2-D embeddings (e.g. t-SNE of baseline / +derivation / full), coloured by class."""
    plt = _pyplot()
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(xy), figsize=(4.2 * len(xy), 4))
    for ax, (name, points) in zip(np.atleast_1d(axes), xy.items()):
        for c in np.unique(labels):
            sel = labels == c
            ax.scatter(points[sel, 0], points[sel, 1], s=6, color=cmap(int(c) % 20), label=class_names[int(c)])
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    np.atleast_1d(axes)[-1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    save(fig, path)
    return fig
