"""
Hugging Face models, through transformers (an optional package): the weights of a pretrained GPT-2, LLaMA
or Qwen2 converted into model.py's GPT (load_gpt), and any causal LM as a distillation teacher (HFTeacher).
Nothing here runs code shipped with a model (trust_remote_code=False, and auto_map refused).
"""

import os
import re

import torch

from configurator import ConfigError, first_line
from model import GPT, GPTConfig
from tokenizer import check_hub, hf_meta, hf_tokenizer, hub_offline, refuse_custom_code

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_NAME = re.compile(r"\w[\w.-]*/\w[\w.-]*")  # a hub name is organisation/model; older ones have no organisation


def hf_load_error(name, setting, e):
    hint = " (HF_HUB_OFFLINE is set: is it in the Hugging Face cache?)" if hub_offline() and not os.path.isdir(name) else ""
    return ConfigError(f"{setting}={name!r} could not be loaded as a Hugging Face model{hint}: {first_line(e)}")


def hf_config(name, setting):
    """The transformers config of a Hugging Face causal LM, a local directory or a hub name, for a name that is
    no checkpoint of train.py (checkpoint.find_model looked first); anything else is an error saying what would do."""
    if os.path.isdir(name) and not os.path.isfile(os.path.join(name, "config.json")):
        raise ConfigError(f"{setting}={name!r} is a directory with neither a checkpoint of train.py (best.pt, "
                          f"ckpt.pt) nor a Hugging Face model (config.json)")
    if not os.path.isdir(name) and not (name in GPT2_NAMES or HUB_NAME.fullmatch(name)):
        raise ConfigError(f"{setting}={name!r} is no file or directory: expected a checkpoint of train.py, an out_dir "
                          f"holding one, or a Hugging Face model: a local directory or a hub name (gpt2-medium, "
                          f"Qwen/Qwen1.5-1.8B, ...)")
    check_hub(name, setting)
    try:
        from transformers import AutoConfig, PretrainedConfig
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
    except ImportError:
        raise ImportError("Hugging Face models need the optional package transformers: pip install transformers") from None
    try:
        config_json, _ = PretrainedConfig.get_config_dict(name)  # config.json as it is: reading it runs nothing
        refuse_custom_code(name, setting, config_json, "config.json")
        model_type = config_json.get("model_type")
        if model_type is not None and model_type not in CONFIG_MAPPING:
            raise ConfigError(f"{setting}={name!r} has model_type={model_type!r}, which transformers does not implement: "
                              f"it would need code shipped with the model, and such code is never run here")
        config = AutoConfig.from_pretrained(name, trust_remote_code=False)
    except ConfigError:
        raise
    except (OSError, ValueError) as e:  # not in the cache (offline), no such model, a bad config.json
        raise hf_load_error(name, setting, e) from None
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ConfigError(f"{setting}={name!r} is a Hugging Face {config.model_type!r} model, not a causal LM "
                          f"(AutoModelForCausalLM cannot load it)")
    return config


def pretrained_meta(name, config, setting):
    """The meta of a pretrained model's tokenizer: GPT-2's BPE for GPT-2 weights (our GPT-2 data is
    tokenized by tiktoken), else the Hugging Face tokenizer saved with the model."""
    if config.model_type == "gpt2":
        return {"vocab_size": config.vocab_size, "encoding": "gpt2"}
    return hf_meta(hf_tokenizer(name, setting), name)


# --------------------------------------------------------------------------------------------------
# GPT-2, LLaMA and Qwen2 weights in model.py's GPT


def load_gpt(name_or_dir, **overrides):
    """The weights of a Hugging Face GPT-2, LLaMA or Qwen2 causal LM: a hub name (gpt2, Qwen/Qwen1.5-0.5B,
    meta-llama/Llama-3.2-1B, ...) or a local directory written by save_pretrained (works offline).
    overrides set other GPTConfig fields (attn, fused, dropout, ...; block_size too for RoPE models); a
    non-softmax attn keeps its extra parameters at their initial values."""
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        raise ImportError("loading pretrained weights needs the optional package transformers: "
                          "pip install transformers") from None
    hf = AutoModelForCausalLM.from_pretrained(name_or_dir, trust_remote_code=False).float()  # never code shipped with it
    shape = hf_shape(hf.config)
    fixed = set(shape) - ({"block_size"} if shape.get("pos") == "rope" else set())
    for key in fixed & set(overrides):
        raise ValueError(f"{key} comes from the checkpoint {name_or_dir!r} and cannot be overridden")
    model = GPT(GPTConfig(**{**shape, **overrides}))
    sd_hf = hf.state_dict()
    ours = gpt2_state(sd_hf) if hf.config.model_type == "gpt2" else llama_state(sd_hf, model.config.n_layer)
    sd = model.state_dict()
    new = ("attn.sink", "attn.c_gate.", "attn.c_alpha.", "attn.alpha_ma")  # the variants' own, left at init
    if model.config.tie_embeddings:
        ours.pop("lm_head.weight", None)  # the same tensor as wte's
        new += ("lm_head.weight",)
    unfilled = [k for k in sd if k not in ours and not any(n in k for n in new)]
    if unfilled:
        raise ValueError(f"{name_or_dir!r} has no weights for {', '.join(unfilled[:3])}")
    for key, value in ours.items():
        sd[key].copy_(value)
    return model


def hf_shape(hc):
    """The GPTConfig fields of a transformers config of GPT-2, LLaMA or Qwen2."""
    if hc.model_type == "gpt2":
        return dict(n_layer=hc.n_layer, n_head=hc.n_head, n_embd=hc.n_embd, block_size=hc.n_positions,
                    vocab_size=hc.vocab_size, bias=True, norm_eps=hc.layer_norm_epsilon)
    if hc.model_type not in ("llama", "qwen2"):
        raise ValueError(f"model_type={hc.model_type!r} is not a GPT-2, LLaMA or Qwen2 checkpoint")
    head_dim = getattr(hc, "head_dim", None) or hc.hidden_size // hc.num_attention_heads
    if head_dim * hc.num_attention_heads != hc.hidden_size or hc.hidden_act != "silu" or getattr(hc, "mlp_bias", False) \
            or getattr(hc, "use_sliding_window", False) or (hc.model_type == "llama" and hc.attention_bias):
        raise ValueError(f"this {hc.model_type} checkpoint has a head_dim, activation, bias or sliding window "
                         f"that the LLaMA / Qwen2 block of model.py does not have")
    # transformers 5 keeps theta and LLaMA-3's scaling in rope_parameters, 4.x in rope_theta and rope_scaling
    rope = dict(getattr(hc, "rope_parameters", None) or getattr(hc, "rope_scaling", None) or {})
    theta = rope.pop("rope_theta", None) or getattr(hc, "rope_theta", 10000.0)
    scaled = rope.get("rope_type", rope.get("type")) not in (None, "default")
    return dict(n_layer=hc.num_hidden_layers, n_head=hc.num_attention_heads, n_kv_head=hc.num_key_value_heads,
                n_embd=hc.hidden_size, block_size=hc.max_position_embeddings, vocab_size=hc.vocab_size, bias=False,
                qkv_bias=hc.model_type == "qwen2", pos="rope", rope_theta=float(theta),
                rope_scaling=rope if scaled else None, norm="rmsnorm", norm_eps=hc.rms_norm_eps, mlp="swiglu",
                mlp_hidden=hc.intermediate_size, tie_embeddings=hc.tie_word_embeddings)


def gpt2_state(sd_hf):
    """Our names are GPT-2's; it stores four matmuls as Conv1D (in, out), where nn.Linear wants (out, in)."""
    transposed = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    return {k: v.t() if k.endswith(transposed) else v for k, v in sd_hf.items()
            if not k.endswith((".attn.masked_bias", ".attn.bias"))}  # causal-mask buffers of older versions


def llama_state(sd_hf, n_layer):
    """LLaMA / Qwen2 names to ours: q, k, v stacked into c_attn, SwiGLU's gate and up into c_fc."""
    ours = {"transformer.wte.weight": sd_hf["model.embed_tokens.weight"],
            "transformer.ln_f.weight": sd_hf["model.norm.weight"]}
    if "lm_head.weight" in sd_hf:
        ours["lm_head.weight"] = sd_hf["lm_head.weight"]
    for i in range(n_layer):
        hf, h = f"model.layers.{i}.", f"transformer.h.{i}."
        ours[h + "ln_1.weight"] = sd_hf[hf + "input_layernorm.weight"]
        ours[h + "ln_2.weight"] = sd_hf[hf + "post_attention_layernorm.weight"]
        for kind in ("weight", "bias"):
            if hf + f"self_attn.q_proj.{kind}" in sd_hf:
                ours[h + f"attn.c_attn.{kind}"] = torch.cat([sd_hf[hf + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
        ours[h + "attn.c_proj.weight"] = sd_hf[hf + "self_attn.o_proj.weight"]
        ours[h + "mlp.c_fc.weight"] = torch.cat([sd_hf[hf + "mlp.gate_proj.weight"], sd_hf[hf + "mlp.up_proj.weight"]])
        ours[h + "mlp.c_proj.weight"] = sd_hf[hf + "mlp.down_proj.weight"]
    return ours


# --------------------------------------------------------------------------------------------------
# any causal LM as a teacher


class HFTeacher(torch.nn.Module):
    """A Hugging Face causal LM called as train.py calls our GPT: teacher(idx) is the logits at every
    position; teacher(idx, return_hidden=True) the last hidden states, for lm_head to project chunk by
    chunk (the logits of a 152k vocabulary are 0.6 MB per token in fp32)."""

    def __init__(self, hf):
        super().__init__()
        self.body = hf.base_model  # the decoder stack, final norm included
        self.lm_head = hf.get_output_embeddings()

    def forward(self, idx, return_hidden=False):
        h = self.body(input_ids=idx, use_cache=False).last_hidden_state
        return h if return_hidden else self.lm_head(h)


def load_hf_teacher(name, device):
    """A Hugging Face causal LM as an HFTeacher, in bf16 on CUDA and fp32 elsewhere."""
    from transformers import AutoModelForCausalLM
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    hf = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, trust_remote_code=False).to(device).eval()
    teacher = HFTeacher(hf)
    # the chunked loss needs logits = lm_head(last hidden state); a model that post-processes them (soft-capping,
    # scaling) would silently teach other targets
    probe = torch.arange(8, device=device)[None]
    with torch.no_grad():
        if not torch.allclose(teacher(probe).float(), hf(probe).logits.float(), rtol=1e-3, atol=1e-3):
            raise ConfigError(f"teacher {name!r} computes its logits otherwise than lm_head(last hidden state); "
                              f"the KD loss here cannot use it")
    n_params = sum(p.numel() for p in hf.parameters())
    print(f"teacher: loaded the pretrained {name} ({n_params / 1e6:.1f}M parameters, {str(dtype).removeprefix('torch.')})")
    return teacher
