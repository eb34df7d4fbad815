"""Time to write a world of each subset (goal: 500 clips of each at 96 px in under 2 minutes).

Prints one JSON object. Usage: python benchmarks/bench_world.py [--clips 500] [--size 96] [--kind stamps]
"""
import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from avs_lib.world.assets import default_kind, load_library
from avs_lib.world.compose import SUBSETS, WorldConfig
from avs_lib.world.write import write_world


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=500)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--kind", default=default_kind())
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    start = time.perf_counter()
    library = load_library(args.kind)
    result = {"kind": library.kind, "clips_per_subset": args.clips, "size": args.size, "workers": args.workers,
              "library_load_s": round(time.perf_counter() - start, 2), "subsets": {}}
    out = tempfile.mkdtemp(prefix="avs_bench_world_")
    try:
        for subset in SUBSETS:
            cfg = WorldConfig(kind=library.kind, subsets=(subset,), clips=args.clips, size=args.size)
            t0 = time.perf_counter()
            # a folder per subset: write_world refuses a folder that holds another world
            write_world(cfg, Path(out) / subset, progress=False, library=library, workers=args.workers)
            result["subsets"][subset] = round(time.perf_counter() - t0, 2)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result["total_s"] = round(time.perf_counter() - start, 2)
    result["goal_s"] = 120
    print(json.dumps(result))


if __name__ == "__main__":
    main()
