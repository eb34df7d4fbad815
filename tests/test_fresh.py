"""Training clips composed fresh each epoch (avs_lib.data.fresh, train_clips=fresh)."""
import json

import numpy as np
import pytest
import torch

from avs_lib.audio.registry import OracleAudio, PrecomputedEmbeddings
from avs_lib.core.errors import ConfigError
from avs_lib.data.frames import load_frames
from avs_lib.data.fresh import epoch_seed, fresh_train_frames, train_clip_count


class _LogMelProbe(torch.nn.Module):
    """A fixed random projection of a log-mel example [N, 96, 64]: any change to the audio shows."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(96 * 64, 6)
        torch.nn.init.normal_(self.proj.weight, generator=torch.Generator().manual_seed(3))

    def forward(self, x):
        return self.proj(x.flatten(1))


def _assert_same(fresh, written):
    assert fresh.clips == written.clips and fresh.frames == written.frames
    assert fresh.categories == written.categories
    assert torch.equal(fresh.images, written.images)
    assert torch.equal(fresh.masks, written.masks)
    assert torch.equal(fresh.valid, written.valid)
    np.testing.assert_allclose(fresh.audio.numpy(), written.audio.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["ms3", "s4"])
def test_the_world_seed_redraws_the_written_training_split(procedural_world, tmp_path, layout):
    cfg, root = procedural_world
    for encoder, encoder_id in [(_LogMelProbe(), "probe"), (OracleAudio("oracle", root), "oracle")]:
        written = load_frames(root, layout, "train", 32, encoder, encoder_id, tmp_path / encoder_id)
        fresh = fresh_train_frames(root, layout, 0, 32, encoder, seed=cfg.seed)
        _assert_same(fresh, written)
        assert set(fresh.sources) == set(written.clips)  # the written sources hold every split
        assert all(fresh.sources[c] == written.sources[c] for c in fresh.sources)


def test_each_epoch_draws_new_clips_of_the_same_count(procedural_world):
    cfg, root = procedural_world
    encoder = OracleAudio("oracle", root)
    first, again, second = (fresh_train_frames(root, "ms3", e, 32, encoder) for e in (0, 0, 1))
    written_train_clips = train_clip_count(root, "ms3")
    assert written_train_clips == 5 and len(first) == written_train_clips * cfg.frames
    assert len(second) == len(first)
    assert torch.equal(first.images, again.images) and torch.equal(first.audio, again.audio)  # deterministic
    assert not torch.equal(first.images, second.images)
    assert first.clips[0] == "ms3_00000~e1" and second.clips[0] == "ms3_00000~e2"
    # the oracle's rows are the clips' own sounding on-screen classes
    for i, name in enumerate(first.clips):
        truth = {s["class_index"] for s in first.sources[name]["sources"] if s["sounding"] and s["on_screen"]}
        assert set(np.flatnonzero(first.audio[i].numpy() > 0.5)) == truth
        assert first.masks[i].sum() > 0


def test_epoch_seeds_differ_from_each_other_and_from_the_world_seed():
    for world_seed in (0, 1, 11):
        seeds = [epoch_seed(world_seed, e) for e in range(50)]
        assert len(set(seeds)) == 50 and world_seed not in seeds


def test_refusals_say_why(procedural_world, tmp_path):
    cfg, root = procedural_world
    with pytest.raises(ConfigError, match="layout='avss'"):
        fresh_train_frames(root, "avss", 0, 32, OracleAudio("oracle", root))
    with pytest.raises(ConfigError, match="precomputed"):
        fresh_train_frames(root, "ms3", 0, 32, PrecomputedEmbeddings(tmp_path))
    with pytest.raises(ConfigError, match="no world.json"):
        fresh_train_frames(tmp_path, "ms3", 0, 32, None)


def test_training_on_fresh_clips_resumes_exactly_and_differs_from_the_files(notebook_world, tmp_path):
    from conftest import tiny_run_overrides

    from avs_lib.core.config import load_config
    from avs_lib.training.loop import train

    def run(out, **kw):
        values = dict(data_root=notebook_world, layout="ms3", audio_encoder="oracle", k=2, m=2, train_clips="fresh",
                      cache_dir=tmp_path / "cache", batch_size=8)
        values.update(kw)
        return train(load_config(None, tiny_run_overrides(tmp_path / out, **values)))

    straight = run("straight")
    assert run("stopped", stop_after_epoch=1) == {"stopped_after_epoch": 1}
    resumed = run("stopped", resume="true")
    files = run("files", train_clips="files")
    assert straight["test"] == resumed["test"]
    losses = lambda out: [json.loads(line)["losses"] for line in open(tmp_path / out / "log.jsonl")]  # noqa: E731
    assert losses("straight") == losses("stopped")
    assert losses("straight")[0] != losses("files")[0]  # other clips from the first step on
    assert len(losses("straight")[0]) == len(losses("files")[0])  # as many steps as the written split gives


def test_run_identity_names_train_clips_only_when_fresh():
    """Runs recorded before the key existed stay the same runs (resume, the notebooks' shared models)."""
    from avs_lib.core.config import TrainConfig
    from avs_lib.training.runs import config_differences, run_identity

    assert "train_clips" not in run_identity(TrainConfig())
    assert config_differences(TrainConfig(), TrainConfig(train_clips="fresh")) == {"train_clips": (None, "fresh")}  # absent at its default



def test_fresh_epochs_keep_the_worlds_held_out_members_out(tmp_path):
    from avs_lib.world.assets import load_library
    from avs_lib.world.compose import WorldConfig, heldout_member_names
    from avs_lib.world.write import write_world

    cfg = WorldConfig(kind="procedural", subsets=("s4", "ms3"), clips=20, size=32, holdout_members=1)
    write_world(cfg, tmp_path, progress=False)
    held = {(c, m) for c, members in heldout_member_names(load_library("procedural", cfg.sample_rate), cfg).items()
            for m in members}
    encoder = OracleAudio("oracle", tmp_path)
    shown = set()
    for epoch in range(4):  # an epoch's own seed would hold out other members than the world's
        frames = fresh_train_frames(tmp_path, "ms3", epoch, 32, encoder)
        shown |= {(s["class_name"], s["member"]) for record in frames.sources.values() for s in record["sources"]}
    assert held and len(shown) > 20 and not held & shown
