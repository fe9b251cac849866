"""
A GPT-2-style decoder with switchable attention, written to be read next to the paper
"Affine-Scaled Attention: Towards Flexible and Stable Transformer Attention" (Bae et al., arXiv 2602.23057).

config.attn picks the attention:
  softmax       Eq. 1   the baseline
  sink          Eq. 3   GPT-OSS: a learnable per-head logit s in the softmax denominator
  gated         Eq. 4-5 Qwen's elementwise sigmoid gate on the attention output
  affine        Eq. 6-9, 11  the paper: alpha(X) * softmax + beta(X)
  affine_gated  both, the paper's Table 2

Every variant has two paths that compute the same function, forward and backward:
  config.fused=False  the eager reference: explicit T x T weights, line by line the paper's equations
  config.fused=True   F.scaled_dot_product_attention, never a T x T matrix in our code
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

ATTN_VARIANTS = ("softmax", "sink", "gated", "affine", "affine_gated")
AFFINE_N = ("prefix", "context")


@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # bias in Linears and LayerNorms, like GPT-2
    attn: str = "softmax"  # one of ATTN_VARIANTS
    fused: bool = True  # True: F.scaled_dot_product_attention; False: the eager reference
    affine_momentum: float = 0.9  # rho of Eq. 9 (the paper uses 0.9 throughout)
    affine_n: str = "prefix"  # N of Eq. 8: "prefix" = keys this query sees, "context" = block_size

    def __post_init__(self):
        if self.attn not in ATTN_VARIANTS:
            raise ValueError(f"unknown attn={self.attn!r}; allowed: {', '.join(ATTN_VARIANTS)}")
        if self.affine_n not in AFFINE_N:
            raise ValueError(f"unknown affine_n={self.affine_n!r}; allowed: {', '.join(AFFINE_N)}")
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must be in [0, 1)")
        if not 0.0 <= self.affine_momentum <= 1.0:
            raise ValueError(f"affine_momentum={self.affine_momentum!r} must be in [0, 1] (rho of Eq. 9)")


def linear_clipping(x):
    """phi of Eq. 7, the paper's Eq. 11: 0 for x <= -5, 0.1 x + 0.5 in between, 1 for x >= 5.
    Unlike a sigmoid its slope stays 0.1 over the whole middle range, so alpha does not saturate
    at 0 or 1 and intermediate scales stay reachable (paper section 6)."""
    return torch.clamp(0.1 * x + 0.5, 0.0, 1.0)


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
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.head_size = config.n_embd // config.n_head
        self.block_size = config.block_size
        self.dropout = config.dropout
        self.fused = config.fused
        self.attn = config.attn
        self.affine = config.attn in ("affine", "affine_gated")
        self.gated = config.attn in ("gated", "affine_gated")
        self.affine_n = config.affine_n
        self.rho = config.affine_momentum
        # query, key, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
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

    def forward(self, x, kv=None, record=None):
        """x: (B, T, C). kv: this layer's KV cache, a dict filled in place (generation).
        record: a list; if given, the eager path runs and appends this layer's logits, weights, alpha."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if kv is not None:  # generation: prepend the cached keys and values of earlier tokens
            if "k" in kv:
                k, v = torch.cat([kv["k"], k], dim=2), torch.cat([kv["v"], v], dim=2)
            kv["k"], kv["v"] = k, v
        S = k.size(2)  # number of keys; queries are the last T of the S positions
        if T > 1 and S != T:
            raise ValueError(f"a KV cache takes one token at a time once filled, got {T} new tokens after {S - T}")

        alpha = beta = None
        if self.affine:
            # Eq. 7: alpha(X) = phi(W_a X), one scale per token and head
            alpha = linear_clipping(self.c_alpha(x)).transpose(1, 2).unsqueeze(-1)  # (B, nh, T, 1)
            # Eq. 8: beta = (alpha_ma - alpha) / N. N is the number of keys the weights are spread over.
            if self.affine_n == "prefix":
                N = torch.arange(S - T + 1, S + 1, device=x.device, dtype=alpha.dtype).view(T, 1)
            else:
                N = self.block_size
            alpha_ma = self.alpha_ma  # the value before this batch: beta must not see the batch
            if self.training:
                # Eq. 9: alpha_ma,t = rho alpha_ma,t-1 + (1 - rho) E[alpha_t(X)], E = mean over batch and
                # positions. beta below uses the value from before the update, so no batch leaks into its
                # own outputs (nor, through the batch mean, a later position into an earlier one). The new
                # value is a new tensor, not an in-place update: under torch.compile, AOTAutograd may
                # recompute beta in the backward from the buffer it read, which must still hold the old value.
                self.alpha_ma = torch.lerp(alpha_ma, alpha.detach().mean(dim=(0, 2, 3), dtype=alpha_ma.dtype), 1.0 - self.rho)
            beta = (alpha_ma.view(-1, 1, 1).to(alpha.dtype) - alpha) / N  # (B, nh, T, 1)

        if self.fused and record is None:
            y = self._fused(q, k, v, alpha, beta)
        else:
            y = self._eager(q, k, v, alpha, beta, record)

        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        if self.gated:
            y = y * torch.sigmoid(self.c_gate(x))  # Eq. 4-5: G(X) = sigmoid(W_a X), elementwise
        return self.resid_dropout(self.c_proj(y))

    def _eager(self, q, k, v, alpha, beta, record):
        """The reference: explicit (T, S) weights, one paper equation per line."""
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
            record.append({"logits": logits, "weights": weights, "alpha": alpha})
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
            B, nh, hs = q.size(0), self.n_head, self.head_size
            sink_k = F.pad((self.sink * math.sqrt(hs)).to(k.dtype).view(1, nh, 1, 1), (hs, 0)).expand(B, nh, 1, hs + 1)
            k = torch.cat([sink_k, F.pad(k, (0, 1))], dim=2)
            v = F.pad(v, (0, 1, 1, 0))  # zero value for the sink (and a zero feature to match q and k)
            q = F.pad(q, (0, 1), value=1.0)
            if causal:
                q = F.pad(q, (0, 0, 1, 0))
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
            y = y[:, :, 1:, :hs] if causal else y[..., :hs]
        else:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale)
        if self.affine:
            # Eq. 6 without the T x T matrix: (alpha P + beta M) V = alpha (P V) + beta (M V), where M is the
            # causal mask, so M V is the running sum of the visible values (summed in fp32 for bf16 runs).
            v_visible_sum = v.cumsum(dim=2, dtype=torch.float32)[:, :, S - T:].to(v.dtype)
            y = alpha * y + beta * v_visible_sum
        return y


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's own GELU, so GPT-2 weights give GPT-2's logits
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, kv=None, record=None):
        x = x + self.attn(self.ln_1(x), kv, record)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
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
        """Parameter count; position embeddings are left out by default, as in nanoGPT (the token
        embeddings count, since they are tied to lm_head)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx, targets=None, kv_cache=None, record=None, return_hidden=False):
        """idx: (B, T) token ids. Returns (logits, loss): logits of every position when targets are
        given, else of the last position only (all that sampling needs), as in nanoGPT.
        kv_cache: a list of per-layer dicts (see generate). record: a list to which the eager path
        appends, per layer, {"logits", "weights", "alpha"} (see attention_maps).
        return_hidden: return only the final hidden states (B, T, n_embd), for a loss that applies
        lm_head itself, chunk by chunk (train.py), so that no (B, T, vocab) logits ever exist."""
        B, T = idx.size()
        past = 0 if kv_cache is None or "k" not in kv_cache[0] else kv_cache[0]["k"].size(2)
        if past + T > self.config.block_size:
            raise ValueError(f"cannot forward {past + T} positions, block_size is only {self.config.block_size}")
        pos = torch.arange(past, past + T, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if kv_cache is None else kv_cache[i], record)
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
    def attention_maps(self, idx):
        """Per layer, from the eager path: the pre-softmax logits (B, nh, T, T; -inf where masked), the
        attention weights actually applied to V (after Eq. 3 or Eq. 6), and alpha (B, nh, T, 1) or None.
        Runs in eval mode, so alpha_ma is read, not updated."""
        was_training = self.training
        self.eval()
        record = []
        self(idx, targets=idx, record=record)  # targets only to get every position through the model
        self.train(was_training)
        return record

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # 2-D weights (matmuls, embeddings) decay; biases, LayerNorm gains and the sink logits do not
        decay = [p for p in self.parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")

    def estimate_mfu(self, fwdbwd_per_iter, dt, peak_flops=989e12):
        """Model FLOPs utilisation as in nanoGPT (PaLM appendix B), by default against an H100's bf16 peak."""
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * self.get_num_params() + 12 * L * H * Q * T
        return flops_per_token * T * fwdbwd_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens after idx (B, T), with a KV cache. The cache holds each layer's keys and
        values, which is all every variant needs (affine's beta needs the sum of the visible values).
        Beyond block_size the context is cropped to the last block_size tokens, as in nanoGPT; with
        learned positions every token then moves, so the cache is refilled from the cropped context."""
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
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        self.train(was_training)
        return idx

    @classmethod
    def from_pretrained(cls, name_or_dir, **overrides):
        """GPT-2 weights through transformers: a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl) or a
        local directory written by save_pretrained (works offline). overrides set other GPTConfig fields
        (attn, fused, dropout, ...); a non-softmax attn keeps its extra parameters at their initial values."""
        try:
            from transformers import GPT2LMHeadModel
        except ImportError:
            raise ImportError("loading GPT-2 weights needs the optional package transformers: pip install transformers") from None
        hf = GPT2LMHeadModel.from_pretrained(name_or_dir)
        hc = hf.config
        for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias"):
            if key in overrides:
                raise ValueError(f"{key} comes from the checkpoint {name_or_dir!r} and cannot be overridden")
        config = GPTConfig(n_layer=hc.n_layer, n_head=hc.n_head, n_embd=hc.n_embd, block_size=hc.n_positions,
                           vocab_size=hc.vocab_size, bias=True, **overrides)
        model = cls(config)
        sd = model.state_dict()
        sd_hf = hf.state_dict()
        # GPT-2 stores these four as Conv1D (in, out); nn.Linear wants (out, in)
        transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
        for key, value in sd_hf.items():
            if key.endswith((".attn.masked_bias", ".attn.bias")) or key not in sd:
                continue  # causal-mask buffers of older transformers versions
            sd[key].copy_(value.t() if key.endswith(transposed) else value)
        return model


def param_overhead(config):
    """(parameters of this config, extra parameters over the softmax model of the same shape).
    Built on the meta device, so even billion-parameter shapes cost no memory."""
    with torch.device("meta"):
        n = GPT(config).get_num_params(non_embedding=False)
        n_softmax = GPT(GPTConfig(**{**config.__dict__, "attn": "softmax"})).get_num_params(non_embedding=False)
    return n, n - n_softmax


# the paper's three student shapes (Tables 1-2); bias=False like those models' projections
PAPER_SHAPES = {
    "Qwen1.5-0.5B": dict(n_layer=24, n_head=16, n_embd=1024),
    "LLaMA-3.2-1B": dict(n_layer=16, n_head=32, n_embd=2048),
    "LLaMA-3.2-3B": dict(n_layer=28, n_head=24, n_embd=3072),
}


def overhead_table():
    """Markdown table of Delta-Params (millions) for every variant on the paper's student shapes."""
    lines = ["| shape | " + " | ".join(ATTN_VARIANTS) + " |", "|---" * (len(ATTN_VARIANTS) + 1) + "|"]
    for name, shape in PAPER_SHAPES.items():
        deltas = [param_overhead(GPTConfig(**shape, attn=a, bias=False))[1] / 1e6 for a in ATTN_VARIANTS]
        lines.append(f"| {name} | " + " | ".join(f"{d:.2f}M" for d in deltas) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("Delta-Params over softmax attention (paper Tables 1-2: sink 0.0; affine 0.4 / 1.0 / 2.1 M;")
    print("gated 67.1 / 264.2 M and affine_gated 68.2 / 266.3 M for 1B / 3B)")
    print(overhead_table())
