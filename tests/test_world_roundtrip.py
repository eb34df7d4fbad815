"""A written world read back through the loaders gives the masks that were composed."""
import json
from dataclasses import replace

import numpy as np

from avs_lib.data.convert import avss_to_ddeseg
from avs_lib.data.datasets import AVSDataset, load_sources
from avs_lib.world.compose import compose_clip
from avs_lib.world.write import world_roots


def _by_clip(dataset):
    out = {}
    for index, rec in enumerate(dataset.records):
        out.setdefault(rec.clip, {})[rec.frame] = index
    return out


def test_s4_and_ms3_masks_round_trip(small_world):
    cfg, library, root = small_world
    for subset in ("s4", "ms3"):
        dataset = AVSDataset(*world_roots(root)[subset])
        assert len(dataset.clips) == cfg.clips
        for name, frames in _by_clip(dataset).items():
            clip = compose_clip(library, subset, int(name.split("_")[1]), cfg)
            expected = clip.binary_masks()
            for t, index in frames.items():
                sample = dataset[index]
                assert sample["image"].shape == (3, cfg.size, cfg.size)
                assert sample["audio"].shape == (cfg.sample_rate,)
                if sample["mask_valid"]:
                    np.testing.assert_array_equal(sample["mask"].numpy(), expected[t])
                else:  # AVSBench S4 train clips carry the first mask only
                    assert subset == "s4" and sample["split"] == "train" and t > 0


def test_avss_semantic_masks_round_trip_in_both_layouts(small_world, tmp_path):
    cfg, library, root = small_world
    avss_root, layout = world_roots(root)["avss"]
    original = AVSDataset(avss_root, layout)
    ddeseg_root = tmp_path / "ddeseg"
    assert avss_to_ddeseg(avss_root, ddeseg_root) == len(original)
    reorganised = AVSDataset(ddeseg_root, "avss-ddeseg")
    reorganised_index = {(r.clip, r.frame): i for i, r in enumerate(reorganised.records)}
    label2idx = json.loads((ddeseg_root / "label2idx.json").read_text())
    assert label2idx["background"] == 1 and min(label2idx.values()) == 1
    for name, frames in _by_clip(original).items():
        clip = compose_clip(library, "avss", int(name.split("_")[1]), cfg)
        expected = clip.semantic_masks()
        assert len(frames) == len(expected) == (10 if clip.label == "v2" else 5)
        for t, index in frames.items():
            np.testing.assert_array_equal(original[index]["mask"].numpy(), expected[t])
            again = reorganised[reorganised_index[(name, t)]]
            np.testing.assert_array_equal(again["mask"].numpy(), expected[t])
            np.testing.assert_allclose(again["audio"].numpy(), original[index]["audio"].numpy(), atol=1e-6)


def test_msmi_vpo_masks_round_trip(small_world):
    cfg, library, root = small_world
    vpo_root, layout = world_roots(root)["msmi"]
    dataset = AVSDataset(vpo_root, layout, vpo_subset="msmi")
    sources = load_sources(vpo_root, layout)
    assert len(sources) == cfg.clips
    checked = 0
    for name, record in sources.items():
        clip = compose_clip(library, "msmi", int(name.split("_")[1]), cfg)
        expected = clip.semantic_masks()
        for t, img_id in enumerate(record["vpo"]["img_ids"]):
            index = dataset.clips[f"{img_id:012d}"][0]
            np.testing.assert_array_equal(dataset[index]["mask"].numpy(), expected[t])
            checked += 1
    assert checked == cfg.clips * cfg.frames


def test_sources_sidecar_describes_the_clip(small_world):
    cfg, library, root = small_world
    sources = load_sources(*world_roots(root)["ms3"])
    for name, record in sources.items():
        clip = compose_clip(library, "ms3", int(name.split("_")[1]), cfg)
        on_screen_sounding = [s for s in record["sources"] if s["on_screen"] and s["sounding"]]
        assert 2 <= len(on_screen_sounding) <= 3
        assert [s["instance"] for s in on_screen_sounding] == clip.sounding_instances
        for s in record["sources"]:
            assert library.classes[s["class_index"]].name == s["class_name"]
            if s["on_screen"]:
                assert len(s["bboxes"]) == cfg.frames
            else:  # off-screen sources are never seen
                assert s["bboxes"] is None and s["class_index"] not in {o["class_index"] for o in on_screen_sounding}


def test_msmi_sounding_instance_is_larger_than_its_silent_siblings(small_world):
    cfg, library, _ = small_world
    for index in range(cfg.clips):
        clip = compose_clip(library, "msmi", index, cfg)
        assert len({s.class_index for s in clip.sources if s.on_screen}) == 1
        area = {s.instance: (clip.instance_map == s.instance).sum() for s in clip.sources if s.on_screen}
        sounding = clip.sounding_instances
        silent = [i for i in area if i not in sounding]
        assert sounding and silent
        # Same base size, but the sounding ones grow with loudness (occlusion aside, they cover more pixels).
        assert max(area[i] for i in sounding) > min(area[i] for i in silent)
        # the growth is the pulse's: the same clip without it (the pulse draws nothing, so the layout
        # is the same) has every sounding instance smaller, and no silent one larger (they are only
        # occluded more by a grown sibling)
        still = compose_clip(library, "msmi", index, replace(cfg, msmi_pulse=0.0))
        still_area = {i: (still.instance_map == i).sum() for i in area}
        assert all(area[i] > still_area[i] for i in sounding)
        assert all(area[i] <= still_area[i] for i in silent)


def test_written_s4_is_single_source_and_memory_reads_only_single_source_clips(small_world):
    cfg, library, root = small_world
    sources = load_sources(*world_roots(root)["s4"])
    assert len(sources) == cfg.clips
    for name, record in sources.items():
        sounding = [s for s in record["sources"] if s["sounding"]]
        assert len(sounding) == 1 and sounding[0]["on_screen"], name
    # the world records the options it was written with, so readers know what s4 holds
    written = json.loads((root / "world.json").read_text())["config"]
    assert written["s4_offscreen"] is False and written["holdout_members"] == cfg.holdout_members


def test_ms3_silent_sets_the_distractors_and_only_a_changed_knob_enters_world_json(tmp_path):
    import pytest

    from avs_lib.cli import main
    from avs_lib.world.assets import load_library
    from avs_lib.world.compose import WorldConfig

    library = load_library("procedural", 16000, warn_on_fallback=False)
    for silent in [(0, 0), (3, 3), (2, 4)]:
        cfg = WorldConfig(kind="procedural", subsets=("ms3",), clips=12, size=32, ms3_silent=silent)
        counts = [sum(not s.sounding for s in compose_clip(library, "ms3", i, cfg).sources) for i in range(12)]
        assert silent[0] <= min(counts) and max(counts) <= silent[1], (silent, counts)
    # that the default draws what worlds written before the knob drew is pinned by
    # test_the_default_draws_are_pinned; here: leaving the knob at its default writes no ms3_silent
    for option, recorded in [([], None), (["--ms3-silent", "2-3"], [2, 3])]:
        out = tmp_path / f"w{len(option)}"
        assert main(["world", "--kind", "procedural", "--subsets", "ms3", "--clips", "4", "--size", "32", "--quiet",
                     "--out", str(out), *option]) == 0
        assert json.loads((out / "world.json").read_text())["config"].get("ms3_silent") == recorded
    with pytest.raises(ValueError, match="ms3_silent"):
        WorldConfig(ms3_silent=(3, 2))
    # procedural has 12 classes: 3 sounding + 10 silent objects cannot each have their own class
    assert main(["world", "--kind", "procedural", "--subsets", "ms3", "--clips", "4", "--size", "32", "--quiet",
                 "--out", str(tmp_path / "crowded"), "--ms3-silent", "2-10"]) == 2


# sha256 of what a small procedural world draws (every source's record and every instance map), at
# the default settings and with pauses. A change to the draws (a new random call before an old one,
# a new default) changes every world built from then on, the committed run's included: if it is
# meant, write the new digests here and say in the commit that worlds change.
PINNED_DRAWS = {0.0: "ac302122781cccdb188a209b4098e933f8887fbcfeb04064abed2c26e08673a7",
                0.5: "4d3e5fad42e152fdf2679eff48f630d3833d8ee9c66c82bd54a2d55917b9ea76"}


def test_the_default_draws_are_pinned():
    import hashlib

    from avs_lib.world.assets import load_library
    from avs_lib.world.compose import WorldConfig

    library = load_library("procedural", 16000, warn_on_fallback=False)
    for pause, expected in PINNED_DRAWS.items():
        config = WorldConfig(kind="procedural", subsets=("s4", "ms3"), clips=6, size=32, ms3_pause=pause)
        digest = hashlib.sha256()
        for subset in ("s4", "ms3"):
            for i in range(6):
                clip = compose_clip(library, subset, i, config)
                digest.update(repr(clip.sources).encode())
                digest.update(clip.instance_map.tobytes())
                digest.update(clip.split.encode())
        assert digest.hexdigest() == expected, f"the world's draws changed (ms3_pause={pause})"
