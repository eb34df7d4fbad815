"""A trained model's evaluation table: every metric convention, and the two trivial baselines
that say what a number is worth on this data.

* all foreground: every pixel predicted as sounding (what a model scores without looking);
* audio zeroed: the same model with its audio input replaced by zeros at test time (what it
  scores without listening). A model that uses the sound beats both.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from avs_lib.analysis.metrics import CONVENTIONS, evaluate, jf_with_interval
from avs_lib.data.frames import FrameSet
from avs_lib.training.loop import train_once
from avs_lib.training.predict import evaluate_model, load_trained, predict
from avs_lib.training.prepare import prepare
from avs_lib.training.runs import shared_run_dir


def all_foreground(frames, convention: str = "per_frame", batch_size: int = 5) -> dict:
    """J, F, JF of predicting every pixel of every annotated frame as sounding."""
    keep = frames.valid
    return evaluate(torch.full(frames.masks[keep].shape, 20.0), frames.masks[keep], convention=convention,
                    batch_size=batch_size)


def truth_at_stride(masks: torch.Tensor, stride: int) -> torch.Tensor:
    """The masks [N, H, W] as a decoder at 1/``stride`` of the frame could draw them at best: each
    averaged over stride x stride cells, upsampled bilinearly back to the frame (as the models
    upsample their logits) and cut at 0.5. Boolean [N, H, W]."""
    import torch.nn.functional as F

    if stride < 1 or masks.shape[-1] % stride or masks.shape[-2] % stride:
        raise ValueError(f"stride {stride} must divide the frames' size {tuple(masks.shape[-2:])}")
    coarse = F.avg_pool2d(masks.float()[:, None], stride)  # [N, 1, H/s, W/s]: the share of each cell that sounds
    return F.interpolate(coarse, size=masks.shape[-2:], mode="bilinear", align_corners=False)[:, 0] > 0.5


def resolution_bound(frames, stride: int, convention: str = "per_frame", batch_size: int = 5) -> dict:
    """J, F, JF of the truth itself seen at the decoder's resolution (``truth_at_stride``). About the
    best a model whose logits are made at 1/``stride`` of the frame can score on ``frames``, whatever
    it hears: a ceiling set by resolution alone, above the oracle's."""
    masks = frames.masks[frames.valid].float()
    seen = truth_at_stride(masks, stride)
    return evaluate(torch.where(seen, 20.0, -20.0), masks, convention=convention, batch_size=batch_size)


FOUND_SHARE = 0.5  # a sounding object is found when the prediction covers at least this share of its pixels
TAKEN_SHARE = 0.3  # a silent object is taken when the prediction covers this share of its box (outside sounding pixels)


def choice_and_outline(logits: torch.Tensor, frames: FrameSet, source_size: int, convention: str = "per_frame",
                       batch_size: int = 5) -> dict:
    """Where a composed world's test errors are: in the choice of objects or in their outlines.

    ``logits``: binary logits [N, H, W] of every frame of ``frames``. For each annotated frame the
    world's boxes (``avs_lib.analysis.truth.onscreen_boxes``) say which objects are on screen and
    whether each sounds. A sounding object is *found* when the prediction covers at least
    ``FOUND_SHARE`` of its pixels (the sounding pixels in its box), else *missed*; a silent object is
    *taken* when the prediction covers at least ``TAKEN_SHARE`` of its box outside the sounding
    pixels. Two predictions are then scored beside the model's own:

    * ``choice_fixed``: every missed object's pixels added (with their true outlines: a choice that
      was never made has no outline of its own to keep), and what was drawn in each taken silent
      object's box outside the sounding mask and the sounding objects' boxes removed. What a found
      object spills into a silent box that was not taken stays: it is an outline error;
    * ``outline_fixed``: inside each found object's box, exactly the sounding pixels (the model's
      drawing outside the sounding mask removed there), the choices left as made.

    Returns {"JF", "choice_fixed_JF", "outline_fixed_JF", "found", "missed", "taken", "silent",
    "false_positive_share_silent_boxes", "false_positive_share_sounding_boxes"} (the last two: the
    share of the predicted pixels outside the mask that lie in silent objects' boxes, and in sounding
    objects' boxes). Boxes are not outlines, so both fixes are approximate where boxes overlap. A
    dataset without sources (AVSBench) is refused by ``onscreen_boxes``."""
    from avs_lib.analysis.truth import onscreen_boxes

    if logits.dim() != 3:
        raise ValueError(f"choice_and_outline reads binary logits [N, H, W], got {tuple(logits.shape)}: semantic "
                         "masks (AVSS) have no composed world's boxes to split their errors by")
    keep = torch.nonzero(frames.valid, as_tuple=True)[0].tolist()
    predicted = logits[keep] > 0  # [n, H, W]
    masks = frames.masks[keep].bool()
    choice_fixed, outline_fixed = predicted.clone(), predicted.clone()
    counts = dict.fromkeys(("found", "missed", "taken", "silent"), 0)
    wrong = in_silent = in_sounding = 0
    for row, index in enumerate(keep):
        pred, mask = predicted[row], masks[row]
        sounding_boxes, silent_boxes, taken_boxes = (torch.zeros_like(mask) for _ in range(3))  # read after the loop
        for _, sounds, box in onscreen_boxes(frames, index, source_size):
            if sounds:
                sounding_boxes |= box
                region = box & mask
                if not region.any():
                    continue
                if (pred & region).sum() >= FOUND_SHARE * region.sum():
                    counts["found"] += 1
                    outline_fixed[row] = (outline_fixed[row] & ~(box & ~mask)) | region
                else:
                    counts["missed"] += 1
                    choice_fixed[row] |= region
            else:
                counts["silent"] += 1
                silent_boxes |= box
                outside = box & ~mask
                if outside.any() and (pred & outside).sum() >= TAKEN_SHARE * outside.sum():
                    counts["taken"] += 1
                    taken_boxes |= box
        choice_fixed[row] &= ~(taken_boxes & ~sounding_boxes & ~mask)
        false_positive = pred & ~mask
        wrong += int(false_positive.sum())
        in_silent += int((false_positive & silent_boxes & ~sounding_boxes).sum())
        in_sounding += int((false_positive & sounding_boxes).sum())

    def jf(prediction: torch.Tensor) -> float:
        as_logits = torch.where(prediction, 20.0, -20.0)
        return evaluate(as_logits, frames.masks[keep], convention=convention, batch_size=batch_size)["JF"]

    return {"JF": jf(predicted), "choice_fixed_JF": jf(choice_fixed), "outline_fixed_JF": jf(outline_fixed), **counts,
            "false_positive_share_silent_boxes": in_silent / max(1, wrong),
            "false_positive_share_sounding_boxes": in_sounding / max(1, wrong)}


OUTLINE_BANDS = (1.5, 2.5, 4.5, 8.5)  # upper edges in frame pixels: within 1, 2, 4, 8 px of the outline, farther
OUTLINE_BAND_NAMES = ("<=1 px", "<=2 px", "<=4 px", "<=8 px", ">8 px")


def outline_distance(predicted: torch.Tensor, masks: torch.Tensor) -> dict:
    """Where the wrong pixels lie: each pixel of ``predicted`` that disagrees with ``masks`` (both
    boolean [N, H, W]) counted in a band by its Euclidean distance to the nearest pixel on the other
    side of the true outline (``OUTLINE_BANDS``). Errors within a pixel or two are the edges'
    placement; errors far from any outline are whole objects or parts drawn or left out.

    Returns {"frames", "wrong_pixels_per_frame", "share" (band name -> share of the wrong pixels),
    "within_2px_per_frame": {"drawn_outside_the_mask", "left_out_inside_it"}} (one of the last two far
    larger than the other says the edges sit systematically too far out or in)."""
    import numpy as np
    from scipy.ndimage import distance_transform_edt

    if predicted.shape != masks.shape or predicted.dim() != 3:
        raise ValueError(f"outline_distance reads boolean [N, H, W] predictions and masks of one shape, got "
                         f"{tuple(predicted.shape)} and {tuple(masks.shape)}")
    bands = np.zeros(len(OUTLINE_BAND_NAMES), dtype=np.int64)
    drawn_out = left_in = 0
    for pred, mask in zip(predicted.detach().bool().cpu().numpy(), masks.detach().bool().cpu().numpy()):
        # inside the mask: distance to the nearest background pixel; outside: to the nearest mask pixel.
        # A frame with nothing sounding (or all of it) has no outline: its wrong pixels are the farthest
        if mask.any() and not mask.all():
            distance = np.where(mask, distance_transform_edt(mask), distance_transform_edt(~mask))
        else:
            distance = np.full(mask.shape, np.inf)
        wrong = pred != mask
        bands += np.bincount(np.digitize(distance[wrong], OUTLINE_BANDS), minlength=len(OUTLINE_BAND_NAMES))
        near = wrong & (distance <= OUTLINE_BANDS[1])
        drawn_out += int((near & ~mask).sum())
        left_in += int((near & mask).sum())
    frames, total = len(predicted), int(bands.sum())
    return {"frames": frames, "wrong_pixels_per_frame": total / max(1, frames),
            "share": {name: int(b) / total if total else 0.0 for name, b in zip(OUTLINE_BAND_NAMES, bands)},
            "within_2px_per_frame": {"drawn_outside_the_mask": drawn_out / max(1, frames),
                                     "left_out_inside_it": left_in / max(1, frames)}}


def decoder_stride(model, image_size: int) -> int:
    """How many frame pixels one decoder logit covers per side (4 for the paper's MiT, for
    EfficientNet-Lite0 and for AVSAC; 2 for the released stride-2 stem and for ``decoder_stride=2``;
    1 for ``decoder_stride=1``), read from one forward pass."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, image_size, image_size, device=device),
                    torch.zeros(1, model.config.audio_dim, device=device))
    model.train(was_training)
    return image_size // out.decoder_size[-1]


def evaluation_table(model, frames, config, device: torch.device | str = "cpu") -> list[dict]:
    """Rows {"evaluation", "J", "F", "J&F"}: the model in every convention of ``avs_lib.analysis.metrics``,
    then with its audio zeroed and the all-foreground prediction (both in ``config.convention``)."""
    device = torch.device(device)
    rows = []
    for convention in CONVENTIONS:
        r = evaluate_model(model, frames, device, replace(config, convention=convention))
        rows.append({"evaluation": convention, "J": r["J"], "F": r["F"], "J&F": r["JF"]})
    r = evaluate_model(model, frames, device, replace(config, zero_audio=True))
    rows.append({"evaluation": f"{config.convention}, audio zeroed", "J": r["J"], "F": r["F"], "J&F": r["JF"]})
    r = all_foreground(frames, config.convention, config.eval_batch_size)
    rows.append({"evaluation": f"{config.convention}, all foreground", "J": r["J"], "F": r["F"], "J&F": r["JF"]})
    return rows


# ----------------------------------------------------------------------------- the window
HEADROOM_ROWS = {"floor": "floor: zero audio (trained and tested without sound)",
                 "model": "the model, its own audio encoder",
                 "oracle-heard": "oracle, every heard class (perfect derivation, nothing eliminated)",
                 "oracle": "ceiling: oracle, the classes sounding on screen"}


def jf_interval_of(model, frames, config, device: torch.device | str = "cpu", source_size: int | None = None) -> dict:
    """Per-frame test J&F of ``model`` on ``frames`` with its 95 % interval over clips; with
    ``source_size`` (a composed world's frame side) also ``errors``: ``choice_and_outline`` of its masks."""
    keep = frames.valid
    logits = predict(model, frames, torch.device(device), bf16=config.bf16, zero_audio=config.zero_audio,
                     cpu_bf16=config.cpu_bf16)
    row = jf_with_interval(logits[keep], frames.masks[keep], [c for c, k in zip(frames.clips, keep.tolist()) if k])
    if source_size is not None:
        row["errors"] = choice_and_outline(logits, frames, source_size)
    return row


def spread_over_frame(pattern: torch.Tensor) -> torch.Tensor:
    """A cross-attention pattern [B, heads, N, K] with each key's weights replaced by their mean over
    the N visual queries: every cell of the frame then takes the same mixture of tokens, so the
    pattern keeps how much each token is used and loses where."""
    return pattern.mean(2, keepdim=True).expand_as(pattern).contiguous()


ATTENTION_INTERVENTIONS = {
    "as trained": None,
    "attention spread over the frame": spread_over_frame,
    "attention zeroed (fusion hears nothing)": torch.zeros_like,
}


def attention_interventions(model, frames, config, device: torch.device | str = "cpu") -> list[dict]:
    """Does the model use *where* its fusion attention goes? Rows {"intervention", "JF", "ci95", ...}:
    test J&F with every fusion block's cross-attention pattern (``stage*.block*.cross_attn.pattern``)
    left as trained, replaced by ``spread_over_frame`` (the same token mixture at every cell), and
    zeroed (each fusion block adds only its output projection's bias: in DDESeg's paper reading the
    audio reaches the masks through this attention alone, elimination's scores included, so the
    prediction no longer depends on the audio). A large drop under spreading says the spatial
    layout of the attention carries the segmentation, whether or not each token's map peaks on its
    own object (``avs_lib.analysis.inspect.attention_anatomy``). A model without fusion
    cross-attention (DDESeg's ``variant="released"``, AVSAC) is refused."""
    from avs_lib.analysis.inspect import FUSION_ATTENTION
    from avs_lib.models.hooks import hook_names, run_with_hooks

    if not hook_names(model, FUSION_ATTENTION):
        raise ValueError(f"{type(model).__name__} has no fusion cross-attention ({FUSION_ATTENTION}) "
                         "to intervene on: use DDESeg with variant='paper'")
    rows = []
    for name, edit in ATTENTION_INTERVENTIONS.items():
        hooks = {FUSION_ATTENTION: edit} if edit is not None else {}
        with run_with_hooks(model, hooks):
            rows.append({"intervention": name, **jf_interval_of(model, frames, config, device)})
    return rows


BLANKED_REGIONS = ("silent boxes", "sounding boxes", "background, as many cells as the silent boxes")
MOVED_SILENT_BOXES = "silent boxes moved onto the background"  # a control shaped like the silent boxes
PLACES_TO_BLANK = (*BLANKED_REGIONS, MOVED_SILENT_BOXES)


def _moved_boxes(boxes: list[torch.Tensor], background: torch.Tensor, generator: torch.Generator,
                 tries: int = 64) -> torch.Tensor:
    """[S, S] bool: each box of ``boxes`` (the [S, S] bool boxes of a frame's silent objects) moved to
    the place, among ``tries`` random ones, where the largest share of it lies on ``background``,
    kept where it does; boxes already moved count as taken."""
    side = background.shape[-1]
    free = background.clone()
    moved = torch.zeros_like(background)
    for box in boxes:
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        # an integral image of the free pixels: the free pixels of any h x w window in four reads
        integral = torch.nn.functional.pad(free.long().cumsum(0).cumsum(1), (1, 0, 1, 0))
        ys = torch.randint(0, side - h + 1, (tries,), generator=generator)
        xs = torch.randint(0, side - w + 1, (tries,), generator=generator)
        inside = integral[ys + h, xs + w] - integral[ys, xs + w] - integral[ys + h, xs] + integral[ys, xs]
        best = int(inside.argmax())
        window = torch.zeros_like(background)
        window[int(ys[best]):int(ys[best]) + h, int(xs[best]):int(xs[best]) + w] = True
        moved |= window & free
        free &= ~window
    return moved


def _region_masks(frames: FrameSet, index: int, source_size: int, seed: int = 0,
                  moved: bool = False) -> dict[str, torch.Tensor]:
    """{"silent boxes": silent objects' boxes outside every sounding object's box, "sounding boxes":
    the sounding objects' boxes, "background": outside every box, and with ``moved``
    MOVED_SILENT_BOXES: the silent boxes moved onto the background (``_moved_boxes``, drawn from
    ``seed`` and the frame's index)} of frame ``index``, [S, S] bool."""
    from avs_lib.analysis.truth import onscreen_boxes

    side = frames.masks.shape[-1]
    silent, sounding = torch.zeros(side, side, dtype=torch.bool), torch.zeros(side, side, dtype=torch.bool)
    silent_boxes = []
    for _, sounds, box in onscreen_boxes(frames, index, source_size):
        (sounding if sounds else silent).__ior__(box)
        if not sounds:
            silent_boxes.append(box)
    background = ~(silent | sounding)
    regions = {"silent boxes": silent & ~sounding, "sounding boxes": sounding, "background": background}
    if moved:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
        regions[MOVED_SILENT_BOXES] = _moved_boxes(silent_boxes, background, generator)
    return regions


def blanking_interventions(model, frames: FrameSet, config, source_size: int, device: torch.device | str = "cpu",
                           batch_size: int = 32, seed: int = 0, places: tuple[str, ...] = BLANKED_REGIONS,
                           stages: tuple[int, ...] | None = None, one_stage_at_a_time: bool = False) -> list[dict]:
    """What the fusion attention does in each kind of place, by taking it away there. For every test
    frame and every fusion block (``stage*.block*.cross_attn.pattern``), the attention weights of
    every token are set to zero in the cells of one kind of place, so no audio token writes into
    those cells (the other cells keep theirs):

    * ``silent boxes``: the cells mostly inside a silent object's box (outside every sounding box);
    * ``sounding boxes``: the cells mostly inside a sounding object's box;
    * ``background, as many cells as the silent boxes``: a control, the same number of cells as the
      silent boxes have in that frame and grid (fewer where the frame has not that many), drawn at
      random among the cells mostly outside every box, apart at each stage: scattered cells, whose
      neighbours keep their audio, where a box is a solid block. The draw is seeded by ``seed``, the
      frame's index and the grid, so it does not depend on ``batch_size``;
    * MOVED_SILENT_BOXES (asked for in ``places`` only): a control shaped like the silent boxes, each
      box moved to a random place on the background (``_moved_boxes``; seeded per frame), blocks at
      every stage as the boxes are.

    A blanked cell keeps only the output projection's bias from its fusion block, an input the
    model never met in training. If the maps' weight on silent objects tells the decoder what *not*
    to segment, blanking the silent boxes makes the model take more silent objects (``errors.taken``
    up) than the controls do; if the weight there is idle, neither changes much. Blanking the sounding boxes asks the
    same of the sounding objects (``errors.found``). Rows {"intervention", "JF", "ci95", "errors"
    (``choice_and_outline``), "delta" (paired against "as trained": mean per-frame J&F difference),
    "delta_ci95" (95 % over clips), "cells_blanked" (the share of the cells blanked, over the
    blanked stages and the frames)}.
    ``places``: which of PLACES_TO_BLANK to blank (each a row after "as trained"); ``stages``: blank
    only the fusion blocks of these stages (default every stage), to say which stage carries an
    effect; ``one_stage_at_a_time``: blank each place in each of those stages' blocks in turn, rows
    "stage S only, <place>: blanked" (stage by stage, places inside), all paired against one "as
    trained" pass. Grids are assumed square (composed worlds are). A model without fusion cross-attention
    is refused; a dataset without boxes (AVSBench) is refused by ``onscreen_boxes``."""
    import math

    import numpy as np

    from avs_lib.analysis.inspect import FUSION_ATTENTION
    from avs_lib.analysis.metrics import per_frame_scores
    from avs_lib.analysis.stats import bootstrap_ci
    from avs_lib.analysis.truth import cells_inside
    from avs_lib.models.hooks import hook_names, run_with_hooks

    if not hook_names(model, FUSION_ATTENTION):
        raise ValueError(f"{type(model).__name__} has no fusion cross-attention ({FUSION_ATTENTION}) "
                         "to intervene on: use DDESeg with variant='paper'")
    unknown = [place for place in places if place not in PLACES_TO_BLANK]
    if unknown:
        raise ValueError(f"places {unknown}: choose from {PLACES_TO_BLANK}")
    def blocks_of(stage: int) -> str:  # the hook points of one stage's fusion blocks
        return FUSION_ATTENTION.replace("stage*", f"stage{stage}", 1)

    if stages is None:
        stages = tuple(sorted({int(name.split(".")[0].removeprefix("stage"))
                               for name in hook_names(model, FUSION_ATTENTION)}))
    missing = [s for s in stages if not hook_names(model, blocks_of(s))]
    if missing:
        raise ValueError(f"{type(model).__name__} has no fusion blocks at stage {missing}")
    # each intervention: (its row's name, the place blanked, the hook targets of the blocks blanked)
    interventions = [("as trained", None, [])]
    if one_stage_at_a_time:
        interventions += [(f"stage {s} only, {kind}: blanked", kind, [blocks_of(s)]) for s in stages for kind in places]
    else:
        interventions += [(f"{kind}: blanked", kind, [blocks_of(s) for s in stages]) for kind in places]
    device = torch.device(device)
    keep = torch.nonzero(frames.valid, as_tuple=True)[0]
    regions = [_region_masks(frames, int(i), source_size, seed, moved=MOVED_SILENT_BOXES in places)
               for i in range(len(frames.images))]
    clips = [frames.clips[int(i)] for i in keep]

    def blanked_cells(kind: str, chunk: list[int], side: int) -> torch.Tensor:  # [B, side*side] bool
        if kind != BLANKED_REGIONS[2]:
            return cells_inside(torch.stack([regions[i][kind] for i in chunk]), (side, side))
        silent = cells_inside(torch.stack([regions[i]["silent boxes"] for i in chunk]), (side, side))
        background = cells_inside(torch.stack([regions[i]["background"] for i in chunk]), (side, side))
        picked = torch.zeros_like(background)
        for row, (frame, n) in enumerate(zip(chunk, silent.sum(1).tolist())):
            # seeded per frame and grid, so the draw does not depend on how frames are batched
            generator = torch.Generator().manual_seed(seed * 1_000_003 + frame * 101 + side)
            # a random order of the cells, background ones first: the first n are n random background cells
            order = torch.argsort(torch.rand(background.shape[1], generator=generator) - background[row].float())
            picked[row, order[:min(n, int(background[row].sum()))]] = True
        return picked

    def blanking(kind: str, chunk: list[int], counts: list[int]):
        masks: dict[int, torch.Tensor] = {}  # {cells of a grid: [B, cells] bool}, one per stage

        def blank(pattern: torch.Tensor) -> torch.Tensor:  # [B, heads, N, K]
            n = pattern.shape[2]
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"a fusion grid of {n} cells is not square: blanking reads square grids only")
            if n not in masks:
                masks[n] = blanked_cells(kind, chunk, side).to(pattern.device)
                counts[0] += int(masks[n].sum())
                counts[1] += masks[n].numel()
            return pattern * (~masks[n])[:, None, :, None].to(pattern.dtype)
        return blank

    rows, base = [], None
    for name, kind, targets in interventions:
        logits, counts = [], [0, 0]  # cells blanked, cells seen
        for start in range(0, len(frames.images), batch_size):
            chunk = list(range(start, min(start + batch_size, len(frames.images))))
            blank = blanking(kind, chunk, counts)  # one per chunk: its masks are the chunk's frames'
            with run_with_hooks(model, [(target, blank) for target in targets]):
                logits.append(predict(model, frames, device, batch_size=len(chunk), bf16=config.bf16,
                                      zero_audio=config.zero_audio, cpu_bf16=config.cpu_bf16, indices=chunk))
        logits = torch.cat(logits)
        j, f = per_frame_scores(logits[keep], frames.masks[keep])
        jf = ((j + f) / 2).numpy().astype(np.float64)
        base = jf if base is None else base
        rows.append({"intervention": name,
                     **jf_with_interval(logits[keep], frames.masks[keep], clips),
                     "errors": choice_and_outline(logits, frames, source_size),
                     "delta": float((jf - base).mean()), "delta_ci95": bootstrap_ci(jf - base, clips),
                     "cells_blanked": counts[0] / max(1, counts[1])})
    return rows


def blanking_row_text(row: dict, width: int = 58) -> str:
    """One row of ``blanking_interventions`` as a line of text: J&F, the paired change in points with
    its 95 % interval, silent objects taken, sounding objects found and the share of cells blanked."""
    e = row["errors"]
    low, high = row["delta_ci95"]
    return (f"{row['intervention']:<{width}} J&F {row['JF']:.3f}  delta {100 * row['delta']:+.1f} "
            f"[{100 * low:+.1f}, {100 * high:+.1f}]  taken {e['taken']}/{e['silent']}  "
            f"found {e['found']}/{e['found'] + e['missed']}  cells {row['cells_blanked']:.3f}")


def headroom(config, model, prepared, rows: tuple[str, ...] = ("floor", "oracle"), progress: bool = False,
             source_size: int | None = None) -> list[dict]:
    """The window an experiment can see, as rows {"row", "what", "JF", "ci95", ...}: the floor (the
    same training with the audio zeroed, ``zero_audio=true``), ``model`` itself (trained with
    ``config``) and the oracles (the same training with ``audio_encoder=oracle`` / ``oracle-heard``,
    ``avs_lib.audio.registry.OracleAudio``), each tested on the test split with a 95 % interval over clips.
    Every extra row is trained once into the data's model store (``avs_lib.training.runs.shared_run_dir``)
    and reused by a later call with the same settings (``train_once``). Headroom = ceiling - floor:
    a comparison of settings inside a narrow window cannot come out any other way. ``source_size`` (a
    composed world's frame side, ``world_frame_size``): each row also says where its errors are
    (``errors``, ``choice_and_outline``)."""
    from pathlib import Path


    table = [{"row": "model", "what": HEADROOM_ROWS["model"], **jf_interval_of(model, prepared.test, config,
                                                                                source_size=source_size)}]
    for row in rows:
        if row == "floor":
            variant, frames_for = replace(config, zero_audio=True), prepared
        elif row in ("oracle", "oracle-heard"):
            variant = replace(config, audio_encoder=row)
            frames_for = prepare(variant, progress=progress)
        else:
            raise ValueError(f"headroom row {row!r}: choose from floor, oracle, oracle-heard")
        variant = replace(variant, out=str(shared_run_dir(variant)))
        train_once(variant, frames_for)
        trained, _, _ = load_trained(Path(variant.out) / "best.pt", frames_for)
        table.append({"row": row, "what": HEADROOM_ROWS[row],
                      **jf_interval_of(trained, frames_for.test, variant, source_size=source_size)})
    order = list(HEADROOM_ROWS)
    return sorted(table, key=lambda r: order.index(r["row"]))
