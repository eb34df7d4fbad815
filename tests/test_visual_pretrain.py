"""The world's visual pretraining: the stream's labels and draws, a short pretraining whose file
loads strictly into Lite0, the cache, and a training that asks for it with
switches.pretrained_backbone=world."""
import copy
import json

import numpy as np
import pytest
import torch

from avs_lib.core.config import load_config
from avs_lib.core.errors import ConfigError
from avs_lib.models import visual_pretrain as vp
from avs_lib.models.efficientnet import efficientnet_lite0
from avs_lib.world.compose import WorldConfig, compose_clip, heldout_member_names

TINY = dict(steps=3, batch_size=4, image_size=32, warmup_steps=1, log_every=1)


def test_semantic_map_labels_every_object_on_screen(procedural_world):
    cfg, _ = procedural_world
    from avs_lib.world.assets import load_library

    library = load_library(cfg.kind, cfg.sample_rate, warn_on_fallback=False)
    clip = compose_clip(library, "ms3", 0, cfg)
    labels = vp.semantic_map(clip.instance_map, clip.sources)
    assert np.array_equal(labels > 0, clip.instance_map >= 0)  # every visible object, nothing else
    assert (clip.binary_masks() <= (labels > 0)).all()  # the sounding ones among them
    silent = [s for s in clip.sources if s.on_screen and not s.sounding]
    assert silent, "an ms3 clip shows at least one silent object"
    for source in clip.sources:
        if source.on_screen:
            pixels = clip.instance_map == source.instance
            assert pixels.any() and (labels[pixels] == source.class_index + 1).all()


def test_stream_is_a_function_of_the_step_and_draws_training_clips_only(procedural_world, monkeypatch):
    cfg, _ = procedural_world
    from avs_lib.world.assets import load_library

    library = load_library(cfg.kind, cfg.sample_rate, warn_on_fallback=False)
    world = WorldConfig(**{**cfg.__dict__, "holdout_members": 1})
    held = {(c, m) for c, members in heldout_member_names(library, world).items() for m in members}
    assert held, "the procedural library holds members out"
    splits, shown = [], []
    real = vp.compose_clip

    def recording(*args):
        clip = real(*args)
        splits.append(clip.split)
        shown.extend((s.class_name, s.member) for s in clip.sources)
        return clip

    monkeypatch.setattr(vp, "compose_clip", recording)
    stream = vp.FrameStream(library, world, vp.VisualPretrainConfig(batch_size=8, image_size=24))
    pixels, labels = stream.batch(5)
    again_pixels, again_labels = stream.batch(5)
    other_pixels, _ = stream.batch(6)
    assert pixels.shape == (8, 3, 24, 24) and labels.shape == (8, 24, 24)
    assert torch.equal(pixels, again_pixels) and torch.equal(labels, again_labels)
    assert not torch.equal(pixels, other_pixels)
    assert int(labels.max()) <= len(library.classes) and int(labels.min()) >= 0
    assert splits and set(splits) == {"train"}
    for step in range(7, 12):
        stream.batch(step)
    assert len(shown) > 60 and not held & set(shown)  # the world's held-out members, not the draws' own


def test_the_cache_key_follows_what_the_weights_depend_on(procedural_world):
    cfg, _ = procedural_world
    from avs_lib.world.assets import load_library

    library = load_library(cfg.kind, cfg.sample_rate, warn_on_fallback=False)
    base = vp.pretrain_key(library, cfg, vp.VisualPretrainConfig())
    assert base == vp.pretrain_key(library, cfg, vp.VisualPretrainConfig())
    changed = [vp.pretrain_key(library, cfg, vp.VisualPretrainConfig(image_size=64)),
               vp.pretrain_key(library, cfg, vp.VisualPretrainConfig(steps=10)),
               vp.pretrain_key(library, WorldConfig(**{**cfg.__dict__, "seed": cfg.seed + 1}), vp.VisualPretrainConfig())]
    quieter = copy.deepcopy(library)
    member = quieter.classes[0].members[0]
    member.sounds = [sound[: len(sound) // 2] for sound in member.sounds]  # draws depend on the recordings' lengths
    changed.append(vp.pretrain_key(quieter, cfg, vp.VisualPretrainConfig()))
    assert len({base, *changed}) == 1 + len(changed)


def test_short_pretraining_saves_a_strictly_loadable_lite0_and_is_cached(small_world, tmp_path, monkeypatch, capsys):
    _, _, root = small_world
    from avs_lib.cli import main

    assert main(["pretrain-visual", "--world", str(root), "--cache", str(tmp_path), "--steps", "3",
                 "--image-size", "32", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    path = tmp_path / printed["file"].split("/")[-1]
    assert path.exists() and printed["steps"] == 3
    assert set(printed["held_frames"]["after"]) == {"pixel_accuracy", "object_pixel_accuracy", "mean_iou"}

    imagenet = efficientnet_lite0(pretrained=True).state_dict()
    loaded = efficientnet_lite0(pretrained=path)  # strict: raises on any missing or extra tensor
    assert loaded.load_report.ok and not loaded.load_report.unexpected
    state = loaded.state_dict()
    assert not torch.equal(state["_blocks.0._depthwise_conv.weight"], imagenet["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(state["_fc.weight"], imagenet["_fc.weight"])  # the classifier is never trained

    def no_training(*args, **kwargs):
        raise AssertionError("a cached file must not be pretrained again")

    monkeypatch.setattr(vp, "pretrain_backbone", no_training)
    again, record = vp.pretrained_backbone_file(root, tmp_path, vp.VisualPretrainConfig(steps=3, image_size=32))
    assert again == path and record["config"]["steps"] == 3
    assert not list(tmp_path.glob("*.partial"))


def test_pretraining_is_deterministic_for_a_seed(procedural_world):
    cfg, _ = procedural_world
    from avs_lib.world.assets import load_library

    library = load_library(cfg.kind, cfg.sample_rate, warn_on_fallback=False)
    first, history, _ = vp.pretrain_backbone(library, cfg, vp.VisualPretrainConfig(**TINY))
    second, again, _ = vp.pretrain_backbone(library, cfg, vp.VisualPretrainConfig(**TINY))
    assert [h["loss"] for h in history] == [h["loss"] for h in again]
    a, b = first.state_dict(), second.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_world_weights_are_refused_where_they_cannot_exist(procedural_world, tmp_path, monkeypatch):
    from avs_lib.training import prepare as preparing

    _, root = procedural_world
    monkeypatch.setattr(preparing, "audio_encoder_from_spec", lambda *a, **k: pytest.fail("refused after the encoder"))
    config = load_config(None, [f"data_root={tmp_path}", "switches.backbone=efficientnet_lite0",
                                "switches.pretrained_backbone=world"])
    with pytest.raises(ConfigError, match="no world.json"):
        preparing.prepare(config)
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        vp.resolve_backbone_weights({"pretrained_backbone": "world"}, root, tmp_path, 32)
    with pytest.raises(ConfigError, match="no world.json"):
        vp.resolve_backbone_weights({"pretrained_backbone": "world", "backbone": "efficientnet_lite0"}, tmp_path,
                                    tmp_path, 32)
    other = {"pretrained_backbone": True, "backbone": "efficientnet_lite0"}
    assert vp.resolve_backbone_weights(other, root, tmp_path, 32) is other
    with pytest.raises(ValueError, match="resolve"):
        efficientnet_lite0(pretrained="world")


def test_training_with_world_weights_starts_from_the_cached_file(notebook_world, tmp_path, monkeypatch):
    from avs_lib.training.predict import make_model
    from avs_lib.training.prepare import prepare

    monkeypatch.setattr(vp, "default_pretrain_config",
                        lambda size, steps: vp.VisualPretrainConfig(**{**TINY, "image_size": size, "steps": steps}))
    config = load_config(None, ["visual_pretrain_steps=2", f"data_root={notebook_world}", "layout=ms3", "image_size=32", "audio_encoder=oracle",
                                "k=2", "m=2", f"cache_dir={tmp_path}", "progress=false", "device=cpu",
                                "switches.backbone=efficientnet_lite0", "switches.pretrained_backbone=world"])
    prepared = prepare(config)
    assert prepared.backbone_weights and prepared.backbone_weights.startswith(str(tmp_path))
    blob = torch.load(prepared.backbone_weights, weights_only=False)
    assert blob["meta"]["config"]["steps"] == 2 and blob["meta"]["config"]["image_size"] == 32
    file_state = blob["state_dict"]
    model = make_model(config, prepared)
    weight = "_blocks.3._depthwise_conv.weight"
    assert torch.equal(model.encoder.cnn.state_dict()[weight], file_state[weight])
    # a checkpoint holds every weight: loading one reads no pretrained start, nor pretrains one
    def no_pretraining(*args, **kwargs):
        raise AssertionError("loading a checkpoint must not pretrain")

    monkeypatch.setattr(vp, "pretrained_backbone_file", no_pretraining)
    assert prepare(config, backbone=False).backbone_weights is None
    assert make_model(config, prepared, pretrained=False) is not None
