"""
Sample from a model trained by train.py or from GPT-2.

    python sample.py --init_from=out-shakespeare-char-cpu --start="ROMEO:" --num_samples=3
    python sample.py --init_from=gpt2 --start=FILE:prompt.txt --max_new_tokens=100

An out_dir stands for its best.pt (the lowest val loss); the script says which file it loaded.
Settings are the fields of SampleConfig, given as in train.py (config files and --key=value overrides).
"""

import os
import sys
from dataclasses import dataclass

import torch

from checkpoint import load_model
from configurator import ConfigError, check_types, cpu_threads, load_config
from dataloader import read_text
from tokenizer import get_tokenizer


@dataclass
class SampleConfig:
    init_from: str = "out"  # an out_dir (its best.pt), a checkpoint file, or GPT-2: gpt2, gpt2-medium, ... or a local directory
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


def sample(cfg):
    """num_samples texts, each the prompt followed by max_new_tokens sampled tokens."""
    start = cfg.start  # a prompt file first: a bad one fails before the model loads
    if start.startswith("FILE:"):
        if not os.path.isfile(start[len("FILE:"):]):
            raise ConfigError(f"start={start!r}: there is no file {start[len('FILE:'):]!r}")
        start = read_text(start[len("FILE:"):], "start", start)
    model, meta, _ = load_model(cfg.init_from, cfg.device)
    cpu_threads(model, cfg.device)
    encode, decode = get_tokenizer(meta)
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
