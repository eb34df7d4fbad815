"""The training engine: one loop from a 2-core CPU to several GPUs.

``train(TrainConfig(...))`` (or ``avs train --config FILE key=value ...``):

* AdamW with no weight decay on norms, biases and other 1-D parameters; linear warm-up then a cosine
  decay to ``min_lr``, stepped every iteration; ``fused_adamw`` takes its fused kernel;
* bf16 autocast on CUDA; gradient clipping;
* BatchNorm's running statistics tracked with momentum ``bn_momentum`` (0.1) whatever a layer was
  built with (``set_batchnorm_momentum``): they do not change the training, only what a model in
  eval mode reads (every validation, the test, a loaded checkpoint);
* reproducibility: the order of the training frames, the augmentation and every random draw in the
  model (Gumbel noise, dropout) are seeded from (seed, epoch), so a CPU run is bit-reproducible and
  ``resume`` continues exactly where it stopped;
* the training frames: the world's written training split every epoch, or (``train_clips=fresh``)
  new clips composed each epoch from a composed world's recipe (``avs_lib.data.fresh``);
* validation every epoch, test once at the end with the best checkpoint;
* ``last.pt`` and ``best.pt`` are written atomically (temporary file, then rename) with a format
  header, the config and a checksum, and verified when read (``avs_lib.training.checkpoints``);
* ``log.jsonl`` has one JSON line per epoch. The lines live inside the checkpoint and the file is
  rewritten from it (atomically) right after the checkpoint: a line never exists without its
  checkpoint, and a kill between the two is repaired by the resume, which rewrites log.jsonl from
  ``last.pt``. ``metrics.json`` holds the final numbers;
* the run folder is locked (``<out>/run.lock``: pid and host, ``avs_lib.core.locks``); ``resume=true``
  refuses a config that differs from the run's in anything but ``epochs`` and leaves config.json
  as it was (``avs_lib.training.runs``, whose ``run_state`` also lets ``train_once`` reuse a run);
* tracking: TensorBoard events in ``<out>/tensorboard/`` by default, W&B offline as an option
  (``tracking=``, ``avs_lib.training.tracking``);
* several processes: launched by ``torchrun``, the engine initialises the process group (NCCL on
  CUDA, gloo on CPU), wraps the model in DistributedDataParallel and gives each rank an equal slice
  of every global batch. On CUDA, BatchNorm becomes SyncBatchNorm; on CPU (where SyncBatchNorm does
  not run) use ``decoder_norm=group`` for results identical to one process. Several nodes: torchrun
  on each with a c10d rendezvous and ``out`` on a shared file system; with ``--max-restarts`` pass
  ``resume=true``, so that a restarted group continues from ``last.pt`` (README, "Running on a
  cluster").
"""
from __future__ import annotations

import atexit
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

if dist.is_available():
    # torch.distributed.nn.functional binds the default process group that exists when it is first
    # imported as its functions' default argument (``group=group.WORLD``), and DistributedDataParallel
    # imports it. Imported after init_process_group, it holds that group for the life of the process:
    # destroy_process_group cannot free it, and the group's gloo threads outlive it (measured, torch
    # 2.13; see _destroy_process_group_at_exit). Imported here, before any group exists, its defaults
    # are None.
    import torch.distributed.nn.functional  # noqa: F401

from avs_lib.analysis.truth import UNKNOWN_OBJECT, object_class_map, onscreen_labels
from avs_lib.core.config import TrainConfig, check_device
from avs_lib.core.files import atomic_write, atomic_write_text, output_folder, read_json, writing_into
from avs_lib.core.locks import RunLock
from avs_lib.core.paths import workbench_path
from avs_lib.data.fresh import check_fresh, fresh_train_frames
from avs_lib.data.datasets import world_frame_size
from avs_lib.data.layouts import SEMANTIC_LAYOUTS
from avs_lib.data.loader import epoch_batches, is_streamed
from avs_lib.data.transforms import normalise_images
from avs_lib.models.ddeseg import DDESegConfig
from avs_lib.training.checkpoints import read_checkpoint, save_checkpoint
from avs_lib.training.losses import (attention_supervision_loss, avsac_loss, capacity_loss, ddeseg_loss,
                                     outline_loss)
from avs_lib.training.predict import autocast, evaluate_model, load_trained, make_model, predict
from avs_lib.training.prepare import Prepared, prepare
from avs_lib.training.runs import RunRefused, open_run_folder, run_state
from avs_lib.training.tracking import Tracker, predicted_masks


# ----------------------------------------------------------------------------- pieces
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def is_pretrained_backbone(name: str) -> bool:
    """A parameter of the visual backbone proper (what a pretrained checkpoint fills): the CNN's own
    layers, or the MiT's patch embeddings, self-attention, FFNs and norms; not the fusion blocks'
    audio cross-attention, the elimination, derivation, projections or decoder."""
    if name.startswith("encoder.cnn."):
        return True
    return name.startswith("encoder.") and not name.startswith(("encoder.fusion", "encoder.norms")) and "cross_" not in name


def parameter_groups(model: torch.nn.Module, weight_decay: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups: no weight decay on norms, biases and other 1-D parameters; with
    ``backbone_lr_scale`` != 1, the backbone's parameters (``is_pretrained_backbone``) in groups of
    their own whose learning rate is scaled by it (each group's ``lr_scale``)."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            backbone = backbone_lr_scale != 1.0 and is_pretrained_backbone(name)
            groups.setdefault((p.ndim <= 1 or name.endswith(".bias"), backbone), []).append(p)
    return [{"params": params, "weight_decay": 0.0 if no_decay else weight_decay,
             "lr_scale": backbone_lr_scale if backbone else 1.0}
            for (no_decay, backbone), params in sorted(groups.items())]


def make_optimiser(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``parameter_groups``; with ``config.fused_adamw`` its fused kernel, which updates
    every parameter in one call instead of looping over them (the same update, in another order of
    floating-point operations: not bit-identical)."""
    groups = parameter_groups(model, config.weight_decay, config.backbone_lr_scale)
    return torch.optim.AdamW(groups, lr=config.lr, fused=config.fused_adamw or None)  # None: torch's default, the loop


def set_batchnorm_momentum(model: torch.nn.Module, momentum: float | None) -> int:
    """Give every BatchNorm layer of ``model`` the running-statistics momentum ``momentum`` (None:
    leave each its own); returns how many layers were set.

    Why: EfficientNet-Lite0 is built with TensorFlow's 0.01, right for ImageNet's hundreds of
    thousands of steps. The default config trains for 874, and its running statistics then trail
    the weights by about a hundred steps: measured on the default world (oracle input, seed 0),
    validation read in eval mode gave J&F 0.001 after 1 744 training frames and 0.004 after 3 488,
    where the same weights score 0.399 and 0.496 with statistics recomputed for them (Detectron2's
    "precise BN": 100 batches of training frames); at the end of training the stale statistics
    still cost 0.4-0.9 points of test J&F (four models). With 0.1 the statistics trail by about ten steps: 0.395
    and 0.495 at the same points. Train mode normalises with each batch's own statistics, so the
    weights, the losses and the gradients are the same with either value."""
    if momentum is None:
        return 0
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.momentum = momentum
    return len(layers)


def learning_rate(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warm-up from lr/warmup to lr, then cosine from lr to min_lr at the last step."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps - 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _loss(config: TrainConfig, out, masks, valid, onscreen=None, object_maps=None):
    loss = _model_loss(config, out, masks, valid, onscreen, object_maps)
    if config.outline_weight:  # outside the paper (avs_lib.training.losses.outline_loss)
        loss = loss + config.outline_weight * outline_loss(out.logits.float(), masks, valid)
    return loss


def _model_loss(config: TrainConfig, out, masks, valid, onscreen=None, object_maps=None):
    if config.model == "avsac":
        return avsac_loss(out.logits.float(), masks, out.audio.float(), out.agv.float(), valid, config.avfs_weight)
    loss = ddeseg_loss(out.logits.float(), masks, valid)
    if config.attention_supervision:  # outside the paper (avs_lib.training.losses.attention_supervision_loss)
        grids = [tuple(f.shape[-2:]) for f in out.features]
        switches = config.switches or {}
        loss = loss + config.attention_supervision * attention_supervision_loss(
            out.attention, grids, out.derivation.class_indices, object_maps, valid,
            null_key=switches.get("fusion_null_key", DDESegConfig.fusion_null_key),
            queries=switches.get("fusion_query", DDESegConfig.fusion_query))
    if config.capacity_check:  # outside the paper: the capacity check (avs_lib.training.losses.capacity_loss)
        if out.derivation is None or not out.stage_scores:
            raise ValueError("capacity_check needs a model with derivation and elimination (ablation=full)")
        loss = loss + config.capacity_check * capacity_loss(list(out.stage_scores.values()),
                                                            out.derivation.class_indices, onscreen)
    return loss


def _capacity_targets(config: TrainConfig, prepared: Prepared, frames, indices: torch.Tensor):
    """On-screen labels [B, C] of the training frames ``indices`` (of the epoch's ``frames``) for the
    capacity check (None when off)."""
    if not config.capacity_check:
        return None

    if "_onscreen" not in frames.__dict__:  # computed once per frame set
        frames.__dict__["_onscreen"] = onscreen_labels(frames, len(prepared.memory.class_names))
    return frames.__dict__["_onscreen"][indices]


def _check_attention_supervision(config: TrainConfig, data_root: Path) -> None:
    """Refuse ``attention_supervision`` before the first step where it cannot work."""
    if not config.attention_supervision:
        return
    switches = config.switches or {}
    if (config.model != "ddeseg" or config.ablation == "baseline" or not switches.get("derivation", True)
            or config.variant != "paper" or config.layout in SEMANTIC_LAYOUTS):
        raise ValueError("attention_supervision needs DDESeg with derived tokens and fusion cross-attention on binary "
                         "masks (model=ddeseg, an ablation other than baseline, variant=paper, an ms3 or s4 layout)")
    if not (data_root / "world.json").exists():
        raise ValueError(f"attention_supervision needs a composed world: {data_root} has no world.json, and only a "
                         "composed world records where each sounding object is")


def _with_object_maps(config: TrainConfig, frames, data_root: Path):
    """The training frames to batch: ``frames`` itself, or (``attention_supervision``) the same frames
    whose masks say which object sounds where (``object_class_map``; ``> 0`` is the binary mask),
    so that every augmentation moves them as it moves the masks. Computed once per frame set."""
    if not config.attention_supervision:
        return frames
    if is_streamed(frames):
        raise ValueError("attention_supervision needs the training frames held in memory (loader=memory): streamed "
                         "frames are decoded from their mask files, which do not say which object a pixel belongs to")
    if "_object_maps" not in frames.__dict__:
        size = world_frame_size(data_root)
        classes = [s["class_index"] for record in frames.sources.values() for s in record.get("sources", [])]
        if classes and max(classes) + 1 >= UNKNOWN_OBJECT:  # the maps travel as uint8 through the augmentation
            raise ValueError(f"attention_supervision: the world has {max(classes) + 1} classes; object maps hold "
                             f"at most {UNKNOWN_OBJECT - 1}")
        maps = torch.stack([object_class_map(frames, i, size) for i in range(len(frames))])
        frames.__dict__["_object_maps"] = replace(frames, masks=maps)
    return frames.__dict__["_object_maps"]


def _epoch_train_frames(config: TrainConfig, prepared: Prepared, epoch: int, data_root: Path, main: bool):
    """The training frames of epoch ``epoch``: the prepared split, or (``train_clips=fresh``) as
    many clips composed afresh for this epoch (``avs_lib.data.fresh``; every rank composes the same
    ones, so the batches do not depend on the number of ranks)."""
    if config.train_clips != "fresh":
        return prepared.train
    return fresh_train_frames(data_root, config.layout, epoch, config.image_size, prepared.audio_encoder,
                              progress=config.progress and main)


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        if (os.environ.get("RANK") == "0" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
                and int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0):
            # Measured here (torch 2.13, c10d): the store torchrun shares across rendezvous rounds
            # keeps the previous attempt's addresses, and a restarted group can read them and fail
            # (or hang) in its first collective; a store per round avoids that.
            print("note: torchrun --max-restarts with the shared rendezvous store: export "
                  "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 before torchrun so that a restarted group does not read "
                  "the previous attempt's addresses (README, 'Running on a cluster')", file=sys.stderr, flush=True)
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if backend == "gloo":
            atexit.register(_destroy_process_group_at_exit)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _destroy_process_group_at_exit() -> None:
    """Free the gloo process group that ``_distributed`` made while the interpreter is still whole.

    A gloo worker thread drops each finished collective after the caller's ``wait`` has returned, and
    dropping one that holds a tensor seen from Python takes the GIL. A group still alive when the
    interpreter finalises can therefore have a worker thread take the GIL too late: Python ends that
    thread with pthread_exit inside C++ code, and the process dies with SIGABRT ("terminate called
    without an active exception", seen in the core of a two-rank run; about 2 exits in 100). Freed here,
    from atexit, the group's destructor releases the GIL and joins its threads, which finish their
    drops first. Not done for NCCL, where destroying a group whose peers are stuck in a collective can
    hang a failing run instead of letting it exit."""
    if dist.is_initialized():
        dist.destroy_process_group()


# thread names (Linux) of a gloo process group: its worker threads, its transport loop, rank 0's store
GLOO_THREAD_NAMES = ("pt_gloo_runloop", "gloo_tcp_loop", "pt_tcpstore_uv")


def gloo_threads_alive() -> list[str]:
    """The names of this process's threads that belong to a gloo process group ([] where /proc is
    missing): after ``_destroy_process_group_at_exit`` there should be none."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = [(tasks / t / "comm").read_text().strip() for t in os.listdir(tasks)]
    return [n for n in names if n in GLOO_THREAD_NAMES]


def _fault_injection(out_dir: Path, epoch: int, step_in_epoch: int, rank: int) -> None:
    """Test hook: ``AVS_FAULT_KILL=EPOCH:STEP[:RANK]`` SIGKILLs this worker at that step (epoch
    1-based, step within the epoch 0-based, rank 0 by default), once per run folder (a marker file
    ``.fault-injected`` keeps the restarted workers alive). The elastic-restart test uses it."""
    spec = os.environ.get("AVS_FAULT_KILL")
    if not spec:
        return
    parts = [int(p) for p in spec.split(":")]
    at_epoch, at_step, at_rank = parts[0], parts[1], parts[2] if len(parts) > 2 else 0
    if (epoch + 1, step_in_epoch, rank) != (at_epoch, at_step, at_rank):
        return
    try:
        os.close(os.open(out_dir / ".fault-injected", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _agree(error: BaseException | None, world: int) -> None:
    """Rank 0's verdict on the run folder, shared so that every rank stops with the same message
    instead of waiting for rank 0 in a collective."""
    if world > 1:
        box = [None if error is None else str(error)]
        dist.broadcast_object_list(box, src=0)
        if error is None and box[0] is not None:
            raise RunRefused(f"rank 0 refused the run: {box[0]}")
    if error is not None:
        raise error


def _write_log(log_path: Path, records: list[dict]) -> None:
    """log.jsonl rewritten whole from the checkpoint's records (atomic): it never holds a line
    without a checkpoint, and a kill between the checkpoint and this write loses nothing (the next
    resume rewrites it from the checkpoint)."""
    atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))


def _legacy_log(log_path: Path, epochs_done: int) -> list[dict]:
    """The records of a checkpoint written before the log lived inside it: log.jsonl, cut to the
    checkpoint's epoch."""
    if not log_path.exists():
        return []
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("epoch", 0) <= epochs_done]


# ----------------------------------------------------------------------------- the loop
def train(config: TrainConfig, prepared: Prepared | None = None) -> dict:
    """Train ``config`` into ``config.out`` (see the module docstring). The folder is locked for the
    run (``avs_lib.core.locks``): a second run into it raises ``RunLocked`` naming the owner."""
    check_device(config)  # before the process group, the run folder and any data work
    rank, world = _distributed()
    main = rank == 0
    out_dir = Path(config.out)
    lock, error, state = None, None, None
    if main:
        try:
            output_folder(out_dir, "out=")
            lock = RunLock(out_dir).acquire()
            state = open_run_folder(config, out_dir)
        except (ValueError, OSError) as err:
            error = err
    try:
        _agree(error, world)
        # a full disk is one message naming the folder and the checkpoint that is still good
        with writing_into(out_dir, kept=lambda: _what_is_kept(out_dir)):
            return _train(config, prepared, rank, world, out_dir, state)
    finally:
        if lock is not None:
            lock.release()


def _what_is_kept(out_dir: Path) -> str:
    last = out_dir / "last.pt"
    if not last.exists():
        return "no epoch had been saved yet"
    return f"{last}, the last good checkpoint, is kept: continue with resume=true once there is space"


def _train(config: TrainConfig, prepared: Prepared | None, rank: int, world: int, out_dir: Path,
           state: dict | None) -> dict:
    main = rank == 0
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    prepared = prepared or prepare(config, progress=config.progress and main)
    data_root = workbench_path(config.data_root)
    torch.manual_seed(config.seed)
    model = make_model(config, prepared).to(device)
    set_batchnorm_momentum(model, config.bn_momentum)  # before SyncBatchNorm's conversion, which keeps it
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    core = model.module if world > 1 else model
    if config.train_clips == "fresh":  # refused here, before the first step, if it cannot work
        check_fresh(data_root, config.layout, prepared.audio_encoder)
    _check_attention_supervision(config, data_root)
    optimiser = make_optimiser(core, config)
    n_train = len(prepared.train)
    steps_per_epoch = max(1, n_train // config.batch_size)  # drop the last partial batch: equal rank slices
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world} processes")

    # the last step of each of the first validations_per_epoch - 1 parts of an epoch (the epoch's end validates anyway)
    inside_epoch = {steps_per_epoch * j // config.validations_per_epoch - 1 for j in range(1, config.validations_per_epoch)}
    start_epoch, best, history, log = 0, -1.0, [], []
    last_path, best_path, log_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "log.jsonl"
    if config.resume and last_path.exists():
        if state is None:  # ranks other than 0 read (and verify) the checkpoint themselves
            state = read_checkpoint(last_path, map_location=device)
        core.load_state_dict({k: v.to(device) for k, v in state["model"].items()})
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]
        log = state["log"] if "log" in state else _legacy_log(log_path, state["epoch"] + 1)
        if main:
            _write_log(log_path, log)  # the lines of the checkpoint's epochs, no more, no fewer
            print(f"resuming {out_dir} from last.pt after epoch {start_epoch} of {config.epochs}", flush=True)
    tracker = Tracker(out_dir, config.tracking, asdict(config), purge_step=start_epoch * steps_per_epoch) if main else None
    try:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            torch.manual_seed(config.seed * 100_003 + epoch)  # Gumbel noise, dropout
            # the epoch's order and augmentation, held or streamed frames (avs_lib.data.loader)
            train_frames = _epoch_train_frames(config, prepared, epoch, data_root, main)
            batches = epoch_batches(_with_object_maps(config, train_frames, data_root), config, epoch, steps_per_epoch,
                                    rank, world, device, root=data_root)
            t0, losses, curve = time.time(), [], []
            bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not (config.progress and main), leave=False)
            for step_in_epoch in bar:
                _fault_injection(out_dir, epoch, step_in_epoch, rank)
                step = epoch * steps_per_epoch + step_in_epoch
                for group in optimiser.param_groups:
                    group["lr"] = group.get("lr_scale", 1.0) * learning_rate(step, total_steps, warmup_steps, config.lr,
                                                                             config.min_lr)
                images, masks, audio, valid, indices = next(batches)  # this rank's slice of the global batch
                if config.zero_audio:
                    audio = torch.zeros_like(audio)
                object_maps = None
                if config.attention_supervision:  # the masks came as object maps (_with_object_maps)
                    object_maps, masks = masks, (masks > 0).long()
                if config.channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with autocast(device, config.bf16, config.cpu_bf16):
                    out = model(normalise_images(images), audio)
                loss = _loss(config, out, masks, valid, _capacity_targets(config, prepared, train_frames, indices),
                             object_maps)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimiser.step()
                reduced = loss.detach().clone()
                if world > 1:
                    dist.all_reduce(reduced)
                    reduced /= world
                losses.append(reduced.item())
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if main and step_in_epoch in inside_epoch:
                    since = losses[(curve[-1]["step_in_epoch"] + 1) if curve else 0:]
                    curve.append({**_validate_inside_epoch(model, core, prepared, device, config, step),
                                  "loss": sum(since) / len(since), "step_in_epoch": step_in_epoch})
            batches.close()  # the epoch's loader workers stop before the validation
            record = {"epoch": epoch + 1, "loss": sum(losses) / len(losses), "losses": losses, "curve": curve,
                      "frames_seen": (epoch + 1) * steps_per_epoch * config.batch_size,
                      "lr": optimiser.param_groups[0]["lr"], "seconds": time.time() - t0,
                      "frames_per_second": steps_per_epoch * config.batch_size / (time.time() - t0)}
            if main:
                record["val"] = evaluate_model(core, prepared.val, device, config)
                improved = record["val"]["JF"] > best
                best = max(best, record["val"]["JF"])
                history.append({k: v for k, v in record.items() if k != "losses"})
                log.append(record)
                # The epoch's log line lives inside its checkpoint; log.jsonl is rewritten from it after
                # the checkpoint is in place, so neither exists without the other (see _write_log).
                state = {"model": core.state_dict(), "optimiser": optimiser.state_dict(), "epoch": epoch,
                         "best": best, "history": history, "log": log, "config": asdict(config)}
                if improved:
                    save_checkpoint(state, best_path)
                save_checkpoint(state, last_path)
                _write_log(log_path, log)
                _track_epoch(tracker, core, prepared, device, config, record, epoch, steps_per_epoch, total_steps,
                             warmup_steps)
                if config.progress:
                    v = record["val"]
                    print(f"epoch {epoch + 1}: loss {record['loss']:.4f}  val J {v['J']:.3f} F {v['F']:.3f} "
                          f"J&F {v['JF']:.3f}" + ("  (best)" if improved else ""), flush=True)
            if world > 1:
                dist.barrier()
            if config.stop_after_epoch is not None and epoch + 1 >= config.stop_after_epoch and epoch + 1 < config.epochs:
                return {"stopped_after_epoch": epoch + 1}
    finally:
        if tracker is not None:
            tracker.close()

    result = {}
    if main:
        state = read_checkpoint(best_path, map_location=device)
        core.load_state_dict(state["model"])
        result = {"test": evaluate_model(core, prepared.test, device, config), "best_val_JF": best,
                  "epochs": config.epochs, "history": history, "config": asdict(config),
                  "best_epoch": state["epoch"] + 1, "device": device.type}
        atomic_write_text(out_dir / "metrics.json", json.dumps(result, indent=1))
    return result


def _validate_inside_epoch(model, core, prepared: Prepared, device: torch.device, config: TrainConfig, step: int) -> dict:
    """A point of the learning curve inside an epoch: {"frames_seen", "JF"} on the validation split.
    The random state is put back afterwards, so a run validated more often trains the same weights."""
    state = torch.get_rng_state()
    point = {"frames_seen": (step + 1) * config.batch_size, "JF": evaluate_model(core, prepared.val, device, config)["JF"]}
    torch.set_rng_state(state)
    model.train()
    return point


def learning_curve(history: list[dict]) -> list[dict]:
    """[{"frames_seen", "JF"}] of a run's history: the points inside each epoch (``validations_per_epoch``)
    and each epoch's end, in order."""
    points = []
    for record in history:
        points.extend(record.get("curve", []))
        if "frames_seen" in record:
            points.append({"frames_seen": record["frames_seen"], "JF": record["val"]["JF"]})
    return points


def late_gain(history: list[dict], fraction: float = 0.2) -> float | None:
    """Validation J&F gained over the last ``fraction`` of the frames seen (best point in that part
    minus the last point before it): under 0.01 says the curve is flat where training stops."""
    split = _split_late(history, fraction)
    if split is None:
        return None
    before, late = split
    return max(p["JF"] for p in late) - before[-1]["JF"]


def _split_late(history: list[dict], fraction: float) -> tuple[list[dict], list[dict]] | None:
    """The learning curve's points up to and after the last ``fraction`` of the frames seen (both
    non-empty), as ``late_gain`` and ``late_trend`` read them; None where either part is empty."""
    points = learning_curve(history)
    if len(points) < 2:
        return None
    cut = points[-1]["frames_seen"] * (1 - fraction)
    before = [p for p in points if p["frames_seen"] <= cut]
    late = [p for p in points if p["frames_seen"] > cut]
    return (before, late) if before and late else None


def late_trend(history: list[dict], fraction: float = 0.2) -> dict | None:
    """What the last ``fraction`` of the frames seen gained, read so that reading noise does not pass
    for a gain: the mean validation J&F of the readings in the last ``fraction`` minus the mean of
    those in the ``fraction`` just before it. On a straight curve this is the rise over one
    ``fraction`` of training, as ``late_gain`` means; on a flat curve it is zero on average, where
    ``late_gain`` (the best late reading minus one reading) is not: with k late readings that scatter
    by sigma it expects about sigma times the mean of the largest of k normal draws (1.27 sigma for
    k = 6), so a flat curve whose readings scatter by a point fails a 0.01 target about half the time.
    The price: the two windows' middles lie a tenth of training before the ends of the spans they
    stand for, so on a curve that bends toward flat this reads more than the last ``fraction``'s
    rise (+17 % on an exponential approach whose time constant is half the run, more where the
    curve bends sharply inside the last two windows): it errs against calling a curve flat, never
    for it. Neither reading settles a 0.01 question when readings scatter by a point; both are given.
    {"gain", "ci95" (a normal interval from the readings' scatter in the two windows; the scatter
    includes the curve's own rise inside a window, so the interval errs wide), "late", "before" (the
    readings in each window)}; ``ci95`` is None with fewer than two readings in a window; None
    without a reading in both windows."""
    import statistics

    split = _split_late(history, fraction)
    if split is None:
        return None
    start = split[1][-1]["frames_seen"] * (1 - 2 * fraction)
    before = [p["JF"] for p in split[0] if p["frames_seen"] > start]
    late = [p["JF"] for p in split[1]]
    if not before:
        return None
    gain = statistics.fmean(late) - statistics.fmean(before)
    ci95 = None
    if len(late) > 1 and len(before) > 1:
        half = 1.96 * (statistics.variance(late) / len(late) + statistics.variance(before) / len(before)) ** 0.5
        ci95 = (gain - half, gain + half)
    return {"gain": gain, "ci95": ci95, "late": len(late), "before": len(before)}


TRACKED_FRAMES = 4  # validation frames whose predicted masks go to TensorBoard / W&B each epoch


def _track_epoch(tracker: Tracker | None, model, prepared: Prepared, device: torch.device, config: TrainConfig,
                 record: dict, epoch: int, steps_per_epoch: int, total_steps: int, warmup_steps: int) -> None:
    """Per step: the loss and the learning rate; per epoch (at its last step): the mean loss, the
    validation metrics and a few predicted masks."""
    if tracker is None or (tracker.tb is None and tracker.wandb_run is None):
        return
    first = epoch * steps_per_epoch
    for i, loss in enumerate(record["losses"]):
        tracker.scalars({"train/loss": loss,
                         "train/lr": learning_rate(first + i, total_steps, warmup_steps, config.lr, config.min_lr)},
                        first + i)
    last = first + steps_per_epoch - 1
    tracker.scalars({"train/epoch_loss": record["loss"],
                     **{f"val/{k}": v for k, v in record["val"].items() if k in ("J", "F", "JF", "mIoU")}}, last)
    frames = [i for i in range(len(prepared.val)) if prepared.val.valid[i]][:TRACKED_FRAMES]
    if frames:
        logits = predict(model, prepared.val, device, bf16=config.bf16, zero_audio=config.zero_audio,
                         cpu_bf16=config.cpu_bf16, indices=frames)
        tracker.masks("val/masks", prepared.val.masks[frames], predicted_masks(logits), last)


def train_once(config: TrainConfig, prepared: Prepared | None = None) -> dict:
    """``train``, made safe to call again (a notebook's second Run All): a finished run in
    ``config.out`` with the same settings is reused (its metrics are returned, nothing is trained),
    an unfinished one is resumed, and a run with other settings is moved aside to
    ``<out>-previous-<n>`` (said in one line) so that nothing is lost."""
    from dataclasses import replace

    out = Path(config.out)
    state = run_state(out, config)
    if state.kind == "finished":
        print(f"reusing the model trained in {out} (same settings)", flush=True)
        return read_json(out / "metrics.json", "run metrics")
    if state.kind == "resumable":
        print(f"resuming the unfinished run in {out}", flush=True)
        return train(replace(config, resume=True), prepared)
    if state.kind in ("other", "started"):
        n = 1
        while out.with_name(f"{out.name}-previous-{n}").exists():
            n += 1
        aside = out.with_name(f"{out.name}-previous-{n}")
        out.rename(aside)
        changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in state.differences.items()) or "unfinished"
        print(f"{out} held a run with other settings ({changed}); moved it to {aside}", flush=True)
    return train(config, prepared)


def train_or_load(checkpoint: str | Path | None, config: TrainConfig, out: str | Path | None = None):
    """(model, config, prepared) for a notebook: load ``checkpoint`` when given, else train
    ``config`` into ``out`` (default ``config.out``), or reuse the run a previous call trained there
    with the same settings, and load its best checkpoint."""
    from dataclasses import replace


    if checkpoint:
        return load_trained(workbench_path(checkpoint))
    config = replace(config, out=str(out or config.out))
    prepared = prepare(config)
    train_once(config, prepared)
    return load_trained(Path(config.out) / "best.pt", prepared)


