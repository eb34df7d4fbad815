"""DDESeg's ablations on a world (``avs ablation``): Table 3 (baseline, +derivation, +enhancement,
full) plus full in the released reading and AVSAC, Table 4's elimination schemes, and two capacity
checks that are OUTSIDE THE PAPER (labelled so in every table), with the two trivial baselines
(``avs_lib.analysis.evaluation``) and the source-aware analyses (``avs_lib.analysis.inspect``).

What it reports, so that a 2-point J&F gap can be told from seed noise:

* per setting: mean ± std over seeds and a 95 % t-interval of the mean;
* per setting: the paired difference against the baseline trained with the same seed on the same
  data (mean ± std and a 95 % t-interval): seed-to-seed variation common to both cancels;
* per elimination run and stage: the pooled AUC, the within-frame paired AUC with its bootstrap
  95 % interval over clips and its frame and pair counts, and the within-frame score spread.

Runs that already finished in ``out`` are reused, so an interrupted ablation continues where it
stopped. ``SETTINGS`` lists every row; ``TABLE3`` and ``TABLE4`` say which rows each table shows
(Table 4's "none" and "Gumbel+CA+FC" rows are Table 3's +enhancement and full runs).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from avs_lib.analysis.evaluation import all_foreground
from avs_lib.analysis.inspect import SCORE_NAMES, derivation_recall, elimination_analysis, token_separation
from avs_lib.analysis.stats import t_interval
from avs_lib.core.files import atomic_write_text, read_json
from avs_lib.experiments.report import markdown_table, summarise
from avs_lib.models.avsac import avsac_switches
from avs_lib.models.ddeseg import FIRST_READING
from avs_lib.models.hooks import run_with_cache
from avs_lib.training.loop import resolve_device, train
from avs_lib.training.predict import REREAD_KEY, evaluate_model, load_trained, uses_bf16
from avs_lib.training.prepare import prepare
from avs_lib.training.runs import run_state
from avs_lib.viz.plots import _pyplot

CAPACITY = "capacity check (outside the paper)"
POINTING = "attention supervision (outside the paper)"
FLOOR, CEILING = "floor: zero audio", "ceiling: oracle audio"
SETTINGS = {
    # the window (avs_lib.analysis.evaluation.headroom): full DDESeg trained without sound, and with the classes
    # sounding on screen as its audio input (avs_lib.audio.registry.OracleAudio)
    FLOOR: dict(model="ddeseg", ablation="full", zero_audio=True),
    CEILING: dict(model="ddeseg", ablation="full", audio_encoder="oracle"),
    "baseline": dict(model="ddeseg", ablation="baseline"),
    "+derivation": dict(model="ddeseg", ablation="derivation"),
    "+enhancement": dict(model="ddeseg", ablation="enhancement"),
    "full": dict(model="ddeseg", ablation="full"),
    "full (released)": dict(model="ddeseg", ablation="full", variant="released"),
    "avsac": dict(model="avsac", ablation=None),
    "FC+sigmoid": dict(model="ddeseg", ablation="full", switches={"elimination": "fc"}),
    "CA+FC+sigmoid": dict(model="ddeseg", ablation="full", switches={"elimination": "ca_fc"}),
    "SK+CA+FC+sigmoid": dict(model="ddeseg", ablation="full", switches={"elimination": "softkmeans_ca_fc"}),
    "full (first reading)": dict(model="ddeseg", ablation="full", first_reading=True),
    CAPACITY: dict(model="ddeseg", ablation="full", capacity_check=1.0),
    # the pointing accuracy's capacity check: full with the fusion attention told where each token's object is
    POINTING: dict(model="ddeseg", ablation="full", attention_supervision=1.0),
}
TABLE3 = ["baseline", "+derivation", "+enhancement", "full", "full (released)", "avsac"]
WINDOW = [FLOOR, CEILING]  # run with Table 3's seeds
TABLE4 = {"none": "+enhancement", "FC+sigmoid": "FC+sigmoid", "CA+FC+sigmoid": "CA+FC+sigmoid",
          "SK+CA+FC+sigmoid": "SK+CA+FC+sigmoid", "GS+CA+FC+sigmoid": "full"}
EXTRA = ["full (first reading)", CAPACITY, POINTING]  # run with Table 4's seeds
ONCE = (CAPACITY, POINTING)  # the capacity checks: trained with the first of Table 4's seeds only
METRICS = ["J", "F", "JF"]


class AblationRunsFailed(RuntimeError):
    """Some runs failed; the report over the others was written first."""


def run_dir_name(setting: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", setting).strip("_").lower() + f"_seed{seed}"


def plan(seeds=(0, 1, 2, 3, 4), table4_seeds=(0, 1, 2), settings: list[str] | None = None) -> list[tuple[str, int]]:
    """(setting, seed) for every run: the window's floor and ceiling and Table 3 rows with ``seeds``, Table 4's own rows and the first
    reading with ``table4_seeds``, the two capacity checks once (the first of ``table4_seeds``);
    ``settings`` keeps only the rows named (the baseline, floor and ceiling are always run)."""
    # seed by seed, so that runs cut short by a time budget leave every row with the same seeds
    jobs = [(s, seed) for seed in seeds for s in WINDOW + TABLE3]
    jobs += [(s, seed) for seed in table4_seeds for s in [*TABLE4.values(), *EXTRA]
             if s not in TABLE3 and (s not in ONCE or seed == table4_seeds[0])]
    jobs += [(s, seed) for s in [*TABLE4.values()] if s in TABLE3 for seed in table4_seeds if (s, seed) not in jobs]
    if settings is not None:
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ValueError(f"unknown ablation settings {unknown}; choose from {list(SETTINGS)}")
        jobs = [(s, seed) for s, seed in jobs if s in settings or s in ("baseline", *WINDOW)]
    return list(dict.fromkeys(jobs))


def setting_config(base_config, setting: str, seed: int, run_dir: Path):
    """The ``TrainConfig`` of one run: ``base_config`` with the setting's switches and the seed."""
    spec = dict(SETTINGS[setting])
    switches = {**base_config.switches, **spec.pop("switches", {})}
    if spec.pop("first_reading", False):
        switches.update(FIRST_READING)
    if spec["model"] == "avsac":
        switches = avsac_switches(switches)  # the backbone and its start: the rows differ by the decoder
    if spec.get("variant") == "released":
        # the released blocks have no fusion cross-attention (a ReleasedAligner gates each stage), so a
        # config's reading of it does not apply to this row, which DDESegConfig would otherwise refuse
        switches.pop("fusion_query", None)
    return replace(base_config, seed=seed, out=str(run_dir), progress=False, resume=True, switches=switches,
                   variant=spec.pop("variant", "paper"), **spec)


def runs_to_train(out: Path, base_config, jobs: list[tuple[str, int]], set_aside_changed: bool = False
                  ) -> list[tuple[str, int]]:
    """The jobs whose runs in ``out`` are not finished. A folder holding a run of other settings (a
    setting whose definition changed since it ran) is never reused or resumed: it is refused before
    any training, or with ``set_aside_changed`` moved to ``out/superseded/`` and trained again."""
    todo = []
    for setting, seed in jobs:
        run_dir = out / run_dir_name(setting, seed)
        state = run_state(run_dir, setting_config(base_config, setting, seed, run_dir))
        if state.kind == "other":
            changed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in state.differences.items())
            if not set_aside_changed:
                raise ValueError(f"{run_dir} holds a run with other settings ({changed}); pass another --out, "
                                 "remove that folder, or pass --set-aside-changed to move it aside and train it again")
            aside = out / "superseded" / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            aside.parent.mkdir(exist_ok=True)
            run_dir.rename(aside)
            print(f"{run_dir}: its settings changed ({changed}); moved to {aside}, trained again", flush=True)
        if state.kind != "finished":
            todo.append((setting, seed))
    print(f"{out}: {len(jobs) - len(todo)} of {len(jobs)} planned runs finished and reused, {len(todo)} to train",
          flush=True)
    return todo


def devices_text(trained_on: dict[str, str]) -> str:
    """Where the runs trained, for the report: "cuda", or "cuda (45 runs) and cpu (9 runs: ...)" when
    reused runs came from another machine; the runs of the smaller groups are named."""
    counts = Counter(trained_on.values())
    if len(counts) <= 1:
        return next(iter(counts), "no device (no run finished)")
    parts = []
    for rank, (device, n) in enumerate(counts.most_common()):
        names = [run for run, d in trained_on.items() if d == device]
        parts.append(f"{device} ({n} run{'s' if n > 1 else ''}" + (f": {', '.join(names)})" if rank else ")"))
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def interval_table(table: pd.DataFrame, metric: str = "JF", baseline: str = "baseline") -> pd.DataFrame:
    """Per setting: runs, mean ± std, 95 % interval of ``metric``, and the paired difference against
    ``baseline`` over the seeds both have (mean ± std, 95 % interval, pairs)."""
    rows = []
    base = table[table.setting == baseline].set_index("seed")[metric]
    for setting, group in table.groupby("setting", sort=False):
        mean, std, low, high = t_interval(group[metric])
        row = {"setting": setting, "runs": len(group), "mean": mean, "std": std, "low": low, "high": high}
        paired = group.set_index("seed")[metric]
        common = sorted(set(paired.index) & set(base.index) - {-1})
        if setting != baseline and common:
            d_mean, d_std, d_low, d_high = t_interval(paired[common].values - base[common].values)
            row.update(diff=d_mean, diff_std=d_std, diff_low=d_low, diff_high=d_high, pairs=len(common))
        rows.append(row)
    return pd.DataFrame(rows)


def _pct(x: float) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def interval_section(heading: str, intro: str | None, intervals: pd.DataFrame,
                     names: dict[str, str] | None = None) -> list[str]:
    """A report section's lines (heading, optional intro, ``interval_markdown``), or none when no row of
    it ran: ``--settings`` may leave a section's rows all out."""
    if not len(intervals):
        return []
    return [heading, "", *([intro, ""] if intro else []), interval_markdown(intervals, names), ""]


def interval_markdown(intervals: pd.DataFrame, names: dict[str, str] | None = None) -> str:
    lines = ["| setting | runs | J&F mean ± std | 95 % interval | Δ vs baseline (same seed) | 95 % interval of Δ |",
             "|---|---|---|---|---|---|"]
    for _, r in intervals.iterrows():
        name = (names or {}).get(r.setting, r.setting)
        diff = (f"{100 * r['diff']:+.1f} ± {_pct(r['diff_std'])} ({int(r['pairs'])} pairs)"
                if "diff" in r and pd.notna(r.get("diff")) else "–")
        diff_ci = (f"[{100 * r['diff_low']:+.1f}, {100 * r['diff_high']:+.1f}]"
                   if "diff_low" in r and pd.notna(r.get("diff_low")) else "–")
        ci = f"[{_pct(r['low'])}, {_pct(r['high'])}]"
        lines.append(f"| {name} | {r.runs} | {_pct(r['mean'])} ± {_pct(r['std'])} | {ci} | {diff} | {diff_ci} |")
    return "\n".join(lines)


def _auc_cell(stage: dict, key: str = "within_frame") -> str:
    w = stage.get(key, {"auc": None})
    if w["auc"] is None:
        return "–"
    return f"{w['auc']:.2f} [{w['ci95'][0]:.2f}, {w['ci95'][1]:.2f}]"


def analyses_markdown(elimination: dict[str, list[dict]]) -> str:
    """One row per elimination setting and seed: within-frame AUC [95 % CI] per stage; for the combined
    score the within-frame AUC, split by the kind of negative (off screen only; silent or absent),
    the pooled AUC, the spread (std of log S within a frame), frames and pairs."""
    stages = sorted({k for runs in elimination.values() for r in runs for k in r["stages"] if k.startswith("stage")})
    head = "| setting | seed | " + " | ".join(f"within-frame AUC, {s}" for s in stages) + \
           " | within-frame AUC, combined | on vs off-screen only | on vs silent | pooled AUC, combined" \
           " | spread (std of log S), combined | frames / pairs |"
    lines = [head, "|" + "---|" * (len(stages) + 8)]
    for setting, runs in elimination.items():
        for r in runs:
            st = r["stages"]
            cells = [_auc_cell(st[s]) if s in st else "–" for s in stages]
            c = st["combined"]
            pooled = c["pooled"]["auc"]
            lines.append(f"| {setting} | {r['seed']} | " + " | ".join(cells) + f" | {_auc_cell(c)} | "
                         f"{_auc_cell(c, 'within_frame_offscreen')} | {_auc_cell(c, 'within_frame_silent')} | "
                         f"{'–' if pooled is None else f'{pooled:.2f}'} | {c['spread']['log_std']:.3g} | "
                         f"{c['within_frame']['frames']} / {c['within_frame']['pairs']} |")
    return "\n".join(lines)


def run_analyses(run_dir: Path, setting: str, seed: int, prepared, device: torch.device | str = "cpu") -> dict:
    """One finished run's source-aware analyses on the test split, cached in ``run_dir/analyses.json``
    (reused while the run's ``metrics.json`` is the one they were taken from): how far apart a frame's
    tokens are; for the settings that score tokens, elimination against the truth; for ``full``, its
    test J&F with the audio zeroed. Empty for the rows that have no tokens to look at."""
    if setting in ("baseline", "avsac", *WINDOW):
        return {}
    run_dir = Path(run_dir)
    taken_from = hashlib.sha256((run_dir / "metrics.json").read_bytes()).hexdigest()
    cached = run_dir / "analyses.json"
    if cached.exists():
        found = read_json(cached, "a run's analyses")
        if found.get("metrics_sha256") == taken_from:
            return found
    device = torch.device(device)
    model, config, _ = load_trained(run_dir / "best.pt", prepared, device=device)
    test = prepared.test
    # one pass over the test split per model serves both analyses
    scored = setting not in ("+derivation", "+enhancement")
    cache = run_with_cache(model, test, names=(SCORE_NAMES if scored else []) + ["derivation.*"], strict=False)
    result = {"metrics_sha256": taken_from, "separation": {"seed": seed, **token_separation(cache, test)}}
    if scored:
        result["elimination"] = {"seed": seed, "stages": elimination_analysis(cache, test, seed=seed)}
    if setting == "full":
        zero = evaluate_model(model, test, device, replace(config, zero_audio=True))
        result["zero_audio"] = {k: zero[k] for k in METRICS}
    atomic_write_text(cached, json.dumps(result, indent=1))
    return result


def _train_jobs(todo, out: Path, base_config, prepared_for, deadline: float | None, device,
                progress: bool) -> list[tuple[str, int, str]]:
    """Train (and analyse) the unfinished runs ``todo`` in order in this process; none starts after
    ``deadline`` (time.time()). Returns the runs that failed, with their error, after trying the rest."""
    failed = []
    for setting, seed in tqdm(todo, desc="ablation runs", disable=not progress):
        if deadline is not None and time.time() > deadline:
            continue
        run_dir = out / run_dir_name(setting, seed)
        config = setting_config(base_config, setting, seed, run_dir)
        try:
            train(config, prepared_for(config))
            run_analyses(run_dir, setting, seed, prepared_for(base_config), device)
        except Exception as err:  # the other runs go on; the caller reports every failure
            failed.append((setting, seed, f"{type(err).__name__}: {err}"))
    return failed


def _tensor_bytes(value, seen: set | None = None) -> int:
    """Bytes of the tensors inside ``value`` (dataclasses, modules, dicts, lists), each storage once."""
    seen = set() if seen is None else seen
    if isinstance(value, torch.Tensor):
        key = value.untyped_storage().data_ptr()
        if key in seen:
            return 0
        seen.add(key)
        return value.untyped_storage().nbytes()
    if isinstance(value, torch.nn.Module):
        return sum(_tensor_bytes(t, seen) for t in value.state_dict().values())
    if isinstance(value, dict):
        return sum(_tensor_bytes(v, seen) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v, seen) for v in value) if value and isinstance(value[0], torch.Tensor) else 0
    if hasattr(value, "__dataclass_fields__"):
        return sum(_tensor_bytes(getattr(value, f), seen) for f in value.__dataclass_fields__)
    return 0


def _shareable(prepared: dict) -> bool:
    """Whether the parent's prepared data can go to the workers through shared memory: it must fit
    twice into what /dev/shm has free (a container's small /dev/shm would otherwise fail mid-copy)."""
    import shutil

    try:
        free = shutil.disk_usage("/dev/shm").free
    except OSError:  # no /dev/shm (not Linux): each worker prepares its own
        return False
    return 2 * _tensor_bytes(prepared) < free


def _worker(queue, results, out: str, base_config, deadline: float | None, threads: int,
            shared: dict | None) -> None:
    """A process of ``run_ablation(parallel=N)``: takes jobs off ``queue`` until it meets the end mark
    (None), each trained and analysed as ``_train_jobs`` does (none started after the deadline);
    reports (setting, seed, error or None) on ``results``. ``shared``: the parent's prepared data by
    audio encoder, its tensors in shared memory; where absent, the worker prepares its own from the
    caches the parent filled (decoding the splits again: 20-30 s of one core for the default world)."""
    torch.set_num_threads(threads)
    by_audio = dict(shared or {})

    def prepared_for(config):
        if config.audio_encoder not in by_audio:
            by_audio[config.audio_encoder] = prepare(config)
        return by_audio[config.audio_encoder]

    device = resolve_device(base_config.device)
    while (job := queue.get()) is not None:
        setting, seed = job
        failed = _train_jobs([(setting, seed)], Path(out), base_config, prepared_for, deadline, device, False)
        results.put((setting, seed, failed[0][2] if failed else None))


def _train_in_parallel(todo, out: Path, base_config, prepared_for, prepared: dict, deadline: float | None,
                       parallel: int, progress: bool) -> tuple[list[tuple[str, int, str]], bool]:
    """``_train_jobs`` spread over ``parallel`` processes (spawned: CUDA cannot be forked), in the order of
    ``todo``. The parent first prepares the data of every run (``prepared_for`` fills ``prepared``, by
    audio encoder, and the caches the runs read) and hands it to the workers through shared memory
    (torch's pickling of tensors) where ``_shareable``, instead of each worker decoding the world again:
    on an H200, ten workers doing that had not started their runs after 5.5 min. Returns the failures
    and whether the data were shared."""
    import multiprocessing
    import queue as queue_module

    for setting, seed in todo:
        prepared_for(setting_config(base_config, setting, seed, out / run_dir_name(setting, seed)))
    shared = _shareable(prepared)
    context = multiprocessing.get_context("spawn")
    queue, results = context.Queue(), context.Queue()
    workers = [context.Process(target=_worker, args=(queue, results, str(out), base_config, deadline,
                                                     max(1, (os.cpu_count() or 1) // parallel),
                                                     prepared if shared else None))
               for _ in range(min(parallel, len(todo)))]
    for job in [*todo, *[None] * len(workers)]:  # one end mark per worker
        queue.put(job)
    for w in workers:
        w.start()
    failed, reported = [], 0
    with tqdm(total=len(todo), desc=f"ablation runs ({len(workers)} at once)", disable=not progress) as bar:
        while reported < len(todo):
            try:
                setting, seed, error = results.get(timeout=5)
            except queue_module.Empty:
                if any(w.is_alive() for w in workers):
                    continue
                try:  # every worker has ended: what they reported last may still be in transit
                    setting, seed, error = results.get(timeout=5)
                except queue_module.Empty:
                    break
            reported += 1
            bar.update()
            if error is not None:
                failed.append((setting, seed, error))
    for w in workers:
        w.join()
        if w.exitcode:  # a worker that died outside a run (out of memory, a signal)
            failed.append(("worker process", w.pid, f"exit code {w.exitcode}"))
    return failed, shared


def run_ablation(out: str | Path, base_config, seeds=(0, 1, 2, 3, 4), table4_seeds=(0, 1, 2),
                 settings: list[str] | None = None, figure: str | Path | None = None, report_dir: str | Path | None = None,
                 progress: bool = True, min_test_clips: int = 100, parallel: int = 1,
                 time_budget: float | None = None, set_aside_changed: bool = False) -> pd.DataFrame:
    """Train every planned run (skipping finished ones; ``runs_to_train`` says what happens to a run
    whose settings changed), then write ``ablation.md``, ``ablation.csv``,
    ``intervals.csv``, ``analyses.json`` (to ``report_dir``, default ``out``) and the figure.

    ``parallel``: runs trained at once, each in its own process on ``base_config.device`` (a model of
    this size leaves a GPU mostly idle, so several share one; on a CPU keep 1). ``time_budget``:
    seconds after which no run starts; the report then covers the runs that finished, lists the rest
    as not run, and a rerun continues with them. A run that fails does not stop the others: the report
    is written over the finished runs, then the failures are raised together."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report_dir = Path(report_dir or out)
    report_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if time_budget is None else time.time() + time_budget
    # with runs in parallel the machine has cores to spare: the frames are decoded by a process per core
    decoders = (os.cpu_count() or 1) if parallel > 1 else 1
    jobs = plan(seeds, table4_seeds, settings)
    todo = runs_to_train(out, base_config, jobs, set_aside_changed)  # refused before the data's minutes
    prepared = prepare(base_config, progress=progress, workers=decoders)
    by_audio = {base_config.audio_encoder: prepared}  # the ceiling's oracle inputs are prepared once

    def prepared_for(config):
        if config.audio_encoder not in by_audio:
            by_audio[config.audio_encoder] = prepare(config, progress=progress, workers=decoders)
        return by_audio[config.audio_encoder]

    device = resolve_device(base_config.device)
    shared = False
    if parallel <= 1:
        failed = _train_jobs(todo, out, base_config, prepared_for, deadline, device, progress)
    else:
        failed, shared = _train_in_parallel(todo, out, base_config, prepared_for, by_audio, deadline, parallel,
                                            progress)
    finished = [(s, seed) for s, seed in jobs if (out / run_dir_name(s, seed) / "metrics.json").exists()]
    not_run = [job for job in jobs if job not in finished]
    rows, seconds, trained_on, reread = [], {}, {}, []
    for setting, seed in finished:
        metrics = read_json(out / run_dir_name(setting, seed) / "metrics.json")
        if REREAD_KEY in metrics:  # read again with fresh BatchNorm statistics (avs reread-bn)
            reread.append(f"{setting} seed {seed}")
        rows.append({"setting": setting, "seed": seed, **{k: metrics["test"][k] for k in METRICS}})
        # runs reused from another machine keep their own device (runs before metrics recorded it: their config's)
        trained_on[f"{setting} seed {seed}"] = metrics.get("device") or metrics["config"]["device"]
        # the run's own record of its training epochs (validation and test not included), kept by reused runs
        seconds[f"{setting} seed {seed}"] = sum(epoch["seconds"] for epoch in metrics["history"])
    # trivial baselines: every pixel foreground; the full model with its audio zeroed at test time
    test = prepared.test
    test_clips = len(set(test.clips))
    foreground = all_foreground(test, base_config.convention, base_config.eval_batch_size)
    rows.append({"setting": "trivial: all foreground", "seed": -1, **{k: foreground[k] for k in METRICS}})
    elimination: dict[str, list[dict]] = {}
    separation: dict[str, list[dict]] = {}
    for setting, seed in tqdm(finished, desc="analyses", disable=not progress):
        found = run_analyses(out / run_dir_name(setting, seed), setting, seed, prepared, device)
        if "separation" in found:
            separation.setdefault(setting, []).append(found["separation"])
        if "elimination" in found:
            elimination.setdefault(setting, []).append(found["elimination"])
        if "zero_audio" in found:
            rows.append({"setting": "trivial: full, audio zeroed", "seed": seed, **found["zero_audio"]})
    table = pd.DataFrame(rows)
    summary = summarise(table, "setting", METRICS)
    intervals = interval_table(table)
    recall = [derivation_recall(test, prepared.memory.centroids, k) for k in range(1, len(prepared.memory.class_names) + 1)]
    analyses = {"derivation_recall": recall, "elimination": elimination, "token_separation": separation,
                "convention": base_config.convention,
                "test_frames": int(test.valid.sum()), "test_clips": test_clips, "train_frames": len(prepared.train),
                "epochs": base_config.epochs, "image_size": base_config.image_size, "train_seconds": seconds,
                "seeds": list(seeds), "table4_seeds": list(table4_seeds), "parallel": parallel,
                "workers_shared_data": shared,
                "device": str(device), "trained_on": trained_on, "not_run": [list(job) for job in not_run],
                "failed": [list(f) for f in failed], "batchnorm_recomputed": reread}
    table.to_csv(report_dir / "ablation.csv", index=False)
    intervals.to_csv(report_dir / "intervals.csv", index=False)
    (report_dir / "analyses.json").write_text(json.dumps(analyses, indent=1))
    k_default = base_config.switches.get("num_tokens", 5)
    r5 = next(r for r in recall if r["K"] == k_default)
    table3 = intervals[intervals.setting.isin(WINDOW + TABLE3 + ["trivial: all foreground", "trivial: full, audio zeroed"])]
    means = summary.set_index("setting")["JF mean"]
    window = ([f"**The window**: floor (full DDESeg trained with zero audio) {100 * means[FLOOR]:.1f}, ceiling (full "
               f"DDESeg with the oracle audio input) {100 * means[CEILING]:.1f}: headroom "
               f"{100 * (means[CEILING] - means[FLOOR]):.1f} points of J&F. A setting can only move inside it.", ""]
              if FLOOR in means and CEILING in means else [])
    table4 = intervals.set_index("setting").loc[[s for s in TABLE4.values() if s in set(intervals.setting)]].reset_index()
    extra = intervals[intervals.setting.isin(EXTRA)]
    warning = ([f"**Only {test_clips} test clips: below the 100 that a 2-point J&F gap needs; build a larger world "
                f"before reading an ordering from these rows.**", ""] if test_clips < min_test_clips else [])
    missing = ([f"**Not run: {len(not_run)} of the {len(jobs)} planned runs** ("
                + ", ".join(f"{s} seed {seed}" for s, seed in not_run) + "): "
                + (f"{len(failed)} failed ({'; '.join(f'{a} {b}: {c}' for a, b, c in failed)}), " if failed else "")
                + ("the rest did not start within the time budget. " if time_budget is not None else
                   "the rest were not started: no worker was left to take them. ")
                + "The rows below are over the runs that finished; "
                "the same command continues with the rest.", ""] if not_run else [])
    # bf16 is part of every run's identity; whether it autocasts depends on the device each run trained on
    autocast_on = " and ".join(sorted(d for d in set(trained_on.values()) if d in ("cpu", "cuda") and uses_bf16(
        torch.device(d), base_config.bf16, base_config.cpu_bf16)))
    text = [f"# Ablation on {base_config.data_root} ({base_config.layout}, test split: {test_clips} clips, "
            f"{int(test.valid.sum())} frames)", "", *warning, *missing,
            f"J&F in % ({base_config.convention} convention), {base_config.epochs} epochs at {base_config.image_size} px, "
            f"{len(prepared.train)} training frames, trained on {devices_text(trained_on)}"
            f"{f' (bf16 autocast on {autocast_on})' if autocast_on else ''}"
            f"{f' ({parallel} runs at once in this call)' if parallel > 1 else ''}. 95 % intervals are Student-t intervals of the mean over seeds; "
            "Δ is the paired difference against the baseline trained with the same seed.", "",
            *([f"**Read again**: {'all' if len(reread) == len(finished) else len(reread)} of the {len(finished)} runs "
               "were read with BatchNorm statistics recomputed for their trained weights (`avs reread-bn`; each "
               "run's metrics.json keeps its first reading under `batchnorm_recomputed`): their J&F and analyses "
               "use those statistics."
               + ("" if len(reread) == len(finished) else " Not read again: "
                  + ", ".join(f"{s} seed {seed}" for s, seed in finished if f"{s} seed {seed}" not in reread)
                  + "; a paired difference between a run read again and one that was not mixes the two readings.")
               , ""] if reread else []),
            *window,
            f"## Table 3 (seeds {list(seeds)})", "", interval_markdown(table3), "",
            *interval_section(f"## Table 4, elimination schemes (seeds {list(table4_seeds)}; 'none' is "
                              "+enhancement, 'GS+CA+FC+sigmoid' is full)", None, table4,
                              {v: k for k, v in TABLE4.items()}),
            *interval_section(
                "## Other readings and the capacity checks (OUTSIDE THE PAPER)",
                "'full (first reading)' is the workbench's earlier reading of Eq. 13-17 (switches FIRST_READING); "
                "the capacity check trains full with an auxiliary loss on the world's on/off-screen labels, and the "
                "attention supervision with an auxiliary loss that shows every stage's fusion attention where each "
                "token's object is (attention_supervision=1): neither is DDESeg nor a Table 3 row.", extra),
            "## Elimination scores against the truth", "",
            "Within-frame AUC: in each frame, every token whose class sounds on screen against every token whose "
            "class is off screen only or silent (0.5: the scores do not choose between a frame's tokens); 95 % "
            "bootstrap interval over clips. Pooled AUC: on-screen against off-screen-only tokens pooled over frames.",
            "", "Over seeds (mean ± std of each seed's figure; spread: std of S across a frame's tokens):", "",
            elimination_summary_markdown(elimination), "", "Per seed:", "", analyses_markdown(elimination), "",
            "## How far apart a frame's derived tokens are", "",
            "Mean distance between two of a frame's K tokens, the tokens' mean norm, and the mean distance between "
            "the mean tokens of two frames (test split, mean ± std over seeds; `derived`: after Eq. 8, `enhanced`: "
            "after Eq. 12, what elimination scores).", "", separation_markdown(separation), "",
            f"Derivation recall at K={k_default}: {r5['recall']:.3f} (on-screen {r5['recall_on_screen']:.3f}).", "",
            "All rows, mean ± std:", "", markdown_table(summary, "setting", METRICS)]
    (report_dir / "ablation.md").write_text("\n".join(text) + "\n")
    if figure is not None:
        plot_ablation(intervals, elimination, figure)
    if failed:
        raise AblationRunsFailed(f"{len(failed)} ablation run{'' if len(failed) == 1 else 's'} failed (the report over the others is in {report_dir}): "
                           + "; ".join(f"{a} seed {b}: {c}" for a, b, c in failed))
    return intervals


def _mean_std(values) -> str:
    values = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(values):
        return "–"
    return f"{values.mean():.3g}" if len(values) < 2 else f"{values.mean():.3g} ± {values.std(ddof=1):.2g}"


def elimination_summary_markdown(elimination: dict[str, list[dict]]) -> str:
    """One row per elimination setting: each figure of ``analyses_markdown``'s combined score as the
    mean ± std over the setting's seeds, with the per-stage within-frame AUCs."""
    stages = sorted({k for runs in elimination.values() for r in runs for k in r["stages"] if k.startswith("stage")})
    lines = ["| setting | seeds | " + " | ".join(f"within-frame AUC, {s}" for s in stages) +
             " | within-frame AUC, combined | on vs off-screen only | on vs silent | pooled AUC | spread of S | mean S |",
             "|" + "---|" * (len(stages) + 8)]
    for setting, runs in elimination.items():
        def figure(stage, key="within_frame"):
            return _mean_std([r["stages"][stage][key]["auc"] for r in runs if stage in r["stages"]])
        combined = [r["stages"]["combined"] for r in runs]
        lines.append(f"| {setting} | {len(runs)} | " + " | ".join(figure(s) for s in stages) +
                     f" | {figure('combined')} | {figure('combined', 'within_frame_offscreen')} | "
                     f"{figure('combined', 'within_frame_silent')} | {_mean_std([c['pooled']['auc'] for c in combined])} | "
                     f"{_mean_std([c['spread']['std'] for c in combined])} | {_mean_std([c['spread']['mean'] for c in combined])} |")
    return "\n".join(lines)


def separation_markdown(separation: dict[str, list[dict]]) -> str:
    lines = ["| setting | seeds | tokens | within a frame | token norm | between frames | within / between |",
             "|---|---|---|---|---|---|---|"]
    for setting, runs in separation.items():
        for kind in ("derived", "enhanced"):
            figures = {key: _mean_std([r[kind][key] for r in runs]) for key in ("within_frame", "norm", "between_frames", "ratio")}
            lines.append(f"| {setting} | {len(runs)} | {kind} | {figures['within_frame']} | {figures['norm']} | "
                         f"{figures['between_frames']} | {figures['ratio']} |")
    return "\n".join(lines)


def plot_ablation(intervals: pd.DataFrame, elimination: dict[str, list[dict]], path: str | Path) -> None:
    """Three panels: J&F per setting with its 95 % interval; the paired difference against the baseline
    with its interval; the within-frame AUC per stage of each elimination setting (seed mean, with
    the bootstrap intervals of every seed drawn as thin bars)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.6), gridspec_kw={"width_ratios": [1.3, 1.3, 1.2]})
    order = [s for s in [*WINDOW, *TABLE3, *[v for v in TABLE4.values() if v not in TABLE3], *EXTRA,
                         "trivial: all foreground", "trivial: full, audio zeroed"] if s in set(intervals.setting)]
    data = intervals.set_index("setting").loc[order]
    y = np.arange(len(order))[::-1]
    window_colour = "#6aa84f"
    colour = [window_colour if s in WINDOW else "#999999" if s.startswith("trivial") else "#c0504d" if s in EXTRA
              else "#3b75af" for s in order]
    ax = axes[0]
    from matplotlib.patches import Patch

    legend = [Patch(color="#3b75af", label="Tables 3 and 4"), Patch(color="#c0504d", label="other readings, capacity checks"),
              Patch(color="#999999", label="trivial baselines")]
    if all(s in data.index for s in WINDOW):  # every setting can only move between the floor and the ceiling
        ax.axvspan(data.loc[FLOOR, "mean"] * 100, data.loc[CEILING, "mean"] * 100, color=window_colour, alpha=0.15, lw=0)
        legend.insert(0, Patch(color=window_colour, alpha=0.6, label="the window: floor to ceiling"))
    err = np.vstack([data["mean"] - data["low"], data["high"] - data["mean"]]).clip(min=0) * 100
    ax.barh(y, data["mean"] * 100, xerr=np.nan_to_num(err), color=colour, capsize=3)
    ax.set_yticks(y, order, fontsize=8)
    ax.set_xlabel("test J&F (%), mean and 95 % interval over seeds")
    ax.set_title("settings")
    ax.legend(handles=legend, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)
    ax = axes[1]
    has = data["diff"].notna() if "diff" in data else pd.Series(False, index=order)
    d = data[has]
    yd = y[has.values]
    if len(d):
        err = np.vstack([d["diff"] - d["diff_low"], d["diff_high"] - d["diff"]]).clip(min=0) * 100
        ax.errorbar(d["diff"] * 100, yd, xerr=np.nan_to_num(err), fmt="o", color="#3b75af", capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, order, fontsize=8)
    ax.set_xlabel("Δ J&F vs baseline, same seed (points, 95 % interval)")
    ax.set_title("paired difference against the baseline")
    ax = axes[2]
    names = list(elimination)
    stages = sorted({k for runs in elimination.values() for r in runs for k in r["stages"]},
                    key=lambda s: (s == "combined", s))
    width = 0.8 / max(1, len(names))
    labelled = set()
    for i, name in enumerate(names):
        for j, stage in enumerate(stages):
            values = [r["stages"][stage]["within_frame"] for r in elimination[name] if stage in r["stages"]]
            values = [v for v in values if v["auc"] is not None]
            if not values:
                continue
            x = j + (i - (len(names) - 1) / 2) * width
            ax.bar(x, np.mean([v["auc"] for v in values]), width, color=plt.cm.tab10(i % 10),
                   label=None if name in labelled else name)
            labelled.add(name)
            for v in values:
                ax.plot([x, x], v["ci95"], color="k", lw=0.7)
    ax.axhline(0.5, color="k", lw=0.8, ls="--")
    ax.set_xticks(range(len(stages)), stages, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("within-frame AUC (bar: mean over seeds, line: each seed's 95 % CI)", fontsize=8)
    ax.set_title("do the scores choose within a frame?\n(dashed: 0.5, no choice)", fontsize=11)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def estimate_seconds(per_run_seconds: float, seeds=(0, 1, 2, 3, 4), table4_seeds=(0, 1, 2),
                     analysis_seconds: float = 0.0) -> dict:
    """The ablation's wall time from one run's measured time: (runs, seconds)."""
    jobs = plan(seeds, table4_seeds)
    eliminating = sum(1 for s, _ in jobs if s not in ("baseline", "+derivation", "+enhancement", "avsac"))
    return {"runs": len(jobs), "seconds": len(jobs) * per_run_seconds + eliminating * analysis_seconds}
