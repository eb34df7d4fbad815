"""Inference: a model built for a prepared run (``make_model``), its logits and metrics on a frame set, a trained model loaded from its checkpoint (``load_trained``), and its BatchNorm statistics recomputed for its weights (``recompute_batchnorm_statistics``; a finished run re-read so, ``reread_run``).
"""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import torch

from avs_lib.analysis.metrics import evaluate
from avs_lib.core.config import TrainConfig
from avs_lib.core.errors import DataError
from avs_lib.core.files import atomic_write_text, read_json
from avs_lib.core.paths import workbench_path
from avs_lib.data.frames import FrameSet
from avs_lib.data.transforms import normalise_images
from avs_lib.models import build_model
from avs_lib.models.hooks import run_with_cache
from avs_lib.models.visual_pretrain import WORLD_WEIGHTS
from avs_lib.training.checkpoints import load_model_state, read_checkpoint, save_checkpoint
from avs_lib.training.prepare import Prepared, prepare
from avs_lib.training.runs import recorded_config


def uses_bf16(device: torch.device, enabled: bool, cpu: bool = False) -> bool:
    """bf16 autocast on CUDA when ``enabled``; on CPU only when ``cpu`` too (``TrainConfig.cpu_bf16``)."""
    return enabled and (device.type == "cuda" or (device.type == "cpu" and cpu))


def autocast(device: torch.device, enabled: bool, cpu: bool = False):
    """The autocast context ``uses_bf16`` asks for (a null context otherwise)."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if uses_bf16(device, enabled, cpu) else contextlib.nullcontext()


def predict(model, frames: FrameSet, device: torch.device, batch_size: int = 32, bf16: bool = True,
            zero_audio: bool = False, cpu_bf16: bool = False, indices=None) -> torch.Tensor:
    """Logits of every frame (or of ``indices``), on CPU (float32): ``run_with_cache`` asked for
    ``logits`` alone, on the model's device, under bf16 autocast where ``uses_bf16`` says so."""
    cache = run_with_cache(model, frames, names=["logits"], batch_size=batch_size, indices=indices,
                           zero_audio=zero_audio, bf16=uses_bf16(device, bf16, cpu_bf16))
    return cache["logits"].float()


def evaluate_model(model, frames: FrameSet, device: torch.device, config: TrainConfig) -> dict:
    logits = predict(model, frames, device, bf16=config.bf16, zero_audio=config.zero_audio, cpu_bf16=config.cpu_bf16)
    keep = frames.valid
    return evaluate(logits[keep], frames.masks[keep], convention=config.convention, batch_size=config.eval_batch_size)


@torch.no_grad()
def recompute_batchnorm_statistics(model: torch.nn.Module, frames: FrameSet, batches: int = 100, batch_size: int = 16,
                                   seed: int = 0, zero_audio: bool = False) -> int:
    """Replace the running statistics of every BatchNorm layer that trains by their average over
    ``batches`` batches of ``frames`` (drawn without replacement by ``seed``) with the model's present
    weights: Detectron2's "precise BN". For checkpoints trained with stale statistics (before
    ``bn_momentum``, README "Training, on CPU or GPUs"). ``zero_audio``: the audio the model was
    trained with is zeros (the floor), so it hears zeros here too. Layers that the model keeps in
    eval mode while training (``switches.frozen_stages``) keep their statistics. Each layer's
    momentum is restored; the model is left in eval mode. Returns the number of frames seen."""
    if batches < 1 or batch_size < 1 or len(frames.images) == 0:
        raise ValueError(f"recomputing BatchNorm statistics needs frames and batches >= 1, batch_size >= 1 "
                         f"(got {len(frames.images)} frames, batches={batches}, batch_size={batch_size})")
    model.train()  # first, so that a model's own train() decides which layers train
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average
    device = next(model.parameters()).device
    order = torch.randperm(len(frames.images), generator=torch.Generator().manual_seed(seed))[:batches * batch_size]
    try:
        # train mode draws from the global generator where a layer is random (the decoder's dropout): seeded,
        # and the caller's generator left as it was
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                index = order[start:start + batch_size]
                audio = frames.audio[index].to(device)
                model(normalise_images(frames.images[index].to(device)), torch.zeros_like(audio) if zero_audio else audio)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.eval()
    return len(order)


# ----------------------------------------------------------------------------- setup
def make_model(config: TrainConfig, prepared: Prepared, pretrained: bool = True) -> torch.nn.Module:
    """The configured model; ``pretrained=False`` leaves the backbone's start out (a checkpoint's
    weights replace it all)."""
    switches = dict(config.switches)
    if not pretrained:
        switches.pop("pretrained_backbone", None)
    elif switches.get("pretrained_backbone") == WORLD_WEIGHTS:  # the world's cached file, found by prepare()
        if not prepared.backbone_weights:
            raise ValueError("switches.pretrained_backbone=world: the prepared data carry no world-pretrained "
                             "backbone; prepare() with this config finds or pretrains it")
        switches["pretrained_backbone"] = prepared.backbone_weights
    switches.setdefault("num_classes", prepared.num_classes)
    if prepared.memory is None:  # no memory to set the audio width from (a baseline on given features)
        switches.setdefault("audio_dim", config.audio_dim)
    if config.model == "avsac":
        model = build_model("avsac", size=config.size, memory=prepared.memory, **switches)
    else:
        model = build_model(config.model, size=config.size, variant=config.variant,
                            ablation=config.ablation if config.model == "ddeseg" else None,
                            memory=prepared.memory, **switches)
    if getattr(model, "backbone_report", None) is not None and config.progress:
        print(model.backbone_report, flush=True)
    return model


def moved_store_run(config: TrainConfig, checkpoint: str | Path) -> TrainConfig:
    """``config`` with today's ``data_root`` and ``out`` when ``checkpoint`` lies in a data's model store
    (``<root>/cache/models/<model>-<key>/``, ``shared_run_dir``) that has moved since the run was
    trained: the world folder moved or copied with its cache. The run is the same (the key holds the
    data's identity, checked here), and what is trained or read next from its config (notebook 05's
    floor and ceiling) must find the data where it is now. Any other checkpoint: ``config`` as it is."""
    from dataclasses import replace

    from avs_lib.training.runs import shared_run_dir

    run = Path(checkpoint).resolve().parent
    store = run.parent
    if config.cache_dir or store.name != "models" or store.parent.name != "cache":
        return config
    root = store.parent.parent
    if workbench_path(config.data_root).resolve() == root:
        return config
    moved = replace(config, data_root=str(root), out=str(run))
    return moved if shared_run_dir(moved).resolve() == run else config


def load_trained(checkpoint: str | Path, prepared: Prepared | None = None, device: str = "cpu",
                 data_root: str | Path | None = None, state: dict | None = None):
    """(model, config, prepared) from a best.pt/last.pt written by ``train``. The checkpoint is
    verified (``avs_lib.training.checkpoints``) before any data work; a file that is not one, or whose
    weights do not fit its config, is a ``CheckpointError`` naming it. ``data_root``: where the
    run's dataset is now, when it has moved since training (its memory is built from there too,
    unless the run named a memory_root of its own). ``state``: the checkpoint's contents when the
    caller has read them already (``read_checkpoint``), so that a large file is not read twice."""
    from dataclasses import replace


    state = state if state is not None else read_checkpoint(checkpoint)
    # a checkpoint older than bn_momentum trained with each layer's own momentum, not today's 0.1: a run
    # continued from its config (notebook 05's rows beside a given checkpoint) must do the same
    config = recorded_config(state["config"], f"the config inside checkpoint {checkpoint}")
    if data_root is not None:
        config = replace(config, data_root=str(data_root))
    else:
        config = moved_store_run(config, checkpoint)
    if prepared is None and data_root is not None and not workbench_path(data_root).is_dir():
        raise DataError(f"--data-root {data_root} does not exist or is not a folder; pass the folder the checkpoint's "
                        f"dataset ({state['config'].get('data_root')} when it was trained) is in now")
    if prepared is None and not workbench_path(config.data_root).is_dir():
        raise DataError(f"checkpoint {checkpoint} was trained on data_root={config.data_root}, which does not exist "
                        f"here ({workbench_path(config.data_root)}): if the dataset has moved, point avs eval at it "
                        "with --data-root DIR (load_trained(..., data_root=DIR))")
    # the checkpoint holds every weight: no pretrained start is read, nor pretrained when absent
    prepared = prepared or prepare(config, backbone=False)
    model = make_model(config, prepared, pretrained=False)
    load_model_state(model, state["model"], checkpoint, state["config"])
    return model.to(device).eval(), config, prepared


# ----------------------------------------------------------------------------- re-reading a finished run
REREAD_KEY = "batchnorm_recomputed"  # metrics.json of a re-read run: how, from where, and what it read before
# the settings ``prepare(config, backbone=False)`` reads (switches and visual_pretrain_steps choose the
# pretrained backbone only, which a checkpoint replaces); tests/test_training.py checks the list
PREPARE_FIELDS = ("data_root", "cache_dir", "layout", "image_size", "audio_encoder", "audio_dim", "encoder_epochs",
                  "k", "m", "memory_root", "memory_file", "loader")


def run_config(run_dir: str | Path) -> TrainConfig:
    """The config of a run folder (its ``config.json``), read as ``load_trained`` reads a checkpoint's
    (``recorded_config``)."""
    path = Path(run_dir) / "config.json"
    return recorded_config(read_json(path, "a run's config"), str(path))


def prepared_key(config: TrainConfig) -> str:
    """The settings ``prepare(config, backbone=False)`` reads (``PREPARE_FIELDS``): runs that agree on them
    share one prepared data set (the seeds and settings of an ``avs ablation`` folder do, but for the
    ceiling's oracle input)."""
    return json.dumps({name: getattr(config, name) for name in PREPARE_FIELDS}, sort_keys=True, default=str)


def reread_run(run_dir: str | Path, out_dir: str | Path, prepared: Prepared | None = None, batches: int = 100,
               seed: int = 0, device: str = "cpu") -> dict:
    """A finished run (``best.pt`` and ``metrics.json`` of ``avs train`` or ``avs ablation``) read again
    with BatchNorm statistics recomputed for its best weights (``recompute_batchnorm_statistics`` over
    ``batches`` batches of its training frames; zero audio for a floor) into ``out_dir``: ``best.pt``
    with those statistics (every weight as trained), ``metrics.json`` whose ``test`` is the new reading,
    and the run's ``config.json`` and ``log.jsonl``. The record under ``batchnorm_recomputed`` (in
    ``metrics.json`` and in the checkpoint) keeps the run's first reading (``test_as_trained``, taken
    where it trained, perhaps a GPU under bf16) and the stale statistics' reading on this device
    (``test_stale_here``): the difference between the latter and ``test`` is what the statistics
    alone moved. For runs trained before ``bn_momentum`` (EfficientNet-Lite0's momentum 0.01 left their
    statistics about a hundred steps behind the weights). The weights are those the run chose by its
    validations, which read the stale statistics; ``avs ablation`` over ``out_dir``'s parent with the
    runs' settings reports on the re-read runs. Returns the new metrics."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if run_dir.resolve() == out_dir.resolve():
        raise ValueError(f"reread_run would overwrite {run_dir}: give another out_dir, so that the run as trained is kept")
    metrics = read_json(run_dir / "metrics.json", "metrics of a finished run")
    if "test" not in metrics:
        raise DataError(f"{run_dir / 'metrics.json'} has no test result: the run did not finish")
    if REREAD_KEY in metrics:
        raise DataError(f"{run_dir} was read again already (from {metrics[REREAD_KEY].get('from')}): re-read the "
                        "run as trained, whose first reading that one keeps")
    state = read_checkpoint(run_dir / "best.pt", map_location=device)
    model, config, prepared = load_trained(run_dir / "best.pt", prepared, device=device, state=state)
    stale_here = evaluate_model(model, prepared.test, torch.device(device), config)
    frames_seen = recompute_batchnorm_statistics(model, prepared.train, batches=batches, seed=seed,
                                                 zero_audio=config.zero_audio)
    test = evaluate_model(model, prepared.test, torch.device(device), config)
    record = {"from": str(run_dir.resolve()), "frames": frames_seen, "batches": batches, "seed": seed,
              "device": str(device), "test_as_trained": metrics["test"], "test_stale_here": stale_here}
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "log.jsonl"):
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, out_dir / name)
    save_checkpoint(dict(state, model={k: v.cpu() for k, v in model.state_dict().items()}, **{REREAD_KEY: record}),
                    out_dir / "best.pt")
    reread = {**metrics, "test": test, REREAD_KEY: record}
    atomic_write_text(out_dir / "metrics.json", json.dumps(reread, indent=1) + "\n")  # last: it marks the run done
    return reread
