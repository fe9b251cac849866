"""
Prepare the Shakespeare corpus with the GPT-2 BPE tokenizer (tiktoken): save train.bin, val.bin
(np.uint16 ids) and meta.pkl (vocab_size and the tiktoken encoding's name, for decoding later)
next to this script.

    python data/shakespeare/prepare.py                 # the corpus committed in data/shakespeare/input.txt
    python data/shakespeare/prepare.py path/to/any.txt # or any other text file (UTF-8)

Offline, point TIKTOKEN_CACHE_DIR at a folder that holds the GPT-2 BPE ranks file.
"""
import os
import pickle
import sys

import numpy as np
import tiktoken

HERE = os.path.dirname(os.path.abspath(__file__))  # so it runs from the repo root or from this folder
DEFAULT_INPUT = os.path.join(HERE, "input.txt")
# "r50k_base" is tiktoken's other name for the GPT-2 BPE: same ranks, same token ids as "gpt2".
# It is the name that loads from a cached ranks file without network; "gpt2" also fetches the
# (unused) vocab.bpe/encoder.json pair and so fails offline.
ENCODING = "r50k_base"

def main(input_path=None, out_dir=HERE):
    with open(input_path or DEFAULT_INPUT, "r", encoding="utf-8") as f:
        data = f.read()
    print(f"length of dataset in characters: {len(data):,}")

    # the first 90% trains, the last 10% validates
    n = len(data)
    train_data = data[: int(n * 0.9)]
    val_data = data[int(n * 0.9):]

    # encode with tiktoken gpt2 bpe; encode_ordinary: text that looks like <|endoftext|> stays text
    enc = tiktoken.get_encoding(ENCODING)
    train_ids = np.array(enc.encode_ordinary(train_data), dtype=np.uint16)  # 50257 ids fit in uint16
    val_ids = np.array(enc.encode_ordinary(val_data), dtype=np.uint16)
    print(f"train has {len(train_ids):,} tokens")
    print(f"val has {len(val_ids):,} tokens")

    os.makedirs(out_dir, exist_ok=True)
    train_ids.tofile(os.path.join(out_dir, "train.bin"))
    val_ids.tofile(os.path.join(out_dir, "val.bin"))
    meta = {"vocab_size": enc.n_vocab, "encoding": ENCODING}
    with open(os.path.join(out_dir, "meta.pkl"), "wb") as f:
        pickle.dump(meta, f)
    return meta

if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
