"""A sweep (``avs sweep``): one notebook run per point of a parameter grid, a few at a time.
"""
from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from avs_lib.experiments.notebooks import RUNS_DIR, NotebookFailed, run_notebook


def expand_grid(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_sweep(spec: dict, parallel: int = 1, runs_dir: str | Path = RUNS_DIR) -> list[tuple[str, str]]:
    """``spec``: {notebook, name, parameters (fixed), grid (lists)}. Each point is one run named
    ``<name>_<key>=<value>...`` (``parallel`` at a time, each in its own kernel); returns (run name,
    "done"/"failed"/"exists") per point. A point whose run folder exists is not run again."""
    notebook, base = spec["notebook"], spec.get("name", Path(spec["notebook"]).stem)
    points = expand_grid(spec.get("grid", {}))

    def one(point: dict) -> tuple[str, str]:
        label = "_".join(f"{k}={v}" for k, v in point.items())
        name = f"{base}_{label}" if label else base
        if (Path(runs_dir) / name).exists():
            return name, "exists"
        try:
            run_notebook(notebook, {**spec.get("parameters", {}), **point}, name, runs_dir, progress=False)
        except NotebookFailed:
            return name, "failed"
        return name, "done"

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(one, points))
