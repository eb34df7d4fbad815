"""Training and evaluation throughput (frames/s) and peak memory; prints JSON.

    python benchmarks/bench_train.py                 # tiny on CPU (96 px, batch 8)
    python benchmarks/bench_train.py --size b5 --image-size 224 --batch-size 4 --device cuda

Synthetic inputs of the right shapes: the figures measure the model and the engine's step, not the
data loading (which the engine does from memory).
"""
import argparse
import json
import resource
import time

import torch

from avs_lib.losses import ddeseg_loss
from avs_lib.models import build_model, count_parameters


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ddeseg")
    parser.add_argument("--size", default="tiny")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--audio-dim", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    switches = {"audio_dim": args.audio_dim}
    if args.model != "avsac":
        switches["memory_classes"] = 71 if args.size == "b5" else 16
    model = build_model(args.model, size=args.size, **switches).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    audio = torch.randn(args.batch_size, args.audio_dim, device=device)
    masks = (torch.rand(args.batch_size, args.image_size, args.image_size, device=device) > 0.5).long()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step():
        with autocast:
            out = model(images, audio)
        loss = ddeseg_loss(out.logits.float(), masks)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    model.train()
    for _ in range(3):
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
        for _ in range(3):
            with autocast:
                model(images, audio)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            with autocast:
                model(images, audio)
        sync()
    eval_fps = args.steps * args.batch_size / (time.perf_counter() - t0)
    result = {"model": args.model, "size": args.size, "device": str(device), "image_size": args.image_size,
              "batch_size": args.batch_size, "parameters_trainable": count_parameters(model)["total"],
              "train_frames_per_second": round(train_fps, 2), "eval_frames_per_second": round(eval_fps, 2),
              "threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        result["gpu"] = torch.cuda.get_device_name(0)
    result["peak_process_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
