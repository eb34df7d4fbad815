"""Metrics on hand-computed cases in every convention; losses against their definitions."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.stats import entropy

from avs_lib.analysis.metrics import evaluate
from avs_lib.training.losses import avfs_loss, dice_loss, focal_loss, iou_loss

BIG = 20.0  # a logit whose sigmoid is 1 for all practical purposes


def _logits(binary_prediction):
    return torch.where(torch.as_tensor(binary_prediction).bool(), BIG, -BIG)


def test_per_frame_hand_computed():
    gt = torch.zeros(3, 2, 4)
    pred = torch.zeros(3, 2, 4)
    gt[0, 0, :2] = 1  # frame 0: gt 2 px, pred 3 px with 2 correct -> IoU 2/3, P 2/3, R 1
    pred[0, 0, :3] = 1
    pred[1, 1, 0] = 1  # frame 1: empty gt, non-empty pred -> 0
    # frame 2: empty gt, empty pred -> 1
    r = evaluate(_logits(pred), gt, convention="per_frame")
    f0 = 1.3 * (2 / 3) * 1 / (0.3 * (2 / 3) + 1)
    assert r["J"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert r["F"] == pytest.approx((f0 + 0 + 1) / 3)
    assert r["JF"] == pytest.approx((r["J"] + r["F"]) / 2)


def test_avsbench_empty_ground_truth_counts_background():
    gt = torch.zeros(1, 2, 4)
    pred = torch.zeros(1, 2, 4)
    pred[0, 0, :3] = 1  # 3 of 8 pixels wrongly foreground: AVSBench counts 5/8
    r = evaluate(_logits(pred), gt, convention="avsbench", batch_size=1)
    assert r["J"] == pytest.approx(5 / 8, abs=1e-6)
    assert r["F"] == 0.0  # no frame with a foreground in the batch


def test_avsbench_f_depends_on_batch_size_and_per_frame_does_not():
    # two frames whose F curves peak at different thresholds
    gt = torch.zeros(2, 1, 4)
    gt[:, 0, :2] = 1
    probabilities = torch.tensor([[[0.9, 0.9, 0.6, 0.6]], [[0.5, 0.5, 0.2, 0.2]]])
    logits = torch.logit(probabilities)
    one = evaluate(logits, gt, convention="avsbench", batch_size=1)
    two = evaluate(logits, gt, convention="avsbench", batch_size=2)
    assert one["F"] > two["F"]  # max of the mean curve <= mean of the per-frame maxima
    # by hand: frame 0 reaches F=1 for thresholds in (0.6, 0.9], frame 1 for (0.2, 0.5]; there frame 0
    # predicts all 4 pixels (P=1/2, R=1, F=1.3*0.5/1.15), so the batch-of-2 curve peaks at (1 + that) / 2
    assert one["F"] == pytest.approx(1.0, abs=1e-6)
    assert two["F"] == pytest.approx((1 + 1.3 * 0.5 / 1.15) / 2, abs=1e-6)
    assert evaluate(logits, gt, batch_size=1)["F"] == evaluate(logits, gt, batch_size=2)["F"]


def test_dataset_convention_sums_over_the_set():
    gt = torch.zeros(2, 1, 4)
    pred = torch.zeros(2, 1, 4)
    gt[0, 0, :2] = 1
    pred[0, 0, :2] = 1  # frame 0 perfect (2 px)
    gt[1, 0, :] = 1
    pred[1, 0, :1] = 1  # frame 1: 1 of 4
    r = evaluate(_logits(pred), gt, convention="dataset")
    assert r["J"] == pytest.approx(3 / 6)  # (2 + 1) / (2 + 4)
    assert evaluate(_logits(pred), gt)["J"] == pytest.approx((1 + 0.25) / 2)


def test_semantic_hand_computed():
    gt = torch.tensor([[[0, 1, 1, 2]]])
    pred = torch.tensor([[[0, 1, 2, 2]]])
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 3, 1, 2).float() * 10
    # class 0: 1/1; class 1: 1/2; class 2: 1/2
    for convention in ("per_frame", "avsbench", "dataset"):
        r = evaluate(logits, gt, convention=convention)
        assert r["mIoU"] == pytest.approx((1 + 0.5 + 0.5) / 3), convention
    ignore = gt.clone()
    ignore[0, 0, 2] = 255  # the only error pixel unlabelled -> perfect
    assert evaluate(logits, ignore)["mIoU"] == pytest.approx(1.0)


def test_empty_predictions_and_shape_errors():
    gt = torch.ones(2, 3, 3)
    r = evaluate(torch.full((2, 3, 3), -BIG), gt)
    assert r["J"] == 0 and r["F"] == 0
    with pytest.raises(ValueError, match="shape"):
        evaluate(torch.zeros(2, 3, 3), torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="convention"):
        evaluate(torch.zeros(2, 3, 3), gt, convention="mine")


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(0, 10_000))
def test_per_frame_metrics_are_in_range_and_batch_free(batch_size, seed):
    g = torch.Generator().manual_seed(seed)
    logits, gt = torch.randn(7, 5, 5, generator=g), (torch.rand(7, 5, 5, generator=g) > 0.6).float()
    r = evaluate(logits, gt, batch_size=batch_size)
    assert 0 <= r["J"] <= 1 and 0 <= r["F"] <= 1
    assert r == evaluate(logits, gt, batch_size=1)


def test_losses_against_definitions():
    logits = torch.tensor([[[0.0, 2.0], [-1.0, 3.0]]])
    gt = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    p = torch.sigmoid(logits).numpy().ravel()
    g = gt.numpy().ravel()
    assert dice_loss(logits, gt).item() == pytest.approx(1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1), rel=1e-5)
    inter = (p * g).sum()
    assert iou_loss(logits, gt).item() == pytest.approx(1 - (inter + 1) / (p.sum() + g.sum() - inter + 1), rel=1e-5)
    pt = np.where(g == 1, p, 1 - p)
    at = np.where(g == 1, 0.25, 0.75)
    assert focal_loss(logits, gt).item() == pytest.approx(np.mean(-at * (1 - pt) ** 2 * np.log(pt)), rel=1e-5)
    valid = torch.tensor([True, False])
    two = torch.cat([logits, -logits]), torch.cat([gt, gt])
    assert dice_loss(*two, valid=valid).item() == pytest.approx(dice_loss(logits, gt).item())


def test_avfs_is_the_kl_divergence():
    torch.manual_seed(0)
    audio, visual = torch.randn(3, 4), torch.randn(3, 5, 4)
    expected = []
    for t in range(3):
        pa = np.exp(np.tile(audio[t].numpy(), 5))
        pv = np.exp(visual[t].numpy().ravel())
        expected.append(entropy(pa / pa.sum(), pv / pv.sum()))
    assert avfs_loss(audio, visual).item() == pytest.approx(np.mean(expected), rel=1e-5)
    assert avfs_loss(audio, audio[:, None].repeat(1, 5, 1)).item() == pytest.approx(0.0, abs=1e-6)
