"""Encoders: real EfficientNet-Lite0 weights on real photos, VGGish key layout, precomputed files."""
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from avs_lib.audio.encoders import (PrecomputedEmbeddings, VGGish, load_htsat, load_vggish,
                                           train_small_audio_encoder)
from avs_lib.models.efficientnet import Conv2dSame, efficientnet_lite0


def _photo(name):
    import skimage.data

    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((224, 224), Image.BILINEAR)
    return torch.from_numpy(np.array(image)).float().permute(2, 0, 1)[None]


def test_efficientnet_lite0_imagenet_weights_recognise_photos():
    model = efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():
        cat = model(model.normalise(_photo("chelsea"))).argmax(1).item()
        coffee = model(model.normalise(_photo("coffee"))).argmax(1).item()
    assert 281 <= cat <= 285  # ImageNet's domestic cat classes
    assert coffee in (967, 968)  # espresso, cup


@settings(max_examples=20, deadline=None)
@given(st.integers(5, 40), st.sampled_from([1, 3, 5]), st.sampled_from([1, 2]))
def test_tf_same_padding_output_size(size, kernel, stride):
    conv = Conv2dSame(1, 1, kernel, stride)
    assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // stride)


def test_vggish_loads_a_torchvggish_state_dict(tmp_path):
    reference = VGGish()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("pca_")}
    assert {"features.0.weight", "features.13.weight", "embeddings.4.weight"} <= set(state)
    torch.save(state, tmp_path / "vggish-10086976.pth")
    loaded = load_vggish(tmp_path / "vggish-10086976.pth")
    x = torch.randn(2, 96, 64)
    torch.testing.assert_close(loaded(x), reference.eval()(x))
    assert loaded(x).shape == (2, 128)
    state["embeddings.9.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="embeddings.9.weight"):
        load_vggish(tmp_path / "bad.pth")


def test_htsat_and_missing_checkpoints_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="precomputed:DIR"):
        load_htsat(tmp_path / "HTSAT_AudioSet_Saved_1.ckpt")
    with pytest.raises(FileNotFoundError, match="vggish"):
        load_vggish(tmp_path / "missing.pth")


def test_precomputed_embeddings(tmp_path):
    a = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    np.save(tmp_path / "clip1.npy", a)
    with open(tmp_path / "clip2.pkl", "wb") as fh:
        pickle.dump(torch.from_numpy(a * 2), fh)
    emb = PrecomputedEmbeddings(tmp_path)
    np.testing.assert_array_equal(emb("clip1"), a)
    np.testing.assert_array_equal(emb("clip2"), a * 2)
    with pytest.raises(FileNotFoundError, match="clip3"):
        emb("clip3")


def test_small_audio_encoder_learns_separable_sounds():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 24)
    examples = rng.normal(size=(len(labels), 96, 64)).astype(np.float32)
    for c in range(3):
        examples[labels == c, :, c * 20:(c * 20 + 10)] += 3.0  # each class owns a band of mel bins
    model, history = train_small_audio_encoder(examples, labels, 3, dim=16, epochs=8, batch_size=16, seed=0)
    assert history[-1]["accuracy"] > 0.9
    assert not any(p.requires_grad for p in model.parameters())
    assert model(torch.from_numpy(examples[:4])).shape == (4, 16)
