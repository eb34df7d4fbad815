"""The training engine's own loop against its bare step: frames/s and host synchronisations; prints JSON.

    python benchmarks/bench_loop.py                        # CPU, a small procedural world built in a temp folder
    python benchmarks/bench_loop.py --device cuda --profile

On one H200 the default model's bare training step (``bench_train.py``: synthetic tensors already on
the GPU) ran at 389 frames/s in one process, while two runs of ``avs train``'s loop on the default
world reached 38-40, though beside ten processes still decoding their data (README, "The ablation on a GPU"), so
the loop's own rate is unknown. This benchmark measures it against the bare step in one process:
one epoch of ``avs_lib.training.loop.train`` (tiny_world.yaml's model at 96 px, batch 16, fp32,
channels_last, no validation inside the epoch) on a composed world, the epoch's frames/s as the
engine records it (training steps only), then the bare step of the same model on the same device.
``--profile`` runs the epoch again under ``torch.profiler`` and counts, per training step, the calls
that make the host wait for the device or copy between them (``cudaStreamSynchronize``,
``cudaMemcpyAsync``, ``aten::item``, ...), the first thing to look at in a launch-bound loop.
"""
import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's avs_lib, whichever is installed

from avs_lib.core.config import load_config
from avs_lib.core.files import read_json
from avs_lib.training.loop import train

HOST_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync",
              "cudaMemcpy", "aten::item", "aten::_local_scalar_dense", "aten::to", "aten::copy_")


def world_for(args, folder: Path) -> Path:
    if args.world:
        return Path(args.world)
    from avs_lib.world.compose import WorldConfig
    from avs_lib.world.write import write_world

    root = folder / "world"
    write_world(WorldConfig(kind="procedural", subsets=("s4", "ms3"), clips=args.clips, size=128), root,
                progress=False, workers=args.workers)
    return root


def epoch(args, root: Path, out: Path, cache: Path) -> dict:
    overrides = [f"data_root={root}", f"cache_dir={cache}", f"out={out}", f"device={args.device}", "epochs=1",
                 "validations_per_epoch=1", "bf16=false", "progress=false", "tracking=none", "encoder_epochs=1",
                 "switches.pretrained_backbone=true"]
    config = load_config("configs/tiny_world.yaml", overrides)
    train(config)
    record = read_json(out / "metrics.json")["history"][0]
    return {"loop_frames_per_second": round(record["frames_per_second"], 2), "epoch_seconds": round(record["seconds"], 2),
            "frames": record["frames_seen"]}


def bare_step(args) -> float:
    """bench_train.py's measure: the same model's training step on synthetic tensors already on the device."""
    from bench_train import measure  # beside this file

    given = argparse.Namespace(model="ddeseg", size="tiny", backbone="efficientnet_lite0", audio_dim=16, frozen_stages=0,
                               num_classes=1, image_size=96, batch_size=16, device=args.device, steps=args.bare_steps,
                               count_flops=False, compile_mode="default", peak_tflops=None)
    return measure(given, "fp32", True, False)["train_frames_per_second"]


def profiled(args, root: Path, out: Path, cache: Path) -> dict:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        result = epoch(args, root, out, cache)
    counts = Counter(e.name for e in prof.events() if e.name in HOST_WAITS)
    steps = result["frames"] // 16
    return {f"{name} per step": round(n / steps, 1) for name, n in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--world", default=None, help="a composed world (default: a procedural one, built here)")
    parser.add_argument("--clips", type=int, default=200, help="clips per subset of the built world (70 per cent of them train)")
    parser.add_argument("--workers", type=int, default=1, help="processes that build the world")
    parser.add_argument("--bare-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="count host synchronisations per step (a second epoch)")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: no CUDA device here", file=sys.stderr)
        sys.exit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        root = world_for(args, folder)
        result = {"device": args.device, "threads": torch.get_num_threads(),
                  **epoch(args, root, folder / "run", folder / "cache"),
                  "bare_step_frames_per_second": round(bare_step(args), 2)}
        result["loop_share_of_bare"] = round(result["loop_frames_per_second"] / result["bare_step_frames_per_second"], 3)
        if args.profile:
            result.update(profiled(args, root, folder / "run_profiled", folder / "cache"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
