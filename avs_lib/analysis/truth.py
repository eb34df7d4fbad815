"""A composed world's ground truth per frame, in one encoding: each source's and class's role (on screen, off screen, silent, absent).

Every analysis, loss target and figure that asks what a class or a derived token truly is reads it
here: ``source_role`` for one source of a clip's record (``*_sources.jsonl``), ``class_roles`` for
every class of a clip, and the views built on them (``true_classes``, ``onscreen_labels`` for the
capacity check, ``token_categories`` for the elimination analyses), and where each sounding object
is in a frame (``object_regions``, ``object_class_map``) and which cells of a feature grid that covers
(``cells_inside``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

ROLES = ("on screen", "off screen", "silent", "absent")  # a class's role, strongest first


def sounds_in(source: dict, frame: int | None = None) -> bool:
    """Whether a source sounds in frame ``frame`` of its clip (``None``: in any frame). A source of a
    world with pauses (``avs world --ms3-pause``) records ``active``, one flag per frame; a source
    without it sounds in every frame or in none."""
    if not source.get("sounding"):
        return False
    active = source.get("active")
    return True if frame is None or active is None else bool(active[frame])


def source_role(source: dict, frame: int | None = None) -> str:
    """One source's role in frame ``frame`` (``None``: in the clip as a whole): ``on screen`` (seen
    and sounding), ``off screen`` (heard, not seen) or ``silent`` (seen, not sounding; an object
    that pauses in this frame is silent in it)."""
    sounding = sounds_in(source, frame)
    return "on screen" if source["on_screen"] and sounding else "off screen" if sounding else "silent"


def class_roles(record: dict | None, num_classes: int, frame: int | None = None) -> list[str]:
    """Each class's truth in frame ``frame`` of a clip (``None``: anywhere in the clip), in AVS
    words: ``on screen`` (seen and sounding), ``off screen`` (heard, not seen), ``silent`` (seen,
    not sounding) or ``absent`` (not in the clip)."""
    roles = ["absent"] * num_classes
    for s in (record or {}).get("sources", []):
        c = s["class_index"]
        role = source_role(s, frame)
        if ROLES.index(role) < ROLES.index(roles[c]):  # a sounding instance outranks a silent one of its class
            roles[c] = role
    return roles


def frame_roles(frames, index: int) -> dict[int, str]:
    """{class: role} for the classes of frame ``index``'s clip (absent classes left out); a clip
    without a sources record (a real dataset) is an error."""
    record = frames.sources.get(frames.clips[index])
    if record is None:
        raise ValueError(f"clip {frames.clips[index]} has no sources record (real datasets do not know their sources)")
    num_classes = 1 + max((s["class_index"] for s in record["sources"]), default=-1)
    return {c: role for c, role in enumerate(class_roles(record, num_classes, frames.frames[index]))
            if role != "absent"}


def true_classes(frames, index: int) -> tuple[set[int], set[int]]:
    """(classes sounding on screen, classes sounding only off screen) in frame ``index``."""
    roles = frame_roles(frames, index)
    return ({c for c, r in roles.items() if r == "on screen"}, {c for c, r in roles.items() if r == "off screen"})


def onscreen_labels(frames, num_classes: int) -> torch.Tensor:
    """[N, C] float: 1 where class c sounds on screen in frame n, else 0 (off screen only, silent or absent)."""
    labels = torch.zeros(len(frames), num_classes)
    for i in range(len(frames)):
        on, _ = true_classes(frames, i)
        labels[i, sorted(on)] = 1.0
    return labels


TOKEN_CATEGORY = {"on screen": 0, "off screen": 1}  # every other role (silent, absent) is 2


def token_categories(frames, classes: torch.Tensor) -> np.ndarray:
    """[N, K] per derived token: 0 its class sounds on screen, 1 it sounds only off screen, 2 silent or absent."""
    out = np.full(tuple(classes.shape), 2)
    for i in range(len(frames)):
        roles = frame_roles(frames, i)
        for j, c in enumerate(classes[i].tolist()):
            out[i, j] = TOKEN_CATEGORY.get(roles.get(c), 2)
    return out


def onscreen_boxes(frames: FrameSet, index: int, source_size: int) -> list[tuple[int, bool, torch.Tensor]]:
    """(class, sounds in this frame, [S, S] bool box) for each object on screen in frame ``index``,
    sounding or silent, from the boxes the world records per frame and source (an empty box, an
    object out of view in that frame, is left out, as ``avs_lib.data.loader.frame_boxes`` leaves it).
    ``source_size``: the side of the world's frames, in which the boxes are given."""
    record = frames.sources.get(frames.clips[index])
    if record is None:
        raise ValueError(f"clip {frames.clips[index]} has no sources record (real datasets do not know their sources)")
    side = frames.masks.shape[-1]
    scale = side / source_size
    boxes = []
    for source in record["sources"]:
        if not source["on_screen"] or not source.get("bboxes"):
            continue
        x0, y0, x1, y1 = source["bboxes"][frames.frames[index]]
        if x1 <= x0 or y1 <= y0:
            continue
        box = torch.zeros(side, side, dtype=torch.bool)
        box[int(y0 * scale):max(int(y0 * scale) + 1, math.ceil(y1 * scale)),
            int(x0 * scale):max(int(x0 * scale) + 1, math.ceil(x1 * scale))] = True
        boxes.append((source["class_index"], sounds_in(source, frames.frames[index]), box))
    return boxes


def object_regions(frames: FrameSet, index: int, source_size: int) -> dict[int, torch.Tensor]:
    """{class: [S, S] bool} for each object sounding on screen in frame ``index``: the frame's
    sounding mask inside that object's box (the world records a box per frame and source; the
    binary mask alone does not say which object a pixel belongs to). ``source_size``: the side of
    the world's frames, in which the boxes are given."""
    sounding = frames.masks[index].bool()
    return {c: box & sounding for c, sounds, box in onscreen_boxes(frames, index, source_size) if sounds}


def cells_inside(regions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, S, S] bool regions -> [B, h*w] bool: the cells of an h x w feature grid (row-major, as a
    stage's tokens) that lie mostly (more than half their area) inside each region."""
    import torch.nn.functional as F

    return (F.interpolate(regions[:, None].float(), size=grid, mode="area")[:, 0] > 0.5).flatten(1)


UNKNOWN_OBJECT = 255  # a sounding pixel of no known object (class maps travel as uint8 through the augmentation)


def object_class_map(frames, index: int, source_size: int) -> torch.Tensor:
    """[S, S] int64, which object sounds where in frame ``index``: 0 where nothing sounds, c + 1 on
    the object of class c sounding on screen (its ``object_regions`` region), ``UNKNOWN_OBJECT`` on
    a sounding pixel that no region or more than one region claims (the world records boxes, not
    outlines: where two boxes overlap, the box alone does not say whose the pixel is).
    ``map > 0`` is the frame's binary mask, unchanged."""
    sounding = frames.masks[index] > 0
    out = torch.where(sounding, UNKNOWN_OBJECT, 0).long()
    claims = torch.zeros_like(out)
    for c, region in object_regions(frames, index, source_size).items():
        out[region] = c + 1
        claims += region.long()
    out[claims > 1] = UNKNOWN_OBJECT
    return out
