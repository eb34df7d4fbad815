"""Models: ``build_model(name, size=..., variant=..., **switches)``.

Names: ``"ddeseg"`` (full model; switches select Table 3/4 rows), ``"baseline"`` (DDESeg with no
derivation and no elimination: one audio token), ``"avsac"``.

Table 3 rows as ``ablation=``: ``"baseline"``, ``"derivation"``, ``"enhancement"`` (derivation +
enhancement), ``"full"`` (+ elimination).
"""
from __future__ import annotations

from torch import nn

from .avsac import AVSAC, AVSACConfig, AVSACOutput
from .ddeseg import DDESeg, DDESegConfig, DDESegOutput
from .hooks import ActivationCache, HookPoint, hook_names, run_with_cache, run_with_hooks

ABLATIONS = {
    "baseline": dict(derivation=False, enhancement=False, elimination="none"),
    "derivation": dict(derivation=True, enhancement=False, elimination="none"),
    "enhancement": dict(derivation=True, enhancement=True, elimination="none"),
    "full": dict(derivation=True, enhancement=True, elimination="gumbel_ca_fc"),
}
MODEL_NAMES = ("ddeseg", "baseline", "avsac")


def build_model(name: str, size: str = "tiny", variant: str = "paper", ablation: str | None = None,
                memory=None, **switches) -> nn.Module:
    """Build a model by name. ``memory`` (a ``SemanticMemory``) sets the audio dim, the memory's
    classes, k and m, and is copied into the model. Other keyword arguments are config fields
    (``DDESegConfig`` / ``AVSACConfig``)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {MODEL_NAMES}")
    if name == "avsac":
        if memory is not None:
            switches.setdefault("audio_dim", memory.dim)
        return AVSAC(AVSACConfig(size=size, **switches))
    if name == "baseline":
        ablation = "baseline"
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ValueError(f"unknown ablation {ablation!r}; choose one of {tuple(ABLATIONS)}")
        switches = {**ABLATIONS[ablation], **switches}
    if memory is not None:
        switches.update(audio_dim=memory.dim, memory_classes=len(memory.class_names), k=memory.k, m=memory.m)
    model = DDESeg(DDESegConfig(size=size, variant=variant, **switches))
    if memory is not None and model.derivation is not None:
        model.set_memory(memory)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> dict[str, int]:
    """Parameter counts per top-level child and in total."""
    counts = {}
    for child_name, child in model.named_children():
        counts[child_name] = sum(p.numel() for p in child.parameters() if p.requires_grad or not trainable_only)
    direct = sum(p.numel() for n, p in model.named_parameters(recurse=False) if p.requires_grad or not trainable_only)
    if direct:
        counts["(own)"] = direct
    counts["total"] = sum(counts.values())
    return counts


__all__ = ["build_model", "count_parameters", "DDESeg", "DDESegConfig", "DDESegOutput", "AVSAC", "AVSACConfig",
           "AVSACOutput", "ABLATIONS", "ActivationCache", "HookPoint", "hook_names", "run_with_cache",
           "run_with_hooks"]
