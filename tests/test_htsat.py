"""HTS-AT: the official checkpoint layout loads strictly, mismatches are reported, shapes, the torch
front end against librosa, and ``htsat:PATH`` embedding a wav file."""
import numpy as np
import pytest
import soundfile
import torch

from avs_lib.audio.frontends import htsat_log_mel
from avs_lib.audio.htsat import HTSAT, HTSATEncoder, frame_waves, load_htsat


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A Lightning-like file: {'state_dict': {'sed_model.<official name>': tensor}, 'epoch': ...}."""
    torch.manual_seed(0)
    model = HTSAT().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so loading them is visible
        model.bn0.running_mean.uniform_(-5, 5)
        model.bn0.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("htsat") / "HTSAT_AudioSet_Saved_1.ckpt"
    state = {f"sed_model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 40, "pytorch-lightning_version": "1.5.9"}, path)
    return path, model, state


def test_official_names_and_shapes():
    """Shapes from the official code's arithmetic, not from this module."""
    state = HTSAT().state_dict()
    expected = {
        "spectrogram_extractor.stft.conv_real.weight": (513, 1, 1024),  # n_fft // 2 + 1 bins
        "logmel_extractor.melW": (513, 64),
        "bn0.running_var": (64,),
        "patch_embed.proj.weight": (96, 1, 4, 4),
        "layers.0.blocks.0.attn.relative_position_bias_table": (15 * 15, 4),  # (2*8-1)^2 offsets x heads
        "layers.0.blocks.1.attn_mask": (64, 64, 64),  # 64x64 tokens / 8x8 windows = 64 windows
        "layers.1.blocks.1.attn_mask": (16, 64, 64),
        "layers.2.blocks.5.attn.relative_position_bias_table": (225, 16),
        "layers.2.downsample.reduction.weight": (768, 4 * 384),
        "layers.3.blocks.1.attn.relative_position_bias_table": (225, 32),
        "layers.3.blocks.1.attn.relative_position_index": (64, 64),
        "norm.weight": (768,),
        "tscam_conv.weight": (527, 768, 2, 3),  # SF = 256 / 8 / 4 / 4
        "head.weight": (527, 527),
    }
    for name, shape in expected.items():
        assert tuple(state[name].shape) == shape, name
    assert "layers.3.blocks.1.attn_mask" not in state  # an 8x8 map is one window: no shift
    assert "layers.3.downsample.reduction.weight" not in state
    assert sum(k.startswith("layers.2.blocks.") and k.endswith("qkv.weight") for k in state) == 6


def test_lightning_checkpoint_loads_strictly(checkpoint):
    path, reference, _ = checkpoint
    model = load_htsat(path)
    report = model.load_report
    assert report.ok and not report.unexpected and not report.new_in_model
    assert len(report.loaded) == len(reference.state_dict())
    torch.testing.assert_close(model.bn0.running_mean, reference.bn0.running_mean)
    wave = torch.randn(2, 32000) * 0.1
    out = model(wave)
    assert out["latent_output"].shape == (2, 768)
    assert out["clipwise_output"].shape == (2, 527)
    assert out["framewise_output"].shape == (2, 1024, 527)
    torch.testing.assert_close(out["latent_output"], reference(wave)["latent_output"])


def test_renamed_and_misshaped_keys_are_reported(checkpoint, tmp_path):
    _, _, state = checkpoint
    renamed = dict(state)
    renamed["sed_model.layers.1.blocks.0.mlp.fc9.weight"] = renamed.pop("sed_model.layers.1.blocks.0.mlp.fc1.weight")
    torch.save({"state_dict": renamed}, tmp_path / "renamed.ckpt")  # one file: the path in the message
    with pytest.raises(ValueError, match=r"renamed\.ckpt(.|\n)*missing from the file: layers\.1\.blocks\.0\.mlp\.fc1\.weight"):
        load_htsat(tmp_path / "renamed.ckpt")
    # the other cases as in-memory Lightning dicts (the same reader)
    misshaped = dict(state, **{"sed_model.patch_embed.proj.weight": torch.zeros(96, 1, 8, 8)})
    with pytest.raises(ValueError, match=r"patch_embed\.proj\.weight: file \(96, 1, 8, 8\) vs model \(96, 1, 4, 4\)"):
        load_htsat({"state_dict": misshaped})
    with pytest.raises(ValueError, match="spec_augmenter.weight"):
        load_htsat({"state_dict": dict(state, **{"sed_model.spec_augmenter.weight": torch.zeros(1)})})
    shifted = dict(state)  # a buffer from another window layout
    key = "sed_model.layers.0.blocks.0.attn.relative_position_index"
    shifted[key] = state[key].flip(0)
    with pytest.raises(ValueError, match="relative_position_index differs"):
        load_htsat({"state_dict": shifted})


def test_front_end_matches_librosa():
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 32000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(32000)).astype(np.float32)
    ours = HTSAT().log_mel(torch.from_numpy(wave)[None])[0, 0].numpy()
    reference = htsat_log_mel(wave)  # librosa.stft + librosa.filters.mel
    assert ours.shape == reference.shape == (101, 64)  # 1 + 32000 // 320 centred frames
    np.testing.assert_allclose(ours, reference, atol=2e-3)


def test_frame_waves_tile_short_audio():
    wave = np.arange(5, dtype=np.float32)
    out = frame_waves(wave, 4, 2)  # 4 Hz: second 0 = [0..3], second 1 = [4] tiled
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [4, 4, 4, 4]])


def test_htsat_spec_embeds_a_wav(checkpoint, tmp_path):
    path, reference, _ = checkpoint
    sr = 16000
    t = np.arange(3 * sr) / sr
    wave = np.concatenate([np.sin(2 * np.pi * f * t[:sr]) for f in (300, 1200, 300)]).astype(np.float32) * 0.3
    soundfile.write(tmp_path / "clip.wav", wave, sr)
    encoder = HTSATEncoder(path)
    assert encoder.identifier.startswith("htsat-") and encoder.dim == 768
    from avs_lib.audio.frontends import resample

    read, file_sr = soundfile.read(tmp_path / "clip.wav", dtype="float32")
    at_32k = resample(read, file_sr, encoder.sample_rate)
    seconds = [at_32k[i * 32000:(i + 1) * 32000] for i in range(3)]
    emb = encoder.embed_frames(seconds)
    assert emb.shape == (3, 768) and np.isfinite(emb).all()
    # the same tone (up to the resampler's edges), a nearby embedding; another tone, a far one
    assert np.linalg.norm(emb[0] - emb[2]) < 0.1 * np.linalg.norm(emb[0] - emb[1])
    direct = reference(torch.from_numpy(np.stack(seconds[:1])))["latent_output"][0].detach().numpy()
    np.testing.assert_allclose(emb[0], direct, atol=1e-4)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [(32000, 1024, 64, 50, 14000), (22050, 1024, 64, 50, 11025),
                                                        (16000, 512, 40, 0, 8000)])
def test_slaney_mel_matrix_is_librosas(sr, n_fft, n_mels, fmin, fmax):
    import librosa

    from avs_lib.audio.frontends import slaney_mel_matrix

    ours = slaney_mel_matrix(sr, n_fft, n_mels, fmin, fmax)
    np.testing.assert_allclose(ours, librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax),
                               atol=1e-7)
