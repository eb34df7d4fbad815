"""The world's audio pretraining (avs_lib.audio.pretrain) and the clean single-source s4 subset."""
import numpy as np
import pytest
import torch

from avs_lib.audio.frontends import vggish_examples
from avs_lib.audio.pretrain import MixtureStream, PretrainConfig, pretrain, pretrain_key, torch_examples
from avs_lib.world.assets import load_library
from avs_lib.world.compose import SUBSETS, WorldConfig, compose_clip, heldout_member_names, heldout_members

TINY = PretrainConfig(steps=3, batch_size=12, channels=(4, 8, 8, 8), dim=8, warmup_steps=1, log_every=1)


@pytest.fixture(scope="module")
def library():
    return load_library("procedural", 16000)


def test_s4_has_exactly_one_source_per_clip_by_default(library):
    cfg = WorldConfig(kind="procedural", clips=40, size=32)
    for index in range(cfg.clips):
        sounding = [s for s in compose_clip(library, "s4", index, cfg).sources if s.sounding]
        assert len(sounding) == 1 and sounding[0].on_screen
    # the old behaviour is an option, and it does put off-screen sources into s4
    old = WorldConfig(kind="procedural", clips=40, size=32, s4_offscreen=True)
    assert any(not s.on_screen for i in range(old.clips) for s in compose_clip(library, "s4", i, old).sources)


def test_s4_option_leaves_the_other_subsets_unchanged(library):
    clean, old = WorldConfig(kind="procedural", clips=10, size=32), WorldConfig(kind="procedural", clips=10, size=32, s4_offscreen=True)
    for subset in ("ms3", "avss", "msmi"):
        for index in range(0, 10, 3):
            a, b = compose_clip(library, subset, index, clean), compose_clip(library, subset, index, old)
            np.testing.assert_array_equal(a.audio, b.audio)
            np.testing.assert_array_equal(a.frames, b.frames)
    # and the other subsets keep their off-screen sources
    assert any(not s.on_screen for i in range(10) for s in compose_clip(library, "ms3", i, clean).sources)


def test_heldout_members_never_appear_in_training(library):
    cfg = WorldConfig(kind="procedural", clips=60, size=32, holdout_members=1)
    held = heldout_members(library, cfg)
    eligible = [c for c, cls in enumerate(library.classes) if len(cls.members) >= 3]
    assert eligible and sorted(held) == eligible  # one member of every class with >= 3 members
    names = {(library.classes[c].name, library.classes[c].members[i].name) for c, ms in held.items() for i in ms}
    assert sum(len(v) for v in heldout_member_names(library, cfg).values()) == len(names)
    seen_in_eval = set()
    for subset in SUBSETS:
        for index in range(cfg.clips):
            clip = compose_clip(library, subset, index, cfg)
            heard = {(s.class_name, s.member) for s in clip.sources}
            if clip.split == "train":
                assert not heard & names, (subset, index, heard & names)
            else:
                seen_in_eval |= heard & names
    assert seen_in_eval  # they do appear in val/test


def test_heldout_members_never_enter_the_pretraining_stream(library):
    cfg = WorldConfig(kind="procedural", holdout_members=1)
    held = heldout_members(library, cfg)
    stream = MixtureStream(library, cfg, held, PretrainConfig(batch_size=64))
    heard = set()
    for step in range(20):
        batch = stream.batch(step)
        assert batch.waves.shape == (len(batch.targets), 16000)
        for row, pairs in enumerate(batch.members):
            assert {c for c, _ in pairs} == set(np.flatnonzero(batch.targets[row]).tolist())
            heard |= set(pairs)
    excluded = {(c, m) for c, ms in held.items() for m in ms}
    assert not heard & excluded
    # every allowed member was drawn: the exclusion is not an accident of a small sample
    allowed = {(c, m) for c, cls in enumerate(library.classes) for m in range(len(cls.members))} - excluded
    assert heard == allowed


def test_stream_parts_sum_to_their_mixture_classes(library):
    stream = MixtureStream(library, WorldConfig(kind="procedural"), {}, PretrainConfig(batch_size=32))
    batch = stream.batch(0)
    assert any(batch.parts_of), "a batch of 32 should hold some mixtures with their parts"
    for row, parts in enumerate(batch.parts_of):
        assert row < batch.n_mixtures
        if parts:
            assert len(parts) == batch.targets[row].sum() >= 2
            np.testing.assert_array_equal(batch.targets[parts].sum(0), batch.targets[row])
            assert all(batch.targets[p].sum() == 1 for p in parts)


def test_batched_log_mel_matches_the_reference_front_end(library):
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(16000).astype(np.float32) * 0.3,
             np.resize(library.classes[0].members[0].sounds[0], 16000).astype(np.float32),
             np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32) * 0.5,
             np.zeros(16000, np.float32)]  # silence: log(0 + 0.01) everywhere
    got = torch_examples(torch.from_numpy(np.stack(waves))).numpy()
    for wave, row in zip(waves, got):
        reference = vggish_examples(wave)[0]
        assert row.shape == reference.shape == (96, 64)
        # float32 against the float64 reference: where a band's energy is near 0 the log (offset 0.01)
        # magnifies rounding to about 1e-3; the log-mels themselves span about -4.6 to +5
        np.testing.assert_allclose(row, reference, atol=2e-3, rtol=0)
        assert np.abs(row - reference).mean() < 1e-4


def test_pretraining_is_deterministic_for_a_seed(library):
    world = WorldConfig(kind="procedural")
    first, history = pretrain(library, world, TINY)
    second, _ = pretrain(library, world, TINY)
    other, _ = pretrain(library, world, PretrainConfig(**{**TINY.__dict__, "seed": 1}))
    assert len(history) == TINY.steps and all(np.isfinite(h["loss"]) for h in history)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not all(torch.equal(a[key], c[key]) for key in a)
    # the embedding is L2-normalised and frozen
    e = first(torch.randn(3, 96, 64))
    np.testing.assert_allclose(e.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert not any(p.requires_grad for p in first.parameters())


def test_cache_key_follows_library_heldout_set_and_settings(library):
    world = WorldConfig(kind="procedural")
    key = pretrain_key(library, world, {}, TINY)
    assert key == pretrain_key(library, world, {}, PretrainConfig(**TINY.__dict__))
    assert key != pretrain_key(library, world, {0: {1}}, TINY)
    assert key != pretrain_key(library, world, {}, PretrainConfig(**{**TINY.__dict__, "steps": 4}))
    assert key != pretrain_key(library, WorldConfig(kind="procedural", noise_snr_db=10.0), {}, TINY)
