"""A written world described in a few lines: classes, clips per subset and split, sources."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from avs_lib.core.files import read_json
from avs_lib.data.datasets import layout_records, load_sources
from avs_lib.world.write import world_roots


def describe_world(root: Path) -> str:
    """A short human summary of a written world: classes, clips per subset and split, sources."""
    meta_path = root / "world.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{meta_path}: not a world written by `avs world` (no world.json)")
    meta = read_json(meta_path)
    cfg = meta["config"]
    lines = [f"world at {root}: library '{meta['library']}', {len(meta['classes'])} classes, "
             f"{cfg['size']} px frames, {cfg['sample_rate']} Hz audio, seed {cfg['seed']}",
             "classes: " + ", ".join(f"{c} ({len(meta['members'][c])})" for c in meta["classes"])]
    for subset in cfg["subsets"]:
        sub_root, layout = world_roots(root)[subset]
        records = layout_records(sub_root, layout)
        sources = load_sources(sub_root, layout)
        splits: dict[str, int] = {}
        for rec in sources.values():
            splits[rec["split"]] = splits.get(rec["split"], 0) + 1
        offscreen = sum(any(not s["on_screen"] for s in rec["sources"]) for rec in sources.values())
        sounding = sum(sum(s["on_screen"] and s["sounding"] for s in rec["sources"]) for rec in sources.values())
        flags = [on for rec in sources.values() for s in rec["sources"]
                 if s["on_screen"] and s["sounding"] for on in s.get("active") or []]
        pauses = f", sounding in {np.mean(flags):.0%} of their frames (pauses)" if flags else ""
        lines.append(f"  {subset:5s} ({layout}): {len(sources)} clips {splits}, {len(records)} frames, "
                     f"{sounding / max(len(sources), 1):.2f} sounding objects per clip{pauses}, "
                     f"{offscreen / max(len(sources), 1):.0%} of clips with an off-screen source")
    return "\n".join(lines)
