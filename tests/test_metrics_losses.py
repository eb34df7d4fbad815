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


def _near_an_other_value(mask: np.ndarray, band: int) -> np.ndarray:
    """Brute force: does any pixel within ``band`` (square neighbourhood, inside the frame) differ?"""
    h, w = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    for y in range(h):
        for x in range(w):
            window = mask[max(0, y - band):y + band + 1, max(0, x - band):x + band + 1]
            out[y, x] = (window != mask[y, x]).any()
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 3))
def test_the_outline_band_is_every_pixel_near_one_of_the_other_value(seed, band):
    from avs_lib.training.losses import outline_band

    masks = np.random.default_rng(seed).random((2, 9, 11)) < 0.3
    got = outline_band(torch.from_numpy(masks), band).numpy()
    for mask, frame in zip(masks, got):
        assert np.array_equal(frame, _near_an_other_value(mask, band))


def test_the_outline_loss_reads_the_band_alone():
    from avs_lib.training.losses import outline_loss

    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[:2, 4:12, 4:12] = True  # frames 0 and 1: a square; frame 2: no outline at all
    logits = torch.where(masks, 4.0, -4.0)
    base = outline_loss(logits, masks)
    far = logits.clone()
    far[:, 7:9, 7:9] = -4.0  # the square's centre, 3 px from its outline: outside the 2 px band
    far[:, 0, 0] = 4.0  # a corner of the frame, far from any outline
    assert torch.allclose(outline_loss(far, masks), base)
    near = logits.clone()
    near[0, 4, 4:12] = -4.0  # the square's top row, on the outline
    assert outline_loss(near, masks) > base
    # one frame's band mean: BCE of the wrong row (8 px at 4.0 wrong) among the band's pixels, averaged
    # with frame 1 (right everywhere) and frame 2 (no outline, 0) over the three frames
    band_pixels = (8 + 4) ** 2 - 4 ** 2  # pixels within 2 px of the 8x8 square's outline
    wrong, right = torch.nn.functional.softplus(torch.tensor(4.0)), torch.nn.functional.softplus(torch.tensor(-4.0))
    frame0 = (8 * wrong + (band_pixels - 8) * right) / band_pixels
    assert torch.allclose(outline_loss(near, masks), (frame0 + right + 0) / 3)
    assert torch.allclose(outline_loss(near, masks, valid=torch.tensor([False, True, True])), (right + 0) / 2)
    with pytest.raises(ValueError, match="binary masks"):
        outline_loss(torch.zeros(3, 2, 16, 16), masks)


def test_outline_weight_adds_the_outline_loss_to_training_and_is_checked_where_it_is_read():
    # DDESeg and AVSAC, against their own losses; older runs keep their identity; bad values refused
    from types import SimpleNamespace

    from avs_lib.core.config import load_config
    from avs_lib.core.errors import ConfigError
    from avs_lib.training.loop import _loss
    from avs_lib.training.losses import ddeseg_loss, outline_loss
    from avs_lib.training.runs import config_differences

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 12, 12, generator=g) < 0.4
    out = SimpleNamespace(logits=torch.randn(2, 12, 12, generator=g))
    plain = load_config("configs/tiny_world.yaml")
    weighted = load_config("configs/tiny_world.yaml", ["outline_weight=3"])
    assert torch.allclose(_loss(plain, out, masks, None), ddeseg_loss(out.logits, masks))
    assert torch.allclose(_loss(weighted, out, masks, None),
                          ddeseg_loss(out.logits, masks) + 3 * outline_loss(out.logits, masks))
    # AVSAC: added to its Eq. 5 the same way
    avsac_plain, avsac_weighted = (load_config("configs/tiny_world.yaml", ["model=avsac", *extra])
                                   for extra in ([], ["outline_weight=3"]))
    # the file's DDESeg-only switch (fusion_query) is set aside for AVSAC; given on the command line it is refused
    assert "fusion_query" in plain.switches and "fusion_query" not in avsac_plain.switches
    with pytest.raises(ConfigError, match="switches.fusion_query"):
        load_config("configs/tiny_world.yaml", ["model=avsac", "switches.fusion_query=visual"])
    avsac_out = SimpleNamespace(logits=out.logits, audio=torch.randn(2, 8, generator=g), agv=torch.randn(2, 4, 8, generator=g))
    assert torch.allclose(_loss(avsac_weighted, avsac_out, masks, None),
                          _loss(avsac_plain, avsac_out, masks, None) + 3 * outline_loss(out.logits, masks))
    # a run recorded before the key is the same run as today's default (0: off), not another one
    older = {k: v for k, v in vars(plain).items() if k != "outline_weight"}
    assert config_differences(older, plain) == {}
    assert set(config_differences(older, weighted)) == {"outline_weight"}
    with pytest.raises(ConfigError, match="must not be negative"):
        load_config("configs/tiny_world.yaml", ["outline_weight=-1"])
    with pytest.raises(ConfigError, match="binary masks"):
        load_config("configs/tiny_world.yaml", ["outline_weight=1", "layout=avss"])
