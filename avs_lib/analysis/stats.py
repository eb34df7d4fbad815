"""The one place for intervals: the percentile bootstrap over clusters (clips) and the Student-t interval over seeds.

* ``cluster_bootstrap``: the 95 % percentile interval of a ratio of sums (a mean, an AUC) when whole
  clusters are resampled with replacement; frames of one clip share a recording, so clips, not
  frames, are the independent units. ``bootstrap_ci`` (a mean over frames) and the within-frame AUC
  (``avs_lib.analysis.inspect.within_frame_auc``: wins over pairs) both use it.
* ``t_interval``: the Student-t interval of a mean over a few seeds (the ablation's tables).
* ``unpaired_difference``: the difference of two runs' means when only their intervals are left (no
  per-frame scores to pair), each interval read as a normal one.
"""
from __future__ import annotations

import numpy as np


def cluster_bootstrap(numerators, denominators, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of sum(numerators) / sum(denominators) over ``n`` resamples of the
    clusters (one entry of each per cluster, in a fixed order: the draws depend on it)."""
    numerators, denominators = np.asarray(numerators), np.asarray(denominators)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(numerators), size=(n, len(numerators)))
    ratios = numerators[draws].sum(1) / denominators[draws].sum(1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_ci(values: np.ndarray, groups: list[str], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the mean of ``values`` resampling whole groups (clips)."""
    names = sorted(set(groups))
    index = {g: i for i, g in enumerate(names)}
    g = np.array([index[x] for x in groups])
    sums = np.bincount(g, weights=values, minlength=len(names))
    counts = np.bincount(g, minlength=len(names))
    return cluster_bootstrap(sums, counts, n, seed)


def t_interval(values) -> tuple[float, float, float, float]:
    """(mean, std, low, high): the 95 % Student-t interval of the mean of ``values`` (std ddof=1)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan"), float("nan")
    std = float(values.std(ddof=1))
    half = float(stats.t.ppf(0.975, len(values) - 1)) * std / np.sqrt(len(values))
    return mean, std, mean - half, mean + half


def unpaired_difference(first: tuple[float, tuple[float, float]], second: tuple[float, tuple[float, float]]
                        ) -> tuple[float, float, float]:
    """(delta, low, high): second's mean minus first's, each given as (mean, (low, high)) with its 95 %
    interval, and the 95 % interval of the difference with the two taken as independent and each
    interval as mean +- 1.96 sd. Wider than a paired interval on the same frames, which is to be
    preferred (``avs compare``) where both runs' per-frame scores exist."""
    (mean_a, (low_a, high_a)), (mean_b, (low_b, high_b)) = first, second
    sd = float(np.hypot((high_a - low_a) / (2 * 1.96), (high_b - low_b) / (2 * 1.96)))
    delta = mean_b - mean_a
    return delta, delta - 1.96 * sd, delta + 1.96 * sd
