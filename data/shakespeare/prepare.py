"""
Prepare the Shakespeare corpus with a BPE tokenizer, GPT-2's by default: save train.bin, val.bin
(token ids, uint16 if the vocabulary fits, else uint32) and meta.json (which tokenizer, vocab_size and
dtype, for training and decoding later) in --out_dir, by default next to this script.

    python data/shakespeare/prepare.py                         # the corpus committed in data/shakespeare/input.txt
    python data/shakespeare/prepare.py --input=path/to/any.txt # or any other text file (UTF-8)
    python data/shakespeare/prepare.py --tokenizer=Qwen/Qwen2.5-0.5B --out_dir=data/shakespeare_qwen

--tokenizer is a tiktoken encoding (gpt2, cl100k_base, ...) or a Hugging Face tokenizer's hub name or
local directory. Offline, point TIKTOKEN_CACHE_DIR at a folder that holds the GPT-2 BPE ranks file.
"""
import os
import sys
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))  # so it runs from the repo root or from this folder
sys.path.insert(0, os.path.join(HERE, os.pardir, os.pardir))  # the shared modules, at the repo root
from configurator import ConfigError, load_config
from dataloader import read_text, write_data
from tokenizer import open_tokenizer

DEFAULT_INPUT = os.path.join(HERE, "input.txt")
# "r50k_base" is tiktoken's other name for the GPT-2 BPE: same ranks, same token ids as "gpt2".
# It is the name that loads from a cached ranks file without network; "gpt2" also fetches the
# (unused) vocab.bpe/encoder.json pair and so fails offline.
ENCODING = "r50k_base"


@dataclass
class PrepareConfig:
    input: str = ""  # a UTF-8 text file; "": the embedded corpus, data/shakespeare/input.txt
    tokenizer: str = ENCODING  # a tiktoken encoding or a Hugging Face tokenizer (hub name or directory)
    out_dir: str = ""  # "": this script's folder, data/shakespeare


def main(input_path=None, out_dir=HERE, tokenizer=ENCODING):
    data = read_text(input_path or DEFAULT_INPUT)
    print(f"length of dataset in characters: {len(data):,}")
    meta, encode_batch, _ = open_tokenizer(tokenizer)
    # the first 90% trains, the last 10% validates; special-token text such as <|endoftext|> stays text
    n = len(data)
    splits = {"train": encode_batch([data[: int(n * 0.9)]]), "val": encode_batch([data[int(n * 0.9):]])}
    return write_data(out_dir, splits, meta)


if __name__ == "__main__":
    try:
        cfg = load_config(sys.argv[1:], PrepareConfig)
        main(cfg.input or None, cfg.out_dir or HERE, cfg.tokenizer)
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
