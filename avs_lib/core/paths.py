"""Where the workbench's files are, whatever the working folder.

A notebook opened in JupyterLab runs its kernel in ``notebooks/``, papermill runs it wherever it
was started, and a user may call the library from anywhere. Relative paths in notebook
parameters and configs (``data/default_world``, ``configs/tiny_world.yaml``) are therefore read
from the repository root, found in this order:

1. the environment variable ``AVS_HOME``, when set;
2. the nearest folder, from the working folder upwards, holding this project's ``pyproject.toml``;
3. the folder above the installed ``avs_lib`` package, when it holds that ``pyproject.toml``
   (an editable install, as ``make`` sets up);
4. the working folder.
"""
from __future__ import annotations

import os
from pathlib import Path

from avs_lib.core.errors import BUILD_HINT, DataError

PROJECT_NAME = 'name = "avs-workbench"'
INTERACTIVE_RUNS = Path("runs") / "notebooks"  # where notebooks opened by hand write their outputs
MAIN_JOB_CONFIG = "configs/tiny_world.yaml"  # the model notebooks 02-05 share in the main job, unless told otherwise


def _is_repo_root(folder: Path) -> bool:
    project = folder / "pyproject.toml"
    try:
        return project.is_file() and PROJECT_NAME in project.read_text()
    except OSError:
        return False


def repo_root() -> Path:
    """The repository root (see the module docstring for how it is found)."""
    if os.environ.get("AVS_HOME"):
        return Path(os.environ["AVS_HOME"]).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _is_repo_root(folder):
            return folder
    package_parent = Path(__file__).resolve().parents[2]  # avs_lib/core/paths.py -> the repository
    if _is_repo_root(package_parent):
        return package_parent
    return here


def workbench_path(path: str | Path) -> Path:
    """``path`` as an absolute path: absolute paths stay, relative ones are read from the repo root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else repo_root() / path


def is_main_job_config(path: str | Path) -> bool:
    """Whether ``path`` names the main job's model config (``MAIN_JOB_CONFIG``), relative paths read
    from the repository root."""
    return workbench_path(path).resolve() == workbench_path(MAIN_JOB_CONFIG).resolve()


def notebook_run_dir(run_dir: str | Path, notebook: str) -> Path:
    """A notebook's output folder: ``run_dir`` when given (papermill passes one), else
    ``runs/notebooks/<notebook>/`` under the repository root, so that outputs never land in
    ``notebooks/`` and a second Run All finds what the first one trained."""
    folder = workbench_path(run_dir) if str(run_dir) else repo_root() / INTERACTIVE_RUNS / notebook
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def notebook_paths(data_root: str | Path, run_dir: str | Path, notebook: str) -> tuple[Path, Path]:
    """(data root, run folder) of a notebook, both absolute: see ``workbench_path`` and
    ``notebook_run_dir``. A data root that does not exist is an error that says how to build it."""
    root = workbench_path(data_root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset root does not exist; {BUILD_HINT}")
    return root, notebook_run_dir(run_dir, notebook)
