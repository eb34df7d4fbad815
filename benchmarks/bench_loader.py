"""The training data path at AVSS shape, before (``features.load_frames``: every frame decoded into
RAM first) and after (``avs_lib.data.loader``: frames streamed by worker processes); prints JSON.

    avs world --subsets avss --size 224 --clips 2400 --workers 2 --out /work/bench_data/avss_224
    python benchmarks/bench_loader.py --world /work/bench_data/avss_224            # every part
    python benchmarks/bench_loader.py --world ... --parts after,workers --frames 200

Parts, each in a fresh process (so that its peak RSS is its own):

* ``before``: ``load_frames`` of the training split (what ``prepare`` does for each of the three
  splits before the first step), then the first training step: seconds and peak RSS.
* ``after``: the streamed split (``stream_frames``), the epoch's ``DataLoader`` with 2 workers, the
  first batch and the first step: seconds and peak RSS of the training process and of its workers.
* ``workers``: loader frames/s with 0, 1 and 2 worker processes (``augment=released``, and
  ``flip``), no model.
* ``model``: the training frames/s of the default tiny model at this size on this machine
  (synthetic batches), the figure the loader must keep up with.
* ``ddp``: peak RSS per rank for 1, 2 and 4 gloo processes, each streaming its slice of the global
  batch through 1 worker, a few DDP steps of the tiny model.

The audio input is the world's oracle (``OracleAudio``: read from the sources sidecar, cheap), so
that the figures are those of the frames; a real encoder's embeddings are computed once and cached
(``EmbeddingCache``) and are [N, d] floats in either path.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's avs_lib, whichever one is installed
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # spawned ranks


def _gib(n_bytes: float) -> float:
    return round(n_bytes / 2**30, 3)


def _peak_rss_gib() -> float:
    return _gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _config(args, **kw):
    from avs_lib.core.config import TrainConfig

    base = dict(model="ddeseg", size="tiny", layout=args.layout, image_size=args.image_size, batch_size=args.batch_size,
                augment="released", loader="stream", loader_workers=2, seed=0, device="cpu", progress=False,
                data_root=str(args.root))
    base.update(kw)
    return TrainConfig(**base)


def _oracle(args):
    from avs_lib.audio.registry import OracleAudio

    return OracleAudio("oracle", args.world)


def _model(audio_dim: int):
    from avs_lib.models import build_model

    torch.manual_seed(0)
    return build_model("ddeseg", size="tiny", audio_dim=audio_dim, backbone="efficientnet_lite0",
                       pretrained_backbone=True, memory_classes=16)


def _step(model, optimiser, images, masks, audio):
    from avs_lib.data.transforms import normalise_images
    from avs_lib.training.losses import ddeseg_loss

    out = model(normalise_images(images), audio)
    loss = ddeseg_loss(out.logits.float(), masks.clamp(max=1))  # binary head: sounding or not
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return float(loss)


def part_before(args) -> dict:
    from avs_lib.data.frames import load_frames

    t0 = time.perf_counter()
    oracle = _oracle(args)
    frames = load_frames(args.root, args.layout, "train", args.image_size, oracle, oracle.identifier, args.cache)
    loaded = time.perf_counter() - t0
    model = _model(frames.audio.shape[1])
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randperm(len(frames), generator=torch.Generator().manual_seed(0))[:args.batch_size]
    _step(model, optimiser, frames.images[batch], frames.masks[batch], frames.audio[batch])
    return {"part": "before", "frames": len(frames), "load_frames_seconds": round(loaded, 1),
            "first_step_seconds": round(time.perf_counter() - t0, 1),
            "held_gib": _gib(frames.images.numel() + frames.masks.numel() * 8), "peak_rss_gib": _peak_rss_gib(),
            "note": "the training split only; prepare() loads val and test the same way before the first step"}


def _tree_memory() -> tuple[float, float]:
    """(RSS of this process's children, PSS of this process and its children), bytes."""
    import psutil

    me = psutil.Process()
    children = me.children(recursive=True)
    rss = sum(c.memory_info().rss for c in children)
    pss = sum(p.memory_full_info().pss for p in [me, *children])
    return rss, pss


def part_after(args) -> dict:
    from avs_lib.data.loader import make_loader, stream_frames

    t0 = time.perf_counter()
    oracle = _oracle(args)
    frames = stream_frames(args.root, args.layout, "train", args.image_size, oracle, oracle.identifier, args.cache)
    indexed = time.perf_counter() - t0
    config = _config(args)
    model = _model(frames.audio.shape[1])
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps = len(frames) // config.batch_size
    loader = iter(make_loader(frames, config, 0, steps, root=args.root))
    item = next(loader)
    first_batch = time.perf_counter() - t0
    _step(model, optimiser, item["image"], item["mask"].long(), item["audio"])
    first_step = time.perf_counter() - t0
    workers_rss = pss = 0
    for _ in range(args.more_steps):
        item = next(loader)
        _step(model, optimiser, item["image"], item["mask"].long(), item["audio"])
        rss, tree = _tree_memory()
        workers_rss, pss = max(workers_rss, rss), max(pss, tree)
    return {"part": "after", "frames": len(frames), "index_seconds": round(indexed, 2),
            "first_batch_seconds": round(first_batch, 2), "first_step_seconds": round(first_step, 2),
            "steps": 1 + args.more_steps, "peak_rss_gib": _peak_rss_gib(), "workers_rss_gib": _gib(workers_rss),
            "pss_with_workers_gib": _gib(pss), "workers": config.loader_workers}


def part_workers(args) -> dict:
    from avs_lib.data.loader import make_loader, stream_frames

    oracle = _oracle(args)
    frames = stream_frames(args.root, args.layout, "train", args.image_size, oracle, oracle.identifier, args.cache)
    out = {"part": "workers", "frames_per_run": args.frames, "threads": torch.get_num_threads()}
    for augment in ("released", "flip"):
        for workers in (0, 1, 2):
            config = _config(args, augment=augment, loader_workers=workers)
            steps = args.frames // config.batch_size
            t0 = time.perf_counter()  # the workers' start and the first batch included: a conservative rate
            n = sum(len(item["index"]) for item in make_loader(frames, config, 0, steps, root=args.root))
            out[f"{augment}_workers{workers}_frames_per_second"] = round(n / (time.perf_counter() - t0), 1)
    return out


def part_model(args) -> dict:
    command = [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--image-size", str(args.image_size),
               "--batch-size", str(args.batch_size), "--steps", "4", "--device", "cpu", "--channels-last"]
    line = subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    result = json.loads(line)
    return {"part": "model", "train_frames_per_second": result["train_frames_per_second"],
            "model": "ddeseg tiny, efficientnet_lite0, channels_last (tiny_world.yaml's)",
            "image_size": args.image_size, "batch_size": args.batch_size}


def _ddp_rank(rank: int, world: int, port: int, args, queue) -> None:
    import torch.distributed as dist

    from avs_lib.data.loader import epoch_batches, stream_frames

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    oracle = _oracle(args)
    frames = stream_frames(args.root, args.layout, "train", args.image_size, oracle, oracle.identifier, args.cache)
    config = _config(args, loader_workers=1)
    model = torch.nn.parallel.DistributedDataParallel(_model(frames.audio.shape[1]))
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps = len(frames) // config.batch_size
    batches = epoch_batches(frames, config, 0, steps, rank, world, torch.device("cpu"), root=args.root)
    workers_rss = pss = 0
    for _ in range(args.ddp_steps):
        images, masks, audio, _, _ = next(batches)
        _step(model, optimiser, images, masks, audio)
        rss, tree = _tree_memory()
        workers_rss, pss = max(workers_rss, rss), max(pss, tree)
    queue.put({"rank": rank, "peak_rss_gib": _peak_rss_gib(), "workers_rss_gib": _gib(workers_rss),
               "pss_with_workers_gib": _gib(pss)})
    dist.destroy_process_group()


def part_ddp(args) -> dict:
    import torch.multiprocessing as mp

    out = {"part": "ddp", "steps": args.ddp_steps, "global_batch": args.batch_size}
    for world in (1, 2, 4):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        queue = mp.get_context("spawn").SimpleQueue()
        mp.spawn(_ddp_rank, args=(world, port, args, queue), nprocs=world, join=True)
        ranks = sorted((queue.get() for _ in range(world)), key=lambda r: r["rank"])
        out[f"ranks{world}"] = {"peak_rss_gib_per_rank": [r["peak_rss_gib"] for r in ranks],
                                "workers_rss_gib_per_rank": [r["workers_rss_gib"] for r in ranks],
                                "pss_with_workers_gib_per_rank": [r["pss_with_workers_gib"] for r in ranks]}
    return out


PARTS = {"before": part_before, "after": part_after, "workers": part_workers, "model": part_model, "ddp": part_ddp}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, required=True, help="a composed world (avs world --subsets avss ...)")
    parser.add_argument("--layout", default="avss")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--frames", type=int, default=480, help="frames per loader-rate run")
    parser.add_argument("--more-steps", type=int, default=3, help="steps after the first (part after)")
    parser.add_argument("--ddp-steps", type=int, default=3)
    parser.add_argument("--parts", default="before,after,workers,model,ddp")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # one part, in this process
    args = parser.parse_args()
    args.root = args.world / "AVSS" if args.layout == "avss" else args.world
    args.cache = args.world / "cache"
    if args.part:
        print(json.dumps(PARTS[args.part](args)), flush=True)
        return
    results = {"world": str(args.world), "layout": args.layout, "image_size": args.image_size,
               "batch_size": args.batch_size, "cpus": os.cpu_count()}
    for part in args.parts.split(","):
        command = [sys.executable, __file__, *sys.argv[1:], "--part", part]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            results[part] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}
        else:
            results[part] = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(results[part]), file=sys.stderr, flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
