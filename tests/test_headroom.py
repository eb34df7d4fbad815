"""The headroom instruments: the oracle audio inputs (ceiling) and their refusal where no sources exist."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from avs_lib.audio.registry import OracleAudio
from avs_lib.core.config import load_config
from avs_lib.core.errors import ConfigError
from avs_lib.data.datasets import AVSDataset, load_sources
from avs_lib.training.prepare import prepare


def _expected_rows(root, layout, heard: bool, n_classes: int) -> np.ndarray:
    """Multi-hot rows computed from the sources file directly, one per record."""
    sources = load_sources(root, layout)
    rows = []
    for record in AVSDataset(root, layout).records:
        row = np.zeros(n_classes)
        for s in sources[record.clip]["sources"]:
            if s["sounding"] and (s["on_screen"] or heard):
                row[s["class_index"]] = 1
        rows.append(row)
    return np.stack(rows)


@pytest.mark.parametrize("spec", ["oracle", "oracle-heard"])
def test_oracle_rows_are_the_sounding_classes(notebook_world, spec):
    classes = json.loads((notebook_world / "world.json").read_text())["classes"]
    oracle = OracleAudio(spec, notebook_world)
    rows = oracle.embed(AVSDataset(notebook_world, "ms3"))
    expected = _expected_rows(notebook_world, "ms3", spec == "oracle-heard", len(classes))
    assert rows.shape == expected.shape
    np.testing.assert_allclose(rows, expected, atol=1e-2)  # the jitter is 1e-3
    assert np.abs(rows - expected).max() > 0  # jittered, so Eq. 3's sub-clusters exist
    np.testing.assert_array_equal(rows, oracle.embed(AVSDataset(notebook_world, "ms3")))  # deterministic


def test_oracle_heard_adds_the_offscreen_sources(notebook_world):
    on_screen = OracleAudio("oracle", notebook_world).embed(AVSDataset(notebook_world, "ms3")).round()
    heard = OracleAudio("oracle-heard", notebook_world).embed(AVSDataset(notebook_world, "ms3")).round()
    assert (heard >= on_screen).all()
    sources = load_sources(notebook_world, "ms3")
    with_offscreen = sum(any(not s["on_screen"] and s["sounding"] for s in r["sources"]) for r in sources.values())
    assert with_offscreen > 0 and (heard.sum() > on_screen.sum())


def test_oracle_through_prepare_builds_one_hot_centres(notebook_world, tmp_path):
    config = load_config(None, [f"data_root={notebook_world}", "layout=ms3", "image_size=32", "audio_encoder=oracle",
                                "k=2", "m=2", f"cache_dir={tmp_path / 'cache'}", "progress=false"])
    prepared = prepare(config)
    n_classes = len(prepared.memory.class_names)
    assert prepared.memory.dim == n_classes == prepared.train.audio.shape[1]
    np.testing.assert_allclose(prepared.memory.centroids.numpy(), np.eye(n_classes), atol=1e-2)  # Eq. 2


def test_oracle_refused_without_sources(tmp_path):
    (tmp_path / "Single-source").mkdir()
    with pytest.raises(ConfigError, match="no world.json.*AVSBench"):
        OracleAudio("oracle", tmp_path)


def test_per_frame_scores_and_clip_interval():
    import torch

    from avs_lib.analysis.metrics import jf_with_interval, per_frame_scores

    masks = torch.zeros(3, 4, 4, dtype=torch.long)
    masks[0, :2] = 1  # 8 pixels
    masks[1, 0, 0] = 1
    logits = torch.full((3, 4, 4), -9.0)
    logits[0, :1] = 9  # 4 of the 8: IoU 0.5, precision 1, recall 0.5
    logits[1, 0, 0] = 9  # exact
    j, f = per_frame_scores(logits, masks)  # frame 2: empty truth, empty prediction -> 1
    np.testing.assert_allclose(j.numpy(), [0.5, 1.0, 1.0])
    np.testing.assert_allclose(f[0].item(), 1.3 * 0.5 / (0.3 + 0.5), rtol=1e-6)
    result = jf_with_interval(logits, masks, ["a", "a", "b"])
    assert result["clips"] == 2 and result["frames"] == 3
    low, high = result["ci95"]
    assert low <= result["JF"] <= high
    assert low >= (0.5 + f[0].item()) / 2 - 1e-9 and high <= 1.0 + 1e-9  # resampling clips, never single frames


def _one_frame_with_sources():
    import torch

    from avs_lib.data.frames import FrameSet

    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, 0:4, 0:4] = 1  # object of class 2, box (0, 0, 8, 8) in a 16 px world
    masks[0, 4:8, 4:8] = 1  # object of class 5, box (8, 8, 16, 16)
    sources = {"c": {"sources": [
        {"class_index": 2, "sounding": True, "on_screen": True, "bboxes": [[0, 0, 8, 8]]},
        {"class_index": 5, "sounding": True, "on_screen": True, "bboxes": [[8, 8, 16, 16]]},
        {"class_index": 7, "sounding": True, "on_screen": False, "bboxes": None}]}}
    return FrameSet(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), masks, torch.ones(1, dtype=torch.bool),
                    torch.zeros(1, 4), ["c"], [0], ["x"], sources)


def test_object_regions_split_the_mask_by_box():
    from avs_lib.analysis.inspect import object_regions

    regions = object_regions(_one_frame_with_sources(), 0, source_size=16)
    assert set(regions) == {2, 5}
    assert regions[2].sum() == 16 and regions[2][:4, :4].all()
    assert regions[5].sum() == 16 and regions[5][4:, 4:].all()


def test_pointing_accuracy_counts_peaks_inside_objects():
    import torch

    from avs_lib.analysis.inspect import pointing_accuracy
    from avs_lib.models.hooks import ActivationCache

    frames = _one_frame_with_sources()
    # two tokens (classes 2 and 9) on a 2x2 grid, one head: token 0 peaks top-left (class 2's object)
    pattern = torch.zeros(1, 1, 4, 2)
    pattern[0, 0, 0, 0] = 1.0  # cell (0, 0): inside class 2's object
    pattern[0, 0, 3, 1] = 1.0
    cache = ActivationCache({"derivation.classes": torch.tensor([[2, 9]]), "stage1.block0.cross_attn.pattern": pattern})
    cache.stage_hw = {1: (2, 2)}
    result = pointing_accuracy(cache, frames, source_size=16)
    assert result["objects"] == 2
    assert result["derived"] == 0.5  # class 5 has no token: a miss
    assert result["stage 1"] == 0.5


def test_pointing_shares_a_hit_among_cells_tied_at_the_peak():
    import pytest
    import torch

    from avs_lib.analysis.inspect import pointing_accuracy
    from avs_lib.models.hooks import ActivationCache

    frames = _one_frame_with_sources()
    # class 2's token: weights saturated at 1 in cell (0, 0), inside its object, and in cell (1, 1),
    # outside it; argmax alone would always take the first cell and score a hit
    pattern = torch.zeros(1, 1, 4, 2)
    pattern[0, 0, [0, 3], 0] = 1.0
    pattern[0, 0, 3, 1] = 1.0
    cache = ActivationCache({"derivation.classes": torch.tensor([[2, 5]]), "stage1.block0.cross_attn.pattern": pattern})
    cache.stage_hw = {1: (2, 2)}
    # class 2: half a hit; class 5's object fills cell (1, 1), where its token peaks: a hit
    assert pointing_accuracy(cache, frames, source_size=16)["stage 1"] == pytest.approx((0.5 + 1) / 2)


def test_pointing_reach_is_what_a_perfect_map_could_hit():
    import pytest
    import torch

    from avs_lib.analysis.inspect import pointing_accuracy, pointing_reach
    from avs_lib.models.hooks import ActivationCache

    frames = _one_frame_with_sources()
    frames.masks[0, 4:8, 4:8] = 0
    frames.masks[0, 4, 4:8] = 1  # class 5 sounds in one row of its box only
    # a 2x2 grid reads its peaks at pixels (2, 2), (2, 6), (6, 2), (6, 6) of the 8 px frame: class 2's
    # object holds (2, 2), class 5's row holds none; an 8x8 grid reads every pixel
    cache = ActivationCache({"derivation.classes": torch.tensor([[2, 9]]),
                             "stage1.block0.cross_attn.pattern": torch.rand(1, 1, 4, 2),
                             "stage2.block0.cross_attn.pattern": torch.rand(1, 1, 64, 2)})
    cache.stage_hw = {1: (2, 2), 2: (8, 8)}
    reach = pointing_reach(cache, frames, source_size=16)
    assert reach["objects"] == 2 and reach["derived"] == 0.5
    assert reach["geometry"] == {"stage 1": 0.5, "stage 2": 1.0}
    assert reach["stage 1"] == 0.5 and reach["stage 2"] == 0.5  # class 5 has no token either way
    cache["derivation.classes"] = torch.tensor([[2, 5]])
    reach = pointing_reach(cache, frames, source_size=16)
    assert reach["stage 1"] == 0.5 and reach["stage 2"] == 1.0
    # no map scores above its stage's reach; the map peaking on each object's row scores it
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        for stage, cells in ((1, 4), (2, 64)):
            cache[f"stage{stage}.block0.cross_attn.pattern"] = torch.rand(1, 1, cells, 2, generator=generator)
        pointing = pointing_accuracy(cache, frames, source_size=16)
        assert all(pointing[f"stage {s}"] <= reach[f"stage {s}"] + 1e-9 for s in (1, 2))
    best = torch.zeros(1, 1, 64, 2)
    best[0, 0, 0, 0] = 1.0  # pixel (0, 0): class 2's object
    best[0, 0, 4 * 8 + 5, 1] = 1.0  # pixel (4, 5): class 5's row
    cache["stage2.block0.cross_attn.pattern"] = best
    coarse = torch.zeros(1, 1, 4, 2)
    coarse[0, 0, 0, 0] = 1.0  # cell (0, 0), centre (2, 2): class 2's object; class 5's row holds no centre
    coarse[0, 0, 3, 1] = 1.0
    cache["stage1.block0.cross_attn.pattern"] = coarse
    pointing = pointing_accuracy(cache, frames, source_size=16)
    assert pointing["stage 2"] == pytest.approx(reach["stage 2"])
    assert pointing["stage 1"] == pytest.approx(reach["stage 1"])


def test_pointing_reach_reads_cell_centres_not_cell_majorities():
    import torch

    from avs_lib.analysis.inspect import pointing_reach
    from avs_lib.models.hooks import ActivationCache

    # a 4x4 grid of 2x2-pixel cells on the 8 px frame reads its peaks at pixels 1, 3, 5, 7 of each axis
    frames = _one_frame_with_sources()
    frames.masks.zero_()
    frames.masks[0, 1, 1] = 1  # class 2: a quarter of cell (0, 0), its centre pixel
    frames.masks[0, 4, 4] = frames.masks[0, 4, 5] = frames.masks[0, 5, 4] = 1  # class 5: 3/4 of cell (2, 2), not (5, 5)
    # class 5 has no token, so the reach counts class 2 alone: a centre rule gives it, a rule of
    # majorities would count class 5's cell instead and leave nothing with a token
    cache = ActivationCache({"derivation.classes": torch.tensor([[2, 9]]),
                             "stage1.block0.cross_attn.pattern": torch.rand(1, 1, 16, 2)})
    cache.stage_hw = {1: (4, 4)}
    reach = pointing_reach(cache, frames, source_size=16)
    assert reach["geometry"] == {"stage 1": 0.5} and reach["stage 1"] == 0.5


def test_peak_places_say_where_each_miss_lands():
    import pytest
    import torch

    from avs_lib.analysis.inspect import peak_places, pointing_accuracy
    from avs_lib.models.hooks import ActivationCache

    frames = _one_frame_with_sources()
    # a silent object of class 3 in the top-right quadrant (its box only: silent objects have no mask)
    frames.sources["c"]["sources"].append(
        {"class_index": 3, "sounding": False, "on_screen": True, "bboxes": [[8, 0, 16, 8]]})
    # 2x2 grid, one head; the quadrants are cells 0 (class 2), 1 (silent class 3), 2 (background), 3 (class 5)
    pattern = torch.zeros(1, 1, 4, 2)
    pattern[0, 0, 1, 0] = 1.0  # class 2's token peaks on the silent object
    pattern[0, 0, [0, 2], 1] = 1.0  # class 5's token: tied on class 2's object and the background
    cache = ActivationCache({"derivation.classes": torch.tensor([[2, 5]]), "stage1.block0.cross_attn.pattern": pattern})
    cache.stage_hw = {1: (2, 2)}
    places = peak_places(cache, frames, source_size=16)
    assert places["objects"] == 2
    ring = "a sounding object's box, off its mask"
    assert places["stage 1"] == pytest.approx({"own object": 0.0, "another sounding object": 0.25, ring: 0.0,
                                               "a silent object's box": 0.5, "background": 0.25, "no token": 0.0})
    # each object sees its own quadrant, the other object's, the silent box and the background; the
    # sounding objects fill their boxes, so no box is left off a mask
    assert places["chance"] == pytest.approx({"own object": 0.25, "another sounding object": 0.25, ring: 0.0,
                                              "a silent object's box": 0.25, "background": 0.25, "no token": 0.0})
    assert places["stage 1"]["own object"] == pointing_accuracy(cache, frames, source_size=16)["stage 1"]
    # a token for class 9 instead of 5: class 5's object counts as "no token", at every stage and in chance
    cache["derivation.classes"] = torch.tensor([[2, 9]])
    places = peak_places(cache, frames, source_size=16)
    assert places["stage 1"]["no token"] == 0.5 and places["chance"]["no token"] == 0.5
    assert places["stage 1"]["a silent object's box"] == 0.5 and sum(places["stage 1"].values()) == pytest.approx(1)


def test_peak_places_give_overlaps_to_the_sounding_objects():
    import pytest
    import torch

    from avs_lib.analysis.inspect import peak_places
    from avs_lib.data.frames import FrameSet
    from avs_lib.models.hooks import ActivationCache

    # an 8 px frame of a 16 px world: class 2's box is rows/cols 0-3 but it sounds only in rows 0-1;
    # class 5 fills its box, rows/cols 4-7; a silent class 3's box, rows/cols 2-5, overlaps the rest
    # of class 2's box (rows 2-3, cols 2-3), class 5 (rows/cols 4-5) and the background
    masks = torch.zeros(1, 8, 8, dtype=torch.long)
    masks[0, 0:2, 0:4] = 1
    masks[0, 4:8, 4:8] = 1
    sources = {"c": {"sources": [
        {"class_index": 2, "sounding": True, "on_screen": True, "bboxes": [[0, 0, 8, 8]]},
        {"class_index": 5, "sounding": True, "on_screen": True, "bboxes": [[8, 8, 16, 16]]},
        {"class_index": 3, "sounding": False, "on_screen": True, "bboxes": [[4, 4, 12, 12]]}]}}
    frames = FrameSet(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), masks, torch.ones(1, dtype=torch.bool),
                      torch.zeros(1, 4), ["c"], [0], ["x"], sources)
    pattern = torch.zeros(1, 1, 64, 2)  # an 8 x 8 grid: cell = pixel
    pattern[0, 0, [2 * 8 + 2, 5 * 8 + 5], 0] = 1.0  # class 2's token: class 2's box off its mask, and class 5
    pattern[0, 0, [4 * 8 + 4, 3 * 8 + 4], 1] = 1.0  # class 5's token: its own object, and the silent box alone
    cache = ActivationCache({"derivation.classes": torch.tensor([[2, 5]]), "stage1.block0.cross_attn.pattern": pattern})
    cache.stage_hw = {1: (8, 8)}
    places = peak_places(cache, frames, source_size=16)
    ring = "a sounding object's box, off its mask"
    assert places["stage 1"] == pytest.approx({"own object": 0.25, "another sounding object": 0.25, ring: 0.25,
                                               "a silent object's box": 0.25, "background": 0.0, "no token": 0.0})
    # pixels of the 64, seen from class 2 then class 5: own 8 | 16, other 16 | 8, the rest of class 2's
    # box 8 | 8, the silent box less its overlaps 8 | 8, background 24 | 24
    assert places["chance"] == pytest.approx({"own object": 24 / 128, "another sounding object": 24 / 128,
                                              ring: 16 / 128, "a silent object's box": 16 / 128,
                                              "background": 48 / 128, "no token": 0.0})


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([(2, 2), (4, 4), (8, 8), (3, 5)]))
def test_peak_places_partition_the_objects_and_agree_with_pointing(seed, grid):
    import pytest
    import torch

    from avs_lib.analysis.inspect import peak_places, pointing_accuracy
    from avs_lib.analysis.truth import object_regions
    from avs_lib.models.hooks import ActivationCache

    frames = _one_frame_with_sources()
    frames.sources["c"]["sources"].append(
        {"class_index": 3, "sounding": False, "on_screen": True, "bboxes": [[6, 0, 16, 10]]})
    generator = torch.Generator().manual_seed(seed)
    h, w = grid
    # coarse values, so that ties at the peak happen
    pattern = torch.randint(0, 3, (1, 2, h * w, 2), generator=generator).float()
    cache = ActivationCache({"derivation.classes": torch.tensor([[2, 5]]), "stage1.block0.cross_attn.pattern": pattern})
    cache.stage_hw = {1: grid}
    places = peak_places(cache, frames, source_size=16)
    assert sum(places["stage 1"].values()) == pytest.approx(1)
    assert sum(places["chance"].values()) == pytest.approx(1)
    # the own object's chance is the mean share of the frame an object covers, pointing_accuracy's chance
    regions = object_regions(frames, 0, 16)
    chance = sum(float(r.float().mean()) for r in regions.values()) / len(regions)
    assert places["chance"]["own object"] == pytest.approx(chance)
    assert pointing_accuracy(cache, frames, 16)["chance"] == pytest.approx(chance)


def test_pointing_chance_is_the_mean_object_share():
    import pytest
    import torch

    from avs_lib.analysis.inspect import pointing_accuracy
    from avs_lib.models.hooks import ActivationCache

    frames = _one_frame_with_sources()
    frames.masks[0, 4:8, 4:6] = 0  # class 5's object now covers 8 of the 64 px, class 2's 16
    uniform = torch.full((1, 1, 4, 2), 0.25)
    for classes, chance in (([2, 5], (16 + 8) / 64 / 2), ([2, 9], 16 / 64 / 2), ([5, 9], 8 / 64 / 2)):
        # an object without a token is a miss, whatever the maps do: it adds nothing to chance
        cache = ActivationCache({"derivation.classes": torch.tensor([classes]), "stage1.block0.cross_attn.pattern": uniform})
        cache.stage_hw = {1: (2, 2)}
        assert pointing_accuracy(cache, frames, source_size=16)["chance"] == pytest.approx(chance)


def test_attention_anatomy_splits_own_other_and_null_weights():
    import pytest
    import torch

    from avs_lib.analysis.inspect import attention_anatomy
    from avs_lib.models.hooks import ActivationCache

    # 2x2 grid; class 2's object fills cell (0, 0), class 5 has no token (left out), token 1 is class 9
    pattern = torch.tensor([[0.6, 0.3], [0.2, 0.5], [0.1, 0.4], [0.1, 0.0]])[None, None]  # [1, 1, 4 cells, 2 tokens]
    cache = ActivationCache({"derivation.classes": torch.tensor([[2, 9]]), "stage1.block0.cross_attn.pattern": pattern})
    cache.stage_hw = {1: (2, 2)}
    stage = attention_anatomy(cache, _one_frame_with_sources(), source_size=16)["stage 1"]
    assert stage["objects"] == 1
    assert stage["own_inside"] == pytest.approx(0.6)
    assert stage["own_outside"] == pytest.approx((0.2 + 0.1 + 0.1) / 3)
    assert stage["other_inside"] == pytest.approx(0.3)
    assert stage["null_inside"] == pytest.approx(0.1)
    assert stage["null_outside"] == pytest.approx((0.3 + 0.5 + 0.9) / 3)


def test_attention_anatomy_with_audio_queries_has_no_null_share():
    import pytest
    import torch

    from avs_lib.analysis.inspect import attention_anatomy
    from avs_lib.models.hooks import ActivationCache

    # audio queries: each token's write-back weights (0 to 1), which need not sum to 1 over a cell
    pattern = torch.tensor([[0.9, 0.8], [0.2, 0.7], [0.1, 0.9], [0.0, 0.1]])[None, None]
    cache = ActivationCache({"derivation.classes": torch.tensor([[2, 9]]), "stage1.block0.cross_attn.pattern": pattern})
    cache.stage_hw = {1: (2, 2)}
    stage = attention_anatomy(cache, _one_frame_with_sources(), source_size=16, queries="audio")["stage 1"]
    assert stage["own_inside"] == pytest.approx(0.9) and stage["other_inside"] == pytest.approx(0.8)
    assert stage["own_outside"] == pytest.approx(0.1)
    assert stage["null_inside"] is None and stage["null_outside"] is None
    with pytest.raises(ValueError, match="fusion_query"):
        attention_anatomy(cache, _one_frame_with_sources(), source_size=16, queries="cells")


def test_attention_anatomy_with_one_token_and_objects_filling_every_cell():
    import torch

    from avs_lib.analysis.inspect import attention_anatomy
    from avs_lib.models.hooks import ActivationCache

    frames = _one_frame_with_sources()
    # one token (class 2) on a 1x1 grid: the object fills no cell by half (16 of 64 px), so it is left out
    cache = ActivationCache({"derivation.classes": torch.tensor([[2]]),
                             "stage1.block0.cross_attn.pattern": torch.full((1, 1, 1, 1), 0.7)})
    cache.stage_hw = {1: (1, 1)}
    assert attention_anatomy(cache, frames, source_size=16)["stage 1"] == {
        "own_inside": None, "own_outside": None, "other_inside": None, "null_inside": None, "null_outside": None,
        "objects": 0}
    # a 2x2 grid and K = 1: no other token to compare with; no null key: weights sum to 1, null 0
    cache = ActivationCache({"derivation.classes": torch.tensor([[2]]),
                             "stage1.block0.cross_attn.pattern": torch.ones(1, 1, 4, 1)})
    cache.stage_hw = {1: (2, 2)}
    stage = attention_anatomy(cache, frames, source_size=16)["stage 1"]
    assert stage["objects"] == 1 and stage["other_inside"] is None
    assert stage["own_inside"] == 1 and stage["null_inside"] == 0 and stage["null_outside"] == 0


def test_backbone_groups_take_the_scaled_learning_rate():
    import torch

    from avs_lib.models import build_model
    from avs_lib.training.loop import is_pretrained_backbone, parameter_groups

    model = build_model("ddeseg", size="tiny", audio_dim=8, memory_classes=8, backbone="efficientnet_lite0")
    groups = parameter_groups(model, 0.05, backbone_lr_scale=0.1)
    scaled = {id(p) for g in groups if g["lr_scale"] == 0.1 for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert scaled and all(names[i].startswith("encoder.cnn.") for i in scaled)
    assert {id(p) for p in model.encoder.cnn.parameters()} == scaled  # every backbone tensor, nothing else
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert not is_pretrained_backbone("encoder.block1.0.cross_attn.q.weight")  # MiT: the fusion's cross-attention
    assert is_pretrained_backbone("encoder.block1.0.attn.q.weight")
    one = parameter_groups(model, 0.05)
    assert len(one) == 2 and all(g["lr_scale"] == 1.0 for g in one)


def test_clip_counts_per_subset():
    import argparse

    from avs_lib.cli import clip_counts
    from avs_lib.world.compose import WorldConfig

    assert clip_counts("300") == (300, {})
    assert clip_counts("s4=2000,ms3=1500,200") == (200, {"s4": 2000, "ms3": 1500})
    for bad in ("s4=0", "ms3=x", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            clip_counts(bad)
    cfg = WorldConfig(clips=10, subset_clips={"ms3": 40})
    assert (cfg.clips_of("ms3"), cfg.clips_of("s4")) == (40, 10)
    with pytest.raises(ValueError, match="unknown subsets"):
        WorldConfig(subset_clips={"s5": 3})


def test_learning_curve_and_late_gain():
    from avs_lib.training.loop import late_gain, learning_curve

    history = [{"epoch": 1, "frames_seen": 100, "val": {"JF": 0.50}, "curve": [{"frames_seen": 50, "JF": 0.30}]},
               {"epoch": 2, "frames_seen": 200, "val": {"JF": 0.62}, "curve": [{"frames_seen": 150, "JF": 0.60}]}]
    assert [p["frames_seen"] for p in learning_curve(history)] == [50, 100, 150, 200]
    # the last 20 % of 200 frames is (160, 200]: best there 0.62, against 0.60 at 150
    assert late_gain(history) == pytest.approx(0.02)
    assert late_gain(history[:1][:0]) is None


def test_unpaired_difference_adds_the_variances_of_two_independent_means():
    from avs_lib.analysis.stats import unpaired_difference

    # intervals of half-width 1.96 are sd 1 each: the difference has sd sqrt(2)
    delta, low, high = unpaired_difference((0.0, (-1.96, 1.96)), (3.0, (1.04, 4.96)))
    assert delta == pytest.approx(3.0)
    assert (low, high) == pytest.approx((3.0 - 1.96 * 2 ** 0.5, 3.0 + 1.96 * 2 ** 0.5))
    # a run set against itself differs by nothing, with an interval wider than a paired one's [0, 0]
    delta, low, high = unpaired_difference((0.5, (0.4, 0.6)), (0.5, (0.4, 0.6)))
    assert delta == 0 and low < -0.1 and high > 0.1


def test_compared_learning_curves_tell_sixteen_runs_apart(tmp_path):
    from matplotlib.colors import to_rgba

    from avs_lib.viz.plots import compared_learning_curves

    history = [{"epoch": 1, "frames_seen": 100, "val": {"JF": 0.5}}]
    fig = compared_learning_curves({f"run {i}": history for i in range(16)}, tmp_path / "curves.png")
    looks = [(to_rgba(line.get_color()), line.get_linestyle()) for line in fig.axes[0].get_lines()]
    assert len(looks) == 16 and len(set(looks)) == 16 and (tmp_path / "curves.png").exists()


def _readings(values, step=10):
    return [{"frames_seen": step * (i + 1), "val": {"JF": float(v)}} for i, v in enumerate(values)]


def test_late_trend_reads_the_rise_of_a_straight_curve():
    from avs_lib.training.loop import late_trend

    # 20 readings 10 frames apart on a line of slope 0.001 per frame: the last 20 % of 200 frames rises 0.04
    trend = late_trend(_readings([0.5 + 0.001 * f for f in range(10, 201, 10)]))
    assert trend["gain"] == pytest.approx(0.04) and (trend["late"], trend["before"]) == (4, 4)
    low, high = trend["ci95"]
    assert low < 0.04 < high
    assert late_trend(_readings([0.5])) is None
    one_each = late_trend(_readings([0.5, 0.55, 0.6, 0.65, 0.7]))  # windows (30, 40] and (40, 50]
    assert one_each["gain"] == pytest.approx(0.05) and one_each["ci95"] is None  # one reading a window: no interval


def test_late_trend_is_unbiased_on_a_flat_noisy_curve_where_late_gain_is_not():
    import numpy as np

    from avs_lib.training.loop import late_gain, late_trend

    # 28 readings (14 epochs, two an epoch) of a flat curve scattering by sigma: late_gain takes the best
    # of the 6 late readings minus one reading, 1.267 sigma on average (the mean of the largest of 6
    # standard normal draws); late_trend's windows have equal means, so it averages zero
    sigma, rng = 0.01, np.random.default_rng(0)
    curves = [_readings(0.8 + sigma * rng.standard_normal(28)) for _ in range(3000)]
    old = np.mean([late_gain(c) for c in curves])
    new = np.mean([late_trend(c)["gain"] for c in curves])
    assert old == pytest.approx(1.267 * sigma, abs=0.05 * sigma)
    assert abs(new) < 0.05 * sigma
    covered = np.mean([lo <= 0 <= hi for lo, hi in (late_trend(c)["ci95"] for c in curves[:500])])
    assert covered > 0.9  # the 95 % interval holds the flat curve's zero gain most of the time


def test_validating_inside_epochs_trains_the_same_weights(tmp_path):
    import torch

    from conftest import synthetic_prepared
    from test_training import _config
    from avs_lib.training.loop import train

    results = {}
    for n in (1, 3):
        out = tmp_path / f"v{n}"
        metrics = train(_config(out, epochs=2, validations_per_epoch=n, tracking="none"),
                        synthetic_prepared((16, 8, 8), size=64))
        results[n] = (torch.load(out / "last.pt", weights_only=False)["model"], metrics["history"])
    for name, tensor in results[1][0].items():
        assert torch.equal(tensor, results[3][0][name]), name
    assert [len(h["curve"]) for h in results[3][1]] == [2, 2] and all(not h["curve"] for h in results[1][1])
    assert results[3][1][-1]["frames_seen"] == 2 * (16 // 4) * 4


def test_shared_run_dir_keys_on_settings_and_data(notebook_world, tmp_path):
    import shutil

    from avs_lib.training.runs import shared_run_dir

    base = load_config(None, [f"data_root={notebook_world}", "layout=ms3", f"cache_dir={tmp_path / 'cache'}"])
    same = load_config(None, [f"data_root={notebook_world}", "layout=ms3", f"cache_dir={tmp_path / 'cache'}",
                              "out=elsewhere", "progress=false"])
    assert shared_run_dir(base) == shared_run_dir(same)  # out and progress do not change what a run computes
    default_k = load_config(None, [f"data_root={notebook_world}", "layout=ms3", f"cache_dir={tmp_path / 'cache'}",
                                   "switches.num_tokens=5"])
    assert shared_run_dir(default_k) == shared_run_dir(base)  # a switch given at its default is the same model
    k4 = load_config(None, [f"data_root={notebook_world}", "layout=ms3", f"cache_dir={tmp_path / 'cache'}",
                            "switches.num_tokens=4"])
    assert shared_run_dir(k4) != shared_run_dir(base)
    assert shared_run_dir(base).parent == tmp_path / "cache" / "models"
    other = load_config(None, [f"data_root={notebook_world}", "layout=ms3", f"cache_dir={tmp_path / 'cache'}", "lr=0.002"])
    assert shared_run_dir(other) != shared_run_dir(base)
    copy = tmp_path / "world_copy"
    shutil.copytree(notebook_world, copy, ignore=shutil.ignore_patterns("cache"))
    moved = load_config(None, [f"data_root={copy}", "layout=ms3", f"cache_dir={tmp_path / 'cache'}"])
    assert shared_run_dir(moved) == shared_run_dir(base)  # the same data elsewhere is the same data
    (copy / "world.json").write_text((copy / "world.json").read_text().replace('"seed": 0', '"seed": 5'))
    assert shared_run_dir(moved) != shared_run_dir(base)  # another world: another model


def test_a_moved_world_keeps_its_trained_models(notebook_world, tmp_path):
    """The model store's key holds the data's identity, so a world moved or copied with its cache keeps
    its models: a run recorded there with the old data_root is the same run. In an out= folder of the
    user's, another data_root may be other data, and it stays a difference."""
    import json
    import shutil
    from dataclasses import asdict, replace

    from avs_lib.training.runs import run_state, shared_run_dir

    copy = tmp_path / "world_copy"
    shutil.copytree(notebook_world, copy, ignore=shutil.ignore_patterns("cache"))
    old = load_config(None, [f"data_root={notebook_world}", "layout=ms3"])
    new = replace(old, data_root=str(copy))
    assert shared_run_dir(new).parent == copy / "cache" / "models"  # the store moved with the world
    for out in (shared_run_dir(new), tmp_path / "mine"):
        out.mkdir(parents=True)
        (out / "config.json").write_text(json.dumps(asdict(replace(old, out=str(out)))))
        (out / "metrics.json").write_text("{}")
    assert run_state(shared_run_dir(new), replace(new, out=str(shared_run_dir(new)))).kind == "finished"
    state = run_state(tmp_path / "mine", replace(new, out=str(tmp_path / "mine")))
    assert state.kind == "other" and set(state.differences) == {"data_root"}
    later = replace(new, lr=0.002)  # another setting is still another run, in the store too
    assert run_state(shared_run_dir(new), replace(later, out=str(shared_run_dir(new)))).kind == "other"
    # a store of its own (cache_dir) does not move with the data: there the data_root stays a difference
    own = replace(new, cache_dir=str(tmp_path / "cache"))
    shared_run_dir(own).mkdir(parents=True)
    recorded = replace(old, cache_dir=own.cache_dir, out=str(shared_run_dir(own)))
    (shared_run_dir(own) / "config.json").write_text(json.dumps(asdict(recorded)))
    (shared_run_dir(own) / "metrics.json").write_text("{}")
    state = run_state(shared_run_dir(own), replace(own, out=str(shared_run_dir(own))))
    assert state.kind == "other" and set(state.differences) == {"data_root"}


def test_a_checkpoint_in_a_moved_model_store_reads_the_data_where_it_is_now(notebook_world, tmp_path):
    """What notebook 05 trains next from a reused model's config (its floor and ceiling) must find the
    world where it is now, not where the model was trained."""
    import shutil
    from dataclasses import replace

    from avs_lib.training.predict import moved_store_run
    from avs_lib.training.runs import shared_run_dir

    copy = tmp_path / "world_copy"
    shutil.copytree(notebook_world, copy, ignore=shutil.ignore_patterns("cache"))
    trained = load_config(None, [f"data_root={notebook_world}", "layout=ms3"])
    store = shared_run_dir(replace(trained, data_root=str(copy)))
    assert store.parent == copy / "cache" / "models"
    moved = moved_store_run(replace(trained, out=str(shared_run_dir(trained))), store / "best.pt")
    assert moved.data_root == str(copy) and moved.out == str(store) and moved.lr == trained.lr
    # a checkpoint outside a store, or in a store folder of another run, keeps its config
    assert moved_store_run(trained, tmp_path / "mine" / "best.pt") == trained
    assert moved_store_run(trained, store.with_name(store.name + "-previous-1") / "best.pt") == trained
    assert moved_store_run(replace(trained, lr=0.002), store / "best.pt").data_root == str(notebook_world)


def test_resolution_bound_is_exact_on_cell_aligned_masks_and_low_on_fine_ones():
    import torch
    from types import SimpleNamespace

    from avs_lib.analysis.evaluation import resolution_bound

    def frames(masks):
        return SimpleNamespace(masks=masks, valid=torch.ones(len(masks), dtype=torch.bool))

    blocks = torch.zeros(3, 32, 32)
    blocks[0, 8:24, 4:16] = 1  # rectangles on the 4 x 4 grid: bilinear upsampling keeps their edges
    blocks[1, :4, :] = 1  # and loses one pixel at each inner corner (0.625 x 0.625 < 0.5)
    blocks[2, 12:20, 12:28] = 1
    corners_lost = [(192 - 4) / 192, 1.0, (128 - 4) / 128]  # the strip's corners lie on the frame's border
    assert resolution_bound(frames(blocks), 4)["J"] == pytest.approx(sum(corners_lost) / 3)
    stripes = torch.zeros(2, 32, 32)
    stripes[:, :, ::2] = 1  # one-pixel stripes: every 4 x 4 cell is half on, nothing survives at stride 4
    fine = resolution_bound(frames(stripes), 4)
    assert fine["J"] < 0.05
    assert resolution_bound(frames(stripes), 1)["J"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="divide"):
        resolution_bound(frames(blocks), 5)


def test_decoder_stride_of_the_backbones():
    from avs_lib.analysis.evaluation import decoder_stride
    from avs_lib.models import build_model
    from conftest import small_memory

    assert decoder_stride(build_model("ddeseg", memory=small_memory()), 64) == 4
    assert decoder_stride(build_model("ddeseg", memory=small_memory(), variant="released"), 64) == 2
    assert decoder_stride(build_model("ddeseg", backbone="efficientnet_lite0", memory=small_memory()), 64) == 4


def test_anatomy_figure_draws_only_the_bars_the_anatomy_has(tmp_path):
    from avs_lib.viz.plots import attention_anatomy_figure

    stage = {"own_inside": 0.6, "own_outside": 0.2, "other_inside": 0.3, "objects": 4}
    with_null = {"stage 1": {**stage, "null_inside": 0.1, "null_outside": 0.5}}
    without_null = {"stage 1": {**stage, "null_inside": None, "null_outside": None}}  # audio queries
    labels = [[t.get_text() for t in attention_anatomy_figure(a, tmp_path / f"{i}.png").axes[0].get_legend().get_texts()]
              for i, a in enumerate((with_null, without_null))]
    assert len(labels[0]) == 5 and not any("null" in label for label in labels[1]) and len(labels[1]) == 3
    assert (tmp_path / "1.png").stat().st_size > 1000


def test_peak_places_figure_stacks_each_row_to_the_whole(tmp_path):
    import pytest

    from avs_lib.analysis.inspect import PEAK_PLACES
    from avs_lib.viz.plots import peak_places_figure

    stage = dict(zip(PEAK_PLACES, (0.1, 0.2, 0.05, 0.25, 0.3, 0.1)))
    places = {"stage 1": stage, "stage 2": dict(zip(PEAK_PLACES, (1, 0, 0, 0, 0, 0))), "chance": stage, "objects": 9}
    ax = peak_places_figure({"a": places, "b": places}, tmp_path / "p.png").axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(PEAK_PLACES)
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{r}: {k}" for r in "ab" for k in ("stage 1", "stage 2", "chance")]
    ends = {}  # each bar's right end, per row: the last place's bars reach 1
    for bar in ax.patches:
        row = round(bar.get_y() + bar.get_height() / 2)
        ends[row] = max(ends.get(row, 0), bar.get_x() + bar.get_width())
    assert sorted(ends) == list(range(6)) and all(end == pytest.approx(1) for end in ends.values())
    assert (tmp_path / "p.png").stat().st_size > 1000


def _frame_with_a_silent_object():
    from avs_lib.data.frames import FrameSet

    masks = torch.zeros(1, 16, 16, dtype=torch.long)
    masks[0, 1:5, 1:5] = 1  # class 1 sounds, box x 0-6, y 0-6
    masks[0, 11:15, 11:15] = 1  # class 2 sounds, box x 10-16, y 10-16
    sources = {"c": {"sources": [
        {"class_index": 1, "sounding": True, "on_screen": True, "bboxes": [[0, 0, 6, 6]]},
        {"class_index": 2, "sounding": True, "on_screen": True, "bboxes": [[10, 10, 16, 16]]},
        {"class_index": 3, "sounding": False, "on_screen": True, "bboxes": [[0, 10, 6, 16]]},  # silent, bottom left
        {"class_index": 6, "sounding": False, "on_screen": True, "bboxes": [[6, 0, 10, 6]]},  # silent, beside class 1
        {"class_index": 8, "sounding": True, "on_screen": True, "bboxes": [[0, 0, 0, 0]]},  # out of view in this frame
        {"class_index": 4, "sounding": True, "on_screen": False, "bboxes": None}]}}  # heard, not seen
    return FrameSet(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), masks, torch.ones(1, dtype=torch.bool),
                    torch.zeros(1, 4), ["c"], [0], ["x"], sources)


def _score(prediction):
    from avs_lib.analysis.metrics import evaluate

    return evaluate(torch.where(prediction, 20.0, -20.0)[None], _frame_with_a_silent_object().masks)["JF"]


def test_choice_and_outline_repairs_what_each_fix_names():
    from avs_lib.analysis.evaluation import choice_and_outline

    frames = _frame_with_a_silent_object()
    pred = torch.zeros(16, 16, dtype=torch.bool)
    pred[0:6, 0:7] = True  # class 1's object drawn as its whole box, spilling 6 pixels into class 6's box
    pred[10:16, 0:6] = True  # the silent class 3 taken; class 2's object missed
    result = choice_and_outline(torch.where(pred, 5.0, -5.0)[None], frames, source_size=16)
    # class 6 is not taken (6 of its 24 pixels drawn); class 8's empty box is no object
    assert (result["found"], result["missed"], result["taken"], result["silent"]) == (1, 1, 1, 2)
    # choices fixed: the missed object added, the taken silent one removed, class 1's blob (and its
    # spill into the box of class 6, which was not taken: an outline error) left as drawn
    choices = torch.zeros(16, 16, dtype=torch.bool)
    choices[0:6, 0:7] = True
    choices[11:15, 11:15] = True
    # outlines fixed: inside class 1's box exactly its pixels; the spill, the taken box and the miss as made
    outlines = torch.zeros(16, 16, dtype=torch.bool)
    outlines[1:5, 1:5] = True
    outlines[0:6, 6] = True
    outlines[10:16, 0:6] = True
    assert result["JF"] == pytest.approx(_score(pred))
    assert result["choice_fixed_JF"] == pytest.approx(_score(choices))
    assert result["outline_fixed_JF"] == pytest.approx(_score(outlines))
    # wrong pixels: 20 of blob inside class 1's box, 6 spilt into class 6's box, 36 in class 3's box
    assert result["false_positive_share_silent_boxes"] == pytest.approx(42 / 62)
    assert result["false_positive_share_sounding_boxes"] == pytest.approx(20 / 62)


def test_object_regions_leave_out_silent_and_out_of_view_objects():
    from avs_lib.analysis.truth import object_regions, onscreen_boxes

    frames = _frame_with_a_silent_object()
    assert sorted((c, sounds) for c, sounds, _ in onscreen_boxes(frames, 0, source_size=16)) == [
        (1, True), (2, True), (3, False), (6, False)]
    regions = object_regions(frames, 0, source_size=16)
    assert set(regions) == {1, 2}
    assert regions[1].sum() == 16 and regions[2].sum() == 16


def test_choice_and_outline_of_the_truth_has_nothing_to_fix():
    from avs_lib.analysis.evaluation import choice_and_outline

    frames = _frame_with_a_silent_object()
    result = choice_and_outline(torch.where(frames.masks.bool(), 5.0, -5.0), frames, source_size=16)
    assert result["JF"] == result["choice_fixed_JF"] == result["outline_fixed_JF"] == pytest.approx(1.0)
    assert (result["found"], result["missed"], result["taken"]) == (2, 0, 0)
    with pytest.raises(ValueError, match="binary logits"):
        choice_and_outline(torch.zeros(1, 3, 16, 16), frames, source_size=16)
    frames.sources = {}
    with pytest.raises(ValueError, match="sources"):
        choice_and_outline(torch.zeros(1, 16, 16), frames, source_size=16)


def test_choice_outline_figure_draws_three_bars_a_row(tmp_path):
    from avs_lib.viz.plots import choice_outline_figure

    errors = {"JF": 0.5, "choice_fixed_JF": 0.7, "outline_fixed_JF": 0.6}
    rows = [{"row": "floor", "what": "floor", "errors": errors}, {"row": "oracle", "what": "ceiling", "errors": errors}]
    fig = choice_outline_figure(rows, tmp_path / "c.png", bound=0.9)
    ax = fig.axes[0]
    assert len(ax.patches) == 6 and (tmp_path / "c.png").exists()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["resolution bound 0.900", "as trained", "choices fixed",
                                                                   "outlines fixed"]


def test_outline_distance_puts_a_shifted_edge_near_the_outline_and_a_stray_blob_far_from_it():
    from avs_lib.analysis.evaluation import outline_distance

    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 8:16, 8:16] = True
    shifted = torch.zeros_like(mask)
    shifted[0, 8:16, 9:17] = True  # the square moved one pixel right: one column out, one column in
    result = outline_distance(shifted, mask)
    assert result["wrong_pixels_per_frame"] == 16
    assert result["share"]["<=1 px"] == 1.0
    assert result["within_2px_per_frame"] == {"drawn_outside_the_mask": 8, "left_out_inside_it": 8}
    stray = mask.clone()
    stray[0, 28:30, 28:30] = True  # a 2 x 2 blob at least 12 px from the square
    far = outline_distance(stray, mask)
    assert far["wrong_pixels_per_frame"] == 4 and far["share"][">8 px"] == 1.0
    # a frame with nothing sounding has no outline: what is drawn there is far from any
    empty = outline_distance(stray, torch.zeros_like(mask))
    assert empty["share"][">8 px"] == 1.0 and empty["within_2px_per_frame"]["drawn_outside_the_mask"] == 0
    assert outline_distance(mask, mask)["wrong_pixels_per_frame"] == 0
