"""HTS-AT embedding cost: seconds of compute per second of audio (one ``latent_output`` per 1 s frame,
the way ``avs embed --encoder htsat:PATH`` runs), on CPU or CUDA, with randomly initialised weights
(the cost does not depend on them). Prints JSON.

Usage (CPU runs take the shared lock):
    flock /tmp/avs-heavy.lock python benchmarks/bench_htsat.py [--frames 16] [--batch 16] [--device cpu] [--threads N]
"""
import argparse
import json
import os
import time

import torch

from avs_lib.audio.htsat import HTSAT


def run(frames: int = 16, batch: int = 16, device: str = "cpu", repeats: int = 2) -> dict:
    torch.manual_seed(0)
    model = HTSAT().to(device).eval()
    wave = torch.randn(frames, model.config.sample_rate, device=device) * 0.1  # `frames` seconds of audio
    with torch.no_grad():
        model.embed(wave[:batch])  # warm-up (allocations, kernels)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, frames, batch):
                model.embed(wave[i:i + batch])
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    best = min(times)
    return {"encoder": "htsat", "device": device if not device.startswith("cuda") else torch.cuda.get_device_name(),
            "threads": torch.get_num_threads(), "frames": frames, "batch": batch,
            "seconds_per_audio_second": best / frames, "audio_seconds_per_second": frames / best,
            "parameters_millions": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.frames, args.batch, args.device, args.repeats)
    result["cpu_count"] = os.cpu_count()
    print(json.dumps(result, indent=1))
