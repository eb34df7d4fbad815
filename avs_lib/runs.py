"""Experiment runs: a jupytext notebook executed by papermill into ``papermill_runs/<name>/``.

A run folder holds the executed notebook, ``params.json`` (every parameter, defaults included),
``environment.json`` (package versions, git commit, device), ``status.json`` (running, done or
failed, with the error), and whatever the notebook writes there itself: ``metrics.json`` and its
figures. The notebook receives ``run_dir`` as a parameter and writes into it.

papermill cannot read jupytext ``.py`` notebooks, so the notebook is converted in memory first.
A run name that exists is never overwritten; a failed run keeps its partial notebook.
The executed notebook is saved without its widget state: a live widget only works in a live kernel,
and anywidget's saved state embeds its JavaScript bundle (5 MB for one plotly FigureWidget).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import platform
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RUNS_DIR = Path("papermill_runs")
PACKAGES = ("torch", "numpy", "scikit-learn", "papermill", "jupytext", "matplotlib", "plotly", "ipywidgets",
            "openTSNE", "umap-learn", "avs-workbench")


class RunExists(FileExistsError):
    pass


def environment() -> dict:
    from importlib import metadata

    import torch

    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_commit": commit, "git_dirty": dirty,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({platform.processor() or 'unknown'})",
            "cpu_threads": torch.get_num_threads(), "started": dt.datetime.now().isoformat(timespec="seconds")}


def notebook_parameters(notebook: str | Path) -> dict:
    """The defaults of the cell tagged ``parameters`` (evaluated as Python literals)."""
    import ast

    import jupytext

    nb = jupytext.read(notebook)
    for cell in nb.cells:
        if "parameters" in cell.metadata.get("tags", []):
            values = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, (ast.Assign, ast.AnnAssign)):
                    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                    if isinstance(target, ast.Name):
                        values[target.id] = ast.literal_eval(node.value)
            return values
    raise ValueError(f"{notebook} has no cell tagged 'parameters'")


def default_name(notebook: str | Path, parameters: dict) -> str:
    digest = hashlib.sha256(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:8]
    return f"{Path(notebook).stem}-{digest}"


def run_notebook(notebook: str | Path, parameters: dict | None = None, name: str | None = None,
                 runs_dir: str | Path = RUNS_DIR, progress: bool = True, cwd: str | Path = ".",
                 cell_timeout: int = 1800) -> Path:
    """Execute ``notebook`` with ``parameters``; return the run folder. Raises on failure (the run
    folder is kept, marked failed). ``cell_timeout`` (seconds) turns a cell that never finishes into a
    failed run: nbclient can block on a cell that displays ipywidgets (jupyter/nbclient#312)."""
    import jupytext
    import papermill

    notebook = Path(notebook)
    if not notebook.exists():
        raise FileNotFoundError(f"notebook {notebook} does not exist")
    defaults = notebook_parameters(notebook)
    parameters = dict(parameters or {})
    unknown = set(parameters) - set(defaults)
    if unknown:
        raise ValueError(f"{notebook.name} has no parameters {sorted(unknown)}; its parameters are {sorted(defaults)}")
    name = name or default_name(notebook, parameters)
    run_dir = Path(runs_dir) / name
    if run_dir.exists():
        raise RunExists(f"run {run_dir} exists; runs are never overwritten: choose another --name or delete it")
    run_dir.mkdir(parents=True)
    parameters["run_dir"] = str(run_dir.resolve())
    all_parameters = {**defaults, **parameters}
    (run_dir / "params.json").write_text(json.dumps(all_parameters, indent=1, sort_keys=True))
    (run_dir / "environment.json").write_text(json.dumps(environment(), indent=1))
    status = {"status": "running", "notebook": str(notebook)}
    (run_dir / "status.json").write_text(json.dumps(status))
    output = run_dir / f"{notebook.stem}.ipynb"
    started = dt.datetime.now()
    try:
        papermill.execute_notebook(jupytext.read(notebook), str(output), parameters=parameters, kernel_name="python3", language="python",
                                   progress_bar=progress, cwd=str(cwd), execution_timeout=cell_timeout)
    except BaseException as error:
        status.update(status="failed", error=f"{type(error).__name__}: {str(error)[-2000:]}")
        raise
    else:
        status["status"] = "done"
    finally:
        if output.exists():
            drop_widget_state(output)
        status["seconds"] = round((dt.datetime.now() - started).total_seconds(), 1)
        (run_dir / "status.json").write_text(json.dumps(status, indent=1))
    return run_dir


def drop_widget_state(path: str | Path) -> None:
    """Remove the saved ipywidgets state from an executed notebook (outputs are kept)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    if nb.metadata.pop("widgets", None) is not None:
        nbformat.write(nb, path)


def expand_grid(grid: dict) -> list[dict]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def run_sweep(spec: dict, parallel: int = 1, runs_dir: str | Path = RUNS_DIR) -> list[tuple[str, str]]:
    """``spec``: {notebook, name, parameters (fixed), grid (lists)}. Each point runs in its own
    process (``avs run``); returns (run name, "done"/"failed"/"exists") per point."""
    notebook, base = spec["notebook"], spec.get("name", Path(spec["notebook"]).stem)
    points = expand_grid(spec.get("grid", {}))

    def one(point: dict) -> tuple[str, str]:
        label = "_".join(f"{k}={v}" for k, v in point.items())
        name = f"{base}_{label}" if label else base
        if (Path(runs_dir) / name).exists():
            return name, "exists"
        args = [sys.executable, "-m", "avs_lib.cli", "run", str(notebook), "--name", name, "--runs-dir", str(runs_dir),
                "--quiet"]
        for key, value in {**spec.get("parameters", {}), **point}.items():
            args += ["-p", key, json.dumps(value)]
        result = subprocess.run(args, capture_output=True, text=True)
        return name, "done" if result.returncode == 0 else "failed"

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(one, points))
