"""Training and evaluation throughput (frames/s) and peak memory; prints JSON.

    python benchmarks/bench_train.py                 # the default model (tiny_world.yaml's) on CPU, one setting
    python benchmarks/bench_train.py --matrix        # the speed settings each on and off, one JSON line each
    python benchmarks/bench_train.py --size b5 --image-size 224 --batch-size 4 --device cuda

Synthetic inputs of the right shapes: the figures measure the model and the engine's step, not the
data loading (which the engine does from memory). ``--precision bf16`` is autocast to bfloat16
(CPU or CUDA), ``--channels-last`` puts the model and the images in NHWC, ``--compile`` wraps the
model in ``torch.compile`` (its compile time is reported apart and left out of the frames/s).
"""
import argparse
import json
import resource
import time

import torch

from avs_lib.models import build_model, count_parameters
from avs_lib.training.losses import ddeseg_loss


def measure(args, precision: str, channels_last: bool, compile_model: bool) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    switches = {"audio_dim": args.audio_dim, "backbone": args.backbone}
    if args.backbone == "efficientnet_lite0":
        switches["pretrained_backbone"] = True
    if args.model != "avsac":
        switches["memory_classes"] = 71 if args.size == "b5" else 16
    else:
        switches.pop("backbone")
    model = build_model(args.model, size=args.size, **switches).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=memory_format)
    audio = torch.randn(args.batch_size, args.audio_dim, device=device)
    masks = (torch.rand(args.batch_size, args.image_size, args.image_size, device=device) > 0.5).long()
    forward = torch.compile(model) if compile_model else model

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast():
            out = forward(images, audio)
        loss = ddeseg_loss(out.logits.float(), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    t0 = time.perf_counter()
    step()  # the first step carries torch.compile's compile time
    sync()
    first_step = time.perf_counter() - t0
    for _ in range(2):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    train_fps = args.steps * args.batch_size / (time.perf_counter() - t0)
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
              "channels_last": channels_last, "compile": compile_model,
              "parameters_trainable": count_parameters(model)["total"],
              "train_frames_per_second": round(train_fps, 2), "eval_frames_per_second": round(eval_fps, 2),
              "first_step_seconds": round(first_step, 2), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["gpu"] = torch.cuda.get_device_name(0)
    result["peak_process_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return result


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
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--matrix", action="store_true",
                        help="fp32 (before), then bf16, channels_last and torch.compile each added alone and together")
    args = parser.parse_args()
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
            print(json.dumps({"precision": precision, "channels_last": channels_last, "compile": compile_model,
                              "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}), flush=True)


if __name__ == "__main__":
    main()
