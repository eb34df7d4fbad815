"""What a training run needs before its first step (``prepare``): the frozen audio encoder, the memory, the
world-pretrained visual backbone when the config asks for it, and the three frame sets, from the caches where they exist.
"""
from __future__ import annotations

from dataclasses import dataclass

from avs_lib.audio.registry import audio_encoder_from_spec
from avs_lib.core.parallel import process_pool
from avs_lib.core.paths import workbench_path
from avs_lib.data.frames import FrameSet
from avs_lib.data.layouts import SEMANTIC_LAYOUTS
from avs_lib.data.loader import split_frames
from avs_lib.memory.build import SemanticMemory
from avs_lib.memory.io import build_world_memory, load_memory, load_memory_file
from avs_lib.models.visual_pretrain import WORLD_WEIGHTS, check_world_weights, resolve_backbone_weights


@dataclass
class Prepared:
    train: FrameSet
    val: FrameSet
    test: FrameSet
    memory: SemanticMemory
    num_classes: int
    audio_encoder: object = None  # what embedded the frames (train_clips=fresh embeds each epoch's new clips with it)
    backbone_weights: str | None = None  # switches.pretrained_backbone=world: the world's pretrained Lite0 file

    def split(self, name: str) -> FrameSet:
        """The frames of split ``name``: "train", "val" or "test"."""
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def prepare(config, progress: bool = False, backbone: bool = True, workers: int = 1) -> Prepared:
    """The frozen audio encoder, the memory (config.k, config.m) and the three splits of
    ``config.layout`` for a ``TrainConfig``, from the caches where they exist; with ``backbone``,
    also the world's pretrained Lite0 when ``switches.pretrained_backbone`` is ``world``
    (``backbone=False``: a checkpoint will give every weight). ``workers`` > 1: the frames held in
    memory are decoded by that many processes (``avs ablation --parallel`` on a many-core machine)."""
    data_root = workbench_path(config.data_root)
    cache = workbench_path(config.cache_dir) if config.cache_dir else data_root / "cache"
    memory_root = workbench_path(config.memory_root) if config.memory_root else data_root
    memory_file = workbench_path(config.memory_file) if config.memory_file else None
    given = load_memory_file(memory_file, config) if memory_file else None  # checked before the encoder's minutes
    world_weights = backbone and (config.switches or {}).get("pretrained_backbone") == WORLD_WEIGHTS
    if world_weights:  # refused before the encoder's minutes where it cannot work
        check_world_weights(config.switches, data_root)
    encoder, classes, encoder_id = audio_encoder_from_spec(config.audio_encoder, memory_root, cache, config.audio_dim,
                                                           config.encoder_epochs, progress=progress)
    if given is not None:  # read again, now with the data's classes (a memory file is small)
        memory = load_memory(memory_file, class_names=classes, dim=config.audio_dim,
                             drop_background="background" not in classes)
    else:
        memory = build_world_memory(memory_root, encoder, encoder_id, cache, config.k, config.m, seed=0,
                                    progress=progress)
    # switches.pretrained_backbone=world: the world's pretrained Lite0 (avs_lib.models.visual_pretrain), cached
    backbone_weights = (resolve_backbone_weights(config.switches, data_root, cache, config.image_size,
                                                 config.visual_pretrain_steps, progress=progress)["pretrained_backbone"]
                        if world_weights else None)
    # held in memory or streamed from disk, by size (config.loader; avs_lib.data.loader)
    with process_pool(workers) as pool:  # one pool for the three splits' frames
        sets = [split_frames(config, data_root, split, encoder, encoder_id, cache, progress, pool)
                for split in ("train", "val", "test")]
    num_classes = len(classes) + 1 if config.layout in SEMANTIC_LAYOUTS else 1
    return Prepared(*sets, memory=memory, num_classes=num_classes, audio_encoder=encoder,
                    backbone_weights=backbone_weights)
