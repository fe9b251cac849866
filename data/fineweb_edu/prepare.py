"""
Streams the first --num_tokens tokens of FineWeb-Edu (HuggingFaceFW/fineweb-edu, a sample config)
and tokenises them with --tokenizer (GPT-2's BPE by default): saves train.bin, val.bin (token ids,
uint16 if the vocabulary fits, else uint32) and meta.json (which tokenizer, vocab_size, dtype) in
--out_dir. Streaming means only what is used is downloaded, not the whole 10BT sample. Needs network
and the datasets package:

    pip install datasets
    python data/fineweb_edu/prepare.py --num_tokens=100_000_000
    python data/fineweb_edu/prepare.py --tokenizer=Qwen/Qwen1.5-1.8B --out_dir=data/fineweb_edu_qwen1.5 \
        --config=sample-100BT --num_tokens=18_875_368_001   # 1M val, then the paper's 9000 x 1024 x 2048 (+1)

--tokenizer is a tiktoken encoding (gpt2, cl100k_base, ...) or a Hugging Face tokenizer's hub name or
local directory; distilling from a Hugging Face model needs data made with its tokenizer.
The first --val_tokens tokens of the stream become val.bin, the rest train.bin. A fixed number (not a
fraction) keeps the val set the same whatever --num_tokens is, so losses stay comparable.
"""
import os
import sys
from dataclasses import dataclass

from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, os.pardir))  # the shared modules, at the repo root
from configurator import ConfigError, check_types, load_config
from dataloader import encode_docs, write_data
from tokenizer import hub_offline, hub_reachable, open_tokenizer

# "r50k_base" is tiktoken's other name for the GPT-2 BPE: same ranks, same token ids as "gpt2",
# and it loads from a cached ranks file without network (TIKTOKEN_CACHE_DIR)
ENCODING = "r50k_base"

def take(token_lists, size, pbar):
    """The first size tokens of an iterator of token lists, as lists; the list that crosses size is cut
    and the rest of it dropped, so no document is in two splits."""
    n = 0
    for ids in token_lists:
        ids = ids[: size - n]
        n += len(ids)
        pbar.update(len(ids))
        yield ids
        if n == size:
            return


@dataclass
class PrepareConfig:
    num_tokens: int = 100_000_000  # tokens in train.bin + val.bin
    val_tokens: int = 1_000_000  # tokens in val.bin, taken first
    config: str = "sample-10BT"  # FineWeb-Edu config (sample-10BT, sample-100BT, ...)
    tokenizer: str = ENCODING  # a tiktoken encoding or a Hugging Face tokenizer (hub name or directory)
    out_dir: str = ""  # "": this script's folder, data/fineweb_edu

    def __post_init__(self):
        check_types(self)
        check_split(self.num_tokens, self.val_tokens)  # now, not after opening the tokenizer and the hub


def check_split(num_tokens, val_tokens):
    if not 0 < val_tokens < num_tokens:
        raise ConfigError(f"need 0 < val_tokens < num_tokens, got val_tokens={val_tokens}, num_tokens={num_tokens}")


def write_bins(docs, out_dir, num_tokens, val_tokens, tokenizer):
    """Tokenises an iterable of text documents into out_dir/val.bin (the first val_tokens tokens)
    and out_dir/train.bin (the next num_tokens - val_tokens), stopping once num_tokens are written;
    tokenizer is open_tokenizer's (meta, encode_batch, separator), and each document starts with the
    separator. If docs run out first, the files are shorter. Returns the number of tokens in each split."""
    check_split(num_tokens, val_tokens)
    meta, encode_batch, separator = tokenizer
    token_lists = encode_docs(docs, encode_batch, separator)  # one iterator: train carries on where val stopped
    with tqdm(total=num_tokens, unit="tok", unit_scale=True) as pbar:
        splits = {"val": take(token_lists, val_tokens, pbar), "train": take(token_lists, num_tokens - val_tokens, pbar)}
        return write_data(out_dir, splits, meta)["tokens"]

def main(argv=None):
    args = load_config(sys.argv[1:] if argv is None else argv, PrepareConfig)
    tokenizer = open_tokenizer(args.tokenizer)  # first: a bad name fails before any download
    if not hub_offline() and not hub_reachable():  # datasets would retry for half a minute
        raise SystemExit("HuggingFaceFW/fineweb-edu needs the Hugging Face hub, which cannot be reached: connect")
    try:
        # imported here, not at the top: it is optional, only this script needs it
        from datasets import load_dataset
    except ImportError:
        raise SystemExit("this script needs the datasets package: pip install datasets")
    try:
        ds = load_dataset("HuggingFaceFW/fineweb-edu", name=args.config, split="train", streaming=True)
    except Exception as e:
        raise SystemExit(f"could not open HuggingFaceFW/fineweb-edu ({type(e).__name__}: {str(e).strip().splitlines()[0]}); "
                         f"it needs access to huggingface.co")
    write_bins((row["text"] for row in ds), args.out_dir or HERE, args.num_tokens, args.val_tokens, tokenizer)

if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
