"""HTS-AT (Chen et al., ICASSP 2022): a hierarchical token-semantic Swin transformer over the log-mel,
the audio encoder DDESeg uses (its ``latent_output``, 768-d).

Written for this workbench from the facts of the official code (RetroCirce/HTS-Audio-Transformer,
``model/htsat.py``, ``config.py``) and of DDESeg's copy (YenanLiu/DDESeg, ``models/audio_branch``):
module and parameter names, shapes and the order of operations are the official ones, so a
Lightning checkpoint ``HTSAT_AudioSet_Saved_*.ckpt`` (keys ``sed_model.<name>``) loads strictly
through :func:`avs_lib.models.weights.load_weights` (:func:`load_htsat`).

The network, for one waveform [B, samples] at 32 kHz:

1. front end (torchlibrosa's modules, same names): ``spectrogram_extractor.stft.conv_real/conv_imag``
   (a 1024-point DFT times a periodic Hann window as Conv1d kernels, hop 320, centred frames with
   reflect padding) -> power spectrum; ``logmel_extractor.melW`` [513, 64] (Slaney mel, 50-14000 Hz)
   -> ``10 log10(max(mel, 1e-10))``; ``bn0`` (BatchNorm over the 64 mel bins).
2. ``reshape_wav2img``: the [T, 64] log-mel is stretched (bicubic, align_corners) to 1024 frames and
   folded into a 256 x 256 "image": four consecutive 256-frame chunks stacked along frequency.
3. ``patch_embed`` (4 x 4 patches, 96-d, LayerNorm) -> 64 x 64 tokens; four Swin stages
   (``layers.N``, depths 2-2-6-2, heads 4-8-16-32, window 8, shifted windows in odd blocks,
   ``downsample`` patch merging between stages) -> 8 x 8 tokens of 768-d; ``norm``.
4. ``latent_output``: the mean of the 64 final tokens [B, 768] (what DDESeg takes as F_a);
   the token-semantic head ``tscam_conv`` (kernel (2, 3) over the regrouped [2, 32] token map) gives
   framewise and clipwise class outputs (``head`` is built as in the official code but not used on
   this path, as in the official forward).

Buffers: the official model keeps ``relative_position_index`` and ``attn_mask`` as persistent
buffers and the front end's DFT kernels and mel matrix as frozen parameters, so they are in its
checkpoints. Here they are registered under the same names and computed at construction;
:func:`load_htsat` loads the front end from the file (the weights the network was trained with) and
checks that the file's ``relative_position_index``/``attn_mask`` equal the computed ones (another
window layout would be an error). A file without them (a backbone-only export) loads with them
reported as computed (``new_in_model``).

How a 1 s frame is embedded (DDESeg's choice, ``dataload/baseloader.py``): the frame's own second
of audio, mono, resampled, tiled to 1 s when shorter (``_wav_repeat``), fed alone; the ~100 log-mel
frames are stretched to 1024 by step 2 (no context from neighbouring seconds). DDESeg's config
runs this at 22 050 Hz with hop 256 (87 frames); the workbench default is HTS-AT's own front end
(32 kHz, hop 320, 101 frames), the one the AudioSet checkpoint was trained with; pass
``HTSATConfig(sample_rate=22050, hop=256)`` to follow DDESeg's config instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avs_lib.audio.frontends import (HTSAT_FMAX, HTSAT_FMIN, HTSAT_HOP, HTSAT_MELS, HTSAT_SAMPLE_RATE, HTSAT_WINDOW,
                                     slaney_mel_matrix)
from avs_lib.models.weights import load_weights, read_state_dict, strip_prefixes


@dataclass
class HTSATConfig:
    """The official AudioSet model (config.py: htsat_* and the front end)."""
    sample_rate: int = HTSAT_SAMPLE_RATE
    window: int = HTSAT_WINDOW  # n_fft = win_length
    hop: int = HTSAT_HOP
    mel_bins: int = HTSAT_MELS
    fmin: float = HTSAT_FMIN
    fmax: float = HTSAT_FMAX
    spec_size: int = 256
    patch_size: int = 4
    patch_stride: tuple[int, int] = (4, 4)
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    mlp_ratio: float = 4.0
    num_classes: int = 527  # AudioSet
    frame_seconds: float = 1.0  # DDESeg: one embedding per 1 s of audio
    extra: dict = field(default_factory=dict)

    @property
    def freq_ratio(self) -> int:
        return self.spec_size // self.mel_bins  # 4: chunks folded along frequency

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)  # 768


# ----------------------------------------------------------------------------- front end
def dft_kernels(n_fft: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary Conv1d kernels [n_fft//2 + 1, 1, n_fft]: exp(-2 pi i k n / N) times a
    periodic Hann window (librosa's ``get_window('hann', fftbins=True)``)."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    angle = -2 * np.pi * np.outer(k, n) / n_fft
    real = (np.cos(angle) * window)[:, None, :]
    imag = (np.sin(angle) * window)[:, None, :]
    return torch.tensor(real, dtype=torch.float32), torch.tensor(imag, dtype=torch.float32)


class STFT(nn.Module):
    """torchlibrosa's STFT as Conv1d (names ``conv_real``/``conv_imag``), centred, reflect padding."""

    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.conv_real = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        self.conv_imag = nn.Conv1d(1, n_fft // 2 + 1, n_fft, stride=hop, bias=False)
        real, imag = dft_kernels(n_fft)
        self.conv_real.weight.data.copy_(real)
        self.conv_imag.weight.data.copy_(imag)
        self.requires_grad_(False)

    def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.pad(wave[:, None, :], (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        return self.conv_real(x), self.conv_imag(x)  # [B, bins, T] each


class Spectrogram(nn.Module):
    def __init__(self, n_fft: int, hop: int):
        super().__init__()
        self.stft = STFT(n_fft, hop)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        real, imag = self.stft(wave)
        return (real ** 2 + imag ** 2).transpose(1, 2)[:, None]  # power [B, 1, T, bins]


class LogmelFilterBank(nn.Module):
    """``melW`` [bins, mels] (librosa's Slaney mel, transposed), then 10 log10(max(x, 1e-10))."""

    def __init__(self, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float):
        super().__init__()
        mel = slaney_mel_matrix(sample_rate, n_fft, n_mels, fmin, fmax)  # = librosa.filters.mel (tested)
        self.melW = nn.Parameter(torch.tensor(mel.T, dtype=torch.float32), requires_grad=False)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return 10.0 * torch.log10((power @ self.melW).clamp_min(1e-10))  # ref 1.0, no top_db, as HTS-AT


# ----------------------------------------------------------------------------- Swin parts
def window_partition(x: torch.Tensor, w: int) -> torch.Tensor:
    """[B, H, W, C] -> [B * nW, w * w, C]."""
    B, H, W, C = x.shape
    x = x.view(B, H // w, w, W // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, w * w, C)


def window_reverse(windows: torch.Tensor, w: int, H: int, W: int) -> torch.Tensor:
    """[B * nW, w * w, C] -> [B, H, W, C]."""
    C = windows.shape[-1]
    x = windows.view(-1, H // w, W // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(w: int) -> torch.Tensor:
    """[w*w, w*w]: index into the (2w-1)^2 bias table of the offset between two tokens of a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # [2, w*w]
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (w - 1)  # [w*w, w*w, 2], from 0
    return rel[..., 0] * (2 * w - 1) + rel[..., 1]


def shifted_window_mask(H: int, W: int, w: int, shift: int) -> torch.Tensor:
    """[nW, w*w, w*w]: 0 between tokens of the same region of the cyclically shifted map, -100 else
    (the official value)."""
    region = torch.zeros(1, H, W, 1)
    count = 0
    for hs in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
        for ws in (slice(0, -w), slice(-w, -shift), slice(-shift, None)):
            region[:, hs, ws, :] = count
            count += 1
    windows = window_partition(region, w).squeeze(-1)  # [nW, w*w]
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative position bias."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.window, self.heads = window, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        Bw, N, C = x.shape
        q, k, v = self.qkv(x).reshape(Bw, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(N, N, -1)
        bias = bias.permute(2, 0, 1)[None]  # [1, heads, N, N]
        if mask is not None:  # [nW, N, N]: the windows of one example are consecutive in Bw
            nW = mask.shape[0]
            bias = (bias + mask[:, None]).repeat(Bw // nW, 1, 1, 1)  # [Bw, heads, N, N]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(Bw, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwinTransformerBlock(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int, shift: int, mlp_ratio: float):
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window:  # the whole map is one window: no shift (official rule)
            window, shift = min(resolution), 0
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.register_buffer("attn_mask", shifted_window_mask(*resolution, window, shift) if shift > 0 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.resolution
        B, L, C = x.shape
        h = self.norm1(x).view(B, H, W, C)
        if self.shift:
            h = torch.roll(h, (-self.shift, -self.shift), dims=(1, 2))
        h = window_reverse(self.attn(window_partition(h, self.window), self.attn_mask), self.window, H, W)
        if self.shift:
            h = torch.roll(h, (self.shift, self.shift), dims=(1, 2))
        x = x + h.reshape(B, L, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """2 x 2 neighbouring tokens concatenated (official order x0, x1, x2, x3), LayerNorm, 4C -> 2C."""

    def __init__(self, resolution: tuple[int, int], dim: int):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        H, W = self.resolution
        B, _, C = x.shape
        x = x.view(B, H, W, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class BasicLayer(nn.Module):
    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int, window: int, mlp_ratio: float,
                 downsample: bool):
        super().__init__()
        self.blocks = nn.ModuleList([SwinTransformerBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2,
                                                          mlp_ratio) for i in range(depth)])
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, stride: tuple[int, int], dim: int):
        super().__init__()
        padding = ((patch - stride[0]) // 2, (patch - stride[1]) // 2)
        self.proj = nn.Conv2d(1, dim, patch, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # [B, H*W, C]


# ----------------------------------------------------------------------------- the model
class HTSAT(nn.Module):
    """HTS-AT with the official names (``HTSAT_Swin_Transformer``; spec-augment, mixup, dropout and
    drop-path are training-only and left out: this module is an inference encoder)."""

    def __init__(self, config: HTSATConfig | None = None):
        super().__init__()
        self.config = cfg = config or HTSATConfig()
        self.spectrogram_extractor = Spectrogram(cfg.window, cfg.hop)
        self.logmel_extractor = LogmelFilterBank(cfg.sample_rate, cfg.window, cfg.mel_bins, cfg.fmin, cfg.fmax)
        self.bn0 = nn.BatchNorm2d(cfg.mel_bins)
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.patch_stride, cfg.embed_dim)
        grid = (cfg.spec_size // cfg.patch_stride[0], cfg.spec_size // cfg.patch_stride[1])  # 64 x 64
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads)):
            self.layers.append(BasicLayer(cfg.embed_dim * 2 ** i, (grid[0] // 2 ** i, grid[1] // 2 ** i), depth, heads,
                                          cfg.window_size, cfg.mlp_ratio, downsample=i < len(cfg.depths) - 1))
        self.norm = nn.LayerNorm(cfg.num_features)
        # the final map is (spec_size / 8 / patch_stride) tall; folded by freq_ratio -> SF rows
        sf = cfg.spec_size // 2 ** (len(cfg.depths) - 1) // cfg.patch_stride[0] // cfg.freq_ratio
        self.tscam_conv = nn.Conv2d(cfg.num_features, cfg.num_classes, kernel_size=(sf, 3), padding=(0, 1))
        self.head = nn.Linear(cfg.num_classes, cfg.num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def dim(self) -> int:
        return self.config.num_features

    def log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        """[B, samples] at ``config.sample_rate`` -> [B, 1, T, mel_bins] in dB (before ``bn0``)."""
        return self.logmel_extractor(self.spectrogram_extractor(wave))

    def reshape_wav2img(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 1, T, F] -> [B, 1, spec_size, spec_size]: stretch to spec_size * freq_ratio frames, then
        stack the freq_ratio time chunks along frequency (official ``reshape_wav2img``)."""
        cfg = self.config
        target_t, target_f = cfg.spec_size * cfg.freq_ratio, cfg.spec_size // cfg.freq_ratio
        B, C, T, Fq = x.shape
        if T > target_t or Fq > target_f:
            raise ValueError(f"HTS-AT takes at most {target_t} log-mel frames ({target_t * cfg.hop / cfg.sample_rate:.1f} s); "
                             f"got {T}: cut the audio into shorter pieces")
        if T < target_t:
            x = F.interpolate(x, (target_t, Fq), mode="bicubic", align_corners=True)
        if Fq < target_f:
            x = F.interpolate(x, (x.shape[2], target_f), mode="bicubic", align_corners=True)
        x = x.transpose(2, 3)  # [B, 1, F, T]
        x = x.reshape(B, C, target_f, cfg.freq_ratio, target_t // cfg.freq_ratio).permute(0, 1, 3, 2, 4)
        return x.reshape(B, C, target_f * cfg.freq_ratio, target_t // cfg.freq_ratio)

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.config
        frames = x.shape[2]
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)  # [B, N, C]
        B, N, C = x.shape
        side = frames // 2 ** (len(cfg.depths) - 1) // cfg.patch_stride[0]  # 8
        x = x.transpose(1, 2).reshape(B, C, side, side)
        rows = side // cfg.freq_ratio  # regroup the folded chunks back into time: [B, C, rows, 4 * side]
        x = x.reshape(B, C, cfg.freq_ratio, rows, side).permute(0, 1, 3, 2, 4).reshape(B, C, rows, -1)
        latent = x.flatten(2).mean(-1)  # [B, 768]: DDESeg's F_a
        logits = self.tscam_conv(x).flatten(2)  # [B, classes, T']
        framewise = torch.sigmoid(logits).transpose(1, 2).repeat_interleave(8 * cfg.patch_stride[1], dim=1)
        return {"framewise_output": framewise, "clipwise_output": torch.sigmoid(logits.mean(-1)), "latent_output": latent}

    def forward(self, wave: torch.Tensor) -> dict[str, torch.Tensor]:
        """[B, samples] (at most ~10 s at 32 kHz) -> the official output dict (eval-mode path)."""
        x = self.log_mel(wave)  # [B, 1, T, 64]
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        return self.forward_features(self.reshape_wav2img(x))

    @torch.no_grad()
    def embed(self, wave: torch.Tensor) -> torch.Tensor:
        """latent_output [B, 768] of waveforms [B, samples]."""
        return self(wave)["latent_output"]


# ----------------------------------------------------------------------------- loading
COMPUTED_BUFFERS = (".relative_position_index", ".attn_mask")
FRONT_END = (".spectrogram_extractor.", ".logmel_extractor.")


def _computed(model: HTSAT) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if any(m in f".{k}" for m in COMPUTED_BUFFERS)}


def load_htsat(path, config: HTSATConfig | None = None, device: str | torch.device = "cpu") -> HTSAT:
    """HTS-AT from a local checkpoint: the official Lightning file (``state_dict`` with keys
    ``sed_model.*``), a plain state dict, or one with DDESeg's ``audio_model.`` prefix; ``path``
    may also be such a dict already in memory.

    Strict: every parameter must be in the file with its shape, and nothing else may be (the
    returned model's ``load_report`` is the :class:`~avs_lib.models.weights.LoadReport`). The
    number of classes is read from the file's ``tscam_conv`` (527 for AudioSet). Computed buffers
    and the front end may be absent (reported as new in the model); present, the buffers must equal
    the computed ones. A file without ``tscam_conv``/``head`` (a backbone export) also loads: the
    embedding does not use them.
    """

    prefixes = ("sed_model.", "audio_model.", "module.")
    state = strip_prefixes(read_state_dict(path, "HTS-AT checkpoint"), prefixes)
    config = config or HTSATConfig()
    if "tscam_conv.weight" in state:
        config = HTSATConfig(**{**config.__dict__, "num_classes": int(state["tscam_conv.weight"].shape[0])})
    model = HTSAT(config)
    expected = _computed(model)
    head_absent = "tscam_conv.weight" not in state and "head.weight" not in state
    markers = COMPUTED_BUFFERS + FRONT_END + ((".tscam_conv.", ".head.") if head_absent else ())
    where = str(path) if isinstance(path, (str, Path)) else "state dict"
    report = load_weights(model, state, new_markers=markers, what=f"HTS-AT checkpoint {where}")
    report.source = where
    if report.unexpected:
        raise ValueError(f"{where} is not an HTS-AT checkpoint in the official layout: unused tensors "
                         f"{report.unexpected[:6]}{' ...' if len(report.unexpected) > 6 else ''}\n{report}")
    for name, value in _computed(model).items():
        if not torch.equal(value, expected[name]):
            raise ValueError(f"{where}: {name} differs from the one computed for window {config.window_size} on a "
                             f"{config.spec_size} x {config.spec_size} spectrogram: another HTS-AT variant")
    model.load_report = report
    return model.to(device).eval().requires_grad_(False)


def frame_waves(wave: np.ndarray, sample_rate: int, frames: int, frame_seconds: float = 1.0) -> np.ndarray:
    """[frames, samples]: second t of ``wave``, each tiled to ``frame_seconds`` when the audio is
    shorter (DDESeg's ``_wav_repeat``). ``wave`` at ``sample_rate``."""
    per = int(round(frame_seconds * sample_rate))
    out = []
    for t in range(frames):
        piece = wave[t * per:(t + 1) * per]
        if len(piece) == 0:
            piece = wave[-per:] if len(wave) else np.zeros(per, np.float32)
        if len(piece) < per:
            piece = np.tile(piece, math.ceil(per / len(piece)))[:per] if len(piece) else np.zeros(per, np.float32)
        out.append(piece)
    return np.stack(out).astype(np.float32)


class HTSATEncoder:
    """``htsat:PATH`` as a frame encoder for ``avs embed``: one ``latent_output`` [768] per frame,
    each frame's own second of audio at the model's sample rate (``frame_waves``; DDESeg's cut)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", config: HTSATConfig | None = None,
                 batch_size: int = 16):
        import hashlib

        self.model = load_htsat(path, config, device)
        self.device, self.batch_size = torch.device(device), batch_size
        self.sample_rate, self.dim = self.model.config.sample_rate, self.model.dim
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        self.identifier = "htsat-" + digest.hexdigest()[:16]

    def embed_frames(self, segments: list[np.ndarray]) -> np.ndarray:
        """[frames, 768] from each frame's audio (mono, at ``self.sample_rate``)."""
        cfg = self.model.config
        waves = np.concatenate([frame_waves(s, cfg.sample_rate, 1, cfg.frame_seconds) for s in segments])
        out = [self.model.embed(torch.from_numpy(waves[i:i + self.batch_size]).to(self.device)).cpu()
               for i in range(0, len(waves), self.batch_size)]
        return torch.cat(out).numpy().astype(np.float32)
