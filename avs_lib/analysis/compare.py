"""Trained runs compared on the same frames, paired: each run's per-frame J&F with its 95 % interval
over clips, and each run's difference from the first with the interval of the paired difference.

Two runs tested on the same 1 500 frames differ by less than their own intervals suggest: the hard
frames are hard for both. Pairing frame by frame, and resampling whole clips for both runs at once
(``avs_lib.analysis.stats.bootstrap_ci`` on the differences), resolves what separate intervals
cannot. The interval is over clips only: a second seed of either run can move it further (the
ablation's seed intervals measure that). ``avs compare RUN_A RUN_B ...`` prints the table and can
draw the runs' learning curves side by side (``avs_lib.viz.plots.compared_learning_curves``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avs_lib.analysis.metrics import per_frame_scores
from avs_lib.analysis.stats import bootstrap_ci
from avs_lib.core.errors import DataError
from avs_lib.training.checkpoints import read_checkpoint
from avs_lib.training.predict import load_trained, predict

# what ``prepare(config, backbone=False)`` reads: runs that agree on these share one set of frames
PREPARE_KEYS = ("data_root", "cache_dir", "memory_root", "memory_file", "audio_encoder", "audio_dim",
                "encoder_epochs", "k", "m", "layout", "image_size", "loader")


@dataclass
class RunScores:
    run: str  # the run folder (or checkpoint) as given
    frames: list[tuple[str, int]]  # (clip, frame) of every scored frame, in order
    jf: np.ndarray  # [N] per-frame J&F of the run's best checkpoint, its own audio input (zeroed if it trained so)
    history: list[dict]  # metrics.json's history (the learning curve), [] when the folder has none


def checkpoint_of(run: str | Path) -> Path:
    """A run folder's best.pt (last.pt when training stopped before one), or the checkpoint given."""
    path = Path(run)
    if path.is_file():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise DataError(f"{path} holds no best.pt or last.pt: give a run folder written by avs train, or a checkpoint")


def score_runs(runs: list[str | Path], split: str = "test", device: str = "cpu", data_root: str | Path | None = None,
               progress=None) -> list[RunScores]:
    """Each run's per-frame J&F on ``split`` (frames with a ground truth only). Runs whose data
    settings agree (``PREPARE_KEYS``) share one prepared set of frames. ``data_root``: where the
    runs' dataset is now, when it has moved since they trained (``load_trained``)."""
    prepared_by: dict[str, object] = {}
    scores = []
    for run in runs:
        checkpoint = checkpoint_of(run)
        saved = {**read_checkpoint(checkpoint)["config"], **({"data_root": str(data_root)} if data_root else {})}
        key = json.dumps({k: saved.get(k) for k in PREPARE_KEYS}, sort_keys=True)
        model, config, prepared = load_trained(checkpoint, prepared_by.get(key), device=device, data_root=data_root)
        prepared_by[key] = prepared
        frames = {"train": prepared.train, "val": prepared.val, "test": prepared.test}[split]
        logits = predict(model, frames, torch.device(device), bf16=config.bf16, zero_audio=config.zero_audio,
                         cpu_bf16=config.cpu_bf16)
        keep = frames.valid
        j, f = per_frame_scores(logits[keep], frames.masks[keep])
        names = [(c, int(i)) for c, i, k in zip(frames.clips, frames.frames, keep.tolist()) if k]
        metrics = checkpoint.parent / "metrics.json"
        history = json.loads(metrics.read_text()).get("history", []) if metrics.is_file() else []
        scores.append(RunScores(str(run), names, ((j + f) / 2).numpy().astype(float), history))
        if progress:
            progress(run)
    return scores


def paired_table(scores: list[RunScores], boot: int = 2000, seed: int = 0) -> list[dict]:
    """Rows {"run", "frames", "JF", "ci95", "delta", "delta_ci95"}: each run's mean J&F with its
    interval over clips, and (after the first row) its paired difference from the first run with
    that difference's interval. Refuses runs scored on different frames (another world, split,
    image size or layout): a pairing needs the same frames in the same order."""
    first = scores[0]
    clips = [c for c, _ in first.frames]
    rows = []
    for s in scores:
        if s.frames != first.frames:
            raise DataError(f"{s.run} was scored on other frames than {first.run} ({len(s.frames)} against "
                            f"{len(first.frames)}): compare runs of the same dataset, split, layout and image size")
        row = {"run": s.run, "frames": len(s.jf), "JF": float(s.jf.mean()), "ci95": list(bootstrap_ci(s.jf, clips, boot, seed))}
        if s is not first:
            diff = s.jf - first.jf
            row.update(delta=float(diff.mean()), delta_ci95=list(bootstrap_ci(diff, clips, boot, seed)))
        rows.append(row)
    return rows


def table_markdown(rows: list[dict]) -> str:
    """The rows of ``paired_table`` as a markdown table, J&F and differences in points (x 100)."""
    lines = ["| run | frames | J&F | 95 % interval (clips) | paired Δ vs the first | 95 % interval of Δ |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        delta = f"{100 * r['delta']:+.1f}" if "delta" in r else "–"
        delta_ci = f"[{100 * r['delta_ci95'][0]:+.1f}, {100 * r['delta_ci95'][1]:+.1f}]" if "delta" in r else "–"
        lines.append(f"| {r['run']} | {r['frames']} | {100 * r['JF']:.1f} | "
                     f"[{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}] | {delta} | {delta_ci} |")
    return "\n".join(lines)
