"""
Streams the first --num_tokens tokens of FineWeb-Edu (HuggingFaceFW/fineweb-edu, a sample config)
and tokenises them with the GPT-2 BPE: saves train.bin, val.bin (np.uint16 ids) and meta.pkl
(vocab_size and the tiktoken encoding's name) in --out_dir. Streaming means only what is used is
downloaded, not the whole 10BT sample. Needs network and the datasets package:

    pip install datasets
    python data/fineweb_edu/prepare.py --num_tokens 100_000_000

The first --val_tokens tokens of the stream become val.bin, the rest train.bin. A fixed number (not a
fraction) keeps the val set the same whatever --num_tokens is, so losses stay comparable.
"""
import argparse
import os
import pickle

import numpy as np
import tiktoken
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
# "r50k_base" is tiktoken's other name for the GPT-2 BPE: same ranks, same token ids as "gpt2",
# and it loads from a cached ranks file without network (TIKTOKEN_CACHE_DIR)
ENCODING = "r50k_base"

def encode_docs(docs, enc, batch_size=256):
    """Yields the token ids of each document, each preceded by the <|endoftext|> token (like nanoGPT's
    openwebtext); batches go through tiktoken's threaded encoder, much faster than one by one."""
    def encode(batch):
        for ids in enc.encode_ordinary_batch(batch):
            yield [enc.eot_token] + ids
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == batch_size:
            yield from encode(batch)
            batch = []
    if batch:
        yield from encode(batch)

def write_bins(docs, out_dir, num_tokens, val_tokens, enc, encoding=ENCODING):
    """Tokenises an iterable of text documents into out_dir/val.bin (the first val_tokens tokens)
    and out_dir/train.bin (the next num_tokens - val_tokens), stopping once num_tokens are written.
    The document that fills val.bin is cut there and the rest of it dropped, so no document is in
    both splits; the last one of train.bin is cut too. If docs run out first, the files are shorter.
    Returns the number of tokens written to each split."""
    assert 0 < val_tokens < num_tokens, "need 0 < val_tokens < num_tokens"
    assert enc.n_vocab <= 2**16, "token ids must fit in uint16"
    os.makedirs(out_dir, exist_ok=True)
    token_lists = encode_docs(docs, enc)  # one iterator: train carries on where val stopped
    written = {}
    with tqdm(total=num_tokens, unit="tok", unit_scale=True) as pbar:
        for split, size in (("val", val_tokens), ("train", num_tokens - val_tokens)):
            path = os.path.join(out_dir, f"{split}.bin")
            # a memmap of the final size: fill it as the stream comes, nothing big held in memory
            arr = np.memmap(path, dtype=np.uint16, mode="w+", shape=(size,))
            n = 0
            for ids in token_lists:
                take = min(len(ids), size - n)
                arr[n : n + take] = ids[:take]
                n += take
                pbar.update(take)
                if n == size:
                    break
            arr.flush()
            del arr
            if n < size:  # the stream ran out: drop the unwritten tail of the file
                os.truncate(path, n * np.dtype(np.uint16).itemsize)
            written[split] = n
    meta = {"vocab_size": enc.n_vocab, "encoding": encoding}
    with open(os.path.join(out_dir, "meta.pkl"), "wb") as f:
        pickle.dump(meta, f)
    print(f"train has {written['train']:,} tokens")
    print(f"val has {written['val']:,} tokens")
    return written

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_tokens", type=int, default=100_000_000, help="tokens in train.bin + val.bin")
    parser.add_argument("--val_tokens", type=int, default=1_000_000, help="tokens in val.bin, taken first")
    parser.add_argument("--config", default="sample-10BT", help="FineWeb-Edu config (sample-10BT, sample-100BT, ...)")
    parser.add_argument("--out_dir", default=HERE)
    args = parser.parse_args(argv)
    try:
        # imported here, not at the top: it is optional, only this script needs it
        from datasets import load_dataset
    except ImportError:
        raise SystemExit("this script needs the datasets package: pip install datasets")
    ds = load_dataset("HuggingFaceFW/fineweb-edu", name=args.config, split="train", streaming=True)
    enc = tiktoken.get_encoding(ENCODING)
    write_bins((row["text"] for row in ds), args.out_dir, args.num_tokens, args.val_tokens, enc)

if __name__ == "__main__":
    main()
