"""Semantic memory (Eq. 2-4) checked against its definition and against scikit-learn's k-means."""
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from avs_lib.memory.build import build_semantic_memory
from avs_lib.memory.io import load_memory, save_memory


def _blobs(n_classes=3, per_class=60, d=8, sub=3, seed=0):
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for c in range(n_classes):
        centres = rng.normal(0, 5, size=(sub, d))
        counts = [per_class // sub + (i < per_class % sub) for i in range(sub)] if c != 1 else [per_class + 7 - 2 * (per_class // 3)] + [per_class // 3] * 2
        for centre, count in zip(centres, counts):
            feats.append(centre + rng.normal(0, 0.7, size=(count, d)))
            labels += [c] * count
    order = rng.permutation(len(labels))
    return torch.tensor(np.concatenate(feats)[order], dtype=torch.float32), torch.tensor(np.array(labels)[order])


def test_centroids_are_class_means():
    x, y = _blobs()
    memory = build_semantic_memory(x, y, k=3, m=4, seed=0)
    for c in range(3):
        np.testing.assert_allclose(memory.centroids[c].numpy(), x[y == c].numpy().mean(0), rtol=1e-5, atol=1e-5)
    assert memory.features.shape == (3, 3, 4, 8) and memory.subcentroids.shape == (3, 3, 8)


def test_inertia_matches_scikit_learn():
    x, y = _blobs(n_classes=4, per_class=90, d=16, sub=4, seed=3)
    memory = build_semantic_memory(x, y, k=4, m=2, seed=0, n_init=4)
    for c in range(4):
        xc = x[y == c].numpy().astype(np.float64)
        # the reported inertia is what its definition gives for the memory's own sub-centroids:
        # the sum over the class's points of the squared distance to the nearest one
        own = ((xc[:, None, :] - memory.subcentroids[c].numpy()[None]) ** 2).sum(-1).min(1).sum()
        assert memory.inertia[c].item() == pytest.approx(own, rel=1e-4)
        # and it is as good as scikit-learn's k-means (within 1 %)
        reference = KMeans(n_clusters=4, n_init=4, random_state=0).fit(xc).inertia_
        assert memory.inertia[c].item() <= reference * 1.01 + 1e-6


def test_discriminative_features_are_the_m_nearest_of_their_cluster():
    x, y = _blobs(seed=5)
    k, m = 3, 5
    memory = build_semantic_memory(x, y, k=k, m=m, seed=1)
    for c in range(3):
        xc = x[y == c].numpy()
        cent = memory.subcentroids[c].numpy()
        assign = ((xc[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
        for j in range(k):
            members = xc[assign == j]
            dist = np.linalg.norm(members - cent[j], axis=1)
            expected = members[np.argsort(dist)[:m]]
            np.testing.assert_allclose(memory.features[c, j].numpy()[: len(expected)], expected, atol=1e-5)
            # Eq. 3: the sub-centroid is the mean of its members
            np.testing.assert_allclose(cent[j], members.mean(0), atol=1e-4)


def test_small_cluster_repeats_its_members():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.0, 10.2], [10.1, 10.0]])
    y = torch.zeros(5, dtype=torch.long)
    memory = build_semantic_memory(x, y, k=2, m=3, seed=0)
    small = int(torch.argmin(memory.subcentroids[0].sum(-1)))
    chosen = memory.features[0, small]
    assert {tuple(r) for r in chosen.tolist()} <= {tuple(r) for r in x[:2].tolist()}
    assert torch.equal(chosen[0], chosen[2])  # 3 slots, 2 members: the nearest comes again


def test_deterministic_for_a_seed():
    x, y = _blobs(seed=7)
    a = build_semantic_memory(x, y, k=3, m=2, seed=11)
    b = build_semantic_memory(x, y, k=3, m=2, seed=11)
    assert torch.equal(a.subcentroids, b.subcentroids) and torch.equal(a.features, b.features)


def test_too_few_features_names_the_class():
    x = torch.randn(7, 4)
    y = torch.tensor([0, 0, 0, 0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"dog \(2\)"):
        build_semantic_memory(x, y, k=3, m=1, class_names=["cat", "dog"])


def test_save_load_round_trip_and_mismatch_errors(tmp_path):
    x, y = _blobs()
    memory = build_semantic_memory(x, y, k=3, m=2, class_names=["a", "b", "c"], encoder="toy")
    path = save_memory(memory, tmp_path / "memory.npz")
    loaded = load_memory(path, class_names=["a", "b", "c"], dim=8)
    assert torch.equal(loaded.features, memory.features) and loaded.meta["encoder"] == "toy"
    assert loaded.meta["source_hash"] == memory.meta["source_hash"]
    with pytest.raises(ValueError, match=r"missing \['d'\]"):
        load_memory(path, class_names=["a", "b", "d"])
    with pytest.raises(ValueError, match="8-d but the model expects 16-d"):
        load_memory(path, dim=16)
    with pytest.raises(FileNotFoundError, match="nothing.npz"):
        load_memory(tmp_path / "nothing.npz")
