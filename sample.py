"""
Sample from a model trained by train.py or from GPT-2.

    python sample.py --init_from=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=3
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --max_new_tokens=100

Settings are the fields of SampleConfig, given as in train.py (config files and --key=value overrides).
"""

import sys
from dataclasses import dataclass

import torch

from train import GPT2_ENCODINGS, ConfigError, check_types, load_config, load_pretrained


@dataclass
class SampleConfig:
    init_from: str = "out"  # an out_dir, a ckpt.pt, or GPT-2: gpt2, gpt2-medium, ... or a local directory
    start: str = "\n"  # the prompt, or FILE:path to read it from a file
    num_samples: int = 10
    max_new_tokens: int = 500
    temperature: float = 0.8  # < 1 sharpens the distribution, > 1 flattens it
    top_k: int = 200  # sample among the k most likely tokens only; 0 keeps them all
    seed: int = 1337
    device: str = "cuda" if torch.cuda.is_available() else "cpu"

    def __post_init__(self):
        check_types(self)
        for name in ("num_samples", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        if self.temperature <= 0:
            raise ConfigError(f"temperature={self.temperature} must be positive")
        if self.top_k < 0:
            raise ConfigError(f"top_k={self.top_k} must be 0 (off) or positive")


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. "gpt2" downloads its files; "r50k_base" has the same token ids and also
    loads offline from a TIKTOKEN_CACHE_DIR holding its ranks file."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # no network, or no cached files for this name: try the other one
        return tiktoken.get_encoding("r50k_base")


def tokenizer(meta):
    """(encode, decode) for a model's meta: its characters, or a tiktoken BPE (GPT-2's without meta)."""
    if meta is not None and "stoi" in meta:
        stoi, itos = meta["stoi"], meta["itos"]

        def encode(text):
            unknown = sorted(set(text) - set(stoi))
            if unknown:
                raise ConfigError(f"the prompt has characters not in the model's vocabulary: {', '.join(map(repr, unknown))}")
            return [stoi[c] for c in text]

        return encode, lambda ids: "".join(itos[i] for i in ids)
    name = "gpt2" if meta is None else meta["encoding"]
    if name in GPT2_ENCODINGS:
        enc = gpt2_encoding()
    else:
        import tiktoken
        enc = tiktoken.get_encoding(name)
    return (lambda text: enc.encode(text, allowed_special={"<|endoftext|>"})), enc.decode


def sample(cfg):
    """num_samples texts, each the prompt followed by max_new_tokens sampled tokens."""
    model, meta = load_pretrained(cfg.init_from, cfg.device)
    encode, decode = tokenizer(meta)
    start = cfg.start
    if start.startswith("FILE:"):
        with open(start[len("FILE:"):], encoding="utf-8") as f:
            start = f.read()
    ids = encode(start)
    if not ids:
        raise ConfigError("start is empty: generation needs at least one token to start from")
    x = torch.tensor(ids, dtype=torch.long, device=cfg.device)[None, :]
    torch.manual_seed(cfg.seed)
    texts = []
    for _ in range(cfg.num_samples):
        y = model.generate(x, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k or None)
        texts.append(decode(y[0].tolist()))
    return texts


if __name__ == "__main__":
    try:
        texts = sample(load_config(sys.argv[1:], SampleConfig))
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
    for text in texts:
        print(text)
        print("---------------")
