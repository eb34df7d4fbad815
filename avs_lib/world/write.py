"""Write composed worlds in the exact on-disk layouts of AVSBench (S4, MS3, AVSS) and VPO.

Written under ``out/``::

    Single-source/   s4_meta_data.csv, s4_sources.jsonl, s4_data/{visual_frames,gt_masks,audio_wav,audio_log_mel}/...
    Multi-sources/   ms3_meta_data.csv, ms3_sources.jsonl, ms3_data/...
    AVSS/            metadata.csv, label2idx.json, sources.jsonl, {v1s,v1m,v2}/{uid}/{frames,labels_rgb}/..., audio.wav
    VPO/             vpo_msmi_data_stereo.csv, vpo_msmi_sources.jsonl, data/, mask/, VGGSound/audios/
    world.json       the configuration, the class list and the asset library

The ``*_sources.jsonl`` sidecars (one JSON object per clip) record the true sources of every clip:
class, member, on or off screen, sounding or silent, gain, instance id and per-frame boxes.
"""
from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import soundfile
from PIL import Image
from tqdm.auto import tqdm

from avs_lib.audio.frontends import per_second_vggish_examples
from avs_lib.core.files import atomic_write_text, output_folder, writing_into
from avs_lib.core.locks import LOCK_NAME, RunLock
from avs_lib.data.layouts import (METADATA, SOURCES, avss_files, ms3_files, s4_files, vpo_files, vpo_metadata,
                                  vpo_sources)
from avs_lib.data.palette import voc_palette
from avs_lib.world.assets import AssetLibrary, load_library
from avs_lib.world.compose import Clip, WorldConfig, check_fits, compose_clip, recipe

WORLD_FORMAT_VERSION = 1
JPEG_QUALITY = 92


def _png(array: np.ndarray, path: Path, palette: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette is not None:  # putpalette turns an L image into a P image, keeping the indices
        img.putpalette(palette.reshape(-1).tolist())
    img.save(path, format="PNG")


def _jpg(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="JPEG", quality=JPEG_QUALITY)


def _wav(audio: np.ndarray, path: Path, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), audio, sample_rate, subtype="PCM_16", format="WAV")


class _TensorPickler(pickle.Pickler):
    """Pickles a tensor as ``torch.from_numpy(array)``: it loads as the same tensor, and unlike
    torch's own reduction (which embeds a memory address) the bytes depend only on the values."""

    def reducer_override(self, obj):
        import torch

        if isinstance(obj, torch.Tensor):
            return torch.from_numpy, (obj.detach().cpu().numpy(),)
        return NotImplemented


def _log_mel_pickle(audio: np.ndarray, frames: int, sample_rate: int, path: Path) -> None:
    """AVSBench stores a pickled torch tensor [T, 1, 96, 64] per clip."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    examples = torch.from_numpy(per_second_vggish_examples(audio, frames, sample_rate))
    with open(path, "wb") as fh:
        _TensorPickler(fh, protocol=4).dump(examples)


def _mask255(mask: np.ndarray) -> np.ndarray:
    return (mask > 0).astype(np.uint8) * 255


def sidecar_record(clip: Clip, **extra) -> dict:
    return {"name": clip.name, "subset": clip.subset, "split": clip.split, "label": clip.label,
            "frames": int(clip.frames.shape[0]), "background": clip.background,
            "sources": [s.to_dict() for s in clip.sources], **extra}


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- per subset
def _write_s4(clip: Clip, root: Path, sr: int) -> list:
    """Frames and audio under split/category/name; train keeps the mask of frame 1 only, as AVSBench."""
    category = next(s.class_name for s in clip.sources if s.on_screen and s.sounding)
    masks = clip.binary_masks()
    for t in range(len(clip.frames)):
        files = s4_files(root, clip.split, category, clip.name, t)
        _png(clip.frames[t], files["frame"])
        if clip.split != "train" or t == 0:
            _png(_mask255(masks[t]), files["mask"])
    _wav(clip.audio, files["wav"], sr)
    _log_mel_pickle(clip.audio, len(clip.frames), sr, files["log_mel"])
    return [clip.name, 0, category, clip.split]


def _write_ms3(clip: Clip, root: Path, sr: int) -> list:
    masks = clip.binary_masks()
    for t in range(len(clip.frames)):
        files = ms3_files(root, clip.split, clip.name, t)
        _png(clip.frames[t], files["frame"])
        _png(_mask255(masks[t]), files["mask"])
    _wav(clip.audio, files["wav"], sr)
    _log_mel_pickle(clip.audio, len(clip.frames), sr, files["log_mel"])
    return [clip.name, clip.split]


def _write_avss(clip: Clip, root: Path, sr: int) -> list:
    semantic = clip.semantic_masks()
    palette = voc_palette()
    for t in range(len(clip.frames)):
        files = avss_files(root / "AVSS", clip.label, clip.name, t)
        _jpg(clip.frames[t], files["frame"])
        _png(semantic[t], files["mask"], palette=palette)
    _wav(clip.audio, files["wav"], sr)
    audible = sorted({s.class_name for s in clip.sources if s.on_screen and s.sounding})
    return [clip.name, clip.name, 0, 0, ";".join(audible), clip.split, clip.label]


def _write_msmi(clip: Clip, root: Path, sr: int, clip_number: int) -> tuple[list[list], dict]:
    """VPO is image-level: every frame of a clip becomes one record with its own 1 s of audio.
    ``ann_Ids`` lists the sounding instances (VPO keeps masks of audible objects only)."""
    base = root / "VPO"
    category = clip.sources[0].class_name
    cate_id = clip.sources[0].class_index + 1
    rows, img_ids, ann_of = [], [], {}
    for t in range(len(clip.frames)):
        img_id = clip_number * 100 + t + 1
        img_ids.append(img_id)
        ann_ids = [img_id * 100 + inst + 1 for inst in clip.sounding_instances]
        vgg_file = f"{clip.name}_{t}"
        files = vpo_files(base, category, img_id, ann_ids, vgg_file)
        _jpg(clip.frames[t], files["frame"])
        for inst, ann_id, mask_path in zip(clip.sounding_instances, ann_ids, files["masks"]):
            ann_of.setdefault(str(inst), []).append(ann_id)
            _png(_mask255(clip.instance_mask(inst)[t]), mask_path)
        _wav(clip.audio[t * sr : (t + 1) * sr], files["wav"], sr)
        rows.append([category, cate_id, img_id, " ".join(str(a) for a in ann_ids), vgg_file, clip.split])
    return rows, {"img_ids": img_ids, "ann_ids_by_instance": ann_of}


# ----------------------------------------------------------------------------- the world
_WORKER_STATE: dict = {}  # set in the parent before forking workers; read-only in them


_CLIP_WRITERS = {"s4": _write_s4, "ms3": _write_ms3, "avss": _write_avss}


def _write_clip(subset: str, index: int, cfg: WorldConfig, out: Path, library: AssetLibrary) -> tuple[str, list, dict]:
    clip = compose_clip(library, subset, index, cfg)
    if subset in _CLIP_WRITERS:
        return clip.split, [_CLIP_WRITERS[subset](clip, out, cfg.sample_rate)], sidecar_record(clip)
    frame_rows, ids = _write_msmi(clip, out, cfg.sample_rate, index + 1)
    return clip.split, frame_rows, sidecar_record(clip, vpo=ids)


def _write_clip_in_worker(job: tuple[str, int]) -> tuple[str, list, dict]:
    return _write_clip(*job, _WORKER_STATE["cfg"], _WORKER_STATE["out"], _WORKER_STATE["library"])


class WorldExists(ValueError):
    """The output folder holds something other than the world asked for, and overwriting was not asked for."""


def write_world(cfg: WorldConfig, out: str | Path, progress: bool = True, library: AssetLibrary | None = None,
                workers: int = 1, overwrite: bool = False, overwrite_option: str = "--overwrite") -> dict:
    """Compose ``cfg.clips_of(subset)`` clips of each subset and write them under ``out``; returns a summary.

    The same configuration always writes byte-identical files, whatever ``workers`` is: each clip
    has its own random stream and the metadata rows are written in clip order.

    ``out`` is owned by this call (``<out>/run.lock``, as a run folder: a second writer is refused).
    A folder that is not empty is refused (``WorldExists``) unless it already holds this very world
    (the same world.json: nothing is written, the summary says ``unchanged``) or ``overwrite`` is
    given: then everything in it, its ``cache/`` included, is deleted first, so no clip, table or
    derived file of another world stays behind. world.json is written last: a folder without it is
    an unfinished world. ``overwrite_option``: how the refusal names the way to overwrite.
    """
    out = Path(out)
    library = library or load_library(cfg.kind, cfg.sample_rate)
    check_fits(library, cfg)
    config = recipe(cfg)
    meta = {"format_version": WORLD_FORMAT_VERSION, "config": config, "library": library.kind,
            "classes": library.class_names, "members": {c.name: [m.name for m in c.members] for c in library.classes}}
    world_json = json.dumps(meta, indent=1, sort_keys=True) + "\n"
    output_folder(out, "--out")
    with RunLock(out, elsewhere="choose another --out"):
        present = sorted(p.name for p in out.iterdir() if not p.name.startswith(LOCK_NAME))
        if present and not overwrite:
            if (out / "world.json").is_file() and (out / "world.json").read_text() == world_json:
                return {"root": str(out), "library": library.kind, "classes": library.class_names, "unchanged": True}
            what = ("another world (its world.json differs)" if "world.json" in present
                    else f"{len(present)} entries without a world.json ({', '.join(present[:4])}"
                         f"{', ...' if len(present) > 4 else ''}: an unfinished world or other files)")
            raise WorldExists(f"{out} is not empty: it holds {what}; pass {overwrite_option} to delete its contents "
                              "(cache/ included) and write this world there, or choose another --out")
        for name in present if overwrite else ():
            path = out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        with writing_into(out, kept="what is there is an unfinished world (no world.json): write it again with "
                                    "--overwrite once there is space"):
            summary = _write_world(cfg, out, progress, library, workers)
            atomic_write_text(out / "world.json", world_json)
    return summary


def _write_world(cfg: WorldConfig, out: Path, progress: bool, library: AssetLibrary, workers: int) -> dict:
    """``write_world``'s work, in a folder it owns: every subset's clips and tables."""
    class_names = library.class_names
    summary: dict = {"root": str(out), "library": library.kind, "classes": class_names, "subsets": {}}
    pool = None
    if workers > 1:
        import multiprocessing

        _WORKER_STATE.update(cfg=cfg, out=out, library=library)
        pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        for subset in cfg.subsets:
            jobs = [(subset, index) for index in range(cfg.clips_of(subset))]
            results = (pool.imap(_write_clip_in_worker, jobs, chunksize=4) if pool
                       else (_write_clip(s, i, cfg, out, library) for s, i in jobs))
            rows, records, counts = [], [], {}
            for split, clip_rows, record in tqdm(results, total=len(jobs), desc=f"world {subset}", disable=not progress, unit="clip"):
                counts[split] = counts.get(split, 0) + 1
                rows.extend(clip_rows)
                records.append(record)
            _write_subset_metadata(subset, out, rows, records, class_names)
            summary["subsets"][subset] = counts
    finally:
        if pool is not None:
            pool.close()
            pool.join()
            _WORKER_STATE.clear()
    return summary


def _write_subset_metadata(subset: str, out: Path, rows: list, records: list, class_names: list[str]) -> None:
    if subset == "s4":
        _write_csv(out / METADATA["s4"], ["name", "start_time", "category", "split"], rows)
        _write_jsonl(out / SOURCES["s4"], records)
    elif subset == "ms3":
        _write_csv(out / METADATA["ms3"], ["name", "split"], rows)
        _write_jsonl(out / SOURCES["ms3"], records)
    elif subset == "avss":
        _write_csv(out / "AVSS" / METADATA["avss"], ["vid", "uid", "s_min", "s_sec", "a_obj", "split", "label"], rows)
        _write_jsonl(out / "AVSS" / SOURCES["avss"], records)
        label2idx = {"background": 0, **{name: i + 1 for i, name in enumerate(class_names)}}
        (out / "AVSS" / "label2idx.json").write_text(json.dumps(label2idx, indent=1) + "\n")
    else:
        _write_csv(out / "VPO" / vpo_metadata("msmi"), ["cateName", "cateId", "img_Id", "ann_Ids", "vgg_file", "split"], rows)
        _write_jsonl(out / "VPO" / vpo_sources("msmi"), records)


def world_roots(out: str | Path) -> dict[str, tuple[Path, str]]:
    """Where each subset of a written world lives, as (root, layout) for the loaders."""
    out = Path(out)
    return {"s4": (out, "s4"), "ms3": (out, "ms3"), "avss": (out / "AVSS", "avss"), "msmi": (out / "VPO", "vpo")}
