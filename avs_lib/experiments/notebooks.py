"""Experiment runs: a jupytext notebook executed by papermill into ``papermill_runs/<name>/``.

A run folder holds the executed notebook, ``params.json`` (every parameter, defaults included),
``environment.json`` (package versions, git commit, device), ``kernel.log`` (the kernel's own log,
kept off the terminal), ``status.json`` (running, done,
failed with the error, or interrupted by SIGTERM/SIGHUP/Ctrl-C; a running one holds the pid, host
and a heartbeat, so ``run_status`` / ``avs runs`` tell a live run from a killed one), and whatever the notebook writes there itself: ``metrics.json`` and its
figures. The notebook receives ``run_dir`` as a parameter and writes into it.

papermill cannot read jupytext ``.py`` notebooks, so the notebook is converted in memory first.
A run name that exists is never overwritten; a failed run keeps its partial notebook.
The executed notebook is saved without its widget state: a live widget only works in a live kernel,
and anywidget's saved state embeds its JavaScript bundle (5 MB for one plotly FigureWidget).
"""
from __future__ import annotations

import datetime as dt
import gc
import hashlib
import json
import logging
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from avs_lib.core.config import _type_name
from avs_lib.core.errors import ConfigError
from avs_lib.core.kernels import kernel_settings, portable_kernel_env
from avs_lib.core.files import atomic_write_text, output_folder, writing_into
from avs_lib.core.locks import pid_alive
from avs_lib.core.paths import repo_root

RUNS_DIR = Path("papermill_runs")
PACKAGES = ("torch", "numpy", "scikit-learn", "papermill", "jupytext", "matplotlib", "plotly", "ipywidgets",
            "openTSNE", "umap-learn", "avs-workbench")


class RunExists(FileExistsError):
    pass


# Folders the workbench's own runs write into: a tree that differs from its commit only there is
# the commit's code, so these paths are listed apart from the rest of what is dirty.
OUTPUT_PATHS = ("papermill_runs/", "figures/")


def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo; else platform.processor())."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_state(cwd: str | Path | None = None) -> dict:
    """The commit, and what differs from it: ``dirty_code`` (any file outside the output folders,
    which would make the run not reproducible from the commit) and ``dirty_outputs``."""
    cwd = cwd or repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                                cwd=cwd).stdout.strip()
        lines = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True,
                               cwd=cwd).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None, "dirty_code": None, "dirty_outputs": None}
    paths = [line[3:] for line in lines]
    outputs = [p for p in paths if p.startswith(OUTPUT_PATHS)]
    code = [p for p in paths if not p.startswith(OUTPUT_PATHS)]
    return {"git_commit": commit, "git_dirty": bool(code), "dirty_code": code, "dirty_outputs": len(outputs)}


def package_versions(packages: tuple[str, ...]) -> dict[str, str | None]:
    """The installed version of each package (None where it is not installed)."""
    from importlib import metadata

    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def environment() -> dict:
    import torch

    kernel_env = portable_kernel_env(os.environ)  # what each notebook kernel gets (kernel_logging_to)
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": package_versions(PACKAGES),
            **git_state(),
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({cpu_model()})",
            # the CPU kernels torch chose in this process (AVX2, AVX512, ...), which under `avs` capped
            # itself as it caps each notebook kernel, and the caps the kernels run under
            # (avs_lib.core.kernels): CPU runs are bit-equal only on the same kernels
            "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "kernel_settings": kernel_settings(kernel_env),
            "cpu_threads": torch.get_num_threads(), "started": dt.datetime.now().isoformat(timespec="seconds")}


class NotebookFailed(RuntimeError):
    """A notebook run failed; the message says which cell, which exception, and where the partial
    notebook is."""


def describe_failure(error: BaseException, output: Path) -> str:
    """One readable paragraph for a failed run: the failing cell (number and first lines), the
    exception and its message, and where the partial notebook is."""
    cell = getattr(error, "exec_count", None)
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    source = (getattr(error, "source", "") or "").strip().splitlines()
    where = f"cell [{cell}]" if cell is not None else "the notebook"
    first = f" ({source[0].strip()[:80]}{' ...' if len(source) > 1 else ''})" if source else ""
    return f"{where}{first} raised {ename}: {evalue}\npartial notebook: {output}"


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


# ----------------------------------------------------------------------------- run status
HEARTBEAT_SECONDS = 30.0  # a live run rewrites status.json this often; 4 missed beats make it "lost"


class Interrupted(SystemExit):
    """SIGTERM, SIGHUP or SIGINT (Ctrl-C) reached a command: a run is marked "interrupted" and the
    process exits with 128 + the signal number, as a process killed by that signal would, with one
    line (``avs``'s main prints it: the signal and ``note``, where things stand) and no traceback."""

    def __init__(self, signum: int, note: str = ""):
        super().__init__(128 + signum)
        self.signal = signal.Signals(signum).name
        self.note = note


class _Heartbeat:
    """A thread that rewrites status.json every ``interval`` seconds while the run lives, so that
    another command can tell a live run from one whose process vanished (SIGKILL, a lost node)."""

    def __init__(self, path: Path, status: dict, interval: float = HEARTBEAT_SECONDS):
        self.path, self.status, self.interval = path, status, interval
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._beat, daemon=True)

    def write(self) -> None:
        with self.lock:
            self.status["heartbeat"] = dt.datetime.now().isoformat(timespec="seconds")
            atomic_write_text(self.path, json.dumps(self.status, indent=1))

    def _beat(self) -> None:
        while not self.stop.wait(self.interval):
            if self.status.get("status") == "running":
                self.write()

    def __enter__(self) -> "_Heartbeat":
        self.write()
        self.thread.start()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.stop.set()
        self.thread.join()
        try:
            self.write()  # the final status
        except OSError:
            if kind is None:
                raise
            # the run is failing already (a full disk, most often): its own error says more than this one


def run_status(run_dir: str | Path) -> dict:
    """status.json of a run, with ``status`` as another process sees it: a run marked "running"
    whose process is gone is "killed" (same host, the pid no longer runs) or "lost" (no heartbeat
    for 4 intervals, e.g. on another host); a folder without status.json is "unknown"."""
    path = Path(run_dir) / "status.json"
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"status": "unknown", "run_dir": str(run_dir)}
    status["run_dir"] = str(run_dir)
    if status.get("status") != "running":
        return status
    if status.get("host") == socket.gethostname() and isinstance(status.get("pid"), int) and not pid_alive(status["pid"]):
        status.update(status="killed", note=f"pid {status['pid']} ended without marking the run (SIGKILL or a crash)")
    elif status.get("heartbeat"):
        age = (dt.datetime.now() - dt.datetime.fromisoformat(status["heartbeat"])).total_seconds()
        if age > 4 * status.get("heartbeat_seconds", HEARTBEAT_SECONDS):
            status.update(status="lost", note=f"no heartbeat for {age:.0f} s (pid {status.get('pid')} on host "
                                              f"{status.get('host')})")
    return status


def signals_to_interrupt(on_signal: Callable[[], None] | None = None) -> dict:
    """Turn SIGTERM and SIGHUP into ``Interrupted`` (main thread only: Python delivers signals there;
    runs started from sweep threads keep the default handlers), calling ``on_signal`` first. Returns
    the previous handlers, for ``signal.signal`` to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if on_signal is not None:
            on_signal()
        raise Interrupted(signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous[signum] = signal.signal(signum, handler)
    return previous


def run_notebook(notebook: str | Path, parameters: dict | None = None, name: str | None = None,
                 runs_dir: str | Path = RUNS_DIR, progress: bool = True, cwd: str | Path = ".",
                 cell_timeout: float | None = None) -> Path:
    """Execute ``notebook`` with ``parameters``; return the run folder. A failing cell raises
    ``NotebookFailed`` naming the cell, the exception and the partial notebook (the run folder is
    kept, marked failed).

    ``cell_timeout`` (seconds, ``avs run --cell-timeout``) is off by default: a cell of notebook 05
    on the long test bed trains two models for most of an hour on 2 cores, and a fixed limit turned
    that work into a failure. A cell past the limit fails like any other (``NotebookFailed``). A
    run is stopped at any time with Ctrl-C or SIGTERM (marked interrupted). The workbench's
    widgets never use ``widgets.Output``, whose messages can leave nbclient waiting although the
    cell has finished (jupyter/nbclient#312), so no limit is needed to guard against that hang."""
    from nbclient.exceptions import CellTimeoutError

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
    check_parameter_types(notebook, defaults, parameters)
    output_folder(Path(runs_dir), "--runs-dir")
    run_dir.mkdir(parents=True)
    parameters["run_dir"] = str(run_dir.resolve())
    all_parameters = {**defaults, **parameters}
    started = dt.datetime.now()
    # pid + host + heartbeat: `avs runs` / run_status tell a live run from one whose process is gone
    status = {"status": "running", "notebook": str(notebook), "pid": os.getpid(), "host": socket.gethostname(),
              "started": started.isoformat(timespec="seconds"), "heartbeat_seconds": HEARTBEAT_SECONDS}
    output = run_dir / f"{notebook.stem}.ipynb"
    source = jupytext.read(notebook)
    stopping = threading.Event()
    previous = signals_to_interrupt(on_signal=stopping.set)
    quiet = _QuietWhileStopping(stopping)
    for logger in QUIETED_LOGGERS:
        logging.getLogger(logger).addFilter(quiet)
    try:
        with _Heartbeat(run_dir / "status.json", status) as beat:
            try:
                with writing_into(run_dir):  # a full disk is one message naming the run folder
                    atomic_write_text(run_dir / "params.json", json.dumps(all_parameters, indent=1, sort_keys=True))
                    atomic_write_text(run_dir / "environment.json", json.dumps(environment(), indent=1))
                    papermill.execute_notebook(source, str(output), parameters=parameters,
                                               kernel_name="python3", language="python", progress_bar=progress,
                                               cwd=str(cwd), execution_timeout=cell_timeout,
                                               kernel_manager_class=kernel_logging_to(run_dir / "kernel.log"))
            except papermill.PapermillExecutionError as error:
                status.update(status="failed", error=f"{error.ename}: {error.evalue}"[-2000:], cell=error.exec_count)
                raise NotebookFailed(describe_failure(error, output)) from error
            except CellTimeoutError as error:
                with beat.lock:
                    status.update(status="failed", error=f"a cell ran past the cell timeout of {cell_timeout} s")
                raise NotebookFailed(f"a cell of {notebook.name} ran past the cell timeout of {cell_timeout} s and was "
                                     f"stopped; rerun with a larger --cell-timeout, or without one (no limit); the "
                                     f"partial notebook is {output}") from error
            except (Interrupted, KeyboardInterrupt) as error:
                stopping.set()
                # The execute task the stop orphaned dies with its DeadKernelError once nothing holds it:
                # free it now, while the filter is on, not when the process exits.
                error.__traceback__ = None
                gc.collect()
                stopped_by = getattr(error, "signal", "SIGINT")
                with beat.lock:
                    status.update(status="interrupted", error=f"stopped by {stopped_by}")
                raise Interrupted(getattr(signal, stopped_by), f"{run_dir / 'status.json'} says interrupted; the "
                                  f"partial notebook is {output}") from None
            except BaseException as error:
                with beat.lock:
                    status.update(status="failed", error=f"{type(error).__name__}: {str(error)[-2000:]}")
                raise
            else:
                status["status"] = "done"
            finally:
                keep_notebook_readable(output, source, status)
                status["seconds"] = round((dt.datetime.now() - started).total_seconds(), 1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for logger in QUIETED_LOGGERS:
            logging.getLogger(logger).removeFilter(quiet)
    return run_dir


# What a stopped run's kernel and client say as they are torn down: nbclient (through papermill's
# logger) "Kernel died while waiting for execute reply", asyncio "Task exception was never retrieved"
# for the execute task the stop left waiting. Both are the stop itself, already said in one line.
QUIETED_LOGGERS = ("papermill", "asyncio")


class _QuietWhileStopping(logging.Filter):
    """Drops every record once ``stopping`` is set; lets all through before."""

    def __init__(self, stopping: threading.Event):
        super().__init__()
        self.stopping = stopping

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.stopping.is_set()


def kernel_logging_to(log_path: Path) -> type:
    """A kernel manager class whose kernel writes its own log (stderr: ipykernel's warnings, and the
    ZMQError traceback of a kernel whose client went away mid-reply, after SIGTERM or Ctrl-C) to
    ``log_path`` instead of the terminal, where the run's one line is what should be read."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelLoggingToFile(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw) -> None:
            # jupyter_client's hook for launching differently; the child keeps its own copy of the file.
            # The kernel gets the portable CPU kernels' caps whoever started the run
            # (avs_lib.core.kernels): the caller's own NumPy may have been imported without them.
            env = portable_kernel_env(kw.get("env") or os.environ)
            with open(log_path, "ab") as log:
                await super()._async_launch_kernel(kernel_cmd, **{**kw, "stderr": log, "env": env})

    return KernelLoggingToFile


def check_parameter_types(notebook: Path, defaults: dict, parameters: dict) -> None:
    """Each given parameter must have the type of its default in the notebook's ``parameters`` cell
    (an integer may stand for a number; a default of None takes anything): a wrong one is one
    ConfigError naming the parameter and the type, before any kernel starts."""
    for key, value in parameters.items():
        default = defaults.get(key)
        if default is None:
            continue
        expected = type(default)
        fits = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            fits = True
        if not fits:
            raise ConfigError(f"{notebook.name}: parameter '{key}' must be {_type_name(expected)} (its parameters "
                              f"cell has {key} = {default!r}), got {value!r} ({type(value).__name__}); pass -p {key} "
                              "VALUE with a value of that type")


def keep_notebook_readable(output: Path, source, status: dict) -> None:
    """After a run, however it ended: the executed notebook without its widget state. A notebook that
    cannot be read (a write cut short: a full disk, a kill while saving) is replaced by the notebook
    as given, unexecuted, under a first cell that says why, so the run folder never holds a broken
    file; when even that cannot be written, there is no notebook, and status.json says so."""
    import nbformat

    if not output.exists():
        return
    try:
        drop_widget_state(output)
        return
    except Exception:  # nbformat raises JSON, validation and OS errors alike for a cut-short file
        output.unlink(missing_ok=True)  # also frees the space the cut-short write took
    why = status.get("error") or "the executed notebook could not be read back"
    stub = nbformat.from_dict(json.loads(nbformat.writes(source)))
    stub.cells.insert(0, nbformat.v4.new_markdown_cell(
        f"**This run ended with: {why}.** Its executed notebook could not be saved whole; this is the notebook "
        "as it was given, unexecuted."))
    try:
        atomic_write_text(output, nbformat.writes(stub))
        status["notebook_note"] = "the executed notebook could not be saved; the file is the unexecuted notebook"
    except OSError:
        status["notebook_note"] = "the executed notebook could not be saved (no notebook in the run folder)"


def drop_widget_state(path: str | Path) -> None:
    """Remove the saved ipywidgets state from an executed notebook (outputs are kept)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    if nb.metadata.pop("widgets", None) is not None:
        atomic_write_text(path, nbformat.writes(nb))


def rounded(value, digits: int = 3):
    """``value`` with every float inside it rounded to ``digits`` decimals (for display only)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value


def save_metrics(run_dir: str | Path, metrics: dict, digits: int = 3) -> dict:
    """Write a notebook's ``metrics.json`` (full precision, atomically) and return the metrics
    rounded for display, so that an executed notebook ends with a readable table, not 16 digits."""
    atomic_write_text(Path(run_dir) / "metrics.json", json.dumps(metrics, indent=1))
    return rounded(metrics, digits)


