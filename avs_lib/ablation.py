"""DDESeg's Table 3 ablation on a world: baseline, +derivation, +enhancement, full and AVSAC over
several seeds, the two trivial baselines (``avs_lib.evaluation``) and the source-aware analyses
(``avs_lib.analysis``), written to a folder as markdown, CSV and a figure (``avs ablation``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from avs_lib.report import markdown_table, summarise

SETTINGS = {
    "baseline": dict(model="ddeseg", ablation="baseline"),
    "+derivation": dict(model="ddeseg", ablation="derivation"),
    "+enhancement": dict(model="ddeseg", ablation="enhancement"),
    "full": dict(model="ddeseg", ablation="full"),
    "avsac": dict(model="avsac", ablation=None),
}


def run_ablation(out: str | Path, base_config, seeds=(0, 1, 2), settings: list[str] | None = None,
                 figure: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every setting for every seed (skipping runs already finished), then write
    ``ablation.md``, ``ablation.csv``, ``analyses.json`` and the figure."""
    from dataclasses import replace

    from tqdm.auto import tqdm

    from avs_lib.analysis import derivation_recall, elimination_auc
    from avs_lib.evaluation import all_foreground
    from avs_lib.features import prepare
    from avs_lib.train import evaluate_model, load_trained, train

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
    foreground = all_foreground(test, base_config.convention, base_config.eval_batch_size)
    zero_rows, aucs = [], []
    for seed in seeds:
        model, config, _ = load_trained(run_dir_of("full", seed) / "best.pt", prepared)
        zero_rows.append(evaluate_model(model, test, torch.device("cpu"), replace(config, zero_audio=True)))
        result = elimination_auc(model, test)
        aucs.append({"seed": seed, "auc": result["auc"], "positives": result["positives"], "negatives": result["negatives"]})
    rows.append({"setting": "trivial: all foreground", "seed": -1, **{k: foreground[k] for k in ("J", "F", "JF")}})
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
