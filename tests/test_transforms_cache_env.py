import re
import tomllib
from pathlib import Path

import numpy as np
import yaml
from hypothesis import given, settings, strategies as st

from avs_lib.core.cache import EmbeddingCache
from avs_lib.data.transforms import CenterCrop, Compose, RandomCrop, RandomHorizontalFlip, Resize

ROOT = Path(__file__).resolve().parents[1]


def _sample(h, w, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    # a mask that is a function of the image, so alignment can be checked after any transform
    return {"image": image, "mask": (image[..., 0] > 127).astype(np.int64), "audio": np.zeros(4, np.float32)}


@settings(max_examples=30, deadline=None)
@given(h=st.integers(8, 40), w=st.integers(8, 40), seed=st.integers(0, 1000), crop=st.integers(1, 8))
def test_crop_and_flip_keep_image_and_mask_aligned(h, w, seed, crop):
    sample = _sample(h, w, seed)
    out = Compose([RandomCrop(crop), RandomHorizontalFlip(0.5)])(sample, np.random.default_rng(seed))
    assert out["image"].shape == (crop, crop, 3)
    np.testing.assert_array_equal(out["mask"], (out["image"][..., 0] > 127).astype(np.int64))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000))
def test_flip_twice_is_identity(seed):
    sample = _sample(9, 13, seed)
    flip = RandomHorizontalFlip(1.0)
    once = flip(sample, np.random.default_rng(0))
    # p=1 mirrors image and mask alike (a no-op flip would pass the round trip alone)
    np.testing.assert_array_equal(once["image"], sample["image"][:, ::-1])
    np.testing.assert_array_equal(once["mask"], sample["mask"][:, ::-1])
    again = flip(once, np.random.default_rng(0))
    np.testing.assert_array_equal(again["image"], sample["image"])
    np.testing.assert_array_equal(again["mask"], sample["mask"])


def test_resize_keeps_mask_labels_exact():
    sample = {"image": np.zeros((20, 30, 3), np.uint8), "mask": np.repeat(np.arange(3), 10)[None, :].repeat(20, 0)}
    out = Resize((7, 11))(sample, np.random.default_rng(0))
    assert out["image"].shape == (7, 11, 3) and set(np.unique(out["mask"])) == {0, 1, 2}
    assert CenterCrop(5)(out, None)["mask"].shape == (5, 5)


def test_embedding_cache_computes_once(tmp_path):
    cache = EmbeddingCache(tmp_path)
    calls = []
    x = np.arange(10, dtype=np.float32)
    compute = lambda: calls.append(1) or x * 2
    first = cache.get_or_compute("enc-a", x, compute)
    second = cache.get_or_compute("enc-a", x, compute)
    np.testing.assert_array_equal(first, second)
    assert len(calls) == 1 and cache.hits == 1
    cache.get_or_compute("enc-b", x, compute)  # another encoder is another key
    cache.get_or_compute("enc-a", x + 1, compute)  # other inputs too
    assert len(calls) == 3


def _norm(name: str) -> str:
    name = re.split(r"[<>=!\[ ]", name.strip())[0].lower().replace("_", "-")
    return {"pytorch": "torch", "pysoundfile": "soundfile"}.get(name, name)


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_norm(d) for d in project["dependencies"] + project["optional-dependencies"]["test"]}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = set()
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            listed |= {_norm(d) for d in dep["pip"]}
        elif not dep.startswith(("python=", "pip")) or dep.startswith("pip:"):
            listed.add(_norm(dep))
    assert wanted == listed
    torch_pin = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("pytorch"))
    assert torch_pin.endswith("2.13.0") and "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
