"""Trained runs compared on the same frames, paired: each run's per-frame J&F with its 95 % interval
over clips, and each run's difference from the first with the interval of the paired difference.

Two runs tested on the same 1 500 frames differ by less than their own intervals suggest: the hard
frames are hard for both. Pairing frame by frame, and resampling whole clips for both runs at once
(``avs_lib.analysis.stats.bootstrap_ci`` on the differences), resolves what separate intervals
cannot. The interval is over clips only: a second seed of either run can move it further (the
ablation's seed intervals measure that). ``avs compare RUN_A RUN_B ...`` prints the table and can
draw the runs' learning curves side by side (``avs_lib.viz.plots.compared_learning_curves``).

A run's per-frame scores can be kept without its checkpoint (``save_scores``, ``avs compare
--save-scores DIR``): a file of some 60 KB for the 1 500 test frames of the default world, which a
later ``avs compare`` pairs as if the run were there (``load_scores``). So a run committed as figures,
whose tens of MB of weights are not, can still be the reference of a paired comparison; the file
carries the digest of the masks it was scored on, and a pairing with other truth is refused as
between runs.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avs_lib.analysis.metrics import per_frame_scores
from avs_lib.analysis.stats import bootstrap_ci
from avs_lib.core.errors import DataError
from avs_lib.core.files import atomic_write_text, read_json
from avs_lib.data.layouts import SEMANTIC_LAYOUTS
from avs_lib.training.checkpoints import read_checkpoint
from avs_lib.training.predict import load_trained, predict
from avs_lib.training.runs import run_identity

# what ``prepare(config, backbone=False)`` reads: runs that agree on these share one set of frames
PREPARE_KEYS = ("data_root", "cache_dir", "memory_root", "memory_file", "audio_encoder", "audio_dim",
                "encoder_epochs", "k", "m", "layout", "image_size", "loader")


SCORES_FORMAT = "avs per-frame scores, 1"  # the first key of a scores file: what it is and which version


@dataclass
class RunScores:
    run: str  # the run folder, checkpoint or scores file as given
    frames: list[tuple[str, int]]  # (clip, frame) of every scored frame, in order
    masks_digest: str  # sha256 of those frames' ground-truth masks: two runs pair only on the same truth
    jf: np.ndarray  # [N] per-frame J&F of the run's best checkpoint, its own audio input (zeroed if it trained so)
    history: list[dict]  # metrics.json's history (the learning curve), [] when the folder has none
    checkpoint: str = ""  # the checkpoint scored, as an absolute path ("" where unknown)


def checkpoint_of(run: str | Path) -> Path:
    """A run folder's best.pt (last.pt when training stopped before one), or the checkpoint given."""
    path = Path(run)
    if not path.exists():
        raise DataError(f"{path} does not exist: give a run folder written by avs train, or a checkpoint")
    if path.is_file():
        return path
    for name in ("best.pt", "last.pt"):
        if (path / name).is_file():
            return path / name
    raise DataError(f"{path} holds no best.pt or last.pt: give a run folder written by avs train, or a checkpoint")


def _prepare_key(saved: dict) -> str:
    """The data settings of a saved config, compared as ``run_identity`` compares runs (a relative
    and an absolute name of one folder are the same data); no cache_dir is <data_root>/cache."""
    values = {k: saved.get(k) for k in PREPARE_KEYS}
    if values["cache_dir"] is None and values["data_root"] is not None:
        values["cache_dir"] = str(Path(values["data_root"]) / "cache")
    return json.dumps(run_identity(values), sort_keys=True)


def _history(run_folder: Path) -> list[dict]:
    metrics = run_folder / "metrics.json"
    if not metrics.is_file():
        return []
    try:
        return json.loads(metrics.read_text()).get("history", [])
    except json.JSONDecodeError as err:
        raise DataError(f"{metrics} is not valid JSON ({err}); move it aside to compare the run without its "
                        "learning curve") from None


def is_scores_file(run: str | Path) -> bool:
    """Whether ``run`` is to be read as a scores file (an existing file named *.json) rather than a run
    folder or a checkpoint; ``load_scores`` checks that it is one."""
    return Path(run).suffix == ".json" and Path(run).is_file()


def save_scores(scores: RunScores, path: str | Path, split: str) -> Path:
    """Write one run's per-frame scores on ``split`` to ``path`` (JSON, written whole or not at all),
    for ``load_scores`` to read back exactly: the J&F values keep every digit (JSON writes a float
    so that it reads back as the same float)."""
    payload = {"format": SCORES_FORMAT, "run": scores.run, "checkpoint": scores.checkpoint, "split": split,
               "masks_digest": scores.masks_digest, "frames": [[clip, index] for clip, index in scores.frames],
               "jf": [float(v) for v in scores.jf], "history": scores.history}
    return atomic_write_text(path, json.dumps(payload) + "\n")


def load_scores(path: str | Path, split: str) -> RunScores:
    """A run's scores as ``save_scores`` wrote them; refused with a message naming the file when it is
    not such a file, was damaged, or was scored on another split than ``split``."""
    payload = read_json(path, "scores file")
    if not isinstance(payload, dict) or payload.get("format") != SCORES_FORMAT:
        raise DataError(f"{path} is not a scores file written by avs compare --save-scores (its first key should be "
                        f"format: {SCORES_FORMAT!r}); give a run folder, a checkpoint or such a file")
    try:
        saved_split, digest = str(payload["split"]), str(payload["masks_digest"])
        frames = [(str(clip), int(index)) for clip, index in payload["frames"]]
        jf = np.asarray([float(v) for v in payload["jf"]], dtype=float)
        history, checkpoint = list(payload.get("history", [])), str(payload.get("checkpoint", ""))
    except (KeyError, TypeError, ValueError) as error:
        raise DataError(f"{path} is a damaged scores file ({type(error).__name__}: {error}): write it again from the "
                        "run's checkpoint with avs compare --save-scores") from None
    if saved_split != split:
        raise DataError(f"{path} holds scores on the {saved_split} split, not {split}: compare with "
                        f"--split {saved_split}, or score the run again on {split} from its checkpoint")
    if len(frames) != len(jf):
        raise DataError(f"{path} names {len(frames)} frames but holds {len(jf)} scores: it was edited; "
                        "write it again from the run's checkpoint")
    return RunScores(str(path), frames, digest, jf, history, checkpoint)


def kept_checkpoint(path: str | Path) -> str | None:
    """The checkpoint whose scores the file ``path`` keeps, as ``save_scores`` recorded it ("" when
    it does not say, or is no readable scores file), or None where there is no file."""
    if not Path(path).exists():
        return None
    try:
        payload = read_json(path, "scores file")
    except DataError:
        return ""
    return str(payload.get("checkpoint", "")) if isinstance(payload, dict) else ""


def score_runs(runs: list[str | Path], split: str = "test", device: str = "cpu", data_root: str | Path | None = None,
               progress: Callable[[str], None] | None = None) -> list[RunScores]:
    """Each run's per-frame J&F on ``split`` (frames with a ground truth only). Runs whose data
    settings agree (``PREPARE_KEYS``) share one prepared set of frames. ``data_root``: where the
    runs' dataset is now, when it has moved since they trained (``load_trained``). Binary masks
    only (s4, ms3 and the composed worlds' layouts of them): a semantic layout is refused. A run
    given as a scores file (``save_scores``) is read, not scored again."""
    prepared_by: dict[str, object] = {}
    scores = []
    for run in runs:
        if is_scores_file(run):
            scores.append(load_scores(run, split))
            continue
        checkpoint = checkpoint_of(run)
        state = read_checkpoint(checkpoint)
        saved = {**state["config"], **({"data_root": str(data_root)} if data_root else {})}
        if saved.get("layout") in SEMANTIC_LAYOUTS:
            raise DataError(f"{checkpoint} was trained on the {saved['layout']} layout, whose masks are semantic (a "
                            "class per pixel); avs compare pairs binary masks (s4, ms3): use avs eval for it")
        key = _prepare_key(saved)
        model, config, prepared = load_trained(checkpoint, prepared_by.get(key), device=device, data_root=data_root,
                                               state=state)
        prepared_by[key] = prepared
        frames = prepared.split(split)
        logits = predict(model, frames, torch.device(device), bf16=config.bf16, zero_audio=config.zero_audio,
                         cpu_bf16=config.cpu_bf16)
        keep = frames.valid
        masks = frames.masks[keep]
        j, f = per_frame_scores(logits[keep], masks)
        names = [(c, int(i)) for c, i, k in zip(frames.clips, frames.frames, keep.tolist()) if k]
        digest = hashlib.sha256(str(tuple(masks.shape)).encode() + masks.numpy().tobytes()).hexdigest()
        scores.append(RunScores(str(run), names, digest, ((j + f) / 2).numpy().astype(float), _history(checkpoint.parent),
                                str(checkpoint.resolve())))
        if progress:
            progress(str(run))
    return scores


def paired_table(scores: list[RunScores], boot: int = 2000, seed: int = 0) -> list[dict]:
    """Rows {"run", "frames", "JF", "ci95", "delta", "delta_ci95"}: each run's mean J&F with its
    interval over clips, and (after the first row) its paired difference from the first run with
    that difference's interval. Refuses runs scored on different frames or a different truth
    (another world, split, image size or layout): a pairing needs the same frames in the same order."""
    first = scores[0]
    clips = [c for c, _ in first.frames]
    rows = []
    for s in scores:
        if s.frames != first.frames:
            where = next((i for i, (a, b) in enumerate(zip(s.frames, first.frames)) if a != b), None)
            detail = (f"frame {where} is {s.frames[where]} against {first.frames[where]}" if where is not None
                      else f"{len(s.frames)} frames against {len(first.frames)}")
            raise DataError(f"{s.run} was scored on other frames than {first.run} ({detail}): compare runs of the same "
                            "dataset, split and layout")
        if s.masks_digest != first.masks_digest:
            raise DataError(f"{s.run} and {first.run} name the same frames but their masks differ (another world "
                            "with the same clip names, or another image size): compare runs of the same dataset "
                            "and image size")
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
