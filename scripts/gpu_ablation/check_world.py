"""Tell whether a world composed on another machine is the one ``pack.py`` described (``manifest``
serves both): prints JSON with the number of files that match, differ, are missing or are extra, by
top folder, and a few examples.
Usage: ``python3 scripts/gpu_ablation/check_world.py .gpu_carry/manifest.json.gz data/default_world``."""
from __future__ import annotations

import gzip
import hashlib
import json
import sys
from collections import Counter
from pathlib import Path


def manifest(world: Path) -> dict[str, str]:
    """SHA-256 of every file of a world, by its path inside it (``cache/`` left out)."""
    return {str(p.relative_to(world)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(world.rglob("*")) if p.is_file() and p.relative_to(world).parts[0] != "cache"}


def compare(expected: dict[str, str], world: Path) -> dict:
    found = manifest(world)
    same, differ = Counter(), Counter()
    examples = []
    for name, digest in expected.items():
        top = name.split("/")[0]
        if found.get(name) == digest:
            same[top] += 1
        else:
            differ[top] += 1
            if len(examples) < 10:
                examples.append(name + ("" if name in found else " (missing)"))
    extra = sorted(set(found) - set(expected))
    return {"identical": sum(same.values()), "different_or_missing": sum(differ.values()), "extra": len(extra),
            "identical_by_folder": dict(same), "different_by_folder": dict(differ), "examples": examples,
            "extra_examples": extra[:10]}


if __name__ == "__main__":
    with gzip.open(sys.argv[1], "rt") as fh:
        print(json.dumps(compare(json.load(fh), Path(sys.argv[2])), indent=1))
