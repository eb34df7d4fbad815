"""Analyses only a world with known sources allows.

* ``derivation_recall``: do the K class centres that derivation picks (Eq. 5's neighbours) cover
  the classes that truly sound in the frame (on screen or off)? It depends on the frozen audio
  encoder, the memory and K, not on training.
* ``elimination_auc``: do the elimination scores separate tokens whose class is a sounding on-screen
  source from tokens whose class only sounds off-screen? ROC AUC over all such tokens, pooled
  across frames (so it also rewards a per-frame gate that does not choose between tokens).
* ``elimination_analysis``: per stage, the pooled AUC beside a within-frame paired AUC (every
  on-screen token against every token of the same frame whose class is off screen only or silent)
  with a bootstrap 95 % interval over clips, and the spread of the scores within a frame.
* ``within_frame_auc``: that paired AUC on any scores and labels (tested on hand-made cases).
* ``token_separation``: how far apart the K tokens derivation gives one frame are, against their
  norm and against the distance between frames: tokens that are nearly one vector leave
  elimination little to choose and the loss little reason to choose.
The per-frame ground truth they use is ``avs_lib.analysis.truth``'s; their intervals are
``avs_lib.analysis.stats``'s.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from avs_lib.analysis.stats import cluster_bootstrap
from avs_lib.analysis.truth import cells_inside, object_regions, onscreen_boxes, token_categories, true_classes
from avs_lib.data.frames import FrameSet
from avs_lib.models.derivation import nearest_centres
from avs_lib.models.hooks import ActivationCache, HookPoint, run_with_cache
from avs_lib.models.mit import FUSION_QUERIES


def activations(source, frames: FrameSet, names: list[str], batch_size: int = 32) -> ActivationCache:
    """The activations ``names`` of ``frames``: ``source`` is a model (one ``run_with_cache`` pass)
    or a cache already taken, e.g. ``run_with_cache(model, frames, names=INSPECTION_NAMES)`` shared
    by every analysis of a notebook."""
    if isinstance(source, ActivationCache):
        return source
    return run_with_cache(source, frames, names=names, batch_size=batch_size, strict=False)


def tau_sweep(model, frames: FrameSet, taus: list[float]) -> dict[float, float | None]:
    """{tau: pooled elimination AUC} with Eq. 13's temperature changed at evaluation only: a hook
    scales each stage's V C_v^T by (its tau) / tau, which is what dividing by tau instead of its own
    tau does (``avs_lib.models.hooks``). The model is not modified; one pass per tau."""
    stages = {name.split(".")[0]: module.tau for name, module in _elimination_modules(model)}
    result = {}
    for tau in taus:
        hooks = {f"{stage}.elimination.logits": (lambda logits, r=own / tau: logits * r)
                 for stage, own in stages.items()}
        cache = run_with_cache(model, frames, names=SCORE_NAMES, hooks=hooks, strict=False)
        result[tau] = elimination_auc(cache, frames)["auc"]
    return result


def _elimination_modules(model) -> list[tuple[str, torch.nn.Module]]:
    """(hook name of the assignment logits, module) of every elimination that clusters (Eq. 13)."""
    found = [(m.hook_logits.name, m) for m in model.modules()
             if isinstance(getattr(m, "hook_logits", None), HookPoint)
             and (m.hook_logits.name or "").endswith(".elimination.logits")]
    if not found:
        raise ValueError("the model's elimination does not cluster (scheme without Eq. 13): no tau to sweep")
    return found


def derivation_recall(frames: FrameSet, centroids: torch.Tensor, k: int) -> dict:
    """Mean over frames of |top-K classes & sounding classes| / |sounding classes|, overall and for
    on-screen / off-screen sources separately."""
    indices, _ = nearest_centres(frames.audio, centroids, k)
    overall, on_recall, off_recall = [], [], []
    for i in range(len(frames)):
        on, off = true_classes(frames, i)
        chosen = set(indices[i].tolist())
        if on | off:
            overall.append(len(chosen & (on | off)) / len(on | off))
        if on:
            on_recall.append(len(chosen & on) / len(on))
        if off:
            off_recall.append(len(chosen & off) / len(off))
    return {"K": k, "recall": float(np.mean(overall)), "recall_on_screen": float(np.mean(on_recall)),
            "recall_off_screen": float(np.mean(off_recall)) if off_recall else None, "frames": len(overall)}


# what the elimination analyses read (stage_token_scores, elimination_auc, elimination_analysis)
SCORE_NAMES = ["derivation.classes", "stage*.elimination.scores"]
# and token_separation and pointing_accuracy: one cache serves every analysis of notebook 03 / 05
FUSION_ATTENTION = "stage*.block*.cross_attn.pattern"  # every fusion block's cross-attention [B, heads, N, K]
INSPECTION_NAMES = SCORE_NAMES + ["derivation.derived", "derivation.tokens", FUSION_ATTENTION]


def token_scores(source, frames: FrameSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(class indices [N, K], cumulative elimination scores [N, K]): the "combined" scores of
    ``stage_token_scores``. ``source``: a model or a cache (``activations``)."""
    classes, scores = stage_token_scores(source, frames)
    return classes, scores["combined"]


def elimination_auc(source, frames: FrameSet) -> dict:
    """ROC AUC of the scores: positives are tokens of on-screen sounding classes, negatives tokens of
    classes that sound only off screen. Tokens of silent classes are left out."""
    classes, scores = token_scores(source, frames)
    labels, values = [], []
    for i in range(len(frames)):
        on, off = true_classes(frames, i)
        for c, s in zip(classes[i].tolist(), scores[i].tolist()):
            if c in on or c in off:
                labels.append(int(c in on))
                values.append(s)
    labels, values = np.array(labels), np.array(values)
    auc = float(roc_auc_score(labels, values)) if 0 < labels.sum() < len(labels) else None
    return {"auc": auc, "positives": int(labels.sum()), "negatives": int((1 - labels).sum()),
            "labels": labels.tolist(), "scores": values.tolist()}


def stage_token_scores(source, frames: FrameSet) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(class indices [N, K], {"stage 2": scores [N, K], ..., "combined": [N, K]}) of a DDESeg model in
    eval mode. "combined" is ``DDESegOutput.scores``, the weight a token carries into the last stage:
    the product of the stages' scores in the paper's reading (elimination from stage 2), the last
    stage's pooling weights in the released one (elimination at every stage, from stage 1)."""
    cache = activations(source, frames, SCORE_NAMES)
    stages = sorted(int(n.split(".")[0][len("stage"):]) for n in cache if n.endswith(".elimination.scores"))
    if "derivation.classes" not in cache or not stages:
        raise ValueError("the model has no derivation or no elimination: nothing to score")
    scores = {f"stage {s}": cache[f"stage{s}.elimination.scores"].float() for s in stages}
    values = list(scores.values())
    scores["combined"] = values[-1] if stages[0] == 1 else torch.stack(values).prod(dim=0)
    return cache["derivation.classes"], scores


def _pair_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(wins, pairs) of one frame: wins = #{s_pos > s_neg} + 0.5 #{s_pos = s_neg} over its pairs."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    if len(pos) == 0 or len(neg) == 0:
        return 0.0, 0
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).sum() + 0.5 * (diff == 0).sum()), diff.size


def within_frame_auc(scores: np.ndarray, labels: np.ndarray, groups: list, boot: int = 1000,
                     seed: int = 0) -> dict:
    """Within-frame paired AUC: the share of (positive, negative) token pairs of the same frame in
    which the positive scores higher (ties count half), over all frames' pairs together; ``labels``
    is 1 / 0 / -1 (left out) per token. ``scores`` and ``labels`` are [frames, K]; ``groups`` names
    each frame's clip. The 95 % interval is the percentile bootstrap over clips (clips are resampled
    with replacement, with all their frames), ``boot`` draws."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels)
    per_clip: dict = {}
    frames = 0
    for values, label, clip in zip(scores, labels, groups):
        wins, pairs = _pair_counts(values, label)
        if pairs:
            frames += 1
            w, p = per_clip.get(clip, (0.0, 0))
            per_clip[clip] = (w + wins, p + pairs)
    if not per_clip:
        return {"auc": None, "ci95": None, "frames": 0, "pairs": 0, "clips": 0}
    wins, pairs = np.array(list(per_clip.values())).T
    auc = float(wins.sum() / pairs.sum())
    low, high = cluster_bootstrap(wins, pairs, boot, seed)
    return {"auc": auc, "ci95": [low, high], "frames": frames, "pairs": int(pairs.sum()),
            "clips": len(wins)}


def score_spread(scores: torch.Tensor) -> dict:
    """How much the scores of one frame's K tokens differ, averaged over frames: the standard
    deviation across tokens, the range (max - min), and the standard deviation of log S (scale-free:
    the spread of the log-bias the tokens get in fusion). A per-frame gate has all three near 0."""
    s = scores.double()
    return {"std": float(s.std(dim=1).mean()), "range": float((s.max(1).values - s.min(1).values).mean()),
            "log_std": float(s.clamp_min(1e-30).log().std(dim=1).mean()), "mean": float(s.mean())}


def separation_of_tokens(tokens: torch.Tensor) -> dict:
    """For tokens [N, K, d] (N frames, K tokens each): ``within_frame``, the mean Euclidean distance
    between two tokens of one frame (over its K(K-1)/2 pairs, then over frames); ``norm``, the mean
    token norm; ``between_frames``, the mean distance between the mean tokens of two different
    frames (over all pairs of frames); ``ratio`` = within_frame / between_frames; ``cosine``, the
    mean cosine similarity between two tokens of one frame (1: the K tokens point one way)."""
    t = tokens.double()
    n, k, _ = t.shape
    pairs = torch.triu_indices(k, k, offset=1)
    within = torch.cdist(t, t)[:, pairs[0], pairs[1]].mean() if k > 1 else torch.tensor(float("nan"))
    unit = F.normalize(t, dim=2)
    cosine = (unit @ unit.transpose(1, 2))[:, pairs[0], pairs[1]].mean() if k > 1 else torch.tensor(float("nan"))
    means = t.mean(1)
    frame_pairs = torch.triu_indices(n, n, offset=1)
    between = torch.cdist(means, means)[frame_pairs[0], frame_pairs[1]].mean() if n > 1 else torch.tensor(float("nan"))
    return {"within_frame": float(within), "norm": float(t.norm(dim=2).mean()), "between_frames": float(between),
            "ratio": float(within / between), "cosine": float(cosine), "frames": n, "tokens": k}


def token_separation(source, frames: FrameSet) -> dict:
    """``separation_of_tokens`` of a DDESeg model's derived tokens on ``frames`` (eval mode): ``derived``
    after Eq. 8, ``enhanced`` after Eq. 12 (the tokens that elimination scores and fusion reads)."""
    cache = activations(source, frames, ["derivation.derived", "derivation.tokens"])
    if "derivation.tokens" not in cache:
        raise ValueError("the model has no derivation: it has no tokens to compare")
    return {"derived": separation_of_tokens(cache["derivation.derived"].float()),
            "enhanced": separation_of_tokens(cache["derivation.tokens"].float())}


def elimination_analysis(source, frames: FrameSet, boot: int = 1000, seed: int = 0) -> dict:
    """Per stage (and "combined"): ``pooled`` ROC AUC (on screen vs off screen only, tokens pooled
    across frames, as ``elimination_auc``), ``within_frame`` paired AUC with its bootstrap 95 %
    interval over clips and its frame and pair counts (on screen vs off screen only or silent), the
    same split by the kind of negative (``within_frame_offscreen``: off screen only;
    ``within_frame_silent``: silent or absent), and ``spread`` (``score_spread``)."""
    classes, stage_scores = stage_token_scores(source, frames)
    categories = token_categories(frames, classes)  # 0 on screen, 1 off screen only, 2 silent / absent
    pooled_labels = np.where(categories == 0, 1, np.where(categories == 1, 0, -1))
    paired_labels = (categories == 0).astype(int)
    silent_labels = np.where(categories == 1, -1, paired_labels)  # on screen against silent / absent only
    result = {}
    for name, scores in stage_scores.items():
        values = scores.numpy()
        keep = pooled_labels >= 0
        y, v = pooled_labels[keep], values[keep]
        pooled = float(roc_auc_score(y, v)) if 0 < y.sum() < len(y) else None
        result[name] = {"pooled": {"auc": pooled, "positives": int(y.sum()), "negatives": int((1 - y).sum())},
                        "within_frame": within_frame_auc(values, paired_labels, frames.clips, boot, seed),
                        # the two kinds of negative apart: off screen only (what elimination is for) and
                        # silent or absent (a token derivation got wrong, which the audio alone can flag)
                        "within_frame_offscreen": within_frame_auc(values, pooled_labels, frames.clips, boot, seed),
                        "within_frame_silent": within_frame_auc(values, silent_labels, frames.clips, boot, seed),
                        "spread": score_spread(scores)}
    return result


def _last_fusion_patterns(cache: ActivationCache) -> dict[int, str]:
    """{stage: the hook name of its last fusion block's cross-attention pattern}."""
    last_block = {}
    for name in cache:
        if name.endswith(".cross_attn.pattern"):
            stage = name.split(".")[0]
            last_block[int(stage[len("stage"):])] = name  # names come in forward order
    if "derivation.classes" not in cache or not last_block:
        raise ValueError("this analysis needs a model with derived tokens and fusion cross-attention (DDESeg, "
                         "variant='paper')")
    return dict(sorted(last_block.items()))


def _last_fusion_maps(source, frames: FrameSet) -> tuple[ActivationCache, dict[int, torch.Tensor]]:
    """(the cache, {stage: its last fusion block's attention, mean over heads [N, HW, K]})."""
    cache = activations(source, frames, ["derivation.classes", FUSION_ATTENTION])
    return cache, {stage: cache[name].float().mean(1) for stage, name in _last_fusion_patterns(cache).items()}


def _objects_and_tokens(classes: torch.Tensor, frames: FrameSet, source_size: int):
    """(frame index, class, region [S, S] bool, index of the first token derived for the class or
    None) for every object sounding on screen (``object_regions``)."""
    for index in range(len(classes)):
        for c, region in object_regions(frames, index, source_size).items():
            tokens = (classes[index] == c).nonzero().flatten()
            yield index, c, region, (int(tokens[0]) if len(tokens) else None)


def _cell_centre(cell: int, grid: tuple[int, int], side: tuple[int, int]) -> tuple[int, int]:
    """The pixel (y, x) of a [S, S] frame at the centre of cell ``cell`` (row-major) of an h x w grid:
    where a peak in that cell is read."""
    (h, w), (rows, cols) = grid, side
    return min(rows - 1, int((cell // w + 0.5) * rows / h)), min(cols - 1, int((cell % w + 0.5) * cols / w))


def _peak_pixels(column: torch.Tensor, grid: tuple[int, int], side: tuple[int, int]) -> list[tuple[int, int]]:
    """The pixels (y, x) of a [S, S] frame at the centres of the cells where a map [h*w] peaks: all
    cells tied at the peak (a flat map, or audio queries' weights saturated at 1), so a caller can
    share a hit among them as a peak drawn at random among them would (argmax alone picks the first)."""
    return [_cell_centre(peak, grid, side) for peak in (column == column.max()).nonzero().flatten().tolist()]


PEAK_PLACES = ("own object", "another sounding object", "a sounding object's box, off its mask",
               "a silent object's box", "background", "no token")


def _places(frames: FrameSet, index: int, c: int, source_size: int) -> torch.Tensor:
    """[S, S] int64: the index in PEAK_PLACES of every pixel of frame ``index`` seen from the
    sounding object of class ``c``: its own region, another sounding object's region, the rest of a
    sounding object's box, a silent object's box, the background; in that order of precedence where
    they overlap. The world records boxes for every object but outlines (the sounding mask) only
    for sounding ones, so a silent object can only be counted by its box; the third place counts
    the sounding objects' boxes the same way, so that the two kinds of object compare like for like
    (an overlap of the two goes to the sounding box, so the silent share is not inflated by it)."""
    regions = object_regions(frames, index, source_size)
    places = torch.full(frames.masks.shape[-2:], 4, dtype=torch.long)
    boxes = onscreen_boxes(frames, index, source_size)
    for _, sounds, box in boxes:
        if not sounds:
            places[box] = 3
    for _, sounds, box in boxes:
        if sounds:
            places[box] = 2
    for k, region in regions.items():
        if k != c:
            places[region] = 1
    places[regions[c]] = 0
    return places


def peak_places(source, frames: FrameSet, source_size: int) -> dict:
    """Where the map that ``pointing_accuracy`` reads peaks, when it does not peak on its own object.
    For each object sounding on screen and each stage, the peak of its class's token map (last fusion
    block, mean over heads; cells tied at the peak share the object) lands in one of PEAK_PLACES: the
    object itself (the pointing hit), another sounding object (the token confuses *which*), the rest
    of a sounding object's box (next to a source), a silent object's box (an object on screen that
    makes no sound in that frame, which in a world with pauses may be a source that is paused), or
    the background; "no token" counts the objects no token was derived for. Returns {"stage s":
    {place: share of the objects}, "chance": {place: the share of the frame each place covers,
    averaged over the same objects}, "objects": n}: a map peaking at a random cell lands in each
    place about as often as its "chance" (exactly, up to where the cell centres fall). Each stage's
    "own object" is ``pointing_accuracy``'s number."""
    cache, maps = _last_fusion_maps(source, frames)
    counts = {f"stage {stage}": dict.fromkeys(PEAK_PLACES, 0.0) for stage in maps}
    area = dict.fromkeys(PEAK_PLACES, 0.0)
    kinds = len(PEAK_PLACES) - 1  # every place but "no token" is a place in the frame
    objects = 0
    for index, c, region, token in _objects_and_tokens(cache["derivation.classes"], frames, source_size):
        objects += 1
        if token is None:
            for count in counts.values():
                count["no token"] += 1
            area["no token"] += 1
            continue
        places = _places(frames, index, c, source_size)
        for j, share in enumerate(torch.bincount(places.flatten(), minlength=kinds).float() / places.numel()):
            area[PEAK_PLACES[j]] += float(share)
        for stage, attention in maps.items():
            pixels = _peak_pixels(attention[index, :, token], cache.hw(stage), region.shape)
            for y, x in pixels:
                counts[f"stage {stage}"][PEAK_PLACES[int(places[y, x])]] += 1 / len(pixels)
    share = lambda count: {k: v / max(1, objects) for k, v in count.items()}  # noqa: E731
    return {**{stage: share(count) for stage, count in counts.items()}, "chance": share(area), "objects": objects}


def pointing_reach(source, frames: FrameSet, source_size: int) -> dict:
    """The most ``pointing_accuracy`` could read at each stage: the share of the objects sounding on
    screen that a perfect map could hit. A peak is read at its cell's centre, so an object none of
    whose cells has its centre on the object's mask (small or thin against a coarse grid) cannot be
    hit at that stage by any map, and an object whose class no token was derived for is a miss
    whatever the maps. Returns {"stage s": the share of objects with a token of their class and a
    cell centre on their mask, "geometry": {"stage s": the share with a cell centre on their mask,
    tokens aside}, "derived": as ``pointing_accuracy``'s, "objects": n}. Read a stage's pointing
    against its reach, not against 1: the gap between them is the maps', the gap above the reach
    is the grid's and the derivation's."""
    cache, maps = _last_fusion_maps(source, frames)
    reach, geometry = dict.fromkeys(maps, 0), dict.fromkeys(maps, 0)
    objects = derived = 0
    side = tuple(frames.masks.shape[-2:])
    centres = {}  # stage -> ([h*w] rows, [h*w] cols) of the cells' centre pixels
    for stage in maps:
        h, w = cache.hw(stage)
        centres[stage] = tuple(torch.tensor(axis) for axis in zip(*(_cell_centre(cell, (h, w), side) for cell in range(h * w))))
    for _, _, region, token in _objects_and_tokens(cache["derivation.classes"], frames, source_size):
        objects += 1
        derived += token is not None
        for stage in maps:
            hittable = bool(region[centres[stage]].any())
            geometry[stage] += hittable
            reach[stage] += hittable and token is not None
    share = lambda count: count / max(1, objects)  # noqa: E731
    return {**{f"stage {s}": share(n) for s, n in reach.items()},
            "geometry": {f"stage {s}": share(n) for s, n in geometry.items()},
            "derived": share(derived), "objects": objects}


def pointing_accuracy(source, frames: FrameSet, source_size: int) -> dict:
    """Does the fusion attend where the sound is? For each object sounding on screen, the last fusion
    block's cross-attention map (mean over heads) of the token derived for its class is taken at
    every stage; a hit is a map whose peak falls inside the object (``object_regions``; cells tied
    at the peak share the hit, so a flat map scores the share of its cells inside). An object
    whose class no token was derived for is a miss. Returns {"stage 1": accuracy, ...,
    "derived": share of objects with a token of their class, "objects": n, "chance": the accuracy of
    maps whose peaks fall at random (the share of the frame each object with a token covers,
    summed, over all n objects)}: the "own object" column of ``peak_places``, which also says where
    the misses went."""
    places = peak_places(source, frames, source_size)
    stages = {k: v["own object"] for k, v in places.items() if k.startswith("stage")}
    derived = 1 - places["chance"]["no token"] if places["objects"] else 0.0  # no object, none derived
    return {**stages, "derived": derived, "objects": places["objects"],
            "chance": places["chance"]["own object"]}


def attention_anatomy(source, frames: FrameSet, source_size: int, queries: str = "visual") -> dict:
    """Where the fusion's attention goes, around each object sounding on screen whose class has a
    token: per stage (the last fusion block, mean over heads), the mean weight a grid cell gives

    * ``own_inside`` / ``own_outside``: the token of the object's class, in cells inside the object
      (the object's share of the cell > 1/2) and in the other cells of the frame;
    * ``other_inside``: each of the frame's other tokens, in cells inside the object;
    * ``null_inside`` / ``null_outside``: the null key (1 - the sum over tokens; 0 for a model
      without one, ``fusion_null_key``).

    Attention that points has ``own_inside`` well above both ``own_outside`` and ``other_inside``.
    Attention that marks *where* sound is but not *which* token has ``own_inside`` close to
    ``other_inside``, and the null weight apart inside and outside.

    ``queries`` is the model's ``fusion_query``. With ``"audio"`` a token's weights are its own map
    over the frame (``mit.AudioCrossAttention``), not shares of a cell's attention, so a cell's
    weights need not sum to at most 1 and the null entries are None. Objects covering no cell or
    every cell of a stage's grid are left out of that stage (``objects`` counts the rest, so the
    stages compare different sets of objects: coarse grids keep only the large ones); a stage left
    with no object has None for every mean, and ``other_inside`` is None when K = 1."""
    if queries not in FUSION_QUERIES:
        raise ValueError(f"queries={queries!r}: the model's fusion_query, one of {FUSION_QUERIES}")
    cache, maps = _last_fusion_maps(source, frames)
    sums = {stage: {key: 0.0 for key in ("own_inside", "own_outside", "other_inside", "null_inside", "null_outside")}
            for stage in maps}
    objects, with_others = dict.fromkeys(maps, 0), dict.fromkeys(maps, 0)
    for index, _, region, token in _objects_and_tokens(cache["derivation.classes"], frames, source_size):
        if token is None:
            continue
        for stage, attention in maps.items():
            inside = cells_inside(region[None], cache.hw(stage))[0]  # [HW]
            if not inside.any() or inside.all():
                continue
            weights = attention[index]  # [HW, K]
            null = (1 - weights.sum(-1)).clamp_min(0)  # [HW]; rounding leaves -1e-7 without a null key
            others = torch.cat([weights[:, :token], weights[:, token + 1:]], 1)  # [HW, K-1]
            total = sums[stage]
            objects[stage] += 1
            total["own_inside"] += float(weights[inside, token].mean())
            total["own_outside"] += float(weights[~inside, token].mean())
            if others.shape[1]:  # K = 1 has no other token
                with_others[stage] += 1
                total["other_inside"] += float(others[inside].mean())
            total["null_inside"] += float(null[inside].mean())
            total["null_outside"] += float(null[~inside].mean())
    result = {}
    for stage, total in sums.items():
        counts = {k: with_others[stage] if k == "other_inside" else objects[stage] for k in total}
        if queries == "audio":  # no cell's attention is shared out among the tokens: no null share
            counts["null_inside"] = counts["null_outside"] = 0
        result[f"stage {stage}"] = {**{k: v / counts[k] if counts[k] else None for k, v in total.items()},
                                    "objects": objects[stage]}
    return result
