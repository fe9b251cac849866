"""The test suite: python -m pytest -q"""

import copy
import math

import pytest
import torch
from torch.nn import functional as F

from model import ATTN_VARIANTS, GPT, GPTConfig, linear_clipping, param_overhead

AFFINE = ("affine", "affine_gated")


def tiny_config(attn="softmax", **kw):
    return GPTConfig(**{**dict(block_size=16, vocab_size=37, n_layer=2, n_head=2, n_embd=16, attn=attn), **kw})


def make_model(attn="softmax", seed=0, **kw):
    """A tiny model whose variant-specific parts are far from their initial values, so that a test
    fails if the sink, alpha (across all three pieces of Eq. 11), beta or the gate is computed wrongly."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(attn, **kw))
    with torch.no_grad():
        for block in model.transformer.h:
            a = block.attn
            if attn == "sink":
                a.sink.uniform_(-2.0, 2.0)
            if attn in AFFINE:
                a.c_alpha.weight.normal_(0.0, 3.0)  # pre-activations well beyond +-5: clipped and linear parts
                a.alpha_ma.uniform_(0.2, 0.8)
    return model


def with_path(model, fused):
    """A copy of model that runs the fused (SDPA) or the eager (explicit weights) path."""
    other = copy.deepcopy(model)
    for block in other.transformer.h:
        block.attn.fused = fused
    return other


def batch(B=3, T=16, vocab=37, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (B, T), generator=g), torch.randint(0, vocab, (B, T), generator=g)


# --------------------------------------------------------------------------------------------------
# eager vs fused: the same function, forward and backward


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("attn, affine_n", [(a, "prefix") for a in ATTN_VARIANTS] + [(a, "context") for a in AFFINE])
def test_fused_matches_eager(attn, affine_n, training):
    base = make_model(attn, affine_n=affine_n)
    eager, fused = with_path(base, False).train(training), with_path(base, True).train(training)
    x, y = batch()
    logits_e, loss_e = eager(x, y)
    logits_f, loss_f = fused(x, y)
    torch.testing.assert_close(logits_f, logits_e, atol=1e-5, rtol=1e-5)
    loss_e.backward()
    loss_f.backward()
    grads_e = dict(eager.named_parameters())
    for name, p in fused.named_parameters():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, grads_e[name].grad, atol=1e-6, rtol=1e-4, msg=name)
    for (name, b_e), b_f in zip(eager.named_buffers(), fused.buffers()):  # alpha_ma updated identically
        torch.testing.assert_close(b_f, b_e, msg=name)


def test_variant_parameters_get_gradients():
    x, y = batch()
    for attn, name in [("sink", "sink"), ("gated", "c_gate.weight"), ("affine", "c_alpha.weight")]:
        model = make_model(attn)
        model(x, y)[1].backward()
        grad = model.transformer.h[0].attn.get_parameter(name).grad
        assert grad.abs().sum() > 0, attn


# --------------------------------------------------------------------------------------------------
# each variant against its formula, written here independently of model.py


def qkv_heads(attn_module, x):
    B, T, C = x.shape
    nh = attn_module.n_head
    q, k, v = attn_module.c_attn(x).split(C, dim=2)
    return [t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v)]


def merge_heads(y):
    B, nh, T, hs = y.shape
    return y.transpose(1, 2).reshape(B, T, nh * hs)


@pytest.mark.parametrize("fused", [False, True])
def test_sink_is_gpt_oss_concatenated_logit(fused):
    attn = with_path(make_model("sink"), fused).transformer.h[0].attn.eval()
    x = torch.randn(2, 9, 16)
    q, k, v = qkv_heads(attn, x)
    T, hs = q.size(2), q.size(3)
    out = []
    for i in range(T):  # GPT-OSS: append s as one more logit column, softmax, drop that column (Eq. 3)
        scores = q[:, :, i : i + 1] @ k[:, :, : i + 1].transpose(-1, -2) / math.sqrt(hs)
        s = attn.sink.view(1, -1, 1, 1).expand(2, -1, 1, 1)
        w = torch.softmax(torch.cat([scores, s], dim=-1), dim=-1)[..., :-1]
        out.append(w @ v[:, :, : i + 1])
    expected = attn.c_proj(merge_heads(torch.cat(out, dim=2)))
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)
    # the same denominator written out: e^{x_i} / (sum_j e^{x_j} + e^s)
    scores = q[:, :, -1:] @ k.transpose(-1, -2) / math.sqrt(hs)
    w = scores.exp() / (scores.exp().sum(-1, keepdim=True) + attn.sink.exp().view(1, -1, 1, 1))
    torch.testing.assert_close(w[0, :, 0].sum(-1), 1 - torch.sigmoid(attn.sink - torch.logsumexp(scores[0, :, 0], -1)))


@pytest.mark.parametrize("fused", [False, True])
def test_gate_formula(fused):
    attn = with_path(make_model("gated"), fused).transformer.h[0].attn.eval()
    x = torch.randn(2, 9, 16)
    q, k, v = qkv_heads(attn, x)
    sdpa = merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))
    expected = attn.c_proj(sdpa * torch.sigmoid(attn.c_gate(x)))  # Eq. 4-5, elementwise per channel
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)


def test_linear_clipping_is_eq11():
    x = torch.tensor([-100.0, -6.0, -5.0, -4.0, 0.0, 2.0, 4.9, 5.0, 7.0])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.1, 0.5, 0.7, 0.99, 1.0, 1.0])
    torch.testing.assert_close(linear_clipping(x), expected)


@pytest.mark.parametrize("affine_n", ["prefix", "context"])
@pytest.mark.parametrize("fused", [False, True])
def test_affine_hand_example(fused, affine_n):
    """One head, head size 1, T = 3, hand-picked numbers, Eq. 6-9 and 11 written out per query."""
    config = GPTConfig(block_size=4, vocab_size=5, n_layer=1, n_head=1, n_embd=1, bias=True,
                       attn="affine", fused=fused, affine_n=affine_n, affine_momentum=0.9)
    attn = GPT(config).transformer.h[0].attn
    with torch.no_grad():
        attn.c_attn.weight.copy_(torch.tensor([[1.0], [2.0], [3.0]]))  # q = x, k = 2x, v = 3x
        attn.c_attn.bias.zero_()
        attn.c_proj.weight.fill_(1.0)
        attn.c_proj.bias.zero_()
        attn.c_alpha.weight.fill_(4.0)  # alpha = phi(4x + 1)
        attn.c_alpha.bias.fill_(1.0)
        attn.alpha_ma.fill_(0.6)
    x = torch.tensor([[[1.0], [-2.0], [0.5]]])
    q, k, v = x[0, :, 0], 2 * x[0, :, 0], 3 * x[0, :, 0]
    alpha = [min(max(0.1 * (4 * xi + 1) + 0.5, 0.0), 1.0) for xi in x[0, :, 0].tolist()]  # Eq. 7, 11
    assert alpha == pytest.approx([1.0, 0.0, 0.8])  # clipped high, clipped low, linear
    expected = []
    for i in range(3):
        logits = torch.tensor([q[i] * k[j] for j in range(i + 1)])  # / sqrt(1)
        p = torch.softmax(logits, dim=0)
        N = i + 1 if affine_n == "prefix" else 4
        beta = (0.6 - alpha[i]) / N  # Eq. 8
        expected.append(sum((alpha[i] * p[j] + beta) * v[j] for j in range(i + 1)))  # Eq. 6, keys j <= i
    attn.train()
    y = attn(x)
    torch.testing.assert_close(y[0, :, 0], torch.stack(expected))
    # Eq. 9 after the forward: rho * 0.6 + (1 - rho) * mean(alpha)
    torch.testing.assert_close(attn.alpha_ma, torch.tensor([0.9 * 0.6 + 0.1 * sum(alpha) / 3]))


def test_affine_weights_mass():
    """With N = prefix the weights of each query sum to alpha + (i+1) beta = alpha_ma, whatever alpha is."""
    model = make_model("affine")
    maps = model.attention_maps(batch()[0])
    for layer, block in zip(maps, model.transformer.h):
        mass = layer["weights"].sum(-1)
        torch.testing.assert_close(mass, block.attn.alpha_ma.view(1, -1, 1).expand_as(mass))


# --------------------------------------------------------------------------------------------------
# causality, alpha_ma


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("attn", ATTN_VARIANTS)
def test_causal(attn, fused, training):
    """Changing token t changes no logit before t, in train mode too, where the batch mean of alpha
    feeds alpha_ma: that update comes after the forward and so cannot carry future tokens back."""
    model = with_path(make_model(attn), fused).train(training)
    x, _ = batch(B=2)
    t = 9
    x2 = x.clone()
    x2[:, t:] = (x2[:, t:] + 1) % 37
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    logits1, _ = m1(x, x)
    logits2, _ = m2(x2, x2)
    torch.testing.assert_close(logits1[:, :t], logits2[:, :t], atol=0, rtol=0)
    assert (logits1[:, t:] - logits2[:, t:]).abs().max() > 1e-3
    if training and attn in AFFINE:  # a second step reads alpha_ma, which did see the future tokens
        assert not torch.equal(m1.transformer.h[0].attn.alpha_ma, m2.transformer.h[0].attn.alpha_ma)


def test_alpha_ma_semantics():
    model = make_model("affine")
    x, y = batch()
    old = [b.attn.alpha_ma.clone() for b in model.transformer.h]
    model.eval()
    maps = model.attention_maps(x)  # eval mode: alpha_ma is read, never written
    model(x, y)
    for b, o in zip(model.transformer.h, old):
        assert torch.equal(b.attn.alpha_ma, o)
    model.train()
    model(x, y)  # train mode: Eq. 9 with the alpha this very forward computed
    rho = model.config.affine_momentum
    for b, o, layer in zip(model.transformer.h, old, maps):
        expected = rho * o + (1 - rho) * layer["alpha"].mean(dim=(0, 2, 3))
        torch.testing.assert_close(b.attn.alpha_ma, expected)
    state = model.state_dict()
    assert "transformer.h.0.attn.alpha_ma" in state
    fresh = GPT(model.config)
    assert fresh.transformer.h[0].attn.alpha_ma.abs().sum() == 0  # Eq. 9: alpha_ma,0 = 0
    fresh.load_state_dict(state)
    assert torch.equal(fresh.transformer.h[1].attn.alpha_ma, model.transformer.h[1].attn.alpha_ma)


# --------------------------------------------------------------------------------------------------
# generation with a KV cache


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("attn", ATTN_VARIANTS)
def test_kv_cache_logits_equal_full_forward(attn, fused):
    model = with_path(make_model(attn), fused).eval()
    x, _ = batch(B=2)
    kv_cache = [{} for _ in model.transformer.h]
    logits, _ = model(x[:, :5], kv_cache=kv_cache)
    for t in range(5, 16):
        full, _ = model(x[:, : t + 1], x[:, : t + 1])
        torch.testing.assert_close(logits[:, -1], full[:, t - 1], atol=1e-5, rtol=1e-5)
        logits, _ = model(x[:, t : t + 1], kv_cache=kv_cache)
    full, _ = model(x)
    torch.testing.assert_close(logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn", ATTN_VARIANTS)
def test_generate_matches_uncached_beyond_block_size(attn):
    """generate() with its cache draws the same tokens as nanoGPT's uncached loop, past block_size too."""
    model = make_model(attn).eval()
    prompt = batch(B=2)[0][:, :6]
    torch.manual_seed(123)
    cached = model.generate(prompt, max_new_tokens=30, temperature=1.0, top_k=10)
    torch.manual_seed(123)
    idx = prompt
    with torch.no_grad():
        for _ in range(30):
            logits, _ = model(idx[:, -model.config.block_size:])
            logits = logits[:, -1, :]
            v, _ = torch.topk(logits, 10)
            logits[logits < v[:, [-1]]] = -float("inf")
            idx = torch.cat([idx, torch.multinomial(F.softmax(logits, dim=-1), 1)], dim=1)
    assert idx.size(1) == 36 > model.config.block_size
    assert torch.equal(cached, idx)


def test_generate_leaves_alpha_ma_and_mode_alone():
    model = make_model("affine").train()
    before = model.transformer.h[0].attn.alpha_ma.clone()
    model.generate(batch()[0][:, :4], max_new_tokens=3)
    assert model.training
    assert torch.equal(model.transformer.h[0].attn.alpha_ma, before)


# --------------------------------------------------------------------------------------------------
# torch.compile: one graph, same numbers


@pytest.mark.parametrize("attn", ["sink", "affine_gated"])
def test_compile_fullgraph_matches_eager(attn):
    base = make_model(attn).train()
    eager, fused = with_path(base, False), with_path(base, True)
    compiled = torch.compile(fused, fullgraph=True)  # fullgraph: a graph break is an error
    x, y = batch()
    for step in range(2):  # the second step reads the alpha_ma that the first one wrote
        logits_e, loss_e = eager(x, y)
        logits_c, loss_c = compiled(x, y)
        torch.testing.assert_close(logits_c, logits_e, atol=1e-5, rtol=1e-5)
        loss_e.backward()
        loss_c.backward()
    grads_e = dict(eager.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads_e[name].grad, atol=1e-6, rtol=1e-4, msg=name)
    for b_e, b_f in zip(eager.buffers(), fused.buffers()):
        torch.testing.assert_close(b_f, b_e)


# --------------------------------------------------------------------------------------------------
# GPT-2 weights, parameter overhead, configuration errors, learning


@pytest.mark.parametrize("attn", ["softmax", "affine"])
def test_from_pretrained_matches_transformers(tmp_path, attn):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=61)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(str(tmp_path), attn=attn).eval()
    x = torch.randint(0, 61, (2, 24))
    with torch.no_grad():
        expected = hf(x).logits
    logits, _ = model(x, x)
    if attn == "softmax":
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    else:  # the extra parameters start at their init, so alpha ~ 0.5 and the function differs
        assert model.transformer.h[0].attn.alpha_ma.abs().sum() == 0
        assert not torch.allclose(logits, expected, atol=1e-3)


def test_from_pretrained_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install transformers"):
        GPT.from_pretrained("gpt2")


def test_param_overhead():
    for attn, per_layer in [("softmax", 0), ("sink", 4), ("gated", 64 * 64 + 64), ("affine", 64 * 4 + 4),
                            ("affine_gated", 64 * 64 + 64 + 64 * 4 + 4)]:
        n, delta = param_overhead(GPTConfig(n_layer=3, n_head=4, n_embd=64, block_size=8, vocab_size=11, attn=attn))
        assert delta == 3 * per_layer, attn
    # the paper's Delta-Params (Tables 1-2, millions) for its student shapes, projections without bias
    paper = {(24, 16, 1024, "affine"): 0.4, (16, 32, 2048, "affine"): 1.0, (28, 24, 3072, "affine"): 2.1,
             (16, 32, 2048, "gated"): 67.1, (28, 24, 3072, "gated"): 264.2,
             (16, 32, 2048, "affine_gated"): 68.2, (28, 24, 3072, "affine_gated"): 266.3}
    for (L, H, D, attn), millions in paper.items():
        _, delta = param_overhead(GPTConfig(n_layer=L, n_head=H, n_embd=D, attn=attn, bias=False))
        assert round(delta / 1e6, 1) == millions, (L, H, D, attn)


@pytest.mark.parametrize("kwargs, words", [
    (dict(attn="linear"), ["'linear'", "softmax", "affine_gated"]),
    (dict(affine_n="sequence"), ["'sequence'", "prefix", "context"]),
    (dict(n_embd=30, n_head=4), ["n_embd=30", "n_head=4"]),
    (dict(affine_momentum=1.5), ["1.5"]),
    (dict(dropout=-0.1), ["-0.1"]),
])
def test_bad_config_is_a_clear_error(kwargs, words):
    with pytest.raises(ValueError) as err:
        tiny_config(**kwargs)
    for word in words:
        assert word in str(err.value)


def test_too_long_input_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


@pytest.mark.parametrize("attn", ATTN_VARIANTS)
def test_loss_decreases(attn):
    model = make_model(attn).train()
    x = torch.arange(16).repeat(4, 1) % 5  # a periodic sequence: easy to learn
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.99), "cpu")
    losses = []
    for _ in range(30):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
