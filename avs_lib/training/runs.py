"""A run folder and the one rule that decides whether a run is reused, resumed, refused or set aside (``run_state``), with what makes two runs the same run (``run_identity``).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from avs_lib.core.cache import data_identity
from avs_lib.core.config import TrainConfig, config_from_dict, model_config_class
from avs_lib.core.files import atomic_write_text, read_json
from avs_lib.core.paths import workbench_path
from avs_lib.models.visual_pretrain import VISUAL_PRETRAIN_VERSION, WORLD_WEIGHTS
from avs_lib.training.checkpoints import read_checkpoint


# ----------------------------------------------------------------------------- run folder
class RunExistsError(FileExistsError, ValueError):
    """The out folder holds a run and ``resume`` was not asked for."""


class ResumeMismatch(ValueError):
    """``resume=true`` with a config that differs from the run's in more than the epochs."""


class RunRefused(ValueError):
    """Rank 0 refused the run folder; the other ranks stop with its message."""


# Besides RUN_IDENTITY_EXCLUDES, what resume may change: more epochs continue the schedule.
RESUME_MAY_CHANGE = ("epochs",)


def open_run_folder(config: TrainConfig, out_dir: Path) -> dict | None:
    """Rank 0's checks of the run folder, before any data work: a run there needs ``resume=true``;
    ``resume=true`` needs the same config (epochs may grow); the checkpoint must verify. Writes
    config.json (only when the run is accepted) and returns the state to resume from, if any."""
    last_path, saved = out_dir / "last.pt", out_dir / "config.json"
    if last_path.exists() and not config.resume:
        raise RunExistsError(f"{out_dir} already holds a run (last.pt); pass resume=true to continue it or choose "
                             "another out=")
    state = None
    if config.resume:
        recorded = None
        if saved.exists():
            try:
                recorded = json.loads(saved.read_text())
            except ValueError:
                recorded = None  # a torn config.json from an old version: the checkpoint's config decides
        if last_path.exists():
            state = read_checkpoint(last_path)
            recorded = state["config"]  # the checkpoint's config is what the weights were trained with
        if recorded is not None:
            differences = {k: v for k, v in run_differences(out_dir, recorded, config).items()
                           if k not in RESUME_MAY_CHANGE}
            if differences:
                listed = "; ".join(f"{k}: the run has {old!r}, this call gives {new!r}" for k, (old, new) in differences.items())
                raise ResumeMismatch(f"resume=true into {out_dir}: the config differs from the run's in more than the "
                                     f"epochs ({listed}); {saved.name} is left as it was. Resume with the run's settings "
                                     "(only epochs may grow) or train into another out=")
        if state is not None and config.epochs < state["epoch"] + 1:
            raise ResumeMismatch(f"resume=true into {out_dir}: the run has done {state['epoch'] + 1} epochs, more than "
                                 f"epochs={config.epochs}; pass epochs={state['epoch'] + 1} or more")
    atomic_write_text(saved, json.dumps(asdict(config), indent=1))
    return state


# Settings that do not change what a run computes: a run that differs only in these is the same run.
# The device is one of them, as the thread count is: a CPU and a GPU compute the same run up to float
# rounding (``device: auto`` already named both), so a run finished on a GPU counts as finished on a
# CPU and one started on either resumes on the other; metrics.json records where it trained.
RUN_IDENTITY_EXCLUDES = ("out", "resume", "progress", "threads", "device", "stop_after_epoch", "tracking",
                         "loader_workers")
# Keys added after runs were recorded: left out of a run's identity at the value that reproduces what
# a run recorded before them computed, so that such a run is the same run (resume, train_once,
# shared_run_dir). Mostly the key's default; bn_momentum's is None (each layer's own momentum, what
# every earlier run used), not its default 0.1, so earlier runs count as other runs than today's default.
IDENTITY_DEFAULTS = {"loader": "auto", "augment": "flip", "train_clips": "files", "attention_supervision": 0.0,
                     "visual_pretrain_steps": 600, "bn_momentum": None, "outline_weight": 0.0,
                     "fused_adamw": False}


def recorded_config(values: dict, where: str) -> TrainConfig:
    """A config as a run recorded it (its ``config.json``, or the one inside a checkpoint): keys the
    run predates take the value that computed what it did (``IDENTITY_DEFAULTS``), so that the run
    rebuilt or continued from it computes the same. ``where`` names the record in errors."""
    return config_from_dict({**IDENTITY_DEFAULTS, **values}, where)


# Paths compared as the folders they name (relative ones are read from the repository root, as
# ``workbench_path`` reads them): `avs train` gives them as typed, the notebooks absolute.
PATH_KEYS = ("data_root", "cache_dir", "memory_root", "memory_file")


def run_identity(config: TrainConfig | dict) -> dict:
    """What a run computes, as plain JSON values: the config without ``RUN_IDENTITY_EXCLUDES``, and
    its model switches without those set to the model's own default (``num_tokens=5`` given or not
    is the same model)."""
    values = json.loads(json.dumps(asdict(config) if isinstance(config, TrainConfig) else config))
    switches = values.get("switches") or {}
    if switches:
        from dataclasses import MISSING, fields


        defaults = {f.name: f.default for f in fields(model_config_class(values.get("model", TrainConfig.model)))
                    if f.default is not MISSING}
        values["switches"] = {k: v for k, v in switches.items() if k not in defaults or defaults[k] != v}
    if values.get("switches", {}).get("pretrained_backbone") == WORLD_WEIGHTS:
        # the world's pretrained start is a function of the data (in shared_run_dir's key), the
        # settings above and the pretraining's code, whose version stands in for it here
        values["visual_pretrain_version"] = VISUAL_PRETRAIN_VERSION
    for key in PATH_KEYS:  # data/default_world and its absolute path are the same data
        if values.get(key):
            values[key] = str(workbench_path(values[key]))
    return {k: v for k, v in values.items()
            if k not in RUN_IDENTITY_EXCLUDES and not (k in IDENTITY_DEFAULTS and IDENTITY_DEFAULTS[k] == v)}


def config_differences(a: TrainConfig | dict, b: TrainConfig | dict) -> dict[str, tuple]:
    """{key: (a's value, b's value)} for the keys that change what a run computes (``run_identity``)."""
    a, b = run_identity(a), run_identity(b)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def run_differences(out: str | Path, recorded: TrainConfig | dict, config: TrainConfig) -> dict[str, tuple]:
    """``config_differences`` between the run recorded in ``out`` and ``config``, where a run in the
    data's model store (``out`` is ``shared_run_dir(config)``) does not differ by ``data_root``: the
    store's key holds the data's identity, so another ``data_root`` there is the same world moved or
    copied elsewhere (its cache, models included, moved with it), and its models are reused, not
    trained again."""
    differences = config_differences(recorded, config)
    # only a store under the data root (no cache_dir of its own) moves with the data, as
    # predict.moved_store_run reads it back
    if ("data_root" in differences and not config.cache_dir
            and Path(out).resolve() == shared_run_dir(config).resolve()):
        differences.pop("data_root")
    return differences


def shared_run_dir(config: TrainConfig) -> Path:
    """Where the notebooks keep a model, so that notebooks asking for the same training share it:
    ``<cache>/models/<key>`` under the data's cache folder, the key a hash of everything that
    changes what the run computes (``config_differences``' keys) and of the data's identity
    (``avs_lib.core.cache.data_identity``: a rebuilt world gets new models, never the old ones)."""
    data_root = workbench_path(config.data_root)
    cache = workbench_path(config.cache_dir) if config.cache_dir else data_root / "cache"
    identity = run_identity(config)
    identity["data"] = data_identity(data_root)
    identity.pop("data_root")  # the same data moved elsewhere is the same data
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return cache / "models" / f"{config.model}-{key}"


@dataclass
class RunState:
    """What ``out`` holds for a config (``run_state``): ``kind`` is ``new`` (no run), ``other`` (a run
    with other settings: ``differences``), ``finished`` (the same settings, ``metrics.json``
    written), ``resumable`` (the same settings, ``last.pt`` but no metrics) or ``started`` (the same
    settings, nothing trained yet)."""

    kind: str
    differences: dict = field(default_factory=dict)


def run_state(out: str | Path, config: TrainConfig) -> RunState:
    """The one rule for an existing run: a run is the same run when ``config.json`` in ``out``
    differs from ``config`` in nothing that changes what it computes (``config_differences``);
    then it is reused when finished and resumed when it has a checkpoint. Callers decide what to do
    with a run of other settings (``train_once`` sets it aside; the ablation refuses it)."""
    out = Path(out)
    saved = out / "config.json"
    if not saved.exists():
        return RunState("new")
    differences = run_differences(out, read_json(saved, "run config"), config)
    if differences:
        return RunState("other", differences)
    if (out / "metrics.json").exists():
        return RunState("finished")
    return RunState("resumable" if (out / "last.pt").exists() else "started")
