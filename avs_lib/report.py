"""Gather runs into tables (mean +- std over seeds) and run DDESeg's Table 3 ablation on a world.

``gather(run_dirs)``: one row per run from its ``metrics.json`` (training runs, or papermill runs of
notebooks that write one); ``summarise(rows)``: mean and std per setting over seeds;
``run_ablation(...)``: baseline, +derivation, +enhancement, full and AVSAC, several seeds, plus the
two trivial baselines and the two source-aware analyses, written to a folder as markdown, CSV and a
figure.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

SETTINGS = {
    "baseline": dict(model="ddeseg", ablation="baseline"),
    "+derivation": dict(model="ddeseg", ablation="derivation"),
    "+enhancement": dict(model="ddeseg", ablation="enhancement"),
    "full": dict(model="ddeseg", ablation="full"),
    "avsac": dict(model="avsac", ablation=None),
}


def _flatten(prefix: str, values: dict, out: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict):
            _flatten(f"{prefix}{key}.", value, out)
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[f"{prefix}{key}"] = value


def gather(run_dirs: list[str | Path]) -> pd.DataFrame:
    rows = []
    for run in run_dirs:
        run = Path(run)
        metrics_path = run / "metrics.json"
        if not metrics_path.exists():
            continue
        metrics = json.loads(metrics_path.read_text())
        row = {"run": run.name}
        params_path = run / "params.json"
        if params_path.exists():
            _flatten("param.", json.loads(params_path.read_text()), row)
        status_path = run / "status.json"
        if status_path.exists():
            row["status"] = json.loads(status_path.read_text()).get("status")
        _flatten("", {k: v for k, v in metrics.items() if k not in ("history", "config")}, row)
        if "config" in metrics:
            _flatten("config.", metrics["config"], row)
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(frame: pd.DataFrame, by: str, metrics: list[str]) -> pd.DataFrame:
    """Mean, std and count per value of ``by``, for each metric column (std over seeds, ddof=1)."""
    grouped = frame.groupby(by, sort=False)
    out = pd.DataFrame({"runs": grouped.size()})
    for metric in metrics:
        out[f"{metric} mean"] = grouped[metric].mean()
        out[f"{metric} std"] = grouped[metric].std(ddof=1)
    return out.reset_index()


def markdown_table(summary: pd.DataFrame, by: str, metrics: list[str], scale: float = 100.0) -> str:
    head = f"| {by} | runs | " + " | ".join(metrics) + " |"
    lines = [head, "|" + "---|" * (len(metrics) + 2)]
    for _, row in summary.iterrows():
        cells = []
        for m in metrics:
            mean, std = row[f"{m} mean"] * scale, row[f"{m} std"] * scale
            cells.append(f"{mean:.1f} ± {std:.1f}" if np.isfinite(std) else f"{mean:.1f}")
        lines.append(f"| {row[by]} | {row['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_ablation(out: str | Path, base_config, seeds=(0, 1, 2), settings: list[str] | None = None,
                 figure: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every setting for every seed (skipping runs already finished), then write
    ``ablation.md``, ``ablation.csv``, ``analyses.json`` and the figure."""
    from dataclasses import replace

    from tqdm.auto import tqdm

    from avs_lib.analysis import derivation_recall, elimination_auc
    from avs_lib.metrics import evaluate
    from avs_lib.train import evaluate_model, load_trained, prepare, train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = settings or list(SETTINGS)
    prepared = prepare(base_config, progress=progress)
    jobs = [(s, seed) for s in settings for seed in seeds]

    def run_dir_of(setting: str, seed: int) -> Path:
        return out / f"{setting.strip('+')}_seed{seed}"

    for setting, seed in tqdm(jobs, desc="ablation runs", disable=not progress):
        run_dir = run_dir_of(setting, seed)
        if (run_dir / "metrics.json").exists():
            continue
        config = replace(base_config, seed=seed, out=str(run_dir), progress=False, resume=True, **SETTINGS[setting])
        train(config, prepared)
    rows = []
    for setting, seed in jobs:
        metrics = json.loads((run_dir_of(setting, seed) / "metrics.json").read_text())
        rows.append({"setting": setting, "seed": seed, **{k: metrics["test"][k] for k in ("J", "F", "JF")}})
    # trivial baselines: every pixel foreground; the full model with its audio zeroed at test time
    test = prepared.test
    keep = test.valid
    all_foreground = evaluate(torch.full(test.masks[keep].shape, 20.0), test.masks[keep], convention=base_config.convention)
    zero_rows, aucs = [], []
    for seed in seeds:
        model, config, _ = load_trained(run_dir_of("full", seed) / "best.pt", prepared)
        zero_rows.append(evaluate_model(model, test, torch.device("cpu"), replace(config, zero_audio=True)))
        result = elimination_auc(model, test)
        aucs.append({"seed": seed, "auc": result["auc"], "positives": result["positives"], "negatives": result["negatives"]})
    rows.append({"setting": "trivial: all foreground", "seed": -1, **{k: all_foreground[k] for k in ("J", "F", "JF")}})
    for seed, r in zip(seeds, zero_rows):
        rows.append({"setting": "trivial: full, audio zeroed", "seed": seed, **{k: r[k] for k in ("J", "F", "JF")}})
    table = pd.DataFrame(rows)
    summary = summarise(table, "setting", ["J", "F", "JF"])
    # analyses
    recall = [derivation_recall(test, prepared.memory.centroids, k) for k in range(1, len(prepared.memory.class_names) + 1)]
    analyses = {"derivation_recall": recall, "elimination_auc": aucs, "convention": base_config.convention,
                "test_frames": int(keep.sum())}
    table.to_csv(out / "ablation.csv", index=False)
    (out / "analyses.json").write_text(json.dumps(analyses, indent=1))
    k_default = base_config.switches.get("num_tokens", 5)
    r5 = next(r for r in recall if r["K"] == k_default)
    auc_values = [a["auc"] for a in aucs if a["auc"] is not None]
    text = [f"# Ablation on {base_config.data_root} ({base_config.layout}, test split, {int(keep.sum())} frames)", "",
            f"Metrics in % ({base_config.convention} convention), mean ± std over seeds {list(seeds)}; "
            f"{base_config.epochs} epochs at {base_config.image_size} px.", "",
            markdown_table(summary, "setting", ["J", "F", "JF"]), "",
            f"Derivation recall at K={k_default}: {r5['recall']:.3f} (on-screen {r5['recall_on_screen']:.3f}, "
            f"off-screen {r5['recall_off_screen'] if r5['recall_off_screen'] is None else round(r5['recall_off_screen'], 3)}).",
            f"Elimination AUC (full model, on-screen vs off-screen-only token classes): "
            f"{np.mean(auc_values):.3f} ± {np.std(auc_values, ddof=1) if len(auc_values) > 1 else 0:.3f}."]
    (out / "ablation.md").write_text("\n".join(text) + "\n")
    if figure is not None:
        plot_ablation(summary, recall, aucs, figure)
    return summary


def plot_ablation(summary: pd.DataFrame, recall: list[dict], aucs: list[dict], path: str | Path) -> None:
    from avs_lib.plots import _pyplot, draw_recall

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [2, 1]})
    ax = axes[0]
    x = np.arange(len(summary))
    ax.bar(x, summary["JF mean"] * 100, yerr=summary["JF std"].fillna(0) * 100, capsize=4,
           color=["#999999" if s.startswith("trivial") else "#3b75af" for s in summary["setting"]])
    ax.set_xticks(x, summary["setting"], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("test J&F (%)")
    ax.set_title("Table 3 on the default world (mean ± std over seeds)")
    draw_recall(axes[1], recall)
    auc_values = [a["auc"] for a in aucs if a["auc"] is not None]
    axes[1].set_title(f"elimination AUC {np.mean(auc_values):.2f}" if auc_values else "derivation recall")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
