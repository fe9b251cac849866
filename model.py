"""
A decoder with switchable attention, written to be read next to the paper "Affine-Scaled Attention:
Towards Flexible and Stable Transformer Attention" (Bae et al., arXiv 2602.23057).

config.attn picks the attention:
  softmax       Eq. 1   the baseline
  sink          Eq. 3   GPT-OSS: a learnable per-head logit s in the softmax denominator
  gated         Eq. 4-5 Qwen's elementwise sigmoid gate on the attention output
  affine        Eq. 6-9, 11  the paper: alpha(X) * softmax + beta(X)
  affine_gated  both, the paper's Table 2

Every variant has two paths that compute the same function, forward and backward:
  config.fused=False  the eager reference: explicit T x T weights, line by line the paper's equations
  config.fused=True   F.scaled_dot_product_attention, never a T x T matrix in our code

The block around the attention is a few independent settings, so GPT-2 and the paper's students are
just values of them:
  GPT-2           pos="learned", norm="layernorm", mlp="gelu", bias=True
  LLaMA-3.2       pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head < n_head, bias=False
  Qwen1.5 / 2     the same with qkv_bias=True
PAPER_SHAPES at the end are the paper's three students (`python model.py` prints their parameter counts);
pretrained.py loads Hugging Face weights into a GPT.
"""

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn import functional as F

ATTN_VARIANTS = ("softmax", "sink", "gated", "affine", "affine_gated")
AFFINE_N = ("context", "prefix")
PHI = ("linear_clip", "sigmoid")
POS = ("learned", "rope")
NORM = ("layernorm", "rmsnorm")
MLP_KINDS = ("gelu", "swiglu", "relu2")


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0  # key/value heads; fewer than n_head is grouped-query attention; 0: n_head
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # bias in every Linear and LayerNorm, like GPT-2
    qkv_bias: bool = False  # bias in the q, k, v projections even when bias=False, like Qwen
    pos: str = "learned"  # "learned" position embeddings (GPT-2) or "rope" (rotary, LLaMA / Qwen)
    rope_theta: float = 10000.0
    rope_scaling: dict = field(default=None)  # LLaMA-3's frequency scaling, as its config.json gives it
    norm: str = "layernorm"  # or "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu" (GPT-2), "swiglu" (LLaMA / Qwen) or "relu2" (modded-nanogpt, nanochat)
    mlp_hidden: int = 0  # the MLP's hidden size; 0: 4 * n_embd
    tie_embeddings: bool = True  # lm_head shares the token embedding's weights
    attn: str = "softmax"  # one of ATTN_VARIANTS
    fused: bool = True  # True: F.scaled_dot_product_attention; False: the eager reference
    phi: str = "linear_clip"  # phi of Eq. 7: "linear_clip" (Eq. 11) or "sigmoid" (Eq. 10, Table 3's ablation)
    affine_momentum: float = 0.9  # rho of Eq. 9 (the paper uses 0.9 throughout)
    affine_n: str = "context"  # N of Eq. 8: "context" = block_size, "prefix" = keys this query sees

    def __post_init__(self):
        for name, allowed in (("attn", ATTN_VARIANTS), ("affine_n", AFFINE_N), ("phi", PHI), ("pos", POS),
                              ("norm", NORM), ("mlp", MLP_KINDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name}={getattr(self, name)!r}; allowed: {', '.join(allowed)}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        self.n_kv_head = self.n_kv_head or self.n_head
        if self.n_kv_head < 0 or self.n_head % self.n_kv_head != 0:
            raise ValueError(f"n_head={self.n_head} must be divisible by n_kv_head={self.n_kv_head} "
                             f"(each key/value head serves the same number of query heads)")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"pos='rope' rotates pairs of features: the head size n_embd / n_head = "
                             f"{self.n_embd // self.n_head} must be even")
        self.mlp_hidden = self.mlp_hidden or 4 * self.n_embd
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
        if not 0.0 <= self.affine_momentum <= 1.0:
            raise ValueError(f"affine_momentum={self.affine_momentum!r} must be in [0, 1] (rho of Eq. 9)")
        if self.rope_scaling is not None:
            if self.pos != "rope":
                raise ValueError(f"rope_scaling is set but pos={self.pos!r}: it rescales RoPE's frequencies (pos='rope')")
            rope_frequencies(self)  # a scaling it cannot compute fails here, not at the first forward


def linear_clipping(x):
    """phi of Eq. 7, the paper's Eq. 11: 0 for x <= -5, 0.1 x + 0.5 in between, 1 for x >= 5.
    Unlike a sigmoid its slope stays 0.1 over the whole middle range, so alpha does not saturate
    at 0 or 1 and intermediate scales stay reachable (paper section 6)."""
    return torch.clamp(0.1 * x + 0.5, 0.0, 1.0)


def rope_frequencies(config):
    """RoPE's inverse frequencies theta^(-2i/d), i < d/2, with LLaMA-3's rescaling when the config has it:
    wavelengths longer than original_max_position_embeddings / low_freq_factor are stretched by factor,
    shorter than ... / high_freq_factor kept, and the ones between interpolated smoothly."""
    hs = config.n_embd // config.n_head
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, hs, 2, dtype=torch.float32) / hs)
    scaling = config.rope_scaling
    if not scaling or scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        return inv_freq
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        raise ValueError(f"rope_scaling={scaling!r}: only LLaMA-3's ('rope_type': 'llama3') is implemented")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    if any(k not in scaling for k in keys):
        raise ValueError(f"rope_scaling={scaling!r} lacks some of LLaMA-3's keys: {', '.join(keys)}")
    factor, low, high, old_len = (scaling[k] for k in keys)
    wavelen = 2 * math.pi / inv_freq
    smooth = ((old_len / wavelen - low) / (high - low)).clamp(0.0, 1.0)  # 0: stretch fully, 1: keep
    return (1 - smooth) * inv_freq / factor + smooth * inv_freq


def apply_rope(x, cos, sin):
    """Rotate each pair (x_i, x_{i+d/2}) of x (B, nh, T, hs) by its position's angle, in the half-split
    layout of LLaMA's Hugging Face weights (not interleaved pairs). cos, sin: (T, hs)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class CausalSelfAttention(nn.Module):
    """
    New parameters and how they start:
      sink     (n_head,)          zeros: e^0 = 1 in the denominator, i.e. off-by-one attention (Eq. 2)
                                  at step 0, a mild relaxation the model can grow or shrink.
      c_gate   n_embd -> n_embd   N(0, 0.02), zero bias, like every Linear here: the gate starts near
                                  sigmoid(0) = 0.5 on every channel and learns from there.
      c_alpha  n_embd -> n_head   N(0, 0.02), zero bias: alpha starts near phi(0) = 0.5, the middle of
                                  the linear region of Eq. 11, where its gradient (slope 0.1) is alive.
      alpha_ma (n_head,) buffer   zeros, as Eq. 9 prescribes (alpha_ma,0 = 0).
    """

    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_size = config.n_embd // config.n_head
        self.block_size = config.block_size
        self.dropout = config.dropout
        self.fused = config.fused
        self.attn = config.attn
        self.affine = config.attn in ("affine", "affine_gated")
        self.gated = config.attn in ("gated", "affine_gated")
        self.phi = linear_clipping if config.phi == "linear_clip" else torch.sigmoid
        self.affine_n = config.affine_n
        self.rho = config.affine_momentum
        # query, key and value projections of all heads in one matmul; keys and values have n_kv_head heads
        kv_size = config.n_kv_head * self.head_size
        self.qkv_split = (config.n_embd, kv_size, kv_size)
        self.c_attn = nn.Linear(config.n_embd, sum(self.qkv_split), bias=config.bias or config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        if self.attn == "sink":
            self.sink = nn.Parameter(torch.zeros(config.n_head))  # s of Eq. 3, one per head
        if self.gated:
            self.c_gate = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)  # W_a of Eq. 5
        if self.affine:
            self.c_alpha = nn.Linear(config.n_embd, config.n_head, bias=config.bias)  # W_a of Eq. 7
            self.register_buffer("alpha_ma", torch.zeros(config.n_head))  # Eq. 9, alpha_ma,0 = 0
            # the batch means of alpha seen by this optimizer step's training forwards (see update_alpha_ma)
            self.register_buffer("alpha_sum", torch.zeros(config.n_head), persistent=False)
            self.register_buffer("alpha_count", torch.zeros(()), persistent=False)

    def forward(self, x, rope=None, kv=None, record=None):
        """x: (B, T, C). rope: (cos, sin) of these positions, or None. kv: this layer's KV cache, a dict
        filled in place (generation). record: a function; if given, the eager path runs and calls it
        with this layer's {"logits", "weights", "alpha"}."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.qkv_split, dim=2)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k, v = (t.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2) for t in (k, v))  # (B, n_kv, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:  # generation: prepend the cached keys and values of earlier tokens
            if "k" in kv:
                k, v = torch.cat([kv["k"], k], dim=2), torch.cat([kv["v"], v], dim=2)
            kv["k"], kv["v"] = k, v
        S = k.size(2)  # number of keys; queries are the last T of the S positions
        if T > 1 and S != T:
            raise ValueError(f"a KV cache takes one token at a time once filled, got {T} new tokens after {S - T}")

        alpha = beta = None
        if self.affine:
            alpha = self.phi(self.c_alpha(x)).transpose(1, 2).unsqueeze(-1)  # Eq. 7: (B, nh, T, 1)
            # Eq. 8: beta = (alpha_ma - alpha) / N. The paper's N is "the key sequence length", there so that
            # beta's size does not depend on the sequence length. "context": N = block_size for every query,
            # so a query's total mass alpha + (alpha_ma - alpha) * (keys seen) / N varies with alpha and its
            # position (Fig. 3), and no output depends on how long the input is (the KV cache stays exact).
            # "prefix": N = the keys this query sees, so every query's weights sum to exactly alpha_ma and
            # alpha only trades softmax mass for uniform mass: the per-query mass is a constant per head.
            # Both in float32, rounded to alpha's dtype once at the end: in bf16, N > 256 is not exact
            # (257 -> 256), nor is alpha_ma before the subtraction.
            if self.affine_n == "prefix":
                N = torch.arange(S - T + 1, S + 1, device=x.device, dtype=torch.float32).view(T, 1)
            else:
                N = self.block_size
            beta = ((self.alpha_ma.view(-1, 1, 1) - alpha) / N).to(alpha.dtype)  # (B, nh, T, 1)
            if self.training:
                # Eq. 9's E[alpha_t(X)], the mean over batch and positions, is gathered here and applied once
                # per optimizer step by update_alpha_ma. New tensors, not in-place updates: under
                # torch.compile, AOTAutograd may re-read buffers in the backward and must see their old value.
                self.alpha_sum = self.alpha_sum + alpha.detach().mean(dim=(0, 2, 3), dtype=torch.float32)
                self.alpha_count = self.alpha_count + 1

        if self.fused and record is None:
            y = self._fused(q, k, v, alpha, beta)
        else:
            y = self._eager(q, k, v, alpha, beta, record)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        if self.gated:
            y = y * torch.sigmoid(self.c_gate(x))  # Eq. 4-5: G(X) = sigmoid(W_a X), elementwise
        return self.resid_dropout(self.c_proj(y))

    @torch.no_grad()
    def update_alpha_ma(self):
        """Eq. 9, once per optimizer step t: alpha_ma,t = rho alpha_ma,t-1 + (1 - rho) E[alpha_t(X)], E the
        mean over the step's whole batch (the micro-batches' means, all of equal size, averaged). beta used
        the value from before the step, so no batch leaks into its own outputs."""
        if self.alpha_count > 0:
            batch_mean = (self.alpha_sum / self.alpha_count).to(self.alpha_ma.dtype)
            self.alpha_ma = torch.lerp(self.alpha_ma, batch_mean, 1.0 - self.rho)
        self.alpha_sum, self.alpha_count = torch.zeros_like(self.alpha_sum), torch.zeros_like(self.alpha_count)

    def _repeat_kv(self, t):
        """Grouped-query attention: key/value head j serves query heads j * rep ... (j + 1) * rep - 1."""
        return t.repeat_interleave(self.n_head // self.n_kv_head, dim=1)

    def _eager(self, q, k, v, alpha, beta, record):
        """The reference: explicit (T, S) weights, one paper equation per line."""
        k, v = self._repeat_kv(k), self._repeat_kv(v)
        T, S = q.size(2), k.size(2)
        visible = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)  # query i sees keys <= i
        logits = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_size))  # QK^T / sqrt(d_k)
        logits = logits.masked_fill(~visible, float("-inf"))
        if self.attn == "sink":
            # Eq. 3: e^{x_i} / (sum_j e^{x_j} + e^s): the sink is one more logit column, dropped after the softmax
            s = self.sink.view(1, -1, 1, 1).expand(q.size(0), -1, T, 1).to(logits.dtype)
            probs = F.softmax(torch.cat([logits, s], dim=-1), dim=-1)[..., :-1]
        else:
            probs = F.softmax(logits, dim=-1)  # Eq. 1
        probs = self.attn_dropout(probs)
        if self.affine:
            # Eq. 6: alpha * softmax + beta, with beta added on the causally visible keys only. Added to
            # every key as the equation reads, beta * V would mix in the values of future tokens: a leak.
            weights = alpha * probs + beta * visible
        else:
            weights = probs
        if record is not None:
            record({"logits": logits, "weights": weights, "alpha": alpha})
        return weights @ v

    def _fused(self, q, k, v, alpha, beta):
        """Same function through F.scaled_dot_product_attention, O(T) memory beyond the kernel's own."""
        T, S = q.size(2), k.size(2)
        causal = T > 1  # with a filled KV cache the single new query sees every key
        dropout_p = self.dropout if self.training else 0.0
        scale = 1.0 / math.sqrt(self.head_size)
        if self.attn == "sink":
            # Eq. 3 exactly, through SDPA: the sink becomes an extra key whose logit is s for every query.
            # Give q, k, v one more feature: 1 for queries, 0 for real keys, s * sqrt(d) for the sink key,
            # so q.k_sink * scale = s; the sink's value is 0, so it only adds e^s to the denominator, and
            # s gets its exact gradient through that key. Causal SDPA aligns the mask top-left, so under a
            # causal mask a dummy query row goes first too: real query i then sees the sink and keys <= i.
            # The sink key differs per query head, so grouped keys and values are repeated first.
            B, nh, hs = q.size(0), self.n_head, self.head_size
            sink_k = F.pad((self.sink * math.sqrt(hs)).to(k.dtype).view(1, nh, 1, 1), (hs, 0)).expand(B, nh, 1, hs + 1)
            k = torch.cat([sink_k, F.pad(self._repeat_kv(k), (0, 1))], dim=2)
            v_sink = F.pad(self._repeat_kv(v), (0, 1, 1, 0))  # zero value for the sink (and a zero feature)
            q = F.pad(q, (0, 1), value=1.0)
            if causal:
                q = F.pad(q, (0, 0, 1, 0))
            y = F.scaled_dot_product_attention(q, k, v_sink, dropout_p=dropout_p, is_causal=causal, scale=scale)
            y = y[:, :, 1:, :hs] if causal else y[..., :hs]
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale,
                                               enable_gqa=self.n_kv_head != self.n_head)
        if self.affine:
            # Eq. 6 without the T x T matrix: (alpha P + beta M) V = alpha (P V) + beta (M V), where M is the
            # causal mask, so M V is the running sum of the visible values (summed in fp32 for bf16 runs).
            v_visible_sum = self._repeat_kv(v.cumsum(dim=2, dtype=torch.float32)[:, :, S - T:]).to(v.dtype)
            y = alpha * y + beta * v_visible_sum
        return y


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.kind = config.mlp
        width = 2 * config.mlp_hidden if self.kind == "swiglu" else config.mlp_hidden  # SwiGLU: gate and up
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.kind == "gelu":
            h = F.gelu(h, approximate="tanh")  # GPT-2's own GELU, so GPT-2 weights give GPT-2's logits
        elif self.kind == "relu2":
            h = F.relu(h).square()  # ReLU^2 (So et al., Primer), as in modded-nanogpt and nanochat
        else:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up  # SwiGLU (Shazeer, 2020), as in LLaMA and Qwen
        return self.dropout(self.c_proj(h))


def norm(config):
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)  # x / rms(x) * g (LLaMA, Qwen)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)  # GPT-2


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = norm(config)
        self.mlp = MLP(config)

    def forward(self, x, rope=None, kv=None, record=None):
        x = x + self.attn(self.ln_1(x), rope, kv, record)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=norm(config),
        ))
        if config.pos == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:  # RoPE's cos and sin of every position, computed once; not saved, they follow from the config
            angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), rope_frequencies(config))
            angles = torch.cat([angles, angles], dim=-1)  # (block_size, hs): the same angle for x_i and x_{i+d/2}
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as in GPT-2
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections: 0.02 / sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count; learned position embeddings are left out by default, as in nanoGPT (the token
        embeddings count: tied, they are lm_head's weights)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx, targets=None, kv_cache=None, record=None, return_hidden=False):
        """idx: (B, T) token ids. Returns (logits, loss): logits of every position when targets are
        given, else of the last position only (all that sampling needs), as in nanoGPT.
        kv_cache: a list of per-layer dicts (see generate). record: a function that the eager path
        calls once per layer with {"logits", "weights", "alpha"} (see attention_maps).
        return_hidden: return only the final hidden states (B, T, n_embd), for a loss that applies
        lm_head itself, chunk by chunk (train.py), so that no (B, T, vocab) logits ever exist."""
        B, T = idx.size()
        past = 0 if kv_cache is None or "k" not in kv_cache[0] else kv_cache[0]["k"].size(2)
        if past + T > self.config.block_size:
            raise ValueError(f"cannot forward {past + T} positions, block_size is only {self.config.block_size}")
        x = self.transformer.wte(idx)
        rope = None
        if self.config.pos == "learned":
            x = x + self.transformer.wpe(torch.arange(past, past + T, dtype=torch.long, device=idx.device))
        else:
            rope = (self.rope_cos[past:past + T].to(x.dtype), self.rope_sin[past:past + T].to(x.dtype))
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, None if kv_cache is None else kv_cache[i], record)
        x = self.transformer.ln_f(x)
        if return_hidden:
            return x
        if targets is not None:
            logits = self.lm_head(x)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # a list index keeps the time dimension
            loss = None
        return logits, loss

    @torch.no_grad()
    def update_alpha_ma(self, ddp=False):
        """Eq. 9 in every affine layer, from the training forwards since the last call: call it once per
        optimizer step. ddp: first add up the ranks' gathered means, so E is the mean over the global batch
        and every rank applies the same update (all start from the same alpha_ma, so all stay equal)."""
        layers = [block.attn for block in self.transformer.h if block.attn.affine]
        if ddp and layers:
            sums = torch.stack([torch.cat([a.alpha_sum, a.alpha_count.view(1)]) for a in layers])
            torch.distributed.all_reduce(sums)  # a sum: gloo has no average
            for a, s in zip(layers, sums):
                a.alpha_sum, a.alpha_count = s[:-1].clone(), s[-1].clone()
        for a in layers:
            a.update_alpha_ma()

    @torch.no_grad()
    def attention_maps(self, idx, reduce=None):
        """Per layer, from the eager path: the pre-softmax logits QK^T / sqrt(d_k) (B, nh, T, T; -inf where
        masked), the attention weights actually applied to V (after Eq. 3 or Eq. 6), and alpha (B, nh, T, 1)
        or None; or, with reduce, what reduce returns for that dict. reduce runs before the next layer
        does, so with one that keeps no map only one layer's T x T maps exist at a time (train.py's
        attention statistics); without it every layer's are kept. Runs in eval mode, so alpha_ma is
        read, not updated."""
        was_training = self.training
        self.eval()
        out = []
        self(idx, record=lambda maps: out.append(maps if reduce is None else reduce(maps)), return_hidden=True)
        self.train(was_training)
        return out

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        # 2-D weights (matmuls, embeddings) decay; biases, norm gains and the sink logits do not
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        # fused: one kernel updates every parameter, on CUDA, MPS and CPU alike (on 2 CPU cores the main job's
        # optimizer step, gradient clipping included, takes about half the time of the unfused one)
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=True)

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops):
        """Model FLOPs utilisation as in nanoGPT (PaLM appendix B), against peak_flops (see bench.peak_flops).
        6 FLOPs per token and matmul weight (2 forward, 4 backward): every Linear, so the variants' own
        projections (the gate's and alpha's W_a) and the block's shapes (SwiGLU's three matrices, GQA's
        narrower k and v, an untied lm_head) count as they are; 12 L H Q T for Q K^T and P V over all T
        keys; the sink's extra key and feature; affine's running sum of V and alpha P V + beta (M V) (4 per
        head feature forward, twice that backward). The rest of the elementwise work is left out, as in PaLM."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        n_matmul = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        attn_Q, attn_T = (Q + 1, T + 1) if cfg.attn == "sink" else (Q, T)
        flops_per_token = 6 * n_matmul + 12 * L * H * attn_Q * attn_T
        if cfg.attn in ("affine", "affine_gated"):
            flops_per_token += 12 * L * H * Q
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens after idx (B, T), with a KV cache. top_k=1 is greedy decoding: the argmax,
        the lowest id among exactly tied logits (sampling among the tied would make it depend on the seed).
        The cache holds each layer's keys and values, which is all every variant needs (affine's beta needs
        the sum of the visible values). Beyond block_size the context is cropped to the last block_size
        tokens, as in nanoGPT; every token then has a new position, so the cache is refilled from the
        cropped context."""
        was_training = self.training
        self.eval()  # sampling must never update alpha_ma
        kv_cache = None
        for _ in range(max_new_tokens):
            if kv_cache is None or idx.size(1) > self.config.block_size:
                kv_cache = [{} for _ in self.transformer.h]
                logits, _ = self(idx[:, -self.config.block_size:], kv_cache=kv_cache)
            else:
                logits, _ = self(idx[:, -1:], kv_cache=kv_cache)
            logits = logits[:, -1, :] / temperature
            if top_k == 1:
                idx_next = logits.argmax(dim=-1, keepdim=True)
            else:
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        self.train(was_training)
        return idx


def param_overhead(config):
    """(parameters of this config, extra parameters over the softmax model of the same shape).
    Built on the meta device, so even billion-parameter shapes cost no memory."""
    with torch.device("meta"):
        n = GPT(config).get_num_params(non_embedding=False)
        n_softmax = GPT(GPTConfig(**{**config.__dict__, "attn": "softmax"})).get_num_params(non_embedding=False)
    return n, n - n_softmax


# The paper's three students (Tables 1-2), as their Hugging Face config.json files give them.
LLAMA_BLOCK = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
LLAMA3_ROPE = dict(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
PAPER_SHAPES = {
    "Qwen1.5-0.5B": dict(n_layer=24, n_head=16, n_kv_head=16, n_embd=1024, mlp_hidden=2816, vocab_size=151936,
                         block_size=32768, rope_theta=1000000.0, norm_eps=1e-6, qkv_bias=True, tie_embeddings=False,
                         **LLAMA_BLOCK),
    "LLaMA-3.2-1B": dict(n_layer=16, n_head=32, n_kv_head=8, n_embd=2048, mlp_hidden=8192, vocab_size=128256,
                         block_size=131072, tie_embeddings=True, **LLAMA3_ROPE, **LLAMA_BLOCK),
    "LLaMA-3.2-3B": dict(n_layer=28, n_head=24, n_kv_head=8, n_embd=3072, mlp_hidden=8192, vocab_size=128256,
                         block_size=131072, tie_embeddings=True, **LLAMA3_ROPE, **LLAMA_BLOCK),
}


def overhead_table():
    """Markdown table of total parameters and Delta-Params (millions) of every variant on the paper's students."""
    lines = ["| student | parameters | " + " | ".join(f"Delta {a}" for a in ATTN_VARIANTS[1:]) + " |",
             "|---" * len(ATTN_VARIANTS) + "|---|"]
    for name, shape in PAPER_SHAPES.items():
        total = param_overhead(GPTConfig(**shape))[0]
        deltas = [param_overhead(GPTConfig(**shape, attn=a))[1] / 1e6 for a in ATTN_VARIANTS[1:]]
        lines.append(f"| {name} | {total / 1e6:,.1f}M | " + " | ".join(f"{d:.2f}M" for d in deltas) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("Parameters and Delta-Params over softmax attention of the paper's students (paper Tables 1-2: sink 0.0;")
    print("affine 0.4 / 1.0 / 2.1 M; gated 67.1 / 264.2 M and affine_gated 68.2 / 266.3 M for 1B / 3B)")
    print(overhead_table())
