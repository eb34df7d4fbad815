"""Tables from runs: ``gather(run_dirs)`` reads one row per run from its ``metrics.json`` (training
runs, or papermill runs of notebooks that write one); ``summarise(rows)`` gives mean and std per
setting over seeds; ``markdown_table`` formats them;
``group_by_varying_parameters`` names each run's setting by the parameters that vary. The ablation itself is ``avs_lib.experiments.ablation``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from avs_lib.core.files import read_json

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
        metrics = read_json(metrics_path)
        row = {"run": run.name}
        params_path = run / "params.json"
        if params_path.exists():
            _flatten("param.", read_json(params_path), row)
        status_path = run / "status.json"
        if status_path.exists():
            row["status"] = read_json(status_path).get("status")
        _flatten("", {k: v for k, v in metrics.items() if k not in ("history", "config")}, row)
        if "config" in metrics:
            _flatten("config.", metrics["config"], row)
        rows.append(row)
    return pd.DataFrame(rows)


def group_by_varying_parameters(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with a "setting" column naming each run's values of the parameters that vary across
    runs (every ``param.*`` column but the seed and the run folder); "all" when none varies."""
    params = [c for c in table.columns if c.startswith("param.") and c not in ("param.seed", "param.run_dir")]
    varying = [c for c in params if table[c].astype(str).nunique() > 1]
    table = table.copy()
    table["setting"] = table[varying].astype(str).agg(", ".join, axis=1) if varying else "all"
    return table


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
