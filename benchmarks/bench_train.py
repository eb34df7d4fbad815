"""Training and evaluation throughput (frames/s) and peak memory; prints JSON.

    python benchmarks/bench_train.py                 # the default model (tiny_world.yaml's) on CPU, one setting
    python benchmarks/bench_train.py --matrix        # the speed settings each on and off, one JSON line each
    python benchmarks/bench_train.py --size b5 --image-size 224 --batch-size 4 --device cuda

Synthetic inputs of the right shapes: the figures measure the model and the engine's step, not the
data loading (which the engine does from memory). ``--precision bf16`` is autocast to bfloat16
(CPU or CUDA), ``--channels-last`` puts the model and the images in NHWC, ``--compile`` wraps the
model in ``torch.compile`` (its compile time is reported apart and left out of the frames/s),
``--fused-adamw`` takes AdamW's fused kernel; each line also has the optimiser step's median time
(``optimiser_step_ms``), the part of the step that the fused kernel changes.
It measures the CPU kernels ``avs`` runs, capped at AVX2 (``avs_lib.core.kernels``); with
``AVS_NATIVE_KERNELS=1`` in the environment, the CPU's widest. Each line names them.

The GPU suite, one call (a few minutes on one card; exits 2 with a message where CUDA is missing):

    python benchmarks/bench_train.py --suite gpu --device cuda [--loader-world /work/bench_data/avss_224]

DDESeg b5 and AVSAC b5 at 224 px in AVSS's shape (71 classes, 768-d HTS-AT-sized audio): bf16 at
batch 4, 8 and 16, then at batch 8 fp32, bf16 + channels_last, bf16 + torch.compile and bf16 +
fused AdamW; each line has frames/s, the FLOPs of one training step counted by ``torch.utils.flop_counter`` and the MFU
against the card's bf16 dense peak (``--peak-tflops`` where the card is not in ``BF16_PEAK_TFLOPS``),
and the peak GPU memory. With ``--loader-world`` it then trains DDESeg b5 (bf16, batch 8) on real
frames decoded by the streaming loader (``avs_lib.data.loader``, 8 workers) and reports the share
of the time the step waited for its batch. ``--dry-run`` runs the same code on the CPU with the
tiny models at 64 px and two steps (what the tests run).
"""
import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's avs_lib, whichever is installed

from avs_lib.core.kernels import kernel_settings, use_portable_kernels

# The kernels `avs` runs: capped at AVX2 before torch is imported (avs_lib/core/kernels.py);
# AVS_NATIVE_KERNELS=1 measures the CPU's widest instead
use_portable_kernels()

import torch  # noqa: E402

from avs_lib.models import build_model, count_parameters  # noqa: E402
from avs_lib.training.losses import ddeseg_loss


def measure(args, precision: str, channels_last: bool, compile_model: bool) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    switches = {"audio_dim": args.audio_dim, "backbone": args.backbone}
    if args.backbone == "efficientnet_lite0":
        switches["pretrained_backbone"] = True
        if args.model != "avsac":  # AVSAC has the backbone switches, not DDESeg's frozen stages
            switches["frozen_stages"] = args.frozen_stages
            switches["decoder_stride"] = args.decoder_stride
            if args.decoder_stride <= 2:
                switches.update(decoder_refine_dim=args.refine_dim, decoder_refine_blocks=args.refine_blocks)
    if args.model != "avsac":
        switches["memory_classes"] = 71 if args.size == "b5" else 16
        switches["fusion_query"] = args.fusion_query
    if args.num_classes > 1:
        switches["num_classes"] = args.num_classes
    model = build_model(args.model, size=args.size, **switches).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.fused_adamw or None)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=memory_format)
    audio = torch.randn(args.batch_size, args.audio_dim, device=device)
    masks = torch.randint(0, max(2, args.num_classes), (args.batch_size, args.image_size, args.image_size), device=device)
    forward = torch.compile(model, mode=args.compile_mode) if compile_model else model

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast():
            out = forward(images, audio)
        loss = ddeseg_loss(out.logits.float(), masks)
        optimiser.zero_grad()
        loss.backward()
        if device.type == "cuda":  # events on the stream: timing the step apart adds no host wait
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            optimiser.step()
            end.record()
            optimiser_times.append((start, end))
        else:
            t = time.perf_counter()
            optimiser.step()
            optimiser_times.append(time.perf_counter() - t)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    optimiser_times: list = []  # the optimiser's share of each step, apart (what fused_adamw changes)

    model.train()
    flops = training_step_flops(model, images, audio, masks, autocast) if args.count_flops else None
    t0 = time.perf_counter()
    step()  # the first step carries torch.compile's compile time
    sync()
    first_step = time.perf_counter() - t0
    for _ in range(2):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    optimiser_times.clear()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    train_fps = args.steps * args.batch_size / (time.perf_counter() - t0)
    step_ms = sorted(t[0].elapsed_time(t[1]) if isinstance(t, tuple) else 1000 * t for t in optimiser_times)
    optimiser_ms = step_ms[len(step_ms) // 2]  # the median over the timed steps
    model.eval()
    with torch.no_grad():
        for _ in range(2):
            with autocast():
                forward(images, audio)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            with autocast():
                forward(images, audio)
        sync()
    eval_fps = args.steps * args.batch_size / (time.perf_counter() - t0)
    result = {"model": args.model, "size": args.size, "backbone": args.backbone, "device": str(device),
              "image_size": args.image_size, "batch_size": args.batch_size, "precision": precision,
              "channels_last": channels_last, "compile": compile_model and args.compile_mode,
              "fused_adamw": args.fused_adamw,
              **({"frozen_stages": switches["frozen_stages"]} if "frozen_stages" in switches else {}),
              **({"decoder_stride": switches["decoder_stride"]} if "decoder_stride" in switches else {}),
              **({"fusion_query": switches["fusion_query"]} if "fusion_query" in switches else {}),
              **({k: switches[k] for k in ("decoder_refine_dim", "decoder_refine_blocks") if k in switches}),
              "parameters_trainable": count_parameters(model)["total"],
              "train_frames_per_second": round(train_fps, 2), "eval_frames_per_second": round(eval_fps, 2),
              "optimiser_step_ms": round(optimiser_ms, 2),
              "first_step_seconds": round(first_step, 2), "threads": torch.get_num_threads(),
              "cpu_kernels": torch.backends.cpu.get_cpu_capability(),
              "kernel_settings": kernel_settings(os.environ)}
    if flops is not None:
        result["train_step_gflops_per_frame"] = round(flops / args.batch_size / 1e9, 2)
        peak = args.peak_tflops or bf16_peak_tflops(device)
        if peak:
            result["peak_bf16_tflops"] = peak
            result["mfu"] = round(train_fps * flops / args.batch_size / (peak * 1e12), 4)
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["gpu"] = torch.cuda.get_device_name(0)
    result["peak_process_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return result


# bf16 dense tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets; matched in order
BF16_PEAK_TFLOPS = (("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("A100", 312.0), ("L40S", 362.0),
                    ("L4", 121.0), ("A10", 125.0), ("RTX 4090", 165.0), ("V100", None))


def bf16_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in name), None)


def training_step_flops(model, images, audio, masks, autocast) -> int:
    """FLOPs of one training step (forward and backward) counted by ``torch.utils.flop_counter``
    (matrix products and convolutions), in eager mode; the gradients it leaves are cleared."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        with autocast():
            out = model(images, audio)
        ddeseg_loss(out.logits.float(), masks).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def run_suite(args) -> list[dict]:
    """The GPU suite (module docstring); ``--dry-run``: the same on the CPU at tiny shapes."""
    from copy import copy

    lines = []
    dry = args.dry_run
    models = [("ddeseg", "mit"), ("avsac", "mit")]
    for model, backbone in models:
        base = copy(args)
        base.model, base.backbone, base.count_flops = model, backbone, True
        base.size, base.image_size = ("tiny", 64) if dry else ("b5", 224)
        base.audio_dim, base.num_classes, base.steps = (32, 71, 2) if dry else (768, 71, min(args.steps, 5))
        settings = [(b, "bf16", False, False, False) for b in ((2,) if dry else (4, 8, 16))]
        batch = 2 if dry else 8
        settings += [(batch, "fp32", False, False, False), (batch, "bf16", True, False, False),
                     (batch, "bf16", False, True, False), (batch, "bf16", False, False, True)]
        for batch_size, precision, channels_last, compile_model, fused_adamw in settings:
            run = copy(base)
            run.batch_size, run.fused_adamw = batch_size, fused_adamw
            if dry and compile_model:
                continue  # torch.compile takes minutes on a CPU
            try:
                line = measure(run, precision, channels_last, compile_model)
            except Exception as error:  # noqa: BLE001  out of memory at batch 16 is a result, not a failure
                line = {"model": model, "batch_size": batch_size, "precision": precision,
                        "channels_last": channels_last, "compile": compile_model and args.compile_mode,
                        "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
            if run.device == "cuda":
                torch.cuda.empty_cache()
            print(json.dumps(line), flush=True)
            lines.append(line)
    if args.loader_world:
        line = loader_fed(args)
        print(json.dumps(line), flush=True)
        lines.append(line)
    return lines


def loader_fed(args) -> dict:
    """DDESeg b5 (bf16, batch 8, 224 px) trained on frames the streaming loader decodes from a
    composed AVSS world: frames/s and the share of the time spent waiting for the next batch."""
    from types import SimpleNamespace

    from avs_lib.data.loader import make_loader, stream_frames
    from avs_lib.data.transforms import normalise_images
    from avs_lib.audio.registry import OracleAudio

    device = torch.device(args.device)
    world = Path(args.loader_world)
    root = world / "AVSS"
    oracle = OracleAudio("oracle", world)
    size, batch = (64, 2) if args.dry_run else (224, 8)
    frames = stream_frames(root, "avss", "train", size, oracle, oracle.identifier, world / "cache")
    config = SimpleNamespace(image_size=size, augment="released", flip=True, seed=0, batch_size=batch,
                             loader_workers=args.loader_workers)
    steps = 4 if args.dry_run else args.steps * 4
    torch.manual_seed(0)
    model = build_model("ddeseg", size="tiny" if args.dry_run else "b5", audio_dim=frames.audio.shape[1],
                        memory_classes=16, num_classes=71).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    waited, t0, n = 0.0, None, 0
    loader = iter(make_loader(frames, config, 0, steps + 2, device=device, root=root))
    for i in range(steps + 2):
        t_wait = time.perf_counter()
        item = next(loader)
        images = item["image"].to(device, non_blocking=True)
        masks = item["mask"].to(device, non_blocking=True).long()
        audio = item["audio"].to(device, non_blocking=True)
        if i == 2:  # two warm-up steps (workers started, kernels chosen)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, waited, n = time.perf_counter(), 0.0, 0
        elif t0 is not None:
            waited += time.perf_counter() - t_wait
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = model(normalise_images(images), audio)
        loss = ddeseg_loss(out.logits.float(), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # the step's end, so that the next wait is the loader's alone
        if t0 is not None:
            n += len(images)
    total = time.perf_counter() - t0
    return {"part": "loader_fed", "model": "ddeseg", "size": "tiny" if args.dry_run else "b5", "image_size": size,
            "batch_size": batch, "loader_workers": args.loader_workers, "frames_per_second": round(n / total, 2),
            "waiting_for_data_share": round(waited / total, 3), "device": str(device)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ddeseg")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--backbone", default="efficientnet_lite0", choices=("mit", "efficientnet_lite0"),
                        help="the default model's backbone is the ImageNet EfficientNet-Lite0")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--audio-dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--fused-adamw", action="store_true",
                        help="AdamW's fused kernel (TrainConfig.fused_adamw): one call for every parameter")
    parser.add_argument("--compile-mode", default="default", choices=("default", "reduce-overhead", "max-autotune"),
                        help="torch.compile's mode: reduce-overhead replays CUDA graphs (launch-bound small models)")
    parser.add_argument("--decoder-stride", type=int, default=4, choices=(1, 2, 4),
                        help="EfficientNet-Lite0 DDESeg: 2 adds the stride-2 refinement, 1 that and a stage that "
                             "reads the frame's pixels (the switch decoder_stride)")
    parser.add_argument("--fusion-query", default="audio", choices=("audio", "visual"),
                        help="DDESeg: which side asks in the fusion attention (the switch fusion_query; "
                             "audio is configs/tiny_world.yaml's)")
    parser.add_argument("--refine-dim", type=int, default=32, help="with --decoder-stride 2 or 1: the refinement's width")
    parser.add_argument("--refine-blocks", type=int, default=0,
                        help="with --decoder-stride 2 or 1: residual blocks after the refinement (decoder_refine_blocks)")
    parser.add_argument("--frozen-stages", type=int, default=0,
                        help="EfficientNet-Lite0: freeze the stem and this many backbone stages (the switch frozen_stages)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--matrix", action="store_true",
                        help="fp32 (before), then bf16, channels_last and torch.compile each added alone and together")
    parser.add_argument("--num-classes", type=int, default=1, help="71: AVSS's semantic masks (the suite's)")
    parser.add_argument("--count-flops", action="store_true", help="FLOPs per frame and MFU (torch.utils.flop_counter)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the card's bf16 dense peak, for the MFU")
    parser.add_argument("--suite", choices=("gpu",), help="the GPU suite (see the module docstring)")
    parser.add_argument("--dry-run", action="store_true", help="the suite on the CPU at tiny shapes (tests)")
    parser.add_argument("--loader-world", default=None, help="a composed AVSS world for the loader-fed run")
    parser.add_argument("--loader-workers", type=int, default=8)
    args = parser.parse_args()
    if args.dry_run:
        args.device = "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device on this machine; run this on a "
              "GPU machine (or --dry-run for the CPU check of the code)", file=sys.stderr)
        sys.exit(2)
    if args.suite or args.dry_run:
        if args.threads:
            torch.set_num_threads(args.threads)
        run_suite(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.matrix:
        print(json.dumps(measure(args, args.precision, args.channels_last, args.compile)))
        return
    settings = [("fp32", False, False), ("bf16", False, False), ("fp32", True, False), ("bf16", True, False),
                ("fp32", False, True), ("bf16", True, True)]
    for precision, channels_last, compile_model in settings:
        try:
            print(json.dumps(measure(args, precision, channels_last, compile_model)), flush=True)
        except Exception as error:  # noqa: BLE001  a setting this machine cannot run is reported, not fatal
            print(json.dumps({"precision": precision, "channels_last": channels_last, "compile": compile_model and args.compile_mode,
                              "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}), flush=True)


if __name__ == "__main__":
    main()
