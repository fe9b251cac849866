"""The model and its scripts, a section per subject: the attention variants (eager against fused, each against
its formula), causality and alpha_ma, the KV cache, torch.compile, pretrained weights, the paper's students; data
preparation, training, distillation, checkpoints, settings; sample.py, analyze.py, bench.py and compare.py.
Other test files import helpers from here: make_model, REPO, load_script, make_char_data, tiny, hand_made_run.
The whole suite: python -m pytest -q"""

import copy
import importlib.util
import json
import math
import os
import re
import warnings
import weakref
from dataclasses import asdict

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import analyze
import bench
import compare as compare_module
import train as train_module
from configurator import load_config
from compare import CompareConfig, compare, markdown, read_metrics, run_config, table_rows
from model import ATTN_VARIANTS, GPT, PAPER_SHAPES, GPTConfig, linear_clipping, param_overhead
from sample import SampleConfig, sample
import configurator
import dataloader
import pretrained
import tokenizer
from configurator import ConfigError
from train import NonFiniteLoss, TrainConfig, attention_stats, get_lr, train


# --------------------------------------------------------------------------------------------------
# helpers: tiny models and batches (test_eval and test_speed import make_model)


AFFINE = ("affine", "affine_gated")
# the block settings around the attention: GPT-2's, LLaMA / Qwen's (with grouped-query attention, one key/value
# head for two query heads, and Qwen's q/k/v bias), and the RoPE + ReLU^2 block with an untied lm_head
BLOCKS = {
    "gpt2": {},
    "llama": dict(pos="rope", norm="rmsnorm", mlp="swiglu", mlp_hidden=24, n_kv_head=1, bias=False, qkv_bias=True),
    "relu2": dict(pos="rope", mlp="relu2", tie_embeddings=False),
}


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
            if a.c_attn.bias is not None:
                a.c_attn.bias.normal_(0.0, 0.5)
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
# attention variants: eager vs fused, the same function, forward and backward


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("attn, affine_n, phi", [(a, "context", "linear_clip") for a in ATTN_VARIANTS] +
                         [(a, "prefix", "linear_clip") for a in AFFINE] + [("affine", "context", "sigmoid")])
def test_fused_matches_eager(attn, affine_n, phi, block, training):
    base = make_model(attn, affine_n=affine_n, phi=phi, **BLOCKS[block])
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
    eager.update_alpha_ma()
    fused.update_alpha_ma()
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
    # Eq. 9 at the optimizer step: rho * 0.6 + (1 - rho) * mean(alpha)
    assert attn.alpha_ma.item() == pytest.approx(0.6)  # the forward alone does not move it
    attn.update_alpha_ma()
    torch.testing.assert_close(attn.alpha_ma, torch.tensor([0.9 * 0.6 + 0.1 * sum(alpha) / 3]))


def test_sigmoid_phi_is_eq10():
    """Table 3's ablation: alpha = sigmoid(W_a X) instead of linear clipping, the same in both paths."""
    model = make_model("affine", phi="sigmoid").eval()
    a = model.transformer.h[0].attn
    maps = model.attention_maps(batch()[0])
    h = model.transformer.h[0].ln_1(model.transformer.wte(batch()[0]) + model.transformer.wpe(torch.arange(16)))
    torch.testing.assert_close(maps[0]["alpha"][..., 0], torch.sigmoid(a.c_alpha(h)).transpose(1, 2))


def test_affine_weights_mass():
    """Query i sees i + 1 keys, so its weights sum to alpha + (i + 1) beta = alpha + (alpha_ma - alpha) (i + 1) / N.
    N = prefix (i + 1): exactly alpha_ma, whatever alpha is. N = context (block_size): it moves with alpha."""
    for affine_n in ("prefix", "context"):
        model = make_model("affine", affine_n=affine_n)
        maps = model.attention_maps(batch()[0])
        seen = torch.arange(1, 17).view(1, 1, 16)
        N = seen if affine_n == "prefix" else 16
        for layer, block in zip(maps, model.transformer.h):
            mass, alpha = layer["weights"].sum(-1), layer["alpha"][..., 0]
            alpha_ma = block.attn.alpha_ma.view(1, -1, 1)
            torch.testing.assert_close(mass, alpha + (alpha_ma - alpha) * seen / N)
            if affine_n == "context":
                assert mass[..., :8].std() > 0.05  # not a constant per head: Fig. 3's spread is possible


@pytest.mark.parametrize("affine_n", ["prefix", "context"])
def test_beta_under_bf16_autocast_is_eq8_rounded_once(affine_n):
    """Under bf16 autocast beta (Eq. 8) is (alpha_ma - alpha) / N of the bf16 alpha, computed exactly and
    rounded to bf16 once: within bf16's unit roundoff 2^-8 of it. N = prefix counts up to 300 keys here, and
    bf16 holds no odd integer above 256 (issue 22: N was built in alpha's dtype, 257 -> 256); alpha_ma
    (0.2 to 0.8 here) was rounded to bf16 before the subtraction, which nearly cancels where alpha ~ alpha_ma."""
    model = make_model("affine", block_size=300, affine_n=affine_n)
    attn, seen = model.transformer.h[0].attn, []
    fused = attn._fused
    attn._fused = lambda q, k, v, alpha, beta: seen.append((alpha, beta)) or fused(q, k, v, alpha, beta)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(37, (2, 300), generator=torch.Generator().manual_seed(1)))
    alpha, beta = (t.double() for t in seen[0])
    N = torch.arange(1.0, 301.0, dtype=torch.float64).view(300, 1) if affine_n == "prefix" else 300
    expected = (attn.alpha_ma.double().view(-1, 1, 1) - alpha) / N
    error = ((beta - expected).abs() / expected.abs()).max().item()
    print(f"N={affine_n}: max relative error of beta {error:.2e}")
    assert seen[0][1].dtype == torch.bfloat16 and error <= 2**-8 * 1.001


# --------------------------------------------------------------------------------------------------
# causality, and alpha_ma (Eq. 9) over micro-steps and ranks


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("block", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ATTN_VARIANTS)
def test_causal(attn, block, fused, training):
    """Changing token t changes no logit before t, in train mode too, where the batch mean of alpha
    feeds alpha_ma: that update comes after the forward and so cannot carry future tokens back."""
    model = with_path(make_model(attn, **BLOCKS[block]), fused).train(training)
    x, _ = batch(B=2)
    t = 9
    x2 = x.clone()
    x2[:, t:] = (x2[:, t:] + 1) % 37
    m1, m2 = copy.deepcopy(model), copy.deepcopy(model)
    logits1, _ = m1(x, x)
    logits2, _ = m2(x2, x2)
    torch.testing.assert_close(logits1[:, :t], logits2[:, :t], atol=0, rtol=0)
    assert (logits1[:, t:] - logits2[:, t:]).abs().max() > 1e-3
    if training and attn in AFFINE:  # the next step reads alpha_ma, which did see the future tokens
        m1.update_alpha_ma()
        m2.update_alpha_ma()
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
    model(x, y)  # train mode: the forward gathers the batch mean of alpha, the step applies Eq. 9 once
    for b, o in zip(model.transformer.h, old):
        assert torch.equal(b.attn.alpha_ma, o)
    model.update_alpha_ma()
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


def test_alpha_ma_is_one_update_per_step_whatever_the_micro_steps():
    """Eq. 9's t is the optimizer step and E the mean over its batch: one step on a batch of 8 and two
    micro-steps of 4 on the same 8 sequences leave the same alpha_ma."""
    x, y = batch(B=8)
    whole, split = make_model("affine").train(), make_model("affine").train()
    whole(x, y)
    whole.update_alpha_ma()
    for half in (slice(0, 4), slice(4, 8)):
        split(x[half], y[half])
    split.update_alpha_ma()
    for a, b in zip(whole.transformer.h, split.transformer.h):
        torch.testing.assert_close(b.attn.alpha_ma, a.attn.alpha_ma, atol=1e-7, rtol=0)
        assert a.attn.alpha_count == 0 and b.attn.alpha_count == 0  # gathered means consumed


def alpha_ma_on_rank(rank, world, init_file, out_dir):
    """One DDP rank (gloo, CPU): a training forward on this rank's share of the batch, then Eq. 9."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, y = batch(B=8)
    share = slice(rank * 8 // world, (rank + 1) * 8 // world)
    model = make_model("affine").train()
    model(x[share], y[share])
    model.update_alpha_ma(ddp=True)
    torch.save([b.attn.alpha_ma for b in model.transformer.h], os.path.join(out_dir, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_alpha_ma_does_not_depend_on_the_number_of_ranks(tmp_path):
    """Two DDP ranks with 4 sequences each end with the alpha_ma of one process with all 8."""
    torch.multiprocessing.spawn(alpha_ma_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    x, y = batch(B=8)
    single = make_model("affine").train()
    single(x, y)
    single.update_alpha_ma()
    for rank in range(2):
        for got, block in zip(torch.load(tmp_path / f"rank{rank}.pt", weights_only=True), single.transformer.h):
            torch.testing.assert_close(got, block.attn.alpha_ma, atol=1e-7, rtol=0)


# --------------------------------------------------------------------------------------------------
# generation with a KV cache


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("attn", ATTN_VARIANTS)
def test_kv_cache_logits_equal_full_forward(attn, block, fused):
    model = with_path(make_model(attn, **BLOCKS[block]), fused).eval()
    x, _ = batch(B=2)
    kv_cache = [{} for _ in model.transformer.h]
    logits, _ = model(x[:, :5], kv_cache=kv_cache)
    for t in range(5, 16):
        full, _ = model(x[:, : t + 1], x[:, : t + 1])
        torch.testing.assert_close(logits[:, -1], full[:, t - 1], atol=1e-5, rtol=1e-5)
        logits, _ = model(x[:, t : t + 1], kv_cache=kv_cache)
    full, _ = model(x)
    torch.testing.assert_close(logits[:, -1], full[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("block", ["gpt2", "llama"])
@pytest.mark.parametrize("attn", ATTN_VARIANTS)
def test_generate_matches_uncached_beyond_block_size(attn, block):
    """generate() with its cache draws the same tokens as nanoGPT's uncached loop, past block_size too."""
    model = make_model(attn, **BLOCKS[block]).eval()
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


def test_top_k_1_is_argmax_whatever_the_seed():
    """top_k=1 is greedy decoding (eval.py's generate_until): with an exact fp32 tie between the two most
    likely tokens, 3 and 4, it takes the lower id as torch.argmax does, under every seed (issue 22: it
    sampled between them)."""
    model = make_model("affine").eval()
    with torch.no_grad():  # every final hidden state is exactly (1, 0, ..., 0): token v's logit is W[v, 0]
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()[0] = 1.0
        model.lm_head.weight[:, 0].uniform_(-1.0, 1.0)
        model.lm_head.weight[[3, 4], 0] = 2.0
    prompt = batch(B=2)[0][:, :4]
    logits = model(prompt)[0][:, -1]
    assert (logits[:, 3] == logits.max(-1).values).all() and torch.equal(logits[:, 3], logits[:, 4])
    for seed in range(10):
        torch.manual_seed(seed)
        assert (model.generate(prompt, max_new_tokens=5, top_k=1)[:, 4:] == 3).all()


# --------------------------------------------------------------------------------------------------
# torch.compile: one graph, same numbers


@pytest.mark.parametrize("attn, block", [("sink", "gpt2"), ("affine_gated", "gpt2"), ("affine", "llama")])
def test_compile_fullgraph_matches_eager(attn, block):
    base = make_model(attn, **BLOCKS[block]).train()
    eager, fused = with_path(base, False), with_path(base, True)
    compiled = torch.compile(fused, fullgraph=True)  # fullgraph: a graph break is an error
    x, y = batch()
    for step in range(2):  # the second step reads the alpha_ma that the first one wrote
        logits_e, loss_e = eager(x, y)
        logits_c, loss_c = compiled(x, y)
        torch.testing.assert_close(logits_c, logits_e, atol=1e-5, rtol=1e-5)
        loss_e.backward()
        loss_c.backward()
        eager.update_alpha_ma()  # what train.py does after every optimizer step
        fused.update_alpha_ma()
    grads_e = dict(eager.named_parameters())
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p.grad, grads_e[name].grad, atol=1e-6, rtol=1e-4, msg=name)
    for b_e, b_f in zip(eager.buffers(), fused.buffers()):
        torch.testing.assert_close(b_f, b_e)


# --------------------------------------------------------------------------------------------------
# pretrained weights: GPT-2, LLaMA and Qwen2 from Hugging Face, against transformers


@pytest.mark.parametrize("attn", ["softmax", "affine"])
def test_from_pretrained_matches_transformers(tmp_path, attn):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf_config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=24, vocab_size=61)
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.save_pretrained(tmp_path)
    model = pretrained.load_gpt(str(tmp_path), attn=attn).eval()
    x = torch.randint(0, 61, (2, 24))
    with torch.no_grad():
        expected = hf(x).logits
    logits, _ = model(x, x)
    if attn == "softmax":
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    else:  # the extra parameters start at their init, so alpha ~ 0.5 and the function differs
        assert model.transformer.h[0].attn.alpha_ma.abs().sum() == 0
        assert not torch.allclose(logits, expected, atol=1e-3)


def tiny_hf(transformers, kind):
    """A tiny random LLaMA (grouped-query attention, a non-default rope_theta, LLaMA-3's rope scaling,
    tied) or Qwen2 (q/k/v biases made non-zero, untied), as transformers builds them."""
    shape = dict(vocab_size=53, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=24)
    if kind == "llama":
        rope = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16}
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape, rope_theta=500.0, rope_scaling=rope,
                                                                     tie_word_embeddings=True))
    else:
        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**shape, rope_theta=3000.0, tie_word_embeddings=False))
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if name.endswith("bias"):
                    p.normal_(0.0, 0.5)
    return hf.eval()


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_from_pretrained_llama_and_qwen2_match_transformers(tmp_path, kind, fused):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = tiny_hf(transformers, kind)
    hf.save_pretrained(tmp_path)
    model = pretrained.load_gpt(str(tmp_path), fused=fused).eval()
    assert (model.config.n_kv_head, model.config.qkv_bias) == (2, kind == "qwen2")
    assert (model.config.rope_scaling is not None) == (kind == "llama")
    x = torch.randint(0, 53, (2, 24))
    with torch.no_grad():
        expected = hf(x).logits
    logits, _ = model(x, x)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    kv_cache = [{} for _ in model.transformer.h]  # and token by token through the KV cache
    for t in range(24):
        step, _ = model(x[:, t:t + 1], kv_cache=kv_cache)
        torch.testing.assert_close(step[:, -1], expected[:, t], atol=1e-4, rtol=0)


def test_from_pretrained_llama_with_a_variant_keeps_the_weights(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tiny_hf(transformers, "llama").save_pretrained(tmp_path)
    model = pretrained.load_gpt(str(tmp_path), attn="affine_gated", block_size=16)
    plain = pretrained.load_gpt(str(tmp_path))
    assert model.config.block_size == 16 and model.transformer.h[0].attn.alpha_ma.abs().sum() == 0
    torch.testing.assert_close(model.transformer.h[1].attn.c_attn.weight, plain.transformer.h[1].attn.c_attn.weight)
    with pytest.raises(ValueError, match="n_layer comes from the checkpoint"):
        pretrained.load_gpt(str(tmp_path), n_layer=3)


def test_from_pretrained_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install transformers"):
        pretrained.load_gpt("gpt2")


# --------------------------------------------------------------------------------------------------
# the paper's students: the published sizes, and what each variant adds


def test_paper_students_have_the_published_sizes():
    """LLaMA-3.2-1B 1.24B and 3B 3.21B parameters; Qwen1.5-0.5B 0.62B (untied embeddings in its config.json)."""
    totals = {name: param_overhead(GPTConfig(**shape))[0] for name, shape in PAPER_SHAPES.items()}
    assert totals == {"Qwen1.5-0.5B": 619_570_176, "LLaMA-3.2-1B": 1_235_814_400, "LLaMA-3.2-3B": 3_212_749_824}


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
    for name, shape in PAPER_SHAPES.items():  # the same on the students themselves, grouped-query attention and all
        L, H, D = shape["n_layer"], shape["n_head"], shape["n_embd"]
        for attn in ("affine", "gated", "affine_gated"):
            if (L, H, D, attn) in paper:
                assert round(param_overhead(GPTConfig(**shape, attn=attn))[1] / 1e6, 1) == paper[L, H, D, attn]


# --------------------------------------------------------------------------------------------------
# bad model settings, and the model learns


@pytest.mark.parametrize("kwargs, words", [
    (dict(attn="linear"), ["'linear'", "softmax", "affine_gated"]),
    (dict(affine_n="sequence"), ["'sequence'", "prefix", "context"]),
    (dict(n_kv_head=3), ["n_head=2", "n_kv_head=3"]),
    (dict(pos="rope", n_embd=6), ["head size", "3", "even"]),
    (dict(norm="batchnorm"), ["'batchnorm'", "layernorm", "rmsnorm"]),
    (dict(mlp="geglu"), ["'geglu'", "gelu", "swiglu", "relu2"]),
    (dict(phi="tanh"), ["'tanh'", "linear_clip", "sigmoid"]),
    (dict(pos="alibi"), ["'alibi'", "learned", "rope"]),
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
    opt = model.configure_optimizers(0.0, 1e-2, (0.9, 0.99))
    losses = []
    for _ in range(30):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------------------------------------------
# data preparation (data/*/prepare.py; other test files import REPO and load_script)


REPO = os.path.dirname(os.path.abspath(__file__))
SHARED_TIKTOKEN_CACHE = os.path.join(REPO, os.pardir, "shared", "tiktoken_cache")

SAMPLE_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n"
) * 3


def load_script(relpath):
    """Imports data/<name>/prepare.py as a module (they are scripts, not a package)."""
    name = "prep_" + relpath.replace(os.sep, "_").replace("/", "_").replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def gpt2_encoding_or_skip(name):
    """The GPT-2 BPE through tiktoken, from ../shared/tiktoken_cache when there is one (offline), else skip."""
    import tiktoken

    if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(SHARED_TIKTOKEN_CACHE):
        os.environ["TIKTOKEN_CACHE_DIR"] = SHARED_TIKTOKEN_CACHE
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # no network and no cached ranks file
        pytest.skip(f"tiktoken encoding {name!r} not available offline: {e}")


# a stand-in for tokenizer.open_tokenizer's (meta, encode_batch, separator): one token per UTF-8 byte, 256 separates
BYTES = ({"vocab_size": 257, "encoding": "bytes"}, lambda texts: [list(t.encode("utf-8")) for t in texts], 256)


def test_char_prepare_round_trip(tmp_path):
    prep = load_script("data/shakespeare_char/prepare.py")
    text = SAMPLE_TEXT + "unicode too: é – 🎭\n"
    src = tmp_path / "in.txt"
    src.write_text(text, encoding="utf-8")
    meta = prep.main(str(src), out_dir=str(tmp_path))

    assert dataloader.read_meta(str(tmp_path)) == meta and os.listdir(tmp_path).count("meta.json") == 1
    assert meta["dtype"] == "uint16" and meta["tokens"] == {"train": int(0.9 * len(text)), "val": len(text) - int(0.9 * len(text))}
    assert meta["vocab_size"] == len(set(text)) == len(meta["itos"]) == len(meta["stoi"])
    assert all(meta["stoi"][meta["itos"][i]] == i for i in range(meta["vocab_size"]))
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    n = len(text)
    assert len(train) == int(0.9 * n) and len(val) == n - int(0.9 * n)
    decoded = "".join(meta["itos"][int(i)] for i in np.concatenate([train, val]))
    assert decoded == text


def test_char_prepare_default_corpus_is_small_vocab():
    # the committed corpus: about 1 MB of plain ASCII play text, no stray Gutenberg boilerplate
    with open(os.path.join(REPO, "data", "shakespeare", "input.txt"), encoding="utf-8") as f:
        text = f.read()
    assert 1_000_000 <= len(text) <= 1_100_000
    assert len(set(text)) < 100 and text.isascii() and "\r" not in text
    assert "gutenberg" not in text.lower()


def test_bpe_prepare(tmp_path):
    prep = load_script("data/shakespeare/prepare.py")
    enc = gpt2_encoding_or_skip(prep.ENCODING)
    src = tmp_path / "in.txt"
    src.write_text(SAMPLE_TEXT, encoding="utf-8")
    prep.main(str(src), out_dir=str(tmp_path))

    meta = dataloader.read_meta(str(tmp_path))
    assert meta["vocab_size"] == 50257 and meta["encoding"] == prep.ENCODING and meta["dtype"] == "uint16"
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16)
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16)
    cut = int(0.9 * len(SAMPLE_TEXT))
    assert train.tolist() == enc.encode_ordinary(SAMPLE_TEXT[:cut])
    assert val.tolist() == enc.encode_ordinary(SAMPLE_TEXT[cut:])
    assert enc.decode(train.tolist()) + enc.decode(val.tolist()) == SAMPLE_TEXT
    # the same ids as tiktoken's "gpt2" (r50k_base is its other name): "Hello world" -> [15496, 995]
    assert enc.encode_ordinary("Hello world") == [15496, 995]


def test_fineweb_write_bins_eot_and_counts(tmp_path):
    prep = load_script("data/fineweb_edu/prepare.py")
    docs = ["abc", "hello", "xy", "0123456789"]  # with EOTs: 4 + 6 + 3 + 11 = 24 tokens
    written = prep.write_bins(iter(docs), str(tmp_path), num_tokens=100, val_tokens=4, tokenizer=BYTES)

    # the stream ran out before 100 tokens: everything written, files cut to what was written
    assert written == {"val": 4, "train": 20}
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16).tolist()
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16).tolist()
    assert val == [256] + list(b"abc")
    assert train == [256] + list(b"hello") + [256] + list(b"xy") + [256] + list(b"0123456789")
    assert train.count(256) == 3  # one <|endoftext|> before each document
    assert dataloader.read_meta(str(tmp_path)) == {"vocab_size": 257, "encoding": "bytes", "dtype": "uint16", "tokens": {"val": 4, "train": 20}}


def test_fineweb_write_bins_stops_at_num_tokens(tmp_path):
    prep = load_script("data/fineweb_edu/prepare.py")
    pulled = []

    def docs():  # endless, so only the num_tokens limit can stop it
        i = 0
        while True:
            pulled.append(i)
            yield f"document number {i}"
            i += 1

    written = prep.write_bins(docs(), str(tmp_path), num_tokens=1000, val_tokens=30, tokenizer=BYTES)
    assert written == {"val": 30, "train": 970}
    val = np.fromfile(tmp_path / "val.bin", dtype=np.uint16).tolist()
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16).tolist()
    assert len(val) == 30 and len(train) == 970
    # val: doc 0 whole, doc 1 cut at 30 tokens; train starts on a fresh document, doc 2
    doc0 = [256] + list(b"document number 0")
    assert val == (doc0 + [256] + list(b"document number 1"))[:30]
    assert train[: len(doc0)] == [256] + list(b"document number 2")
    assert bytes(t for t in train if t != 256).decode().startswith("document number 2document number 3")
    assert len(pulled) < 1000  # it stopped reading the stream


def test_fineweb_write_bins_gpt2(tmp_path):
    prep = load_script("data/fineweb_edu/prepare.py")
    enc = gpt2_encoding_or_skip(prep.ENCODING)
    docs = ["The quick brown fox.", "Jumps over the lazy dog.", "<|endoftext|> stays text here."]
    ids = [[50256] + enc.encode_ordinary(d) for d in docs]
    total = sum(len(x) for x in ids)
    written = prep.write_bins(docs, str(tmp_path), num_tokens=total, val_tokens=len(ids[0]),
                              tokenizer=tokenizer.open_tokenizer(prep.ENCODING))
    assert written == {"val": len(ids[0]), "train": total - len(ids[0])}
    train = np.fromfile(tmp_path / "train.bin", dtype=np.uint16).tolist()
    assert train == ids[1] + ids[2] and train.count(50256) == 2
    assert dataloader.read_meta(str(tmp_path)) == {"vocab_size": 50257, "encoding": prep.ENCODING, "dtype": "uint16",
                                               "tokens": {"val": len(ids[0]), "train": total - len(ids[0])}}


# --------------------------------------------------------------------------------------------------
# training (train.py): the loss falls, what a run logs, threads, the schedule, DDP (other files import make_char_data, tiny)


def make_char_data(folder, text="abcdefgh" * 300):
    """train.bin, val.bin and meta.json of a character-level corpus, like data/shakespeare_char/prepare.py."""
    os.makedirs(folder, exist_ok=True)
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    ids[:n].tofile(os.path.join(folder, "train.bin"))
    ids[n:].tofile(os.path.join(folder, "val.bin"))
    dataloader.write_meta(str(folder), {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi})
    return str(folder)


def tiny(tmp_path, name="out", data=None, **kw):
    """A 2-layer, 16-dim model on a repeating pattern: a few iterations take well under a second."""
    settings = dict(out_dir=str(tmp_path / name), data_dir=data or make_char_data(tmp_path / "data"), device="cpu",
                    n_layer=2, n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=10, eval_interval=5,
                    eval_iters=2, log_interval=1, stats_interval=1, learning_rate=1e-2, warmup_iters=0, lr_decay_iters=10, min_lr=1e-3)
    return TrainConfig(**{**settings, **kw})


def test_ce_lowers_the_loss_and_logs_every_key(tmp_path):
    result = train(tiny(tmp_path, attn="affine", max_iters=30, eval_interval=10, log_interval=5, stats_interval=10))
    steps, evals = read_metrics(result["out_dir"])
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5
    assert result["iter_num"] == 30 and result["val_loss"] == evals[-1]["val_loss"]
    assert [r["iter"] for r in steps] == [0, 5, 10, 15, 20, 25]
    assert set(evals[0]) == {"iter", "train_loss", "val_loss", "val_ppl", "time_s", "eval_s"}
    stats = {"qk_mag", "alpha", "alpha_ma"}  # every stats_interval iters only
    assert set(steps[1]) == {"iter", "lr", "loss", "ce", "grad_norm", "tokens_per_s", "dt_ms"}
    assert [set(r) == set(steps[1]) | stats for r in steps] == [True, False] * 3
    assert len(steps[-2]["alpha"]) == len(steps[-2]["alpha_ma"]) == 2 and steps[-2]["qk_mag"] > 0
    ckpt = torch.load(os.path.join(result["out_dir"], "ckpt.pt"), weights_only=True)
    assert {"model", "optimizer", "model_args", "config", "iter_num", "best_val_loss", "meta", "rng"} <= set(ckpt)
    assert ckpt["iter_num"] == 30 and ckpt["config"]["attn"] == "affine"


def test_a_run_prints_each_loss_by_name_its_wall_time_and_where_its_files_went(tmp_path, capsys):
    result = train(tiny(tmp_path, max_iters=4, eval_interval=2))
    out, err = capsys.readouterr()
    steps, evals = read_metrics(result["out_dir"])
    for e in evals:  # the evaluations are cross-entropies, also when distilling
        assert f"iter {e['iter']}: train CE {e['train_loss']:.4f}, val CE {e['val_loss']:.4f}, val ppl {e['val_ppl']:.2f}\n" in out
    assert f"ce={steps[-1]['ce']:.4f}, tok_s=" in err and "kd=" not in err and "loss=" not in err  # the bar
    assert re.search(r"^4 iters in 0:00:\d\d \(h:mm:ss\), [\d.]+ ms/iter: [\d.]+ train, [\d.]+ eval \(with checkpoints\), "
                     r"[\d.]+ logging$", out, re.M)
    run = result["out_dir"]
    assert out.endswith(f"checkpoints: {run}/ckpt.pt (iter 4), {run}/best.pt (the lowest val CE, {result['best_val_loss']:.4f}); "
                        f"metrics: {run}/metrics.jsonl\n")


def test_small_models_run_on_one_cpu_thread_unless_omp_num_threads_is_set(tmp_path, monkeypatch, capsys):
    threads = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        train(tiny(tmp_path, "a", max_iters=1))
        assert torch.get_num_threads() == 1
        assert "cpu: one thread for this small model (set OMP_NUM_THREADS to choose)\n" in capsys.readouterr().out
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        train(tiny(tmp_path, "b", max_iters=1))
        assert torch.get_num_threads() == 2 and "cpu: one thread" not in capsys.readouterr().out
        monkeypatch.delenv("OMP_NUM_THREADS")
        with torch.device("meta"):
            big = GPT(GPTConfig(vocab_size=50304, n_layer=1, n_head=4, n_embd=256))  # 13.7M parameters
        assert not configurator.cpu_threads(big, "cpu") and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_wsd_schedule():
    cfg = TrainConfig(lr_schedule="wsd", learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=100, decay_frac=0.2)
    assert get_lr(cfg, 0) == pytest.approx(1 / 11) and get_lr(cfg, 9) == pytest.approx(10 / 11)
    assert get_lr(cfg, 10) == get_lr(cfg, 80) == 1.0
    assert get_lr(cfg, 90) == pytest.approx(0.55) and get_lr(cfg, 100) == pytest.approx(0.1)


def test_a_ddp_run_equals_the_plain_run_and_warns_nothing(tmp_path, monkeypatch):
    """train.py under DDP (one gloo rank) keeps alpha_ma its own, with no FutureWarning about DDP's
    settings (torch 2.13 deprecates broadcast_buffers for forward_sync_buffers)."""
    data = make_char_data(tmp_path / "data")
    plain = train(tiny(tmp_path, "plain", data, attn="affine", max_iters=4))
    port = 29500 + os.getpid() % 1000
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ddp = train(tiny(tmp_path, "ddp", data, attn="affine", max_iters=4))
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    assert ddp["val_loss"] == pytest.approx(plain["val_loss"], abs=1e-6)
    steps, ddp_steps = read_metrics(plain["out_dir"])[0], read_metrics(ddp["out_dir"])[0]
    torch.testing.assert_close(torch.tensor([r["alpha_ma"] for r in ddp_steps]), torch.tensor([r["alpha_ma"] for r in steps]))


# --------------------------------------------------------------------------------------------------
# the attention statistics a run logs (train.attention_stats, GPT.attention_maps)


def test_attention_stats_equal_the_full_maps_on_the_first_sequences(monkeypatch):
    """train.attention_stats, one layer at a time on the first STATS_TOKENS tokens, gives what every layer's
    full maps of those sequences give; qk_mag is the paper's Fig. 2 |QK^T|, not divided by sqrt(d_k)."""
    torch.manual_seed(0)
    model = make_model("affine", n_head=4, n_layer=3, block_size=8)
    x = torch.randint(37, (5, 8))
    monkeypatch.setattr(train_module, "STATS_TOKENS", 16)  # 2 sequences of 8
    stats = attention_stats(model, x)
    maps = model.attention_maps(x[:2])  # every layer at once, the whole of both sequences
    logits = torch.stack([m["logits"] for m in maps])  # (layer, 2, head, T, T), -inf above the diagonal
    qk = logits[torch.isfinite(logits)].abs() * math.sqrt(16 / 4)
    assert stats["qk_mag"] == pytest.approx(qk.mean().item(), rel=1e-5)
    assert stats["alpha"] == pytest.approx([m["alpha"].mean().item() for m in maps])
    assert stats["alpha_ma"] == pytest.approx([b.attn.alpha_ma.mean().item() for b in model.transformer.h])
    assert model.training  # read in eval mode: nothing updated
    # layer 0's QK^T from its own projections, independently of the eager path
    a = model.transformer.h[0].attn
    h = model.transformer.h[0].ln_1(model.transformer.wte(x[:2]) + model.transformer.wpe(torch.arange(8)))
    q, k, _ = a.c_attn(h).split(16, dim=2)
    q, k = (t.view(2, 8, 4, 4).transpose(1, 2) for t in (q, k))
    visible = torch.ones(8, 8, dtype=torch.bool).tril()
    torch.testing.assert_close(logits[0] * math.sqrt(4), (q @ k.transpose(-2, -1)).masked_fill(~visible, float("-inf")))
    assert attention_stats(model, x[:1])["qk_mag"] != pytest.approx(stats["qk_mag"])  # it does look at x[1]


def test_attention_maps_reduce_each_layer_before_the_next():
    """With reduce, a layer's maps are gone before the next layer runs: one layer's T x T maps at a time."""
    model = make_model("softmax", n_layer=3).eval()
    alive = []

    def reduce(maps):
        alive.append([r() is not None for r in refs])  # the earlier layers' logits, still held by anyone?
        refs.append(weakref.ref(maps["logits"]))
        return maps["weights"].sum().item()

    refs = []
    sums = model.attention_maps(batch()[0], reduce)
    assert alive == [[], [False], [False, False]]
    assert sums == pytest.approx([m["weights"].sum().item() for m in model.attention_maps(batch()[0])])


# --------------------------------------------------------------------------------------------------
# knowledge distillation: the KD loss, and teachers that do not fit


def test_kd_lowers_the_loss(tmp_path, capsys):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, "teacher", data, n_embd=32, max_iters=40))
    capsys.readouterr()
    result = train(tiny(tmp_path, "student", data, loss="kd", teacher=str(tmp_path / "teacher"), kd_alpha=1.0,
                        kd_temperature=2.0, max_iters=30, log_interval=5))
    steps, _ = read_metrics(result["out_dir"])
    assert f"kd={steps[-1]['kd']:.4f}, ce={steps[-1]['ce']:.4f}, tok_s=" in capsys.readouterr().err  # the bar names both
    assert steps[-1]["kd"] < 0.5 * steps[0]["kd"]
    assert steps[0]["loss"] == pytest.approx(steps[0]["kd"])  # kd_alpha=1: no cross-entropy in the loss


@pytest.mark.parametrize("attn, reverse", [("softmax", False), ("affine", False), ("affine", True)])
def test_kd_from_an_identical_teacher_is_zero(tmp_path, attn, reverse):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, "teacher", data, attn=attn, max_iters=0))  # the initial weights, saved
    result = train(tiny(tmp_path, "student", data, attn=attn, max_iters=1, loss="kd", kd_reverse=reverse,
                        teacher=str(tmp_path / "teacher" / "ckpt.pt")))  # same seed: same initial weights
    steps, _ = read_metrics(result["out_dir"])
    assert abs(steps[0]["kd"]) < 1e-6
    assert steps[0]["loss"] == pytest.approx(0.5 * steps[0]["ce"], rel=1e-5)
    assert ("soft_ce" in steps[0]) == (not reverse)  # the soft-target cross-entropy of the forward KL only


def test_teacher_mismatches_are_caught_before_training(tmp_path):
    data = make_char_data(tmp_path / "data")
    other_vocab = make_char_data(tmp_path / "data2", text="abcdefghij" * 200)
    train(tiny(tmp_path, "teacher", other_vocab, max_iters=0))
    with pytest.raises(ConfigError, match="another tokenizer.*teacher: character-level \\(10 characters\\), data: character-level \\(8"):
        train(tiny(tmp_path, "student", data, loss="kd", teacher=str(tmp_path / "teacher")))
    train(tiny(tmp_path, "short", data, block_size=8, max_iters=0))
    with pytest.raises(ConfigError, match="block_size=8, smaller than the student's block_size=16"):
        train(tiny(tmp_path, "student", data, loss="kd", teacher=str(tmp_path / "short")))
    with pytest.raises(ConfigError, match="teacher='nowhere' is no file or directory.*gpt2-medium"):
        train(tiny(tmp_path, "student", data, loss="kd", teacher="nowhere"))
    assert not (tmp_path / "student").exists()


def test_a_gpt2_teacher_on_char_data_is_caught(tmp_path):
    transformers = pytest.importorskip("transformers")
    data = make_char_data(tmp_path / "data")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=8, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    hf.save_pretrained(tmp_path / "gpt2-tiny")  # a local GPT-2 directory: vocab and block fit, the tokenizer does not
    with pytest.raises(ConfigError, match="another tokenizer.*teacher: GPT-2 BPE, data: character-level"):
        train(tiny(tmp_path, "student", data, loss="kd", teacher=str(tmp_path / "gpt2-tiny")))


# --------------------------------------------------------------------------------------------------
# checkpoints, resume and stopping


def test_resume_continues_exactly(tmp_path):
    """Dropout, the affine running mean and gradient accumulation all carry state a resume must restore."""
    data = make_char_data(tmp_path / "data")
    kw = dict(attn="affine", dropout=0.1, gradient_accumulation_steps=2, max_iters=8, eval_interval=4)
    train(tiny(tmp_path, "whole", data, **kw))
    train(tiny(tmp_path, "halves", data, **{**kw, "max_iters": 4}))
    train(tiny(tmp_path, "halves", data, **kw, init_from="resume"))
    whole, whole_evals = read_metrics(tmp_path / "whole")
    halves, halves_evals = read_metrics(tmp_path / "halves")
    assert [r["iter"] for r in halves] == list(range(8))
    for a, b in zip(whole, halves):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["alpha_ma"] == pytest.approx(b["alpha_ma"], abs=1e-6)
    assert [r["val_loss"] for r in whole_evals] == pytest.approx([r["val_loss"] for r in halves_evals], abs=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, "out", data, max_iters=2))
    ckpt_path = tmp_path / "out" / "ckpt.pt"
    saved = torch.load(ckpt_path, weights_only=True)["model"]

    real_forward_loss = train_module.forward_loss

    def nan_loss(*args):  # in training steps; evaluations (no grad) use forward_loss too and stay finite
        loss, *parts = real_forward_loss(*args)
        return (loss * float("nan") if torch.is_grad_enabled() else loss), *parts

    monkeypatch.setattr(train_module, "forward_loss", nan_loss)
    # eval_interval=1 with always_save_checkpoint: the evaluation right after the bad step would save
    with pytest.raises(NonFiniteLoss, match="at iter 2.*last good checkpoint \\(iter 2\\)"):
        train(tiny(tmp_path, "out", data, max_iters=10, init_from="resume", eval_interval=1, log_interval=100,
                   always_save_checkpoint=True))
    ckpt = torch.load(ckpt_path, weights_only=True)  # rewritten by the evaluation at iter 2, before the bad step: same weights
    assert ckpt["iter_num"] == 2 and all(torch.equal(v, saved[k]) for k, v in ckpt["model"].items())


def test_a_huge_learning_rate_stops_the_run(tmp_path):
    with pytest.raises(NonFiniteLoss, match="non-finite"):
        train(tiny(tmp_path, learning_rate=1e30, grad_clip=0.0, max_iters=5, eval_interval=100))
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["iter_num"] == 0  # the one written before training


# --------------------------------------------------------------------------------------------------
# settings: config files, overrides, missing data, and their errors


def test_config_files_and_overrides(tmp_path):
    path = tmp_path / "conf.py"
    path.write_text("import math\nn_layer = 3\nlearning_rate = 1\nattn = 'sink'\n")
    cfg = load_config([str(path), "--attn=affine", "--out_dir=2024", "--bias=True", "--min_lr=1e-5"], TrainConfig)
    assert (cfg.n_layer, cfg.attn, cfg.out_dir, cfg.bias, cfg.min_lr) == (3, "affine", "2024", True, 1e-5)
    assert cfg.learning_rate == 1.0 and isinstance(cfg.learning_rate, float)


@pytest.mark.parametrize("argv, message", [
    (["--lerning_rate=1e-3"], "unknown setting 'lerning_rate'.*did you mean learning_rate"),
    (["--max_iters=abc"], "max_iters='abc' must be an integer \\(got str\\)"),
    (["--max_iters=1.5"], "max_iters=1.5 must be an integer"),
    (["--compile=yes"], "compile='yes' must be True or False"),
    (["--compile=1"], "compile=1 must be True or False"),
    (["--attn=linear"], "unknown attn='linear'; allowed: softmax, sink, gated, affine, affine_gated"),
    (["--lr_schedule=step"], "unknown lr_schedule='step'; allowed: cosine, wsd"),
    (["--n_embd=100", "--n_head=3"], "n_embd=100 must be divisible by n_head=3"),
    (["--loss=kd"], "loss='kd' needs a teacher"),
    (["--max_iters"], "must be written --key=value"),
    (["no_such_config.py"], "config file 'no_such_config.py' not found"),
])
def test_bad_settings_are_clear_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(argv, TrainConfig)


def test_unknown_name_in_a_config_file(tmp_path):
    path = tmp_path / "conf.py"
    path.write_text("n_layers = 3\n")
    with pytest.raises(ConfigError, match="unknown setting 'n_layers'.*did you mean n_layer"):
        load_config([str(path)], TrainConfig)


def test_missing_data_names_the_prepare_command(tmp_path, monkeypatch):
    (tmp_path / "data" / "shakespeare_char").mkdir(parents=True)
    (tmp_path / "data" / "shakespeare_char" / "prepare.py").write_text("")
    monkeypatch.setattr(dataloader, "DATA_ROOT", str(tmp_path / "data"))
    cfg = TrainConfig(out_dir=str(tmp_path / "out"), device="cpu", dataset="shakespeare_char")
    with pytest.raises(ConfigError, match="run first: python .*shakespeare_char.prepare\\.py"):
        train(cfg)
    with pytest.raises(ConfigError, match="unknown dataset='nope'; allowed: shakespeare_char"):
        train(TrainConfig(out_dir=str(tmp_path / "out"), device="cpu", dataset="nope"))
    with pytest.raises(ConfigError, match="has no train.bin or val.bin"):
        train(TrainConfig(out_dir=str(tmp_path / "out"), device="cpu", data_dir=str(tmp_path)))
    assert not (tmp_path / "out").exists()


def test_every_config_file_loads(monkeypatch):
    """Every setting in config/ is a TrainConfig field of the right type (the KD variants exec the softmax one)."""
    repo = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.chdir(repo)
    names = sorted(f for f in os.listdir("config") if f.endswith(".py") and not f.startswith("compare"))
    configs = {name: load_config([os.path.join("config", name)], TrainConfig) for name in names}
    assert configs["train_shakespeare_char_cpu.py"].n_embd == 128
    for attn in ATTN_VARIANTS:
        kd = configs[f"kd_shakespeare_char_{attn}.py"]
        assert (kd.attn, kd.loss, kd.out_dir) == (attn, "kd", f"out-kd-shakespeare-char-{attn}")


# --------------------------------------------------------------------------------------------------
# sampling (sample.py)


def test_sample_decodes_with_the_char_meta(tmp_path):
    result = train(tiny(tmp_path, max_iters=3))
    texts = sample(SampleConfig(init_from=result["out_dir"], start="abc", num_samples=2, max_new_tokens=20, device="cpu"))
    assert len(texts) == 2
    for text in texts:
        assert text.startswith("abc") and len(text) == 23 and set(text) <= set("abcdefgh")
    with pytest.raises(ConfigError, match="not in the model's vocabulary: 'z'"):
        sample(SampleConfig(init_from=result["out_dir"], start="abz", device="cpu"))


def test_sample_reads_a_prompt_file(tmp_path):
    train(tiny(tmp_path, max_iters=0))
    (tmp_path / "prompt.txt").write_text("hgf")
    [text] = sample(SampleConfig(init_from=str(tmp_path / "out" / "ckpt.pt"), start=f"FILE:{tmp_path / 'prompt.txt'}",
                                 num_samples=1, max_new_tokens=5, device="cpu"))
    assert text.startswith("hgf") and len(text) == 8


def test_sample_from_a_local_gpt2_directory_decodes_bpe(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from tokenizer import gpt2_encoding
    cache = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared", "tiktoken_cache")
    if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(cache):
        monkeypatch.setenv("TIKTOKEN_CACHE_DIR", cache)  # the GPT-2 BPE offline, as "r50k_base"
    try:
        enc = gpt2_encoding()
    except Exception:
        pytest.skip("the GPT-2 BPE needs network or a tiktoken cache")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=50257, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    [text] = sample(SampleConfig(init_from=str(tmp_path / "gpt2-tiny"), start="Hello world", num_samples=1,
                                 max_new_tokens=5, device="cpu"))
    assert text.startswith("Hello world") and len(enc.encode(text)) >= 6


# --------------------------------------------------------------------------------------------------
# analysis (analyze.py): each statistic on hand-made weights, then whole runs and their figures


def causal_uniform(T):
    """(1, 1, T, T): query i spreads its weight evenly over keys 0..i."""
    w = torch.ones(T, T).tril()
    return (w / w.sum(-1, keepdim=True)).view(1, 1, T, T)


def test_spike_threshold_and_count():
    # median 10, |g - 10| = 2,0,1,1,0,2,1,... -> MAD 1; planted spikes 16 and 30 lie beyond 10 + 5 * 1
    g = [8, 10, 9, 11, 10, 12, 9, 11, 10, 16, 30, 10, 9, 11]
    assert np.median(g) == 10
    assert analyze.spike_threshold(g, 5) == 15.0
    assert analyze.spike_count(g, 5) == 2
    assert analyze.spike_count(g, 6) == 1  # tau = 16: only 30 exceeds it
    assert analyze.spike_count(g, 19) == 1  # tau = 29
    assert analyze.spike_count(g, 20) == 0  # tau = 30, not exceeded
    assert analyze.spike_count(torch.tensor(g, dtype=torch.float), 5) == 2  # a tensor works too


def test_spike_count_on_a_steady_series():
    assert analyze.spike_count([3.0] * 10, 9) == 0  # MAD 0, tau = median, nothing exceeds it
    with pytest.raises(ValueError, match="non-empty 1-D"):
        analyze.spike_count([], 6)


def test_grad_norm_stats():
    s = analyze.grad_norm_stats([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; population variance ((1.5^2 + 0.5^2) * 2) / 4 = 1.25
    assert s["mean"] == pytest.approx(2.5)
    assert s["var"] == pytest.approx(1.25)
    assert s["std"] == pytest.approx(math.sqrt(1.25))
    assert s["cv"] == pytest.approx(math.sqrt(1.25) / 2.5)


def test_entropy_uniform_onehot_causal():
    T = 6
    # causal uniform rows: row i has entropy log(i + 1)
    expected = sum(math.log(i + 1) for i in range(T)) / T
    assert analyze.attention_entropy(causal_uniform(T)).item() == pytest.approx(expected, rel=1e-6)
    # one-hot rows: 0
    onehot = torch.eye(T).view(1, 1, T, T)
    assert analyze.attention_entropy(onehot).item() == pytest.approx(0.0, abs=1e-7)
    # full uniform over n keys: log n, and the scale of the weights does not matter (sink-like mass 0.4)
    n = 5
    assert analyze.attention_entropy(torch.full((2, 3, 4, n), 0.4 / n)).tolist() == pytest.approx([math.log(n)] * 3)


def test_entropy_clamps_negative_affine_weights_and_skips_empty_queries():
    w = torch.tensor([[0.6, 0.6, -0.2], [-0.1, -0.1, 0.0]]).view(1, 1, 2, 3)
    # row 0 -> (0.5, 0.5, 0): log 2; row 1 has no positive weight and is left out of the mean
    assert analyze.attention_entropy(w).item() == pytest.approx(math.log(2))


def test_first_token_and_query_mass():
    T = 4
    w = causal_uniform(T)
    # weights on token 0: 1, 1/2, 1/3, 1/4
    assert analyze.first_token_mass(w).item() == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 4) / T)
    torch.testing.assert_close(analyze.query_mass(w), torch.ones(1, 1, T))
    # a sink that takes 30% of every query's softmax mass
    torch.testing.assert_close(analyze.query_mass(0.7 * w), torch.full((1, 1, T), 0.7))
    # two heads: first_token_mass is per head
    two = torch.cat([w, 0.5 * w], dim=1)
    torch.testing.assert_close(analyze.first_token_mass(two), torch.tensor([1.0, 0.5]) * (25 / 12) / T)


def test_headwise_mass_is_min_max_over_the_model():
    mass = torch.tensor([[0.2, 0.6], [1.0, 0.4]])
    torch.testing.assert_close(analyze.headwise_mass(mass), torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    # softmax: every head carries 1 up to rounding -> no range to normalise
    assert analyze.headwise_mass(torch.ones(2, 3) + 1e-7 * torch.rand(2, 3)).isnan().all()


def test_attention_heatmap():
    w = torch.stack([causal_uniform(40)[0, 0], torch.eye(40)]).unsqueeze(0)  # (1, 2, 40, 40)
    heat = analyze.attention_heatmap(w)
    assert heat.shape == (30, 30)
    assert heat[0, 0].item() == pytest.approx(1.0)
    assert heat[1, 0].item() == pytest.approx(0.25)  # (1/2 + 0) / 2
    torch.testing.assert_close(analyze.attention_heatmap(w, head=1, size=5), torch.eye(5))


def make_run(tmp_path, attn, vocab=50, T=24):
    """A tiny random checkpoint, its val.bin and a metrics.jsonl, laid out as train.py does."""
    torch.manual_seed(0)
    config = GPTConfig(block_size=T, vocab_size=vocab, n_layer=2, n_head=2, n_embd=16, attn=attn, affine_n="prefix")
    model = GPT(config)
    if attn == "affine":
        for block in model.transformer.h:
            block.attn.alpha_ma.copy_(torch.tensor([0.3, 0.8]))
    out_dir = tmp_path / f"out-{attn}"
    out_dir.mkdir()
    sd = {"_orig_mod." + k: v for k, v in model.state_dict().items()}  # as saved from a torch.compile'd model
    torch.save({"model": sd, "model_args": asdict(config), "config": {"dataset": "tiny", "out_dir": str(out_dir)},
                "iter_num": 40}, out_dir / "ckpt.pt")
    (tmp_path / "tiny").mkdir(exist_ok=True)
    np.random.default_rng(0).integers(0, vocab, 1000).astype(np.uint16).tofile(tmp_path / "tiny" / "val.bin")
    g = [1.0, 1.1, 0.9, 1.0, 8.0, 1.0, 1.05, 0.95] * 5
    with open(out_dir / "metrics.jsonl", "w") as f:
        for i, gn in enumerate(g):
            f.write(json.dumps({"iter": 10 * i, "lr": 1e-3, "loss": 4.0 - 0.01 * i, "grad_norm": gn,
                                "tokens_per_s": 1000.0, "qk_mag": 2.0 - 0.01 * i}) + "\n")
        f.write(json.dumps({"iter": 400, "val_loss": 3.5}) + "\n")
    return out_dir / "ckpt.pt"


def test_analyze_end_to_end(tmp_path, capsys):
    ckpts = [make_run(tmp_path, attn) for attn in ("softmax", "sink", "affine")]
    plot_dir = tmp_path / "figs"
    summary = analyze.main([f"--ckpt={','.join(map(str, ckpts))}", f"--data_dir={tmp_path / 'tiny'}", "--num_seqs=3",
                            f"--plot_dir={plot_dir}"])
    assert summary in capsys.readouterr().out
    blocks = summary.split("\n\n")
    assert len(blocks) == 3
    softmax, sink, affine = (b.splitlines() for b in blocks)
    # layer rows: layer, first_tok, query_mass, min, max, entropy[, alpha, (std), alpha_ma...]
    for row in softmax[2:4]:
        assert [float(v) for v in row.split()[2:5]] == [1.0, 1.0, 1.0]  # softmax: every query's mass is 1
    for row in sink[2:4]:
        mass, lo, hi = (float(v) for v in row.split()[2:5])
        # sink logits start at 0: query i puts e^0 / (sum_{j<=i} e^x_j + 1) on the sink; for query 0 that is 1/2
        assert lo == pytest.approx(0.5, abs=1e-2) and lo < mass < hi < 1
    for row in affine[2:4]:
        fields = row.split()
        # N = prefix: each query's mass is alpha_ma of its head, here 0.3 and 0.8
        assert [float(v) for v in fields[2:5]] == pytest.approx([0.55, 0.3, 0.8], abs=1e-4)
        assert [float(v) for v in fields[-2:]] == [0.3, 0.8]
    assert "grad_norm at iters < 500 (40 logged" in summary and "spikes k=6: 5, k=9: 5" in summary
    assert "val_loss: 3.5 (iter 400)" in summary
    pytest.importorskip("matplotlib")
    for name in ("first_token", "query_mass", "headwise", "entropy", "heatmap", "qk_mag", "grad_norm", "train_loss", "train_loss_end"):
        assert (plot_dir / f"{name}.png").stat().st_size > 0


def test_analyze_bad_input_is_a_clear_error(tmp_path, capsys):
    path = make_run(tmp_path, "softmax")
    base = [f"--ckpt={path}", f"--data_dir={tmp_path / 'tiny'}"]
    for extra, message in (("--layer=2", "--layer=2: .* has layers -2..1"), ("--seq_len=99", "--seq_len=99: .* takes 1..24"),
                           ("--head=5", "--head=5: .* has heads 0..1"), ("--layer=x", "layer='x' must be an integer")):
        with pytest.raises(ConfigError, match=f"^{message}"):
            analyze.main(base + [extra])
    with pytest.raises(ConfigError, match="--data_dir"):
        analyze.main([f"--ckpt={path}", f"--data_dir={tmp_path / 'nowhere'}"])
    with pytest.raises(ConfigError, match="^no --ckpt: give a train.py out_dir or checkpoint file, e.g. --ckpt="):
        analyze.main([f"--data_dir={tmp_path / 'tiny'}"])
    with pytest.raises(ConfigError, match="^--ckpt is given more than once; name the checkpoints in one, comma-separated: "
                                          "--ckpt=a,b$"):
        analyze.main([f"--ckpt={path}", f"--ckpt={path}"])  # the old argparse habit would analyze only the last
    with pytest.raises(ConfigError, match="^override '--ckpt' must be written --key=value$"):
        analyze.main(["--ckpt", str(path)])


def test_analysis_sequences_are_ten_seeded_random_windows_of_at_most_1024_tokens(tmp_path, capsys):
    """Appendix A.1: 10 sampled sequences of 1k tokens; the same for every checkpoint, other ones for another seed."""
    path = make_run(tmp_path, "softmax", T=1100)
    val = np.random.default_rng(1).integers(0, 50, 5000).astype(np.uint16)
    val.tofile(tmp_path / "tiny" / "val.bin")
    x = analyze.val_sequences(str(tmp_path / "tiny" / "val.bin"), 10, 1024, 50)
    starts = [int(np.flatnonzero((np.lib.stride_tricks.sliding_window_view(val, 1024) == row.numpy()).all(1))[0])
              for row in x]
    assert x.shape == (10, 1024) and starts == sorted(set(starts)) and len(set(starts)) == 10
    assert torch.equal(x, analyze.val_sequences(str(tmp_path / "tiny" / "val.bin"), 10, 1024, 50, seed=0))
    assert not torch.equal(x, analyze.val_sequences(str(tmp_path / "tiny" / "val.bin"), 10, 1024, 50, seed=1))
    with pytest.raises(ConfigError, match="val.bin has 5000 tokens, too few for --num_seqs=10 windows of --seq_len=4996"):
        analyze.val_sequences(str(tmp_path / "tiny" / "val.bin"), 10, 4996, 50)
    summary = analyze.main([f"--ckpt={path}", f"--data_dir={tmp_path / 'tiny'}"])
    assert "10 sequences x 1024 tokens of" in summary  # min(1024, block_size=1100)
    (tmp_path / "short").mkdir()
    assert "10 sequences x 24 tokens of" in analyze.main([f"--ckpt={make_run(tmp_path / 'short', 'softmax')}",
                                                          f"--data_dir={tmp_path / 'tiny'}"])


def test_fig_10_is_the_last_two_ninths_of_training():
    iters = np.arange(0, 9001, 10)
    late, values = analyze.late_phase(iters, iters * 2.0)
    assert (late[0], late[-1], values[0]) == (7000, 9000, 14000.0)


def test_runs_are_named_in_words():
    runs = [GPTConfig(attn="affine"), GPTConfig(attn="affine", affine_n="prefix"), GPTConfig(attn="affine", phi="sigmoid"),
            GPTConfig(attn="affine_gated", affine_n="prefix"), GPTConfig(), GPTConfig()]
    dirs = ["out/affine-s1", "out/affine-affine_nprefix-s1", "out/affine-phisigmoid-s1", "a", "out/softmax-s1", "out/softmax-s2"]
    assert analyze.run_labels(runs, [1, 1, 1, 1, 1, 2], dirs) == [
        "affine", "affine, N = prefix", "affine, phi = sigmoid", "affine_gated, N = prefix", "softmax, seed 1", "softmax, seed 2"]
    assert analyze.run_labels([GPTConfig()] * 2, [1, 1], ["x/lr1e-3", "x/lr3e-3"]) == ["softmax, seed 1 (lr1e-3)",
                                                                                       "softmax, seed 1 (lr3e-3)"]


def test_every_figure_names_its_paper_figure_in_words_with_one_colour_scale(tmp_path, monkeypatch):
    Figure = pytest.importorskip("matplotlib.figure").Figure
    figures = {}
    savefig = Figure.savefig

    def record(fig, path, **kw):
        axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        figures[os.path.basename(path)] = dict(
            title=fig._suptitle.get_text() if fig._suptitle else axes[0].get_title(), kw=kw,
            labels=[t for ax in axes for t in (ax.get_xlabel(), ax.get_ylabel())],
            legends=[ax.get_legend() for ax in axes if ax.get_legend()],
            clims={im.get_clim() for ax in axes for im in ax.get_images()})
        savefig(fig, path, **kw)

    monkeypatch.setattr(Figure, "savefig", record)
    ckpts = [make_run(tmp_path, attn) for attn in ("softmax", "sink", "affine")]
    analyze.main([f"--ckpt={','.join(map(str, ckpts))}", f"--data_dir={tmp_path / 'tiny'}", "--num_seqs=3",
                  f"--plot_dir={tmp_path / 'figs'}"])
    numbers = {"qk_mag.png": 2, "query_mass.png": 3, "first_token.png": 4, "headwise.png": 5, "entropy.png": 6,
               "train_loss.png": 7, "grad_norm.png": 8, "heatmap.png": 9, "train_loss_end.png": 10, "phi.png": 11}
    assert {name: int(f["title"].split(":")[0].removeprefix("Fig. ")) for name, f in figures.items()} == numbers
    assert all(f["kw"].get("bbox_inches") == "tight" for f in figures.values())  # nothing cut off at the edges
    assert not any("_" in label for f in figures.values() for label in f["labels"])  # words, not grad_norm
    for f in figures.values():  # a legend sits outside the axes, where it covers no data
        assert all(legend.get_bbox_to_anchor().x0 > legend.axes.get_window_extent().x1 for legend in f["legends"])
    assert len(figures["heatmap.png"]["clims"]) == len(figures["headwise.png"]["clims"]) == 1
    assert figures["train_loss_end.png"]["title"] == "Fig. 10: the last 2/9 of training (the paper's steps 7k-9k of 9k)"


# --------------------------------------------------------------------------------------------------
# the benchmark (bench.py)


def test_bench_table_has_a_row_per_variant_and_mode(capsys):
    records = bench.main(["--device=cpu", "--n_layer=1", "--n_head=2", "--n_embd=16", "--batch_size=1",
                          "--seq_lens=8", "--warmup=0", "--iters=1", "--compile=False"])
    assert [(r["variant"], r["mode"]) for r in records] == [(v, m) for m in ("eager", "fused") for v in ATTN_VARIANTS]
    train, fwd = capsys.readouterr().out.split("forward pass")
    for table in train, fwd:
        rows = [line.split()[1:3] for line in table.splitlines() if line.startswith("    8")]
        assert rows == [[v, m] for m in ("eager", "fused") for v in ATTN_VARIANTS]
    assert all(r["train_vs_softmax"] == 1.0 for r in records if r["variant"] == "softmax")


# --------------------------------------------------------------------------------------------------
# the variant comparison (compare.py; test_compare imports hand_made_run)


def hand_made_run(final_loss, val_loss, grads, n_tail=0, tail_loss=None):
    """(step rows, eval rows) as read_metrics returns them: one step row per iter with the given gradient
    norms and loss final_loss, then n_tail more steps of loss tail_loss and gradient norm 100."""
    steps = [{"iter": i, "loss": final_loss, "ce": final_loss + 1, "kd": final_loss - 0.5, "soft_ce": final_loss + 0.25,
              "grad_norm": g} for i, g in enumerate(grads)]
    steps += [{"iter": len(grads) + i, "loss": tail_loss, "ce": tail_loss + 1, "kd": tail_loss - 0.5, "soft_ce": tail_loss + 0.25,
               "grad_norm": 100.0} for i in range(n_tail)]
    evals = [{"iter": 0, "val_loss": 9.0, "val_ppl": math.exp(9.0)},
             {"iter": len(steps), "val_loss": val_loss, "val_ppl": math.exp(val_loss)}]
    return steps, evals


def test_table_rows_means_stds_spikes_and_windows():
    steady = [0.9, 1.0, 1.1] * 4 + [1.0, 1.0]  # mean 1.0, median 1.0, MAD 0.1
    spiky = steady[:-2] + [1.7, 2.0]  # median and MAD the same: 1.7 > median + 6 MAD only, 2.0 > median + 9 MAD too
    # 60 tail steps of gradient norm 100, beyond early_steps: they must not count in Tables 4-5, and the last-50
    # window of the train loss must see only them
    runs = {"softmax": [hand_made_run(5.0, 3.0, steady, 60, 2.0), hand_made_run(5.0, 3.4, steady, 60, 2.4)],
            "affine": [hand_made_run(5.0, 2.0, spiky, 60, 1.0), hand_made_run(5.0, 2.2, steady, 60, 1.2)]}
    soft, aff = table_rows(runs, {"softmax": 0, "affine": 64}, early_steps=len(spiky))
    assert (soft["variant"], soft["delta_params"], soft["seeds"]) == ("softmax", 0, 2)
    assert soft["train_loss"] == pytest.approx(2.2) and soft["train_loss_std"] == pytest.approx(0.2)  # ddof=0
    assert soft["train_ce"] == pytest.approx(3.2) and soft["train_ce_std"] == pytest.approx(0.2)
    assert soft["train_kd"] == pytest.approx(1.7) and soft["train_kd_std"] == pytest.approx(0.2)
    assert soft["train_soft_ce"] == pytest.approx(2.45) and soft["train_soft_ce_std"] == pytest.approx(0.2)
    assert soft["val_loss"] == pytest.approx(3.2) and soft["val_loss_std"] == pytest.approx(0.2)  # the last eval
    assert soft["val_ppl"] == pytest.approx((math.exp(3.0) + math.exp(3.4)) / 2)
    assert soft["grad_mean"] == pytest.approx(1.0) and soft["grad_var"] == pytest.approx(np.var(steady))
    assert soft["grad_std"] == pytest.approx(np.std(steady)) and soft["grad_cv"] == pytest.approx(np.std(steady))
    assert (soft["spikes_k6"], soft["spikes_k9"]) == (0, 0)
    # affine: the spiky seed has 2 and 1 spikes, the steady one none; the table gives the mean over seeds
    assert aff["delta_params"] == 64
    assert (aff["spikes_k6"], aff["spikes_k9"]) == (1.0, 0.5)
    assert aff["by_seed"]["spikes_k6"] == [2, 0] and aff["by_seed"]["val_loss"] == [2.0, 2.2]
    assert aff["grad_cv"] == pytest.approx((np.std(spiky) / np.mean(spiky) + np.std(steady)) / 2)
    assert aff["grad_var"] == pytest.approx((np.var(spiky) + np.var(steady)) / 2)


def test_markdown_states_the_winner_and_the_spread_as_measured():
    runs = {"softmax": [hand_made_run(2.0, 3.0, [1.0, 1.1]), hand_made_run(2.0, 3.2, [1.0, 1.1])],
            "affine": [hand_made_run(2.0, 3.05, [1.0, 1.1]), hand_made_run(2.0, 3.05, [1.0, 1.1])]}
    text = markdown(table_rows(runs, {"softmax": 0, "affine": 64}, early_steps=2), ["# header"])
    assert text.count("\n| ") == 3  # the column names and one row per variant
    # the KD loss (soft-target CE), KL and CE, then val CE
    assert "| affine | 64 | 2.2500 +- 0.0000 | 1.5000 +- 0.0000 | 3.0000 +- 0.0000 | 3.0500 +- 0.0000 |" in text
    # affine's 3.05 is 0.05 below softmax's 3.1, less than softmax's std of 0.1 across seeds
    assert "Lowest mean val CE: affine, 0.0500 below softmax; that gap is not larger than the std across seeds (0.1000)." in text
    one_seed = {v: seeds[:1] for v, seeds in runs.items()}
    text = markdown(table_rows(one_seed, {"softmax": 0, "affine": 64}, early_steps=2), ["# header"])
    assert "Lowest mean val CE: softmax, 0.0500 below affine; one seed, so no spread" in text


def test_compare_end_to_end(tmp_path, monkeypatch, capsys):
    data = make_char_data(tmp_path / "data")
    common = ("device, compile = 'cpu', False\neval_interval, eval_iters, log_interval = 5, 2, 1\n"
              "n_layer, n_head, n_embd, block_size, batch_size = 2, 2, 16, 16, 4\n"
              "learning_rate, warmup_iters, max_iters, lr_decay_iters, min_lr = 1e-2, 0, 8, 8, 1e-3\n")
    (tmp_path / "teacher.py").write_text(common)
    (tmp_path / "student.py").write_text(common + "loss, teacher = 'kd', 'set by compare.py'\n")
    out = tmp_path / "cmp"
    argv = [f"--out_dir={out}", f"--teacher_config={tmp_path / 'teacher.py'}", f"--data_dir={data}", "--seeds=1,2",
            f"--student_config={tmp_path / 'student.py'} --n_embd=24", "--variants=softmax,affine:affine_n=prefix",
            "--early_steps=500"]
    cfg = load_config(argv, CompareConfig)

    # every batch of the train split each run draws, by run: students of one seed must draw the same ones
    batches, current = {}, []
    get_batch, real_train = train_module.get_batch, compare_module.train

    def recording_get_batch(data_dir, split, *args):
        x, y = get_batch(data_dir, split, *args)
        if split == "train":
            batches.setdefault(current[-1], []).append(x.clone())
        return x, y

    def recording_train(run):
        current.append(os.path.basename(run.out_dir))
        return real_train(run)

    monkeypatch.setattr(train_module, "get_batch", recording_get_batch)
    monkeypatch.setattr(compare_module, "train", recording_train)
    rows = compare(cfg)
    assert "training the teacher" in capsys.readouterr().out
    ablation = "affine-affine_nprefix"  # the variant affine:affine_n=prefix
    assert current == ["teacher", "softmax-s1", "softmax-s2", f"{ablation}-s1", f"{ablation}-s2"]
    assert torch.load(out / f"{ablation}-s1" / "ckpt.pt", weights_only=True)["model_args"]["affine_n"] == "prefix"
    for seed in (1, 2):
        assert len(batches[f"{ablation}-s{seed}"]) == 8 + 3 * 2  # 8 training batches, 2 per evaluation (iters 0, 5, 8)
        assert all((a == b).all() for a, b in zip(batches[f"softmax-s{seed}"], batches[f"{ablation}-s{seed}"]))
    assert not (batches["softmax-s1"][0] == batches["softmax-s2"][0]).all()

    saved = json.loads((out / "results.json").read_text())
    assert [r["variant"] for r in saved["rows"]] == ["softmax", "affine:affine_n=prefix"] == [r["variant"] for r in rows]
    assert saved["early_steps"] == 8 and saved["student"]["n_embd"] == 24 and not saved["teacher_reused"]
    for r in saved["rows"]:
        assert r["seeds"] == 2 and all(len(v) == 2 for v in r["by_seed"].values())
        assert all(math.isfinite(v) for v in r.values() if isinstance(v, float))
    student = run_config(cfg.student_config, 0, attn="affine", loss="kd", teacher="x")
    assert saved["rows"][0]["delta_params"] == 0
    assert saved["rows"][1]["delta_params"] == param_overhead(student.gpt_config(vocab_size=8))[1] == 2 * 24 * 2
    text = (out / "results.md").read_text()
    assert "2 seeds" in text and "8 iters" in text and "steps 0-7" in text and "minutes in all." in text

    # a second call reuses the finished teacher and students; one student made unfinished is trained again,
    # the same as before (overwrite lets it replace the unfinished run)
    teacher_ckpt = out / "teacher" / "ckpt.pt"
    mtime = teacher_ckpt.stat().st_mtime_ns
    ckpt = torch.load(out / "softmax-s2" / "ckpt.pt", weights_only=True)
    torch.save({**ckpt, "iter_num": 5}, out / "softmax-s2" / "ckpt.pt")
    current.clear()
    assert compare(CompareConfig(**{**asdict(cfg), "overwrite": True})) == rows
    printed = capsys.readouterr().out
    assert "reusing the finished teacher" in printed and "reusing the finished student softmax, seed 1" in printed
    assert current == ["softmax-s2"] and teacher_ckpt.stat().st_mtime_ns == mtime
    saved = json.loads((out / "results.json").read_text())
    assert saved["teacher_reused"] and len(saved["students_reused"]) == 3
    assert "the teacher's training not included; 3 of 4 students reused from an earlier call." in (out / "results.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--variants=softmax,flash"], "'flash'.*allowed: softmax, sink"),
    (["--variants=softmax,softmax"], "variants='softmax,softmax' must name at least one, each once"),
    (["--variants="], "variants='' must name at least one"),
    (["--seeds=1,two"], "seeds='1,two' must be comma-separated integers"),
    (["--early_steps=0"], "early_steps=0 must be at least 1"),
    (["--student_iters=-5"], "student_iters=-5 must not be negative"),
    (["--teacher_iter=5"], "unknown setting 'teacher_iter'.*did you mean teacher_iters"),
])
def test_bad_compare_settings_are_clear_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(argv, CompareConfig)


def test_a_changed_teacher_setting_is_not_reused(tmp_path):
    data = make_char_data(tmp_path / "data")
    (tmp_path / "teacher.py").write_text(
        "device = 'cpu'\neval_interval, eval_iters = 5, 1\nn_layer, n_head, n_embd, block_size, batch_size = 1, 1, 8, 8, 2\n"
        "warmup_iters, max_iters, lr_decay_iters = 0, 3, 3\n")
    teacher = run_config(str(tmp_path / "teacher.py"), 0, out_dir=str(tmp_path / "t"), data_dir=data, loss="ce", teacher="")
    assert compare_module.finished_run(teacher) == f"no {tmp_path / 't' / 'ckpt.pt'}"
    train_module.train(teacher)
    assert compare_module.finished_run(teacher) is None
    assert "n_embd: 8 -> 16" in compare_module.finished_run(run_config(
        f"{tmp_path / 'teacher.py'} --n_embd=16", 0, out_dir=str(tmp_path / "t"), data_dir=data, loss="ce", teacher=""))


def test_students_without_steps_are_caught_before_any_training(tmp_path):
    (tmp_path / "run.py").write_text("device = 'cpu'\nmax_iters = warmup_iters = 0\n")
    cfg = CompareConfig(out_dir=str(tmp_path / "cmp"), teacher_config=str(tmp_path / "run.py"),
                        student_config=str(tmp_path / "run.py"), data_dir=str(tmp_path / "no-data"))
    with pytest.raises(ConfigError, match="max_iters=0 must be at least 1"):
        compare(cfg)
    assert not (tmp_path / "cmp").exists()


def test_the_compare_configs_load(monkeypatch):
    """Both compare configs, and the teacher and student settings they name, load without a GPU."""
    monkeypatch.chdir(REPO)
    cpu = load_config(["config/compare_shakespeare_char.py"], CompareConfig)
    gpu = load_config(["config/compare_shakespeare_char_gpu.py"], CompareConfig)
    variants = list(compare_module.ATTN_VARIANTS) + ["affine:affine_n=prefix", "affine:phi=sigmoid"]
    assert (cpu.variant_list(), gpu.variant_list(), cpu.seed_list(), gpu.seed_list()) == (variants, variants, [1, 2, 3], [1, 2, 3])
    for cfg in (cpu, gpu):
        teacher = run_config(cfg.teacher_config, cfg.teacher_iters, loss="ce", teacher="")
        student = run_config(cfg.student_config, cfg.student_iters, loss="kd", teacher="x", attn="affine")
        assert student.block_size <= teacher.block_size and student.device == teacher.device
    assert (student.device, student.dtype, student.n_embd, student.max_iters) == ("cuda", "bfloat16", 256, 3000)
