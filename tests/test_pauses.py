"""ms3 objects that pause (``avs world --ms3-pause``): on screen in every frame, sounding in some.

The truth of a frame (its mask, the oracle's classes, the roles, the boxes) must follow the pauses,
and a world without them must stay the world it always was."""
import json

import numpy as np
import pytest

from avs_lib.analysis.truth import class_roles, source_role
from avs_lib.audio.registry import OracleAudio
from avs_lib.cli import main
from avs_lib.data.datasets import AVSDataset, load_sources
from avs_lib.data.loader import frame_boxes
from avs_lib.world.assets import load_library
from avs_lib.world.compose import WorldConfig, _pause_sources, compose_clip

CLIPS, SIZE = 12, 32


@pytest.fixture(scope="module")
def library():
    return load_library("procedural", 16000, warn_on_fallback=False)


def _config(pause: float) -> WorldConfig:
    return WorldConfig(kind="procedural", subsets=("ms3",), clips=CLIPS, size=SIZE, ms3_pause=pause)


def test_pausing_objects_stay_on_screen_and_leave_the_mask_of_the_frames_they_pause_in(library):
    paused_somewhere = 0
    for i in range(CLIPS):
        steady, pausing = compose_clip(library, "ms3", i, _config(0.0)), compose_clip(library, "ms3", i, _config(0.6))
        np.testing.assert_array_equal(pausing.frames, steady.frames)  # the same objects, in the same places
        sounding = [s for s in pausing.sources if s.on_screen and s.sounding]
        assert all(s.active is None for s in pausing.sources if not s.sounding)
        active = np.array([s.active for s in sounding])  # [objects, T]
        assert active.any(axis=1).all()  # each object sounds in at least one frame
        assert active.any(axis=0).all()  # each frame has at least one sounding object
        paused_somewhere += int((~active).sum())
        # the mask of frame t: the pixels of the objects sounding in t, read off the steady clip's instances
        masks = pausing.binary_masks()
        for t in range(len(masks)):
            expected = np.zeros_like(masks[t])
            for s, flags in zip(sounding, active):
                if flags[t]:
                    expected |= steady.instance_mask(s.instance)[t]
            np.testing.assert_array_equal(masks[t], expected)
    assert paused_somewhere > 0


def test_a_paused_second_is_quiet_and_a_sounding_one_untouched():
    class Fake:  # what _pause_sources reads and writes of a Source
        active = None
    rate, frames = 1000, 5
    sources = [Fake(), Fake(), Fake()]
    waves = [np.ones(frames * rate, np.float32) for _ in sources]
    _pause_sources(sources, waves, frames, 0.7, np.random.default_rng(3), rate)
    for source, wave in zip(sources, waves):
        seconds = wave.reshape(frames, rate)
        for t, on in enumerate(source.active):
            if on:
                np.testing.assert_array_equal(seconds[t], 1.0)
            else:  # silent but for the 20 ms fades at its edges
                assert seconds[t, 25:-25].max() == 0.0 and seconds[t].max() <= 1.0
    assert not all(all(s.active) for s in sources)


def test_a_written_world_with_pauses_reads_back_the_truth_of_each_frame(library, tmp_path):
    out = tmp_path / "paused"
    assert main(["world", "--kind", "procedural", "--subsets", "ms3", "--clips", str(CLIPS), "--size", str(SIZE),
                 "--quiet", "--out", str(out), "--ms3-pause", "0.6"]) == 0
    assert json.loads((out / "world.json").read_text())["config"]["ms3_pause"] == 0.6
    dataset = AVSDataset(out, "ms3")
    sources = load_sources(out, "ms3")
    oracle_rows = OracleAudio("oracle", out).embed(dataset).round()
    classes = len(library.classes)
    for index, record in enumerate(dataset.records):
        clip = compose_clip(library, "ms3", int(record.clip.split("_")[1]), _config(0.6))
        t = record.frame
        on_now = {s.class_index for s in clip.sources if s.on_screen and s.sounding and s.active[t]}
        np.testing.assert_array_equal(np.flatnonzero(oracle_rows[index]), sorted(on_now))
        roles = class_roles(sources[record.clip], classes, t)
        assert {c for c, r in enumerate(roles) if r == "on screen"} == on_now
        for s in sources[record.clip]["sources"]:  # a paused object is silent in its frame, sounding in the clip
            if s["on_screen"] and s["sounding"] and not s["active"][t]:
                assert source_role(s, t) == "silent" and source_role(s) == "on screen"
        boxes = frame_boxes(sources, record.clip, t)
        assert len(boxes) == sum(1 for s in clip.sources if s.on_screen and s.sounding and s.active[t]
                                 and s.bboxes[t][2] > s.bboxes[t][0] and s.bboxes[t][3] > s.bboxes[t][1])
        np.testing.assert_array_equal(dataset[index]["mask"].numpy(), clip.binary_masks()[t])
    # clips composed fresh for an epoch follow the pauses too: the oracle's row and the mask of each frame
    from avs_lib.data.fresh import fresh_train_frames

    fresh = fresh_train_frames(out, "ms3", 0, SIZE, OracleAudio("oracle", out))
    for i, (name, t) in enumerate(zip(fresh.clips, fresh.frames)):
        on_now = {s["class_index"] for s in fresh.sources[name]["sources"]
                  if s["on_screen"] and s["sounding"] and s["active"][t]}
        assert set(np.flatnonzero(fresh.audio[i].numpy() > 0.5)) == on_now
        assert fresh.masks[i].sum() > 0  # a frame always has a sounding object
    # the summary says how often the sounding objects sound, counted here from the sources
    from avs_lib.world.summary import describe_world

    flags = [on for r in sources.values() for s in r["sources"] if s.get("active") for on in s["active"]]
    assert f"sounding in {np.mean(flags):.0%} of their frames (pauses)" in describe_world(out)
    # the clip browser says when each object pauses
    from avs_lib.viz.widgets import clip_view

    name = dataset.records[0].clip
    indices = [i for i, r in enumerate(dataset.records) if r.clip == name]
    _, notes, _ = clip_view(dataset, sources, name, indices)
    quiet = [[t + 1 for t, on in enumerate(s["active"]) if not on] for s in sources[name]["sources"] if s.get("active")]
    assert any(quiet)
    for frames in filter(None, quiet):
        assert f"pauses in frame{'s' if len(frames) > 1 else ''} {', '.join(map(str, frames))}" in notes


def test_without_pauses_a_world_is_what_it_was(library, tmp_path):
    for i in range(CLIPS):
        assert all("active" not in s.to_dict() for s in compose_clip(library, "ms3", i, _config(0.0)).sources)
    out = tmp_path / "steady"
    assert main(["world", "--kind", "procedural", "--subsets", "ms3", "--clips", "4", "--size", str(SIZE),
                 "--quiet", "--out", str(out)]) == 0
    assert "ms3_pause" not in json.loads((out / "world.json").read_text())["config"]
    with pytest.raises(ValueError, match="ms3_pause"):
        WorldConfig(ms3_pause=1.0)
