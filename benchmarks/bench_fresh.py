"""What ``train_clips=fresh`` costs: seconds to compose and embed one epoch of fresh training clips
(avs_lib.data.fresh) for a world, with the oracle input and with the world's small audio encoder.

Prints one JSON object. Usage: python benchmarks/bench_fresh.py [--world data/default_world]
[--layout ms3] [--image-size 96] [--clips N (default: the whole training split)]
"""
import argparse
import json
import time

import avs_lib.data.fresh as fresh
from avs_lib.audio.registry import audio_encoder_from_spec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", default="data/default_world")
    parser.add_argument("--layout", default="ms3")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--clips", type=int, default=0, help="compose only this many clips (0: the training split)")
    args = parser.parse_args()
    split_clips = fresh.train_clip_count(args.world, args.layout)
    clips = args.clips or split_clips
    result = {"world": args.world, "layout": args.layout, "image_size": args.image_size, "clips": clips,
              "training_split_clips": split_clips, "seconds": {}}
    for spec in ("oracle", "small"):
        encoder, _, _ = audio_encoder_from_spec(spec, args.world, f"{args.world}/cache", 128, 15)
        start = time.perf_counter()
        frames = fresh.fresh_train_frames(args.world, args.layout, 0, args.image_size, encoder, clips=clips)
        seconds = time.perf_counter() - start
        result["seconds"][spec] = round(seconds, 2)
        result[f"frames_per_second_{spec}"] = round(len(frames) / seconds, 1)
    result["epoch_seconds_small"] = round(result["seconds"]["small"] * split_clips / clips, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
