"""Figures of the workbench (matplotlib, written to files; notebooks show the same objects)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from avs_lib.audio import vggish_log_mel
from avs_lib.data.datasets import AVSDataset, DataError, load_sources
from avs_lib.data.palette import voc_palette


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
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
        if layout == "vpo":
            # VPO records are single frames; the sidecar says which image ids make up a clip.
            index_of = {int(rec.clip): i for i, rec in enumerate(dataset.records)}
            groups = [(r["name"], [index_of[i] for i in r["vpo"]["img_ids"]], r) for r in sources.values()
                      if r["split"] == "val"]
        else:
            groups = [(name, sorted(idx, key=lambda i: dataset.records[i].frame), sources.get(name))
                      for name, idx in dataset.clips.items()]
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
                ax.imshow(_overlay(sample["image"], sample["mask"]) if sample["mask_valid"] else sample["image"])
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
