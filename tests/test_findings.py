"""Findings: the sentence follows the numbers (which side of the reference the interval lies on)."""
from __future__ import annotations

from avs_lib.analysis.findings import (against_reference, elimination_finding, probe_finding, recall_finding,
                                       separation_finding, spread_finding, sweep_finding)


def test_the_verdict_follows_the_interval():
    def verdict(ci):
        return against_reference("x", 0.6, ci, 0.5, "ABOVE", "BELOW", "INSIDE")

    assert verdict([0.55, 0.65]).endswith("ABOVE")
    assert verdict([0.35, 0.45]).endswith("BELOW")
    assert verdict([0.45, 0.65]).endswith("INSIDE")
    assert verdict(None).endswith("INSIDE")
    assert "0.600 [0.450, 0.650]" in verdict([0.45, 0.65])
    assert "not measured" in against_reference("x", None, None, 0.5, "a", "b", "c")


def test_elimination_sentence_reads_the_stage_interval():
    assert "do not choose" in elimination_finding("stage 2", {"auc": 0.52, "ci95": [0.47, 0.58]})
    assert "choose." in elimination_finding("stage 2", {"auc": 0.7, "ci95": [0.65, 0.75]})
    assert "LOWER" in elimination_finding("stage 3", {"auc": 0.3, "ci95": [0.25, 0.35]})
    # an order among scores that weight a frame's tokens alike ranks them without choosing
    ranked, flat, wide = {"auc": 0.59, "ci95": [0.57, 0.62]}, {"log_std": 2e-7}, {"log_std": 0.4}
    assert "chooses nothing" in elimination_finding("stage 2", ranked, flat)
    assert "the scores choose." not in elimination_finding("stage 2", ranked, flat)
    assert "the scores choose." in elimination_finding("stage 2", ranked, wide)
    lower = elimination_finding("stage 4", {"auc": 0.45, "ci95": [0.43, 0.47]}, {"log_std": 0.009})
    assert "LOWER" in lower and "chooses nothing" in lower
    assert "do not choose" in elimination_finding("stage 3", {"auc": 0.5, "ci95": [0.5, 0.5]}, flat)


def test_spread_separation_sweep_recall_and_probe_sentences():
    flat = {"stage 2": {"log_std": 0.01, "std": 0.001, "mean": 0.5}, "stage 3": {"log_std": 0.05, "std": 0.01, "mean": 0.5}}
    assert "one gate per frame" in spread_finding(flat) and "stage 3" in spread_finding(flat)
    assert "differ" in spread_finding({"stage 2": {"log_std": 0.8, "std": 0.2, "mean": 0.4}})
    near = {"enhanced": {"within_frame": 0.1, "between_frames": 1.0, "ratio": 0.1}}
    far = {"enhanced": {"within_frame": 2.0, "between_frames": 1.0, "ratio": 2.0}}
    assert "variations of one audio feature" in separation_finding(near)
    assert "derivation separates" in separation_finding(far)
    assert "does not depend" in sweep_finding("AUC", {0.25: 0.61, 1.0: 0.62, 4.0: None})
    moved = sweep_finding("AUC", {0.25: 0.5, 1.0: 0.7})
    assert "0.500 (at 0.25)" in moved and "0.700 (at 1.0)" in moved
    assert "loses part" in recall_finding(5, 0.6, 0.1, 0.9) and "keeps" in recall_finding(5, 0.88, 0.1, 0.9)
    assert recall_finding(5, 0.6, 0.1, None).endswith("(chance 10%).")
    assert "barely" in probe_finding({"baseline": 0.05, "full": 0.4}, 0.04)
    assert "well above" in probe_finding({"baseline": 0.3, "full": 0.4}, 0.04)
