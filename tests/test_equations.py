"""DDESeg's equations checked against independent numpy computations on small tensors."""
import numpy as np
import pytest
import torch
from scipy.special import erf

from conftest import softmax, to_numpy
from avs_lib.models.derivation import DiscriminativeEnhancement, DynamicDerivation, PrototypeDerivation, nearest_centres
from avs_lib.models.elimination import SCHEMES, DynamicElimination, gumbel_soft_assignment


def gelu(x):
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def linear(layer, x):
    out = x @ to_numpy(layer.weight).T
    return out + to_numpy(layer.bias) if layer.bias is not None else out


def test_nearest_centres_match_brute_force():
    rng = np.random.default_rng(0)
    audio, centres = rng.normal(size=(4, 6)), rng.normal(size=(9, 6))
    idx, dist = nearest_centres(torch.tensor(audio), torch.tensor(centres), 3)
    for b in range(4):
        d = np.sqrt(((centres - audio[b]) ** 2).sum(1))
        order = np.argsort(d)[:3]
        assert idx[b].tolist() == order.tolist()
        np.testing.assert_allclose(dist[b].numpy(), d[order], rtol=1e-6)


@pytest.mark.parametrize("variant", ["paper", "released"])
@pytest.mark.parametrize("anchor", ["audio", "centre"])
def test_prototype_derivation_eq5_to_8(variant, anchor):
    torch.manual_seed(0)
    d, k = 6, 3
    module = PrototypeDerivation(d, variant, anchor).double()
    audio, centres = torch.randn(2, d, dtype=torch.float64), torch.randn(2, k, d, dtype=torch.float64)
    derived, weights, compensation = module(audio, centres)
    for b in range(2):
        f_a = to_numpy(audio[b])
        edges = [gelu(linear(module.edge, to_numpy(centres[b, i]) - f_a)) for i in range(k)]  # Eq. 5
        w = softmax(np.array([linear(module.fusion, e)[0] for e in edges]))  # Eq. 6
        for i in range(k):
            delta = np.tanh(linear(module.compensation, f_a + w[i] * edges[i]))  # Eq. 7
            start = f_a if anchor == "audio" else to_numpy(centres[b, i])  # Eq. 8 as printed starts from F_a
            expected = start + delta if variant == "paper" else start * (1 + delta)  # Eq. 8
            np.testing.assert_allclose(to_numpy(compensation[b, i]), delta, atol=1e-10)
            np.testing.assert_allclose(to_numpy(derived[b, i]), expected, atol=1e-10)
        np.testing.assert_allclose(to_numpy(weights[b]), w, atol=1e-10)


def test_the_anchor_switch_reaches_the_derivation():
    from avs_lib.models import build_model

    for anchor in ("audio", "centre"):
        model = build_model("ddeseg", audio_dim=8, memory_classes=6, derivation_anchor=anchor)
        assert model.derivation.derivation.anchor == anchor


@pytest.mark.parametrize("pooling", ["all", "per_subcluster"])
def test_discriminative_enhancement_eq9_to_12(pooling):
    torch.manual_seed(1)
    d, n_tok, k, m = 5, 2, 3, 4
    module = DiscriminativeEnhancement(d, pooling).double()
    derived = torch.randn(1, n_tok, d, dtype=torch.float64)
    features = torch.randn(1, n_tok, k, m, d, dtype=torch.float64)
    enhanced, _, offsets = module(derived, features)
    for i in range(n_tok):
        a = to_numpy(derived[0, i])
        x = to_numpy(features[0, i])  # [k, m, d]
        edges = gelu(linear(module.edge, x - a))  # Eq. 9
        logits = linear(module.fusion, edges)[..., 0]  # [k, m]
        if pooling == "all":
            w = softmax(logits.reshape(-1))  # Eq. 10, over all k*m
            offset = np.tanh(linear(module.offset, (w[:, None] * edges.reshape(-1, d)).sum(0)))  # Eq. 11
        else:
            offs = []
            for j in range(k):
                w = softmax(logits[j])
                offs.append(np.tanh(linear(module.offset, (w[:, None] * edges[j]).sum(0))))
            offset = np.mean(offs, axis=0)
        np.testing.assert_allclose(to_numpy(offsets[0, i]), offset, atol=1e-10)
        np.testing.assert_allclose(to_numpy(enhanced[0, i]), a * (1 + offset), atol=1e-10)  # Eq. 12


def test_dynamic_derivation_uses_the_memory_of_the_nearest_classes():
    torch.manual_seed(2)
    c, k, m, d = 6, 2, 3, 4
    module = DynamicDerivation(d, c, k, m, num_tokens=3)
    centroids = torch.arange(c, dtype=torch.float32)[:, None].repeat(1, d)
    features = torch.randn(c, k, m, d)

    class Memory:
        pass

    memory = Memory()
    memory.centroids, memory.features = centroids, features
    module.set_memory(memory)
    audio = torch.full((1, d), 2.1)  # nearest classes: 2, then 3 and 1
    out = module(audio)
    assert out.class_indices[0, 0].item() == 2 and set(out.class_indices[0, 1:].tolist()) == {1, 3}
    # only the chosen classes' features matter: changing another class's features changes nothing
    before = out.tokens.clone()
    module.features[5] += 100
    assert torch.equal(module(audio).tokens, before)
    module.features[2] += 1
    assert not torch.allclose(module(audio).tokens, before)
    with pytest.raises(ValueError, match="rebuild the memory"):
        memory.centroids = torch.zeros(c + 1, d)
        module.set_memory(memory)


def test_gumbel_softmax_without_noise_is_the_softmax_eq13():
    logits = torch.randn(3, 7, 4)
    np.testing.assert_allclose(gumbel_soft_assignment(logits, 0.5, noise=False).numpy(),
                               softmax(logits.numpy() / 0.5), rtol=1e-5)


def test_gumbel_noise_samples_the_softmax_distribution():
    # Gumbel-max: argmax(logits + g) is distributed as softmax(logits); at a tiny tau the assignment is one-hot.
    logits = torch.tensor([[1.0, 0.0, -1.0, 0.5]]).repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)
    samples = gumbel_soft_assignment(logits, 1e-3, noise=True, generator=generator)
    frequencies = samples.argmax(1).bincount(minlength=4).float() / len(samples)
    np.testing.assert_allclose(frequencies.numpy(), softmax(logits[0].numpy()), atol=0.015)


def test_elimination_eq13_to_17_in_eval_mode():
    torch.manual_seed(3)
    d, n, kc, n_tok = 8, 12, 3, 4
    module = DynamicElimination(d, num_centres=kc, num_heads=2, tau=0.7).double().eval()
    tokens, visual = torch.randn(1, n_tok, d, dtype=torch.float64), torch.randn(1, n, d, dtype=torch.float64)
    out = module(tokens, visual)
    keys = module.norm_visual(visual)[0].detach().double().numpy()
    o = softmax(keys @ to_numpy(module.centres).T / 0.7)  # Eq. 13, no noise in eval
    np.testing.assert_allclose(to_numpy(out.assignment[0]), o, atol=1e-10)
    refined = (o.T @ keys) / o.sum(0)[:, None]  # Eq. 14 (assigned mean)
    queries = module.norm_audio(tokens)[0].detach().double().numpy()
    attention = module.cross_attention
    w_q, w_k, w_v = np.split(to_numpy(attention.in_proj_weight), 3)
    b_q, b_k, b_v = np.split(to_numpy(attention.in_proj_bias), 3)
    q, k_, v = queries @ w_q.T + b_q, refined @ w_k.T + b_k, refined @ w_v.T + b_v
    heads = []
    for h in range(2):
        sl = slice(h * d // 2, (h + 1) * d // 2)
        heads.append(softmax(q[:, sl] @ k_[:, sl].T / np.sqrt(d // 2)) @ v[:, sl])
    f_av = np.concatenate(heads, 1) @ to_numpy(attention.out_proj.weight).T + to_numpy(attention.out_proj.bias)  # Eq. 15
    hidden = gelu(linear(module.score_mlp[0], f_av))
    scores = 1 / (1 + np.exp(-linear(module.score_mlp[2], hidden)[:, 0]))  # Eq. 16
    np.testing.assert_allclose(to_numpy(out.scores[0]), scores, atol=1e-8)
    np.testing.assert_allclose(to_numpy(out.tokens[0]), scores[:, None] * to_numpy(tokens[0]), atol=1e-8)  # Eq. 17
    assert ((out.scores >= 0) & (out.scores <= 1)).all()


def test_elimination_eval_is_deterministic_and_train_is_noisy():
    torch.manual_seed(4)
    module = DynamicElimination(8, tau=1.0)
    tokens, visual = torch.randn(2, 5, 8), torch.randn(2, 30, 8)
    module.eval()
    assert torch.equal(module(tokens, visual).scores, module(tokens, visual).scores)
    module.train()
    assert not torch.equal(module(tokens, visual).assignment, module(tokens, visual).assignment)


def test_elimination_schemes():
    torch.manual_seed(5)
    tokens, visual, other_visual = torch.randn(2, 5, 8), torch.randn(2, 30, 8), torch.randn(2, 30, 8)
    for scheme in SCHEMES:
        module = DynamicElimination(8, scheme=scheme).eval()
        out = module(tokens, visual)
        if scheme == "none":
            assert out.scores is None and torch.equal(out.tokens, tokens)
            continue
        assert out.scores.shape == (2, 5)
        assert (out.assignment is not None) == (scheme in ("softkmeans_ca_fc", "gumbel_ca_fc"))
        depends_on_frame = not torch.allclose(module(tokens, other_visual).scores, out.scores)
        assert depends_on_frame == (scheme != "fc"), scheme  # FC+sigmoid never looks at the frame
    printed = DynamicElimination(8, centre_update="printed").eval()
    assert printed(tokens, visual).scores.shape == (2, 5)
    released = DynamicElimination(8, score="softmax").eval()
    torch.testing.assert_close(released(tokens, visual).scores.sum(1), torch.ones(2))
