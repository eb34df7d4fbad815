"""The main job (``avs pipeline``): notebooks 00-05 in order into one batch folder, their figures copied into ``figures/``, then the batch's run report.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from avs_lib.core.files import read_json
from avs_lib.core.paths import MAIN_JOB_CONFIG, is_main_job_config, repo_root
from avs_lib.experiments.notebooks import run_notebook
from avs_lib.experiments.readme import format_number, headline_numbers, readme_numbers, update_readme_numbers
from avs_lib.viz.plots import relink_plotlyjs


# ----------------------------------------------------------------------------- the main job
PIPELINE_NOTEBOOKS = ("00_data_tour", "01_semantic_memory", "02_derivation", "03_elimination", "04_tsne_probe",
                      "05_training")


def new_batch_name(config_file: Path | None = None) -> str:
    """``main-<time>`` for the main job; ``config_<stem>-<time>`` for another model config, so that its
    batch never passes for a main-job run, whatever its file is called."""
    prefix = "main" if config_file is None or is_main_job_config(config_file) else f"config_{Path(config_file).stem}"
    return f"{prefix}-{dt.datetime.now():%Y%m%d-%H%M%S}"


def config_parameters(notebook: Path, config_file: Path | None) -> dict:
    """What the main job passes ``notebook`` besides ``data_root``: ``config_file`` where the notebook
    declares it (02-05, which share one model) and another config than their default was asked for;
    nothing otherwise, so that a default run's ``params.json`` is what it always was."""
    from avs_lib.experiments.notebooks import notebook_parameters

    if config_file is None or is_main_job_config(config_file) or "config_file" not in notebook_parameters(notebook):
        return {}
    return {"config_file": str(config_file)}


def run_pipeline(world: Path, figures: Path | None, runs_dir: Path, notebooks: tuple[str, ...] = PIPELINE_NOTEBOOKS,
                 parameters: dict | None = None, batch_name: str | None = None, config_file: Path | None = None) -> Path:
    """Notebooks 00-05 in order through papermill into ``<runs_dir>/main-<time>/``, their figures
    copied into ``<figures>/<notebook>/`` (``figures=None``: left in the batch only), then the run
    report ``index.md``. ``config_file``: the model config notebooks 02-05 share, instead of their default
    (``configs/tiny_world.yaml``). Returns the batch folder; a failing notebook raises
    ``NotebookFailed`` after the report of what ran is written."""
    import shutil
    import time


    batch = Path(runs_dir) / (batch_name or new_batch_name(config_file))
    started = time.time()
    try:
        for name in notebooks:
            t0 = time.time()
            print(f"[{name}] running ...", flush=True)
            path = repo_root() / "notebooks" / f"{name}.py"
            given = {"data_root": str(world), **config_parameters(path, config_file), **(parameters or {})}
            run = run_notebook(path, given, name=name, runs_dir=batch, progress=False)
            if figures is not None and (run / "figures").exists():
                shutil.rmtree(Path(figures) / name, ignore_errors=True)
                shutil.copytree(run / "figures", Path(figures) / name)
                for html in (Path(figures) / name).glob("*.html"):
                    relink_plotlyjs(html)
            print(f"[{name}] done in {time.time() - t0:.0f} s", flush=True)
    finally:
        if batch.exists():
            write_run_report(batch, readme=repo_root() / "README.md")
    print(f"notebook pipeline: {time.time() - started:.0f} s", flush=True)
    return batch


def kernels_text(env: dict) -> str:
    """", AVX2 kernels (capped at AVX2)" for a run's environment record, or "" for an
    old record that does not name its kernels."""
    if not env.get("cpu_kernels"):
        return ""
    settings = env.get("kernel_settings")
    if settings is None:
        return f", {env['cpu_kernels']} kernels"
    cap = settings.get("ATEN_CPU_CAPABILITY")
    mode = f"capped at {cap.upper()}" if cap else "native: the CPU's widest"
    return f", {env['cpu_kernels']} kernels ({mode})"


def _other_config(run: Path) -> str | None:
    """The model config a notebook run was given, where it is not the main job's default."""
    params = run / "params.json"
    given = read_json(params).get("config_file") if params.exists() else None
    if given is None or is_main_job_config(given):
        return None
    return given


def write_run_report(batch: Path, readme: Path | None = None) -> Path:
    """``<batch>/index.md``: per notebook its status, its headline numbers (beside the README's,
    where the README quotes one), thumbnails of its figures and a link to the executed notebook."""
    quoted = readme_numbers(readme) if readme else {}
    lines = [f"# Run report: {batch.name}", ""]
    envs = [read_json(f) for f in sorted(batch.glob("*/environment.json"))]
    if envs:
        commits = sorted({str(e.get("git_commit")) for e in envs})
        dirty = sorted({path for e in envs for path in (e.get("dirty_code") or [])})
        state = (f"uncommitted code changes during the run: {', '.join(dirty)}" if dirty
                 else "no uncommitted code changes")
        lines += [f"Commit{'s' if len(commits) > 1 else ''} {', '.join(f'`{c}`' for c in commits)} ({state}); "
                  f"{envs[0].get('device')}" + kernels_text(envs[0])
                  + f"; torch {envs[0].get('packages', {}).get('torch')}; "
                  f"started {envs[0].get('started')}.", ""]
    for run in sorted(p for p in batch.iterdir() if p.is_dir()):
        status = json.loads((run / "status.json").read_text()) if (run / "status.json").exists() else {}
        lines += [f"## {run.name}", "",
                  f"{status.get('status', 'unknown')}" + (f" in {status['seconds']} s" if "seconds" in status else "")
                  + f" · [executed notebook]({run.name}/{run.name}.ipynb) · [parameters]({run.name}/params.json)", ""]
        if status.get("error"):
            lines += [f"Error: `{status['error'][:300]}`", ""]
        other_config = _other_config(run)
        if other_config:
            lines += [f"Model config `{other_config}`, not the main job's `{MAIN_JOB_CONFIG}` that the README "
                      "quotes: its numbers are not compared.", ""]
        if (run / "metrics.json").exists():
            numbers = headline_numbers(read_json(run / "metrics.json"))
            lines += ["| number | this run | README |", "| --- | --- | --- |"]
            for key, value in numbers.items():
                readme_value = "" if other_config else quoted.get((run.name, key), "")
                mark = "" if not readme_value or readme_value == format_number(value) else " (differs)"
                lines.append(f"| `{key}` | {format_number(value)} | {readme_value}{mark} |")
            lines.append("")
        thumbs = [f'<a href="{f.relative_to(batch).as_posix()}"><img src="{f.relative_to(batch).as_posix()}" width="240"></a>'
                  for f in sorted((run / "figures").glob("*.png"))]
        thumbs += [f"[{f.name}]({f.relative_to(batch).as_posix()})" for f in sorted((run / "figures").glob("*.html"))]
        if thumbs:
            lines += [" ".join(thumbs), ""]
    path = batch / "index.md"
    path.write_text("\n".join(lines))
    return path


def quote_run_in_readme(batch: Path, readme: Path) -> Path:
    """Make ``readme``'s run-numbers table quote the run ``batch``, then rewrite the run's report, whose
    README column was filled from the table this run replaces (its "(differs)" marks would otherwise
    say that the README disagrees with the run it now quotes). Returns the report."""
    update_readme_numbers(batch, readme)
    return write_run_report(batch, readme=readme)
