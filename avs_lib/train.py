"""The training engine: one loop from a 2-core CPU to several GPUs.

``train(TrainConfig(...))`` (or ``avs train --config FILE key=value ...``):

* AdamW with no weight decay on norms, biases and other 1-D parameters; linear warm-up then a cosine
  decay to ``min_lr``, stepped every iteration;
* bf16 autocast on CUDA; gradient clipping;
* reproducibility: the order of the training frames, the augmentation and every random draw in the
  model (Gumbel noise, dropout) are seeded from (seed, epoch), so a CPU run is bit-reproducible and
  ``resume`` continues exactly where it stopped;
* validation every epoch, test once at the end with the best checkpoint;
* ``last.pt`` and ``best.pt`` are written atomically (temporary file, then rename); ``log.jsonl``
  gets one JSON line per epoch; ``metrics.json`` holds the final numbers;
* several processes: launched by ``torchrun``, the engine initialises the process group (NCCL on
  CUDA, gloo on CPU), wraps the model in DistributedDataParallel and gives each rank an equal slice
  of every global batch. On CUDA, BatchNorm becomes SyncBatchNorm; on CPU (where SyncBatchNorm does
  not run) use ``decoder_norm=group`` for results identical to one process.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from avs_lib.config import TrainConfig, config_from_dict, load_config
from avs_lib.data.transforms import flip_batch, normalise_images
from avs_lib.features import FrameSet, Prepared, prepare
from avs_lib.files import atomic_write
from avs_lib.losses import avsac_loss, ddeseg_loss
from avs_lib.metrics import evaluate
from avs_lib.models import build_model



# ----------------------------------------------------------------------------- pieces
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def learning_rate(step: int, total_steps: int, warmup_steps: int, lr: float, min_lr: float) -> float:
    """Linear warm-up from lr/warmup to lr, then cosine from lr to min_lr at the last step."""
    if warmup_steps and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps - 1)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def atomic_save(obj, path: Path) -> None:
    atomic_write(path, lambda fh: torch.save(obj, fh))


def _loss(config: TrainConfig, out, masks, valid):
    if config.model == "avsac":
        return avsac_loss(out.logits.float(), masks, out.audio.float(), out.agv.float(), valid, config.avfs_weight)
    return ddeseg_loss(out.logits.float(), masks, valid)


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict(model, frames: FrameSet, device: torch.device, batch_size: int = 32, bf16: bool = True,
            zero_audio: bool = False) -> torch.Tensor:
    """Logits of every frame, on CPU (float32)."""
    model.eval()
    outs = []
    for start in range(0, len(frames), batch_size):
        images = frames.images[start:start + batch_size].to(device)
        audio = frames.audio[start:start + batch_size].to(device)
        if zero_audio:
            audio = torch.zeros_like(audio)
        with _autocast(device, bf16):
            outs.append(model(normalise_images(images), audio).logits.float().cpu())
    return torch.cat(outs)


def evaluate_model(model, frames: FrameSet, device: torch.device, config: TrainConfig) -> dict:
    logits = predict(model, frames, device, bf16=config.bf16, zero_audio=config.zero_audio)
    keep = frames.valid
    return evaluate(logits[keep], frames.masks[keep], convention=config.convention, batch_size=config.eval_batch_size)


# ----------------------------------------------------------------------------- setup
def make_model(config: TrainConfig, prepared: Prepared) -> torch.nn.Module:
    switches = dict(config.switches)
    switches.setdefault("num_classes", prepared.num_classes)
    if config.model == "avsac":
        return build_model("avsac", size=config.size, memory=prepared.memory, **switches)
    model = build_model(config.model, size=config.size, variant=config.variant,
                        ablation=config.ablation if config.model == "ddeseg" else None,
                        memory=prepared.memory, **switches)
    if getattr(model, "backbone_report", None) is not None and config.progress:
        print(model.backbone_report, flush=True)
    return model


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ----------------------------------------------------------------------------- the loop
def train(config: TrainConfig, prepared: Prepared | None = None) -> dict:
    rank, world = _distributed()
    main = rank == 0
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    out_dir = Path(config.out)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if (out_dir / "last.pt").exists() and not config.resume:
            raise FileExistsError(f"{out_dir} already holds a run; pass resume=true to continue it or choose another out=")
        (out_dir / "config.json").write_text(json.dumps(asdict(config), indent=1))
    prepared = prepared or prepare(config, progress=config.progress and main)
    torch.manual_seed(config.seed)
    model = make_model(config, prepared).to(device)
    if world > 1:
        if device.type == "cuda":
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    core = model.module if world > 1 else model
    optimiser = torch.optim.AdamW(parameter_groups(core, config.weight_decay), lr=config.lr)
    n_train = len(prepared.train)
    steps_per_epoch = max(1, n_train // config.batch_size)  # drop the last partial batch: equal rank slices
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_epochs * steps_per_epoch))
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must be divisible by the {world} processes")

    start_epoch, best, history = 0, -1.0, []
    last_path, best_path, log_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "log.jsonl"
    if config.resume and last_path.exists():
        state = torch.load(last_path, map_location=device, weights_only=False)
        core.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]

    for epoch in range(start_epoch, config.epochs):
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)  # Gumbel noise, dropout
        order = torch.randperm(n_train, generator=generator)
        t0, losses = time.time(), []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (config.progress and main),
                   leave=False)
        for step_in_epoch in bar:
            step = epoch * steps_per_epoch + step_in_epoch
            for group in optimiser.param_groups:
                group["lr"] = learning_rate(step, total_steps, warmup_steps, config.lr, config.min_lr)
            batch = order[step_in_epoch * config.batch_size:(step_in_epoch + 1) * config.batch_size]
            images, masks = prepared.train.images[batch], prepared.train.masks[batch]
            if config.flip:
                images, masks = flip_batch(images, masks, generator)
            audio, valid = prepared.train.audio[batch], prepared.train.valid[batch]
            if config.zero_audio:
                audio = torch.zeros_like(audio)
            share = batch.numel() // world  # this rank's slice of the global batch
            sl = slice(rank * share, (rank + 1) * share)
            images, masks, audio, valid = (t[sl].to(device) for t in (images, masks, audio, valid))
            with _autocast(device, config.bf16):
                out = model(normalise_images(images), audio)
            loss = _loss(config, out, masks, valid)
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
        record = {"epoch": epoch + 1, "loss": sum(losses) / len(losses), "losses": losses,
                  "lr": optimiser.param_groups[0]["lr"], "seconds": time.time() - t0,
                  "frames_per_second": steps_per_epoch * config.batch_size / (time.time() - t0)}
        if main:
            record["val"] = evaluate_model(core, prepared.val, device, config)
            improved = record["val"]["JF"] > best
            best = max(best, record["val"]["JF"])
            history.append({k: v for k, v in record.items() if k != "losses"})
            state = {"model": core.state_dict(), "optimiser": optimiser.state_dict(), "epoch": epoch, "best": best,
                     "history": history, "config": asdict(config)}
            if improved:
                atomic_save(state, best_path)
            atomic_save(state, last_path)
            with open(log_path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
            if config.progress:
                v = record["val"]
                print(f"epoch {epoch + 1}: loss {record['loss']:.4f}  val J {v['J']:.3f} F {v['F']:.3f} J&F {v['JF']:.3f}"
                      + ("  (best)" if improved else ""), flush=True)
        if world > 1:
            dist.barrier()
        if config.stop_after_epoch is not None and epoch + 1 >= config.stop_after_epoch and epoch + 1 < config.epochs:
            return {"stopped_after_epoch": epoch + 1}

    result = {}
    if main:
        state = torch.load(best_path, map_location=device, weights_only=False)
        core.load_state_dict(state["model"])
        result = {"test": evaluate_model(core, prepared.test, device, config), "best_val_JF": best,
                  "epochs": config.epochs, "history": history, "config": asdict(config),
                  "best_epoch": state["epoch"] + 1}
        (out_dir / "metrics.json").write_text(json.dumps(result, indent=1))
    return result


# Settings that do not change what a run computes: a run that differs only in these is the same run.
RUN_IDENTITY_EXCLUDES = ("out", "resume", "progress", "threads", "stop_after_epoch")


def config_differences(a: TrainConfig | dict, b: TrainConfig | dict) -> dict[str, tuple]:
    """{key: (a's value, b's value)} for the keys that change what a run computes."""
    a, b = (json.loads(json.dumps(asdict(c) if isinstance(c, TrainConfig) else c)) for c in (a, b))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in RUN_IDENTITY_EXCLUDES and a.get(k) != b.get(k)}


def train_once(config: TrainConfig, prepared: Prepared | None = None) -> dict:
    """``train``, made safe to call again (a notebook's second Run All): a finished run in
    ``config.out`` with the same settings is reused (its metrics are returned, nothing is trained),
    an unfinished one is resumed, and a run with other settings is moved aside to
    ``<out>-previous-<n>`` (said in one line) so that nothing is lost."""
    from dataclasses import replace

    out = Path(config.out)
    saved = out / "config.json"
    if saved.exists():
        differences = config_differences(json.loads(saved.read_text()), config)
        if not differences and (out / "metrics.json").exists():
            print(f"reusing the model trained in {out} (same settings)", flush=True)
            return json.loads((out / "metrics.json").read_text())
        if not differences and (out / "last.pt").exists():
            print(f"resuming the unfinished run in {out}", flush=True)
            return train(replace(config, resume=True), prepared)
        n = 1
        while out.with_name(f"{out.name}-previous-{n}").exists():
            n += 1
        aside = out.with_name(f"{out.name}-previous-{n}")
        out.rename(aside)
        changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in differences.items()) or "unfinished"
        print(f"{out} held a run with other settings ({changed}); moved it to {aside}", flush=True)
    return train(config, prepared)


def train_or_load(checkpoint: str | Path | None, overrides: list[str], out: str | Path):
    """(model, config, prepared) for a notebook: load ``checkpoint`` when given, else train a run
    from ``overrides`` (``key=value``, no config file) into ``out`` (or reuse the one a previous
    call trained there with the same settings) and load its best checkpoint."""
    from avs_lib.paths import workbench_path

    if checkpoint:
        return load_trained(workbench_path(checkpoint))
    config = load_config(None, [*overrides, f"out={out}"])
    prepared = prepare(config)
    train_once(config, prepared)
    return load_trained(Path(out) / "best.pt", prepared)


def load_trained(checkpoint: str | Path, prepared: Prepared | None = None, device: str = "cpu"):
    """(model, config, prepared) from a best.pt/last.pt written by ``train``."""
    state = torch.load(checkpoint, map_location=device, weights_only=False)
    config = config_from_dict(state["config"])
    prepared = prepared or prepare(config)
    model = make_model(config, prepared)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), config, prepared
