"""Audio front ends: the log-mel inputs of VGGish and HTS-AT, written with numpy and librosa.

* ``vggish_log_mel``: 16 kHz, 25 ms periodic-Hann window, 10 ms hop, FFT 512, magnitude (not
  power) spectrum, 64 mel bands from 125 to 7500 Hz built with HTK mels (1127 ln(1 + f/700)) and
  triangles in the mel domain with the DC bin zeroed, ``log(mel + 0.01)``, then cut into
  non-overlapping 0.96 s examples of [96, 64]. This is what AVSBench's ``audio_log_mel/*.pkl``
  files hold ([5, 1, 96, 64] for a 5 s clip).
* ``htsat_log_mel``: 32 kHz, Hann window 1024, hop 320, centred frames with reflect padding,
  power spectrum, 64 Slaney mel bands from 50 to 14000 Hz, ``10 log10(max(x, 1e-10))``. [frames, 64].
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

VGGISH_SAMPLE_RATE = 16000
VGGISH_WINDOW = 400  # 25 ms
VGGISH_HOP = 160  # 10 ms
VGGISH_FFT = 512
VGGISH_MELS = 64
VGGISH_FMIN, VGGISH_FMAX = 125.0, 7500.0
VGGISH_LOG_OFFSET = 0.01
VGGISH_EXAMPLE_FRAMES = 96  # 0.96 s at 100 frames per second

HTSAT_SAMPLE_RATE = 32000
HTSAT_WINDOW = 1024
HTSAT_HOP = 320
HTSAT_MELS = 64
HTSAT_FMIN, HTSAT_FMAX = 50.0, 14000.0


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality); a no-op when the rates agree."""
    if orig_sr == target_sr:
        return np.asarray(wave, dtype=np.float32)
    import librosa

    return librosa.resample(np.asarray(wave, dtype=np.float32), orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq").astype(np.float32)


def htk_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@lru_cache(maxsize=1)
def vggish_mel_matrix() -> np.ndarray:
    """[257, 64] weights from FFT bins to VGGish mel bands (triangles in the mel domain). Computed
    once (it took most of a log-mel's time) and read-only, since every caller shares it."""
    n_bins = VGGISH_FFT // 2 + 1
    bins_mel = htk_mel(np.linspace(0.0, VGGISH_SAMPLE_RATE / 2, n_bins))
    edges = np.linspace(htk_mel(VGGISH_FMIN), htk_mel(VGGISH_FMAX), VGGISH_MELS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower[None, :]) / (centre - lower)[None, :]
    falling = (upper[None, :] - bins_mel[:, None]) / (upper - centre)[None, :]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # VGGish ignores the DC bin
    weights.setflags(write=False)
    return weights


def _frames(wave: np.ndarray, window: int, hop: int) -> np.ndarray:
    n = 1 + (len(wave) - window) // hop
    if n < 1:
        raise ValueError(f"audio of {len(wave)} samples is shorter than one {window}-sample window")
    index = np.arange(window)[None, :] + hop * np.arange(n)[:, None]
    return wave[index]


def vggish_log_mel(wave: np.ndarray, sample_rate: int = VGGISH_SAMPLE_RATE) -> np.ndarray:
    """[frames, 64] VGGish log-mel of a mono waveform (resampled to 16 kHz first)."""
    wave = resample(np.asarray(wave, dtype=np.float64), sample_rate, VGGISH_SAMPLE_RATE).astype(np.float64)
    periodic_hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(VGGISH_WINDOW) / VGGISH_WINDOW)
    spectrum = np.abs(np.fft.rfft(_frames(wave, VGGISH_WINDOW, VGGISH_HOP) * periodic_hann, VGGISH_FFT))
    return np.log(spectrum @ vggish_mel_matrix() + VGGISH_LOG_OFFSET).astype(np.float32)


def vggish_examples(wave: np.ndarray, sample_rate: int = VGGISH_SAMPLE_RATE) -> np.ndarray:
    """[N, 96, 64]: the log-mel cut into non-overlapping 0.96 s examples (a partial tail is dropped)."""
    mel = vggish_log_mel(wave, sample_rate)
    n = len(mel) // VGGISH_EXAMPLE_FRAMES
    if n == 0:
        raise ValueError("audio is shorter than one 0.96 s VGGish example")
    return mel[: n * VGGISH_EXAMPLE_FRAMES].reshape(n, VGGISH_EXAMPLE_FRAMES, VGGISH_MELS)


def per_second_vggish_examples(wave: np.ndarray, seconds: int, sample_rate: int = VGGISH_SAMPLE_RATE) -> np.ndarray:
    """[seconds, 1, 96, 64] as in AVSBench's ``audio_log_mel`` pickles: one example per 1 s frame."""
    per = sample_rate
    wave = np.asarray(wave, dtype=np.float32)
    if len(wave) < seconds * per:
        wave = np.pad(wave, (0, seconds * per - len(wave)))
    return np.stack([vggish_examples(wave[t * per : (t + 1) * per], sample_rate)[:1] for t in range(seconds)])


def slaney_mel_matrix(sample_rate: int = HTSAT_SAMPLE_RATE, n_fft: int = HTSAT_WINDOW, n_mels: int = HTSAT_MELS,
                      fmin: float = HTSAT_FMIN, fmax: float = HTSAT_FMAX) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] Slaney mel filterbank (librosa's ``filters.mel`` defaults, htk=False,
    norm='slaney'): mels linear (200/3 Hz per mel) below 1 kHz and logarithmic above, triangles in Hz
    between consecutive band edges, each scaled to unit area (2 / bandwidth). Written here so that
    the HTS-AT module needs numpy only; the tests compare it with librosa."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0

    def to_mel(hz):
        hz = np.asarray(hz, dtype=np.float64)
        return np.where(hz >= min_log_hz, min_log_mel + np.log(np.maximum(hz, 1e-10) / min_log_hz) / logstep, hz / f_sp)

    def to_hz(mel):
        return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)

    edges = to_hz(np.linspace(to_mel(fmin), to_mel(fmax), n_mels + 2))  # [n_mels + 2] Hz
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    width = np.diff(edges)
    ramps = edges[:, None] - bins[None, :]
    rising, falling = -ramps[:-2] / width[:-1, None], ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return (weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]).astype(np.float32)


def htsat_log_mel(wave: np.ndarray, sample_rate: int = HTSAT_SAMPLE_RATE) -> np.ndarray:
    """[frames, 64] HTS-AT log-mel (dB) of a mono waveform (resampled to 32 kHz first)."""
    import librosa

    wave = resample(wave, sample_rate, HTSAT_SAMPLE_RATE).astype(np.float64)
    power = np.abs(librosa.stft(wave, n_fft=HTSAT_WINDOW, hop_length=HTSAT_HOP, win_length=HTSAT_WINDOW,
                                window="hann", center=True, pad_mode="reflect")) ** 2
    mel_basis = librosa.filters.mel(sr=HTSAT_SAMPLE_RATE, n_fft=HTSAT_WINDOW, n_mels=HTSAT_MELS,
                                    fmin=HTSAT_FMIN, fmax=HTSAT_FMAX, htk=False, norm="slaney")
    mel = mel_basis @ power
    return (10.0 * np.log10(np.maximum(mel, 1e-10))).T.astype(np.float32)
