"""Validation J&F against training frames seen for this folder's runs beside the stride-2 runs they
are compared with (each run's metrics.json history, ``avs_lib.viz.plots.compared_learning_curves``),
with issue 18's two targets, and ``late_trends.json``: each run's late gain read both ways
(``late_gain``, ``late_trend``). python figures/decoder_pixel/plot_learning_curves.py (from the
repository root)."""
import json
from pathlib import Path

from avs_lib.training.loop import late_gain, late_trend
from avs_lib.viz.plots import compared_learning_curves, save

RUNS = {  # label: metrics.json
    "ceiling, stride 2, deeper refinement": "figures/decoder_refine/metrics.json",
    "ceiling, stride 1 (refinement as first built)": "figures/decoder_pixel/ceiling/metrics.json",
    "ceiling, stride 1, outline_weight=2": "figures/decoder_pixel/ceiling_outline/metrics.json",
    "ceiling, stride 1, outline_weight=2, ten epochs": "figures/decoder_pixel/ceiling_outline_10_epochs/metrics.json",
    "model, stride 2, ten epochs": "figures/every_lever_10_epochs/metrics.json",
    "model, stride 1, ten epochs": "figures/decoder_pixel/model/metrics.json",
    "model, stride 1, outline_weight=2, ten epochs": "figures/decoder_pixel/model_outline_10_epochs/metrics.json",
    "model, stride 1, outline_weight=2, ten epochs, seed 1":
        "figures/decoder_pixel/model_outline_10_epochs_seed1/metrics.json",
    "model, stride 1, outline_weight=2, fourteen epochs": "figures/decoder_pixel/model_outline_14_epochs/metrics.json",
    "model, stride 1, outline_weight=2, twenty epochs": "figures/decoder_pixel/model_outline_20_epochs/metrics.json",
    "model, stride 1, outline_weight=2, thirty epochs": "figures/decoder_pixel/model_outline_30_epochs/metrics.json",
}
histories = {label: json.loads(Path(path).read_text())["history"] for label, path in RUNS.items() if Path(path).exists()}
fig = compared_learning_curves(histories)
ax = fig.axes[0]
for y, name in ((0.85, "ceiling target"), (0.75, "model target")):
    ax.axhline(y, color="grey", lw=0.8, ls=":")
    ax.text(0, y + 0.005, name, color="grey", fontsize=7)
ax.set_ylim(0.5, 0.9)
save(fig, "figures/decoder_pixel/learning_curves.png")
trends = {label: {"metrics": RUNS[label], "late_gain": late_gain(history), "late_trend": late_trend(history)}
          for label, history in histories.items()}
Path("figures/decoder_pixel/late_trends.json").write_text(json.dumps(trends, indent=1) + "\n")
