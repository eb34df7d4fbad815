"""J (IoU), F (F-beta, beta^2 = 0.3), J&F and mIoU in three named conventions.

Published AVS numbers are computed in different ways, and the differences move the numbers. Every
result the workbench prints says which convention it used.

``"per_frame"`` (the default; does not depend on the batch size)
    Binary: J is the mean over frames of the IoU of the mask thresholded at sigmoid > 0.5. A frame
    whose ground truth is empty scores 1 if the prediction is empty too and 0 otherwise. F is the
    mean over frames of F-beta at the same threshold, with the same rule for empty ground truth.
    Semantic: per frame, IoU and F-beta of each class present in the ground truth or the prediction
    (argmax), background included, averaged over those classes, then over frames; mIoU = J.

``"avsbench"`` (AVSBench's test code)
    Binary: frames are taken in batches of ``batch_size``. J: per-frame IoU at sigmoid > 0.5; a frame
    with an empty ground truth counts the pixels both call background as the intersection and all
    pixels as the union; the batch mean is averaged over batches. F: for each frame with a
    non-empty ground truth, precision and recall at 255 thresholds linspace(0, 1 - 1e-10); F-beta
    per threshold (NaN -> 0), averaged over the batch's frames; the maximum over thresholds is the
    batch's F (0 if no frame of the batch has a foreground); averaged over batches. F therefore
    depends on ``batch_size``.
    Semantic (AVSS): per frame, class histograms of argmax prediction (only where the ground truth
    is labelled) and ground truth; per-class IoU and F-beta are summed over frames and divided by
    the number of frames where the class has a non-empty union; J = mIoU and F are the means over
    classes seen at least once.

``"dataset"`` (CAVP / DDESeg's evaluation)
    Intersections, unions, true positives, predicted and ground-truth pixel counts are summed per
    class over the whole set; IoU_c = I_c / U_c, F_c from the summed precision and recall. Binary:
    J and F are those of the foreground class. Semantic: mIoU and F are the means over classes with
    a non-empty union (background included).
"""
from __future__ import annotations

import numpy as np
import torch

from avs_lib.analysis.stats import bootstrap_ci

CONVENTIONS = ("per_frame", "avsbench", "dataset")
BETA2 = 0.3
_EPS = 1e-7


def _f_beta(precision, recall):
    f = (1 + BETA2) * precision * recall / (BETA2 * precision + recall)
    return torch.nan_to_num(f, nan=0.0) if isinstance(f, torch.Tensor) else np.nan_to_num(f)


def _areas(logits: torch.Tensor, masks: torch.Tensor):
    masks = masks.float()
    probabilities = torch.sigmoid(logits.float())
    predictions = (probabilities > 0.5).float()
    inter = (predictions * masks).flatten(1).sum(1)
    pred_area, gt_area = predictions.flatten(1).sum(1), masks.flatten(1).sum(1)
    return masks, probabilities, predictions, inter, pred_area, gt_area


def per_frame_scores(logits: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [N], F [N]) of binary logits [N, H, W] in the per-frame convention (see the module docstring)."""
    _, _, _, inter, pred_area, gt_area = _areas(logits, masks)
    empty = gt_area == 0
    union = pred_area + gt_area - inter
    iou = torch.where(empty, (pred_area == 0).float(), inter / union.clamp_min(1))
    precision, recall = inter / pred_area.clamp_min(1), inter / gt_area.clamp_min(1)
    f = torch.where(empty, (pred_area == 0).float(), _f_beta(precision, recall))
    return iou, f


def jf_with_interval(logits: torch.Tensor, masks: torch.Tensor, clips: list[str], n: int = 2000, seed: int = 0) -> dict:
    """Per-frame J&F of binary logits with its 95 % interval resampling whole clips (frames of a
    clip are not independent): {"JF", "ci95", "frames", "clips"}."""
    j, f = per_frame_scores(logits, masks)
    jf = ((j + f) / 2).numpy().astype(np.float64)
    return {"JF": float(jf.mean()), "ci95": bootstrap_ci(jf, list(clips), n=n, seed=seed), "frames": len(jf),
            "clips": len(set(clips))}


def _binary(logits: torch.Tensor, masks: torch.Tensor, convention: str, batch_size: int) -> dict:
    if convention == "per_frame":
        iou, f = per_frame_scores(logits, masks)
        return {"J": iou.mean().item(), "F": f.mean().item()}
    masks, probabilities, predictions, inter, pred_area, gt_area = _areas(logits, masks)
    union = pred_area + gt_area - inter
    empty = gt_area == 0
    if convention == "dataset":
        i, p, g = inter.sum(), pred_area.sum(), gt_area.sum()
        u = p + g - i
        return {"J": (i / u).item() if u > 0 else 1.0, "F": _f_beta(i / p.clamp_min(1), i / g.clamp_min(1)).item()}
    # AVSBench
    n_pixels = masks[0].numel()
    background_inter = ((1 - predictions) * (1 - masks)).flatten(1).sum(1)
    iou = torch.where(empty, background_inter, inter) / (torch.where(empty, torch.full_like(union, n_pixels), union) + _EPS)
    thresholds = torch.linspace(0, 1 - 1e-10, 255)
    j_batches, f_batches = [], []
    for start in range(0, len(masks), batch_size):
        stop = start + batch_size
        j_batches.append(iou[start:stop].mean().item())
        curve_sum, frames = torch.zeros(255), 0
        for prob, gt in zip(probabilities[start:stop], masks[start:stop]):
            if gt.mean() == 0:
                continue
            above = (prob.flatten()[None, :] >= thresholds[:, None]).float()  # [255, HW]
            tp = (above * gt.flatten()[None, :]).sum(1)
            precision, recall = tp / (above.sum(1) + 1e-20), tp / (gt.sum() + 1e-20)
            curve_sum += _f_beta(precision, recall)
            frames += 1
        f_batches.append((curve_sum / frames).max().item() if frames else 0.0)
    return {"J": float(np.mean(j_batches)), "F": float(np.mean(f_batches))}


def _semantic(logits: torch.Tensor, masks: torch.Tensor, convention: str, ignore_index: int) -> dict:
    n_classes = logits.shape[1]
    predictions = logits.argmax(1)
    labelled = masks != ignore_index
    per_frame = []
    inter_total, pred_total, gt_total = (torch.zeros(n_classes, dtype=torch.float64) for _ in range(3))
    iou_sum, f_sum, count = (torch.zeros(n_classes, dtype=torch.float64) for _ in range(3))
    for pred, gt, keep in zip(predictions, masks, labelled):
        pred, gt = pred[keep], gt[keep]
        p = torch.bincount(pred, minlength=n_classes).double()
        g = torch.bincount(gt, minlength=n_classes).double()
        i = torch.bincount(gt[pred == gt], minlength=n_classes).double()
        u = p + g - i
        present = u > 0
        iou = torch.where(present, i / u.clamp_min(1), torch.zeros_like(u))
        f = _f_beta(i / p.clamp_min(1), i / g.clamp_min(1))
        inter_total += i
        pred_total += p
        gt_total += g
        iou_sum += iou
        f_sum += f
        count += present.double()
        per_frame.append((iou[present].mean().item(), f[present].mean().item()))
    if convention == "per_frame":
        j = float(np.mean([a for a, _ in per_frame]))
        return {"J": j, "F": float(np.mean([b for _, b in per_frame])), "mIoU": j}
    if convention == "avsbench":
        seen = count > 0
        j = (iou_sum[seen] / count[seen]).mean().item()
        return {"J": j, "F": (f_sum[seen] / count[seen]).mean().item(), "mIoU": j}
    union = pred_total + gt_total - inter_total
    seen = union > 0
    j = (inter_total[seen] / union[seen]).mean().item()
    f = _f_beta(inter_total / pred_total.clamp_min(1), inter_total / gt_total.clamp_min(1))[seen].mean().item()
    return {"J": j, "F": f, "mIoU": j}


def evaluate(logits: torch.Tensor, masks: torch.Tensor, convention: str = "per_frame",
             batch_size: int = 5, ignore_index: int = 255) -> dict:
    """J, F, JF (and mIoU for semantic logits) of logits [N, H, W] (binary) or [N, C, H, W].

    masks: [N, H, W], {0, 1} for binary logits, class indices for semantic ones (``ignore_index``
    marks unlabelled pixels). ``batch_size`` matters only for ``convention="avsbench"``.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
    logits, masks = logits.detach().cpu(), masks.detach().cpu()
    if logits.dim() == 3:
        if logits.shape != masks.shape:
            raise ValueError(f"binary logits {tuple(logits.shape)} and masks {tuple(masks.shape)} differ in shape")
        result = _binary(logits, masks, convention, batch_size)
    elif logits.dim() == 4:
        if logits.shape[0] != masks.shape[0] or logits.shape[2:] != masks.shape[1:]:
            raise ValueError(f"semantic logits {tuple(logits.shape)} do not match masks {tuple(masks.shape)}")
        result = _semantic(logits, masks.long(), convention, ignore_index)
    else:
        raise ValueError(f"logits must be [N, H, W] or [N, C, H, W], got {tuple(logits.shape)}")
    result["JF"] = (result["J"] + result["F"]) / 2
    result["convention"] = convention
    result["frames"] = int(logits.shape[0])
    return result
