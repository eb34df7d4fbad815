"""Segmentation losses: DDESeg's Eq. 18 (5 Dice + 5 BCE + 2 IoU), Focal, Dice, and AVSAC's AVFS (Eq. 4).

Binary losses take logits [B, H, W] and masks [B, H, W] in {0, 1}; semantic losses take logits
[B, C, H, W] and class-index masks [B, H, W]. ``valid`` [B] (optional) drops frames without a ground
truth (AVSBench S4 trains on frame 1 only); every loss is a mean over the valid frames.

Choices where the papers are silent (also in the README's notes):

* Dice and IoU are "soft" (computed on probabilities), per frame, with smoothing 1.
* For semantic masks, Eq. 18's BCE becomes cross-entropy (the paper gives Eq. 18 for binary masks only) and Dice/IoU are averaged over
  the classes present in the frame's ground truth or prediction mass.

Outside the papers: ``outline_loss`` (``TrainConfig.outline_weight``, binary masks), a BCE over the
pixels near the true outline, added to DDESeg's Eq. 18 or AVSAC's Eq. 5; the auxiliary losses at the
end (capacity check, attention supervision).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from avs_lib.analysis.truth import UNKNOWN_OBJECT
from avs_lib.models.mit import FUSION_QUERIES


def _frame_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if valid is None:
        return values.mean()
    valid = valid.to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp_min(1)


def dice_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None, smooth: float = 1.0) -> torch.Tensor:
    """1 - (2|P.G| + s) / (|P| + |G| + s) per frame, P = sigmoid(logits)."""
    p, g = torch.sigmoid(logits).flatten(1), masks.float().flatten(1)
    dice = (2 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)
    return _frame_mean(1 - dice, valid)


def iou_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None, smooth: float = 1.0) -> torch.Tensor:
    """1 - (|P.G| + s) / (|P| + |G| - |P.G| + s) per frame (soft IoU)."""
    p, g = torch.sigmoid(logits).flatten(1), masks.float().flatten(1)
    inter = (p * g).sum(1)
    return _frame_mean(1 - (inter + smooth) / (p.sum(1) + g.sum(1) - inter + smooth), valid)


def bce_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    per_frame = F.binary_cross_entropy_with_logits(logits, masks.float(), reduction="none").flatten(1).mean(1)
    return _frame_mean(per_frame, valid)


OUTLINE_BAND = 2  # pixels each side of the true outline that outline_loss weighs


def outline_band(masks: torch.Tensor, band: int = OUTLINE_BAND) -> torch.Tensor:
    """Boolean [B, H, W]: the pixels of binary ``masks`` [B, H, W] within ``band`` pixels (a square
    neighbourhood, so the diagonal (band, band) counts too; ``outline_distance``'s bands are
    Euclidean) of a pixel of the other value, i.e. where a (2 band + 1)-square dilation and erosion
    of the mask disagree. The frame's border is not an outline."""
    m = masks.float()[:, None]  # [B, 1, H, W]
    side = 2 * band + 1
    dilated = F.max_pool2d(m, side, stride=1, padding=band)
    eroded = -F.max_pool2d(-m, side, stride=1, padding=band)
    return (dilated != eroded)[:, 0]


def outline_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None,
                 band: int = OUTLINE_BAND) -> torch.Tensor:
    """OUTSIDE THE PAPER (``TrainConfig.outline_weight``): BCE averaged over each frame's
    ``outline_band`` of the true mask, then over frames (a frame without an outline adds 0). Eq. 18's
    terms average over the whole frame, where the outline is a thin share of the pixels; this term
    weighs where the edges are placed. Binary masks only: logits [B, H, W]."""
    if logits.dim() != 3:
        raise ValueError(f"outline_loss needs binary masks' logits [B, H, W], got {tuple(logits.shape)}: "
                         "outline_weight is for the s4 and ms3 layouts")
    near = outline_band(masks, band).float()  # [B, H, W]
    bce = F.binary_cross_entropy_with_logits(logits, masks.float(), reduction="none")
    per_frame = (bce * near).flatten(1).sum(1) / near.flatten(1).sum(1).clamp_min(1)
    return _frame_mean(per_frame, valid)


def focal_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None,
               alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Lin et al.'s binary focal loss, mean over pixels, then over frames."""
    g = masks.float()
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, g, reduction="none")
    p_t = p * g + (1 - p) * (1 - g)
    alpha_t = alpha * g + (1 - alpha) * (1 - g)
    return _frame_mean((alpha_t * (1 - p_t) ** gamma * ce).flatten(1).mean(1), valid)


def _semantic_overlap(logits: torch.Tensor, masks: torch.Tensor, smooth: float, kind: str) -> torch.Tensor:
    probs = torch.softmax(logits, dim=1).flatten(2)  # [B, C, HW]
    onehot = F.one_hot(masks.long(), logits.shape[1]).permute(0, 3, 1, 2).flatten(2).float()
    inter, ps, gs = (probs * onehot).sum(2), probs.sum(2), onehot.sum(2)  # [B, C]
    score = (2 * inter + smooth) / (ps + gs + smooth) if kind == "dice" else (inter + smooth) / (ps + gs - inter + smooth)
    present = (gs > 0) | (ps > 0.5)
    return ((1 - score) * present).sum(1) / present.sum(1).clamp_min(1)  # [B]


def ddeseg_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None,
                dice_weight: float = 5.0, bce_weight: float = 5.0, iou_weight: float = 2.0) -> torch.Tensor:
    """Eq. 18: lambda_dice L_dice + lambda_bce L_bce + lambda_iou L_iou with weights 5, 5, 2."""
    if logits.dim() == 3:
        return (dice_weight * dice_loss(logits, masks, valid) + bce_weight * bce_loss(logits, masks, valid)
                + iou_weight * iou_loss(logits, masks, valid))
    ce = F.cross_entropy(logits, masks.long(), reduction="none").flatten(1).mean(1)
    return (dice_weight * _frame_mean(_semantic_overlap(logits, masks, 1.0, "dice"), valid)
            + bce_weight * _frame_mean(ce, valid)
            + iou_weight * _frame_mean(_semantic_overlap(logits, masks, 1.0, "iou"), valid))


def avfs_loss(audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """AVSAC Eq. 4: KL(P(F_a) || P(F_AGV)) per frame, averaged over frames.

    audio [T, d] is repeated over the L visual positions of visual [T, L, d]; both are flattened to
    [T, L*d] and turned into distributions with a softmax, as the paper describes.
    """
    t, n, d = visual.shape
    log_p_audio = F.log_softmax(audio[:, None, :].expand(t, n, d).reshape(t, n * d), dim=1)
    log_p_visual = F.log_softmax(visual.reshape(t, n * d), dim=1)
    return (log_p_audio.exp() * (log_p_audio - log_p_visual)).sum(1).mean()


def avsac_loss(logits: torch.Tensor, masks: torch.Tensor, audio: torch.Tensor, visual: torch.Tensor,
               valid: torch.Tensor | None = None, avfs_weight: float = 1.0) -> torch.Tensor:
    """AVSAC Eq. 5: Dice + Focal + AVFS (``avfs_weight=0`` for the ablation without it)."""
    segmentation = dice_loss(logits, masks, valid) + focal_loss(logits, masks, valid)
    return segmentation + avfs_weight * avfs_loss(audio, visual) if avfs_weight else segmentation


def capacity_loss(stage_scores: list[torch.Tensor], classes: torch.Tensor, onscreen: torch.Tensor) -> torch.Tensor:
    """The capacity check's auxiliary loss, OUTSIDE THE PAPER: binary cross-entropy between every
    stage's elimination score S [B, K] and the world's truth for the token's class (1: the class
    sounds on screen in the frame; 0: off screen only, silent or absent), averaged over stages.

    ``classes`` [B, K] are the derived tokens' classes, ``onscreen`` [B, C] the labels
    (``avs_lib.analysis.truth.onscreen_labels``). Trained with it, the module is told which tokens to keep:
    a high within-frame AUC then says it can separate them, so an unsupervised failure is the
    objective's, not the module's."""
    targets = onscreen.to(classes.device).gather(1, classes).float()  # [B, K]
    losses = [F.binary_cross_entropy(s.float().clamp(1e-6, 1 - 1e-6), targets) for s in stage_scores]
    return torch.stack(losses).mean()


def cell_labels(object_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[B, h, w] int64: the label of ``object_maps`` [B, H, W] that covers more than half of each
    cell of an h x w grid laid over the frame, -1 where no label does."""
    values = object_maps.unique()
    shares = torch.stack([F.interpolate((object_maps == v).float()[:, None], size=size, mode="area")[:, 0]
                          for v in values], 1)  # [B, U, h, w]
    share, which = shares.max(1)
    return torch.where(share > 0.5, values[which], torch.full_like(which, -1))


def attention_supervision_loss(attentions: list[torch.Tensor], grids: list[tuple[int, int]],
                               token_classes: torch.Tensor, object_maps: torch.Tensor,
                               valid: torch.Tensor | None = None, null_key: bool = True,
                               unknown: int = UNKNOWN_OBJECT, queries: str = "visual") -> torch.Tensor:
    """An auxiliary loss OUTSIDE THE PAPER: it tells the fusion's cross-attention where each derived
    token's object is, so that the pointing accuracy (``avs_lib.analysis.inspect``) has a model
    that was asked to point. The paper trains the attention through the masks alone.

    ``attentions``: per stage, the last fusion block's weights [B, N_l, K] on the K tokens (the
    null key, ``fusion_null_key``, has the rest of each row) on the grid ``grids[l]`` (h_l w_l =
    N_l). ``token_classes`` [B, K]: each token's class. ``object_maps`` [B, H, W]:
    ``avs_lib.analysis.truth.object_class_map`` (0 nothing sounds, c + 1 the object of class c,
    ``unknown`` a sounding pixel of no known object). A cell takes the label covering more than half
    of it (``cell_labels``); its target is

    * an object of class c: the tokens derived for c, in equal shares;
    * nothing sounding: the null key (without one, ``null_key=False``, such cells count for nothing);

    and cells without a majority label, on an unknown object, on an object of a class no token
    was derived for, or in a frame without a ground truth (``valid``) count for nothing. The loss
    is the cross-entropy -sum_j t_j log a_j over the K + 1 keys, a mean over the counted cells of
    the batch, then over the stages. Under several processes each averages its own cells (as Eq.
    18 averages each process's frames), so the term is not exactly the one-process loss.

    ``queries="audio"`` (DDESeg's ``fusion_query="audio"``): the weights are each token's write-back
    weights W in [0, 1) (``mit.AudioCrossAttention``), the token's own map over the frame rather
    than a cell's shares, so the target is per (cell, token): 1 where the cell is the token's
    object, 0 everywhere else (the background, other objects; every cell for a token whose class
    has no object here, which is what elimination's S_k would give it). The loss is a binary
    cross-entropy, balanced: the mean over the counted (cell, token) pairs whose target is 1 and
    the mean over those whose target is 0 are averaged (objects cover a small part of the frame,
    and a plain mean would be least with every token writing nowhere); a batch without one of
    the two takes the other alone. ``null_key`` plays no part there. W carries the elimination
    score S_k, so the term also asks S_k to be high for a token whose object is on screen (as
    ``capacity_loss`` does, though it never asks it to be low: W = 0 can come from either factor)."""
    if queries not in FUSION_QUERIES:
        raise ValueError(f"queries={queries!r}: the model's fusion_query, one of {FUSION_QUERIES}")
    losses = []
    for attention, grid in zip(attentions, grids):
        weights = attention.float()  # [B, N, K]
        labels = cell_labels(object_maps, grid).flatten(1)  # [B, N]
        own = (token_classes[:, None, :] == (labels - 1)[..., None]) & (labels > 0)[..., None]  # [B, N, K]
        if queries == "audio":
            losses.append(_write_back_loss(weights, own, labels, valid, unknown))
            continue
        background = (labels == 0) & null_key
        counted = (background | own.any(-1)) & (labels != unknown)
        if valid is not None:
            counted &= valid.bool()[:, None]
        target = own.float() / own.sum(-1, keepdim=True).clamp_min(1)
        null = (1 - weights.sum(-1)).clamp_min(0)  # [B, N]
        # log(w + eps), not log(max(w, eps)): a confidently wrong cell still gets a gradient
        per_cell = -(target * (weights + 1e-6).log()).sum(-1) - background.float() * (null + 1e-6).log()
        losses.append((per_cell * counted).sum() / counted.sum().clamp_min(1))
    return torch.stack(losses).mean()


def _write_back_loss(weights: torch.Tensor, own: torch.Tensor, labels: torch.Tensor,
                     valid: torch.Tensor | None, unknown: int) -> torch.Tensor:
    """``attention_supervision_loss`` with audio queries: the balanced binary cross-entropy between
    the write-back weights [B, N, K] and ``own`` [B, N, K] over the counted cells."""
    counted = (labels >= 0) & (labels != unknown)  # [B, N]: a majority label, and a known one
    if valid is not None:
        counted &= valid.bool()[:, None]
    counted = counted[..., None].expand_as(own)  # [B, N, K]
    target = own.float()
    # W reaches exactly 1 in floating point (N P > 17 in fp32, sooner in bf16): 1e-4 inside the
    # logs bounds a pair's loss at 9.2 and its gradient at 1e4 there, where 1e-6 would give 1e6
    per_pair = -(target * (weights + 1e-4).log() + (1 - target) * (1 - weights + 1e-4).log())
    means = [per_pair[counted & side].sum() / (counted & side).sum() for side in (own, ~own)
             if (counted & side).any()]
    return torch.stack(means).mean() if means else weights.sum() * 0
