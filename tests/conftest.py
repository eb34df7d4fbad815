from avs_lib.core.kernels import use_portable_kernels

# The tests compute in this process what they compare with `avs` subprocesses, which run capped
# (avs_lib/core/kernels.py): the same caps here, before NumPy and torch are imported.
use_portable_kernels()

import socket  # noqa: E402

import numpy as np  # noqa: E402
import pytest
import torch

from avs_lib.data.frames import FrameSet
from avs_lib.memory.build import build_semantic_memory
from avs_lib.training.prepare import Prepared
from avs_lib.world.assets import load_library, stamps_available
from avs_lib.world.compose import WorldConfig
from avs_lib.world.write import write_world

SMALL = dict(clips=7, size=48)  # 7 clips: 5 train, 1 val, 1 test per subset

KINDS = ["procedural", pytest.param("stamps", marks=pytest.mark.skipif(
    not stamps_available(), reason="tuxpaint-stamps-default / sonic-pi-samples not installed (make test installs them)"))]


@pytest.fixture(scope="session", params=KINDS)
def small_world(request, tmp_path_factory):
    """A small world of every subset, written once per asset library; returns (config, library, root)."""
    cfg = WorldConfig(kind=request.param, **SMALL)
    library = load_library(cfg.kind, cfg.sample_rate, warn_on_fallback=False)
    root = tmp_path_factory.mktemp(f"world_{request.param}")
    write_world(cfg, root, progress=False, library=library)
    return cfg, library, root


@pytest.fixture(scope="session")
def procedural_world(tmp_path_factory):
    cfg = WorldConfig(kind="procedural", **SMALL)
    root = tmp_path_factory.mktemp("world_procedural_b")
    write_world(cfg, root, progress=False)
    return cfg, root


@pytest.fixture(scope="session")
def notebook_world(tmp_path_factory):
    """s4 and ms3 at 32 px with 120 clips each: every class has single-source training clips for the memory."""
    root = tmp_path_factory.mktemp("nb_world")
    write_world(WorldConfig(kind="procedural", subsets=("s4", "ms3"), clips=120, size=32), root, progress=False)
    return root


# ----------------------------------------------------------------------------- shared helpers
# Plain functions, imported by the test files (`from conftest import ...`; pytest puts tests/ on the path).
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as a float64 numpy array, for independent numpy computations."""
    return t.detach().double().numpy()


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def small_memory(audio_dim: int = 16, classes: int = 6):
    """A semantic memory (k=2, m=3) of ``classes`` well-separated Gaussian classes."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), 12)
    features = rng.normal(size=(len(labels), audio_dim)) + labels[:, None]
    return build_semantic_memory(torch.tensor(features, dtype=torch.float32), torch.tensor(labels), k=2, m=3, seed=0,
                                 class_names=[f"c{i}" for i in range(classes)])


def synthetic_frames(n: int, seed: int, size: int = 32, dim: int = 128) -> FrameSet:
    """``n`` random frames of ``size`` px, each with a square mask (side 5/16 of the frame, its place
    drawn per frame) and a random audio feature of ``dim``; 4 frames per clip."""
    g = torch.Generator().manual_seed(seed)
    top, side = size // 6, size * 5 // 16
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        x = int(torch.randint(0, size - side, (1,), generator=g))
        masks[i, top:top + side, x:x + side] = 1
    audio = torch.randn(n, dim, generator=g)
    images = (torch.rand(n, 3, size, size, generator=g) * 255).to(torch.uint8)
    return FrameSet(images, masks, torch.ones(n, dtype=torch.bool), audio, [f"c{i // 4}" for i in range(n)],
                    [i % 4 for i in range(n)], ["x"] * n)


def synthetic_prepared(counts: tuple[int, int, int] = (8, 4, 4), size: int = 32, dim: int = 128) -> Prepared:
    """What ``prepare`` returns, for a tiny synthetic run: train/val/test frames, no memory, one class."""
    train, val, test = (synthetic_frames(n, seed, size, dim) for seed, n in enumerate(counts))
    return Prepared(train, val, test, memory=None, num_classes=1)


def tiny_run_overrides(out, **kw) -> list[str]:
    """The ``key=value`` overrides (as ``avs train`` takes them) of a tiny baseline run on 32 px frames."""
    values = dict(model="baseline", ablation="null", size="tiny", image_size=32, epochs=2, batch_size=4, lr=0.001,
                  min_lr=0.0001, warmup_epochs=1, seed=3, device="cpu", out=out, progress="false", tracking="none")
    values.update(kw)
    return [f"{k}={v}" for k, v in values.items()] + ["switches.decoder_dropout=0.0", "switches.decoder_norm=group"]
