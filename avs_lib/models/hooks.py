"""Every activation by name: hook points, ``run_with_cache`` and ``run_with_hooks``.

A ``HookPoint`` is an identity module placed where a quantity a researcher asks about is computed
(TransformerLens's idea). It holds no parameters, so state dicts are unchanged, and it costs one
module call when nothing is attached. Each model names its hook points once, when it is built:

    names = hook_names(model)                               # every name, in forward order
    cache = run_with_cache(model, frames)                   # {name: tensor over all frames}, one pass
    cache["stage2.block0.cross_attn.pattern"]               # [N, heads, HW, K]
    with run_with_hooks(model, {"derivation.tokens": zero_token_0}):
        out = model(images, audio)                          # a "what if" without editing the model

A hook is ``fn(value) -> value | None``: returning a tensor replaces the activation, returning
None only reads it. Names (DDESeg; ``i`` is the 1-based stage, ``j`` the 0-based block):

| name | shape | what |
| --- | --- | --- |
| ``audio.input`` | [B, d_a] | F_a, the frame's audio feature |
| ``derivation.distances`` | [B, K] | distances to the K nearest class centres (Eq. 5's input) |
| ``derivation.classes`` | [B, K] | the memory classes chosen for the K tokens, nearest first |
| ``derivation.fusion_weights`` | [B, K] | Eq. 6 |
| ``derivation.derived`` | [B, K, d_a] | a_i, Eq. 8 |
| ``derivation.enhancement_weights`` | [B, K, k*m] | Eq. 10 (with enhancement) |
| ``derivation.tokens`` | [B, K, d_a] | the stage-1 tokens: a_hat (Eq. 12), or a_i without enhancement |
| ``stage{i}.visual`` | [B, C_i, h_i, w_i] | V^i, the stage's patch embedding, before elimination and fusion |
| ``stage{i}.elimination.logits`` | [B, N_i, Kc] | V C_v^T before the temperature (Eq. 13) |
| ``stage{i}.elimination.assignment`` | [B, N_i, Kc] | O, Eq. 13 |
| ``stage{i}.elimination.centres`` | [B, Kc or N_i, C_i] | Eq. 14's keys: refined centres or O C_v |
| ``stage{i}.elimination.attention`` | [B, heads, K, Kc or N_i] | Eq. 15's cross-attention, per head |
| ``stage{i}.elimination.scores`` | [B, K] | S, Eq. 16 |
| ``stage{i}.elimination.log_scores`` | [B, K] | log S |
| ``stage{i}.elimination.gate`` | [B, heads, N_i, 1] | released reading: the visual gate |
| ``stage{i}.audio`` | [B, K, d_a] | the audio tokens entering the stage's fusion (Eq. 17 applied under ``scale``) |
| ``stage{i}.log_bias`` | [B, K] | log-bias on each token's fusion logit, summed over stages (``log_bias``; with ``fusion_query="audio"`` its exp scales the token's write-back weights) |
| ``stage{i}.block{j}.cross_attn.pattern`` | [B, heads, N_i, K] | the fusion cross-attention, per head (``fusion_query="audio"``: each token's write-back weights, ``mit.AudioCrossAttention``) |
| ``stage{i}.features`` | [B, C_i, h_i, w_i] | the stage's fused map, the decoder's input |
| ``decoder.fine`` | [B, 16, H/2, W/2] | ``decoder_stride=2`` or 1 only: EfficientNet-Lite0's stride-2 map as the decoder's refinement reads it (replacing it leaves the encoder as it was) |
| ``decoder.logits`` | [B, outputs, h_1, w_1] | the decoder's prediction before upsampling (at H/2, W/2 with ``decoder_stride=2``, at H, W with 1) |
| ``logits`` | [B, H, W] or [B, C+1, H, W] | the masks' logits |

Elimination runs at stages 2-4 in the paper's reading and at 1-4 in the released one; a stage's
hook points exist only for what its scheme computes. AVSAC's names are listed in ``avsac.py``.

Cross-attention patterns (the fusion's and Eq. 15's) are computed explicitly, head by head, only
when a hook is attached to them; otherwise the layers run as before, so that attaching nothing
leaves every number unchanged. With a hook attached, the output equals the fused kernel's to
rounding (about 1e-6).
"""
from __future__ import annotations

import contextlib
import difflib
import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from avs_lib.data.transforms import normalise_images


class HookPoint(nn.Module):
    """An identity with a name; attach ``fn(value) -> value | None`` through ``run_with_hooks``."""

    def __init__(self):
        super().__init__()
        self.name: str | None = None

    @property
    def active(self) -> bool:
        """Whether anything is attached (layers compute what they would otherwise skip)."""
        return bool(self._forward_hooks)

    def forward(self, x):
        return x


def name_hook_points(module: nn.Module, prefix: str) -> None:
    """Name the ``hook_<what>`` HookPoint children of ``module`` ``<prefix>.<what>``."""
    for attribute, child in module.named_children():
        if isinstance(child, HookPoint) and attribute.startswith("hook_"):
            child.name = f"{prefix}.{attribute[len('hook_'):]}"


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """{name: hook point} of every named hook point in ``model``."""
    return {m.name: m for m in model.modules() if isinstance(m, HookPoint) and m.name is not None}


# the rank of each word of a name, so that names list in the order the forward pass meets them
_TOP_RANK = {"audio": 0, "derivation": 1, "stage": 2, "layer": 3, "fused": 4, "decoder": 5, "logits": 6}
_SUB_RANK = {"fine": -1, "input": 0, "projected": 1, "distances": 0, "classes": 1, "fusion_weights": 2, "derived": 3,
             "enhancement_weights": 4, "tokens": 5, "visual": 0, "elimination": 1, "audio": 2, "log_bias": 3,
             "block": 4, "features": 5, "logits": 0, "assignment": 1, "centres": 2, "attention": 3, "scores": 4,
             "log_scores": 5, "gate": 6, "audio_to_vision": 0, "agv": 1, "vision_to_audio": 2, "vga": 3}


def _forward_order(name: str) -> tuple:
    key = []
    for position, part in enumerate(name.split(".")):
        word = part.rstrip("0123456789")
        number = int(part[len(word):]) if part[len(word):] else -1
        key += [(_TOP_RANK if position == 0 else _SUB_RANK).get(word, 99), number]
    return tuple(key)


def hook_names(model: nn.Module, pattern: str = "*") -> list[str]:
    """The hook points' names that match ``pattern`` (an exact name or an ``fnmatch`` glob; by
    default every one), in the order the forward pass meets them. An empty list says the model has
    no such point: ``hook_names(model, "stage*.block*.cross_attn.pattern")`` is empty for AVSAC."""
    return sorted((n for n in hook_points(model) if fnmatch.fnmatchcase(n, pattern)), key=_forward_order)


def _resolve(model: nn.Module, patterns: Iterable[str], strict: bool = True) -> dict[str, HookPoint]:
    """Hook points whose names match ``patterns`` (exact names or ``fnmatch`` globs); an exact name
    that the model lacks is an error that lists the closest names (``strict``), a glob may match
    nothing (a model without elimination has no ``stage*.elimination.*``)."""
    points = hook_points(model)
    chosen: dict[str, HookPoint] = {}
    for pattern in patterns:
        matches = [n for n in points if fnmatch.fnmatchcase(n, pattern)]
        is_glob = any(ch in pattern for ch in "*?[")
        if not matches and (is_glob or not strict):
            continue
        if not matches:
            close = difflib.get_close_matches(pattern, list(points), n=5, cutoff=0.4)
            raise KeyError(f"no hook point named {pattern!r} in {type(model).__name__}; "
                           f"closest: {close or 'none'}; hook_names(model) lists all {len(points)}")
        chosen.update((n, points[n]) for n in matches)
    return chosen


@contextlib.contextmanager
def run_with_hooks(model: nn.Module, hooks: dict[str, Callable] | Iterable[tuple[str, Callable]]) -> Iterator[nn.Module]:
    """Attach ``{name_or_glob: fn}`` for the duration of the ``with`` block, then remove them, even
    on an error. ``fn(value)`` returns a replacement tensor or None (read only)."""
    pairs = list(hooks.items()) if isinstance(hooks, dict) else list(hooks)
    handles = []
    try:
        for pattern, fn in pairs:
            for point in _resolve(model, [pattern]).values():
                handles.append(point.register_forward_hook(lambda _m, _inputs, output, fn=fn: fn(output)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


class ActivationCache(dict):
    """{name: tensor [frames, ...]} from ``run_with_cache``; ``hw(stage)`` is stage's (h, w)."""

    stage_hw: dict[int, tuple[int, int]]

    def hw(self, stage: int) -> tuple[int, int]:
        if stage not in self.stage_hw:
            raise KeyError(f"stage {stage} has no feature map in this model (stages: {sorted(self.stage_hw)})")
        return self.stage_hw[stage]


def run_with_cache(model: nn.Module, frames, names: Iterable[str] | None = None, batch_size: int = 32,
                   indices=None, zero_audio: bool = False, hooks: dict[str, Callable] | None = None,
                   to: str | torch.device = "cpu", bf16: bool = False, progress: bool = False,
                   strict: bool = True) -> ActivationCache:
    """Run ``model`` in eval mode over ``frames`` (anything with ``images`` [N, 3, S, S] uint8 and
    ``audio`` [N, d], e.g. a ``FrameSet``) in one batched pass on the model's device, images
    normalised here, and return the named activations of every frame concatenated on ``to``.

    ``names``: exact names or globs (default: every hook point; ask for fewer on large models); an
    exact name the model lacks is an error unless ``strict=False``, a glob may match nothing.
    ``indices``: the frames to run (default all). ``hooks``: {name: fn} attached during the pass,
    so a cache can be taken of an intervened model. ``zero_audio``: F_a replaced by zeros. ``bf16``:
    under bf16 autocast (values are kept in the dtype they were computed in). ``cache.hw(stage)``
    gives each stage's (h, w) whatever names were asked for."""
    selected = _resolve(model, names if names is not None else ["*"], strict)
    device = next(model.parameters()).device
    order = torch.arange(len(frames.images)) if indices is None else torch.as_tensor(indices).reshape(-1)
    collected: dict[str, list[torch.Tensor]] = {}
    stage_hw: dict[int, tuple[int, int]] = {}

    def keep(name: str) -> Callable:
        def store(value):
            collected.setdefault(name, []).append(value.detach().to(to))
        return store

    def shape_of(name: str) -> Callable:  # (h, w) of every stage, without keeping its map
        def record(value):
            stage_hw[int(name.split(".")[0][len("stage"):])] = tuple(value.shape[-2:])
        return record

    shapes = {n: shape_of(n) for n in hook_names(model, "stage*.features")}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    was_training = model.training
    model.eval()
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="run_with_cache", unit="batch")
    try:
        with torch.no_grad(), autocast, run_with_hooks(model, [*(hooks or {}).items(), *shapes.items(),
                                                               *((n, keep(n)) for n in selected)]):
            for start in starts:
                batch = order[start:start + batch_size]
                images = normalise_images(frames.images[batch].to(device))
                audio = frames.audio[batch].to(device)
                model(images, torch.zeros_like(audio) if zero_audio else audio)
    finally:
        model.train(was_training)
    cache = ActivationCache()
    cache.stage_hw = stage_hw
    for name in hook_names(model):
        if name in collected:
            cache[name] = torch.cat(collected[name])
    return cache


def attend(attention: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           pattern: HookPoint, need_weights: bool, bias: torch.Tensor | None = None,
           null_key: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``attention(query, key, value)`` (batch first), with its per-head pattern [B, heads, Nq, Nk]
    passed through ``pattern``. ``bias`` [B, Nk] is added to every query's logit for key k, and
    ``null_key`` [C] is one more key (split over the heads) whose value is 0, its column dropped from
    the pattern (``mit.AudioCrossAttention`` says why). Without a hook, a bias or a null key the
    module runs as it always did (its fused kernel when ``need_weights`` is False); otherwise the
    attention is computed head by head, so that a replaced pattern changes the output. Returns
    (output, head-mean weights or None)."""
    if not pattern.active and bias is None and null_key is None:
        out, weights = attention(query, key, value, need_weights=need_weights)
        return out, weights
    b, n, c = query.shape
    logits, v = head_logits(attention, query, key, value, bias, null_key)
    weights = pattern(torch.softmax(logits, dim=-1)[..., :key.shape[1]])  # [B, h, Nq, Nk]; the null column's value is 0
    out = attention.out_proj((weights @ v).transpose(1, 2).reshape(b, n, c))
    return out, weights.mean(1) if need_weights else None


def head_logits(attention: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                bias: torch.Tensor | None = None,
                null_key: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``attention``'s scaled dot-product logits head by head, from its own projections: (logits
    [B, heads, Nq, Nk], with one more column for ``null_key``; the projected values [B, heads, Nv,
    C/heads]). ``bias`` [B, Nk] is added to every query's logit for key k; ``null_key`` [C] is one
    more key, split over the heads (``attend`` and ``mit.AudioCrossAttention`` give it the value 0)."""
    b, _, c = query.shape
    heads = attention.num_heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)
    split = lambda x: x.reshape(b, x.shape[1], heads, c // heads).transpose(1, 2)  # noqa: E731
    q, k, v = split(F.linear(query, w_q, b_q)), split(F.linear(key, w_k, b_k)), split(F.linear(value, w_v, b_v))
    logits = q @ k.transpose(-2, -1) / math.sqrt(c // heads)  # [B, h, Nq, Nk]
    if bias is not None:
        logits = logits + bias[:, None, None, :].to(logits.dtype)
    if null_key is not None:
        null = null_key.reshape(heads, 1, c // heads).to(q.dtype)  # [h, 1, c/h]
        logits = torch.cat([logits, q @ null.transpose(-2, -1) / math.sqrt(c // heads)], dim=-1)  # [B, h, Nq, Nk+1]
    return logits, v
