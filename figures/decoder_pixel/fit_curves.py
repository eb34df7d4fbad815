"""How much of a run's late gain is trend and how much is reading noise: for each run given, an
exponential approach J(x) = a - b exp(-x / c) (x in epochs of frames seen) fitted to its validation
readings from the first epoch on, with the residual scatter of the readings around it and the
fitted curve's rise over the last 20 % of the frames seen; beside it a straight line through the
last 20 % of the readings alone and its rise, and the two readings of ``avs_lib.training.loop``
(``late_gain``, ``late_trend``). A power law J(x) = a - b x^-c is fitted beside the exponential,
and both are read at each of AT epochs (default 20; a comma-separated list reads several) to say
what each foretells. Writes ``curve_fits.json``
into this folder. A fit summarises the readings; it is not one of issue 18's measures.

python figures/decoder_pixel/fit_curves.py [--at AT[,AT...]] LABEL=METRICS_JSON ...   (from the repository root)"""
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import curve_fit

from avs_lib.training.loop import late_gain, late_trend, learning_curve


def approach(x, a, b, c):
    return a - b * np.exp(-x / c)


def power_law(x, a, b, c):
    return a - b * x ** -c


def fit(shape, names: tuple[str, ...], p0, x, y, end: float, cut: float, at: list[float]) -> dict:
    """``shape`` fitted to the readings (x, y): its parameters under ``names``, the readings' residual
    scatter around it, its rise from ``cut`` to ``end`` and its value at each of ``at`` epochs."""
    params, _ = curve_fit(shape, x, y, p0=p0, maxfev=20_000)
    residual = y - shape(x, *params)
    return {**dict(zip(names, params)), "residual_sd": float(residual.std(ddof=3)),
            "rise_last_20": float(shape(end, *params) - shape(cut, *params)),
            **{f"at_{a:g}_epochs": float(shape(a, *params)) for a in at}}


arguments = sys.argv[1:]
at = [20.0]
if arguments[:1] == ["--at"]:
    at, arguments = [float(a) for a in arguments[1].split(",")], arguments[2:]
fits = {}
for argument in arguments:
    label, path = argument.split("=", 1)
    history = json.loads(Path(path).read_text())["history"]
    points = learning_curve(history)
    epoch_frames = history[0]["frames_seen"]  # one epoch's frames
    x = np.array([p["frames_seen"] for p in points]) / epoch_frames
    y = np.array([p["JF"] for p in points])
    end, cut = x[-1], 0.8 * x[-1]
    used = x >= 1.0  # the first half epoch rises too steeply for one exponential
    late = x > cut
    slope = np.polyfit(x[late], y[late], 1)[0]
    fits[label] = {"metrics": path, "epochs": float(end), "readings": len(points),
                   "approach": fit(approach, ("a", "b", "c_epochs"), (y.max(), y.max() - y.min(), end / 3),
                                   x[used], y[used], end, cut, at),
                   "power_law": fit(power_law, ("a", "b", "c"), (y.max() + 0.05, 0.3, 0.7), x[used], y[used], end, cut, at),
                   "line_through_last_20": {"slope_per_epoch": float(slope), "rise": float(slope * (end - cut))},
                   "late_gain": late_gain(history), "late_trend": late_trend(history)}
    f = fits[label]
    print(f"{label}: level {f['approach']['a']:.3f}, residual sd {f['approach']['residual_sd']:.4f}, fitted rise "
          f"{f['approach']['rise_last_20']:+.4f}, line {f['line_through_last_20']['rise']:+.4f}, "
          f"late_gain {f['late_gain']:+.4f}, late_trend {f['late_trend']['gain']:+.4f}; power law residual sd "
          f"{f['power_law']['residual_sd']:.4f}; " + "; ".join(
              f"at {a:g} epochs exponential {f['approach'][f'at_{a:g}_epochs']:.3f}, power law "
              f"{f['power_law'][f'at_{a:g}_epochs']:.3f}" for a in at))
Path("figures/decoder_pixel/curve_fits.json").write_text(json.dumps(fits, indent=1) + "\n")
