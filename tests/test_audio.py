"""Front ends against values computed independently (explicit DFT sums, hand-built filters)."""
import numpy as np
import pytest

from avs_lib.audio import frontends as audio


def _tone(freq, seconds, sr, amplitude=0.5):
    t = np.arange(int(seconds * sr)) / sr
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_vggish_shapes_match_avsbench_pickles():
    wave = np.random.default_rng(0).standard_normal(5 * 16000).astype(np.float32) * 0.1
    assert audio.vggish_log_mel(wave).shape == (1 + (80000 - 400) // 160, 64)
    assert audio.vggish_examples(wave).shape == (5, 96, 64)
    assert audio.per_second_vggish_examples(wave, 5).shape == (5, 1, 96, 64)


def test_vggish_one_value_by_explicit_dft():
    sr = 16000
    wave = np.random.default_rng(1).standard_normal(sr).astype(np.float64) * 0.2
    frame_index, band = 7, 20
    frame = wave[frame_index * 160 : frame_index * 160 + 400]
    n = np.arange(400)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / 400)  # periodic Hann
    # magnitude of a 512-point DFT, summed by hand
    k = np.arange(257)
    dft = np.abs(np.exp(-2j * np.pi * np.outer(k, n) / 512) @ (frame * window))
    # every band's triangle in the HTK mel domain, DC bin excluded
    expected = np.log(dft @ _htk_triangles() + 0.01)  # [64]
    got = audio.vggish_log_mel(wave.astype(np.float32))[frame_index]
    np.testing.assert_allclose(got, expected, atol=1e-4)  # the whole row: edge bands included
    assert got[band] == pytest.approx(expected[band], abs=1e-4)


def _htk_triangles() -> np.ndarray:
    """[257, 64] VGGish's mel weights written out: 64 triangles between 125 and 7 500 Hz, evenly
    spaced on the HTK mel scale, over the 257 bins of a 512-point DFT at 16 kHz, DC bin zeroed."""
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    bin_mel = mel(np.arange(257) * 8000.0 / 256)[:, None]
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    weights = np.clip(np.minimum((bin_mel - lo) / (mid - lo), (hi - bin_mel) / (hi - mid)), 0, None)
    weights[0] = 0
    return weights


def test_vggish_tone_peaks_in_the_right_band():
    sr = 16000
    mel = audio.vggish_log_mel(_tone(1000.0, 1.0, sr)).mean(axis=0)
    centres = 700.0 * (np.exp(np.linspace(audio.htk_mel(125.0), audio.htk_mel(7500.0), 66)[1:-1] / 1127.0) - 1)
    assert abs(centres[int(np.argmax(mel))] - 1000.0) < 60.0


def test_vggish_resamples_other_rates():
    at16 = audio.vggish_log_mel(_tone(440.0, 1.0, 16000))
    at44 = audio.vggish_log_mel(_tone(440.0, 1.0, 44100), sample_rate=44100)
    assert at16.shape == at44.shape
    assert np.abs(at16 - at44)[2:-2].mean() < 0.05


def test_htsat_one_value_by_explicit_dft():
    sr = 32000
    wave = np.random.default_rng(2).standard_normal(sr // 2) * 0.1
    frame_index = 5
    padded = np.pad(wave, 512, mode="reflect")  # centred frames
    frame = padded[frame_index * 320 : frame_index * 320 + 1024]
    n = np.arange(1024)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / 1024)
    power = np.abs(np.exp(-2j * np.pi * np.outer(np.arange(513), n) / 1024) @ (frame * window)) ** 2
    import librosa

    basis = librosa.filters.mel(sr=sr, n_fft=1024, n_mels=64, fmin=50, fmax=14000)
    expected = 10 * np.log10(np.maximum(basis @ power, 1e-10))
    got = audio.htsat_log_mel(wave.astype(np.float32))
    assert got.shape == (1 + len(wave) // 320, 64)
    np.testing.assert_allclose(got[frame_index], expected, atol=1e-3)


def test_mel_triangles_peak_at_one():
    weights = audio.vggish_mel_matrix()
    assert weights.shape == (257, 64)
    assert np.all(weights[0] == 0) and np.all(weights >= 0)
    # the DFT bins fall between the narrow low bands' centres, so a band's largest weight lies in (0.5, 1]
    assert np.all(weights.max(axis=0) > 0.5) and np.all(weights.max(axis=0) <= 1.0)
    np.testing.assert_allclose(weights, _htk_triangles(), atol=1e-6)  # every weight, written out independently
