"""
The standard C4 validation shard (allenai/c4, en/c4-validation.00000-of-00008.json.gz: 45,576 English
web documents), tokenised with --tokenizer (GPT-2's BPE by default) into --out_dir/val.bin and meta.json,
each document preceded by the tokenizer's separator. Held-out text for perplexity, so there is no
train.bin. Needs network (the shard is a 40 MB download, cached by datasets) and the datasets package:

    pip install datasets
    python data/c4/prepare.py --tokenizer=meta-llama/Llama-3.2-3B --out_dir=data/c4_llama3

--tokenizer is a tiktoken encoding (gpt2, cl100k_base, ...) or a Hugging Face tokenizer's hub name or
local directory: the one of the model to be evaluated.
"""
import os
import sys
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, os.pardir))  # the shared modules, at the repo root
from configurator import ConfigError, load_config
from dataloader import encode_docs, write_data
from tokenizer import hub_offline, hub_reachable, open_tokenizer

SHARD = "en/c4-validation.00000-of-00008.json.gz"


@dataclass
class PrepareConfig:
    tokenizer: str = "r50k_base"  # a tiktoken encoding or a Hugging Face tokenizer (hub name or directory)
    out_dir: str = ""  # "": this script's folder, data/c4


def main(argv=None):
    args = load_config(sys.argv[1:] if argv is None else argv, PrepareConfig)
    meta, encode_batch, separator = open_tokenizer(args.tokenizer)  # first: a bad name fails before any download
    if not hub_offline() and not hub_reachable():  # datasets would retry for half a minute
        raise SystemExit(f"allenai/c4 needs the Hugging Face hub, which cannot be reached: connect, or set "
                         f"HF_HUB_OFFLINE=1 if {SHARD} is in the Hugging Face cache")
    try:
        from datasets import load_dataset
    except ImportError:
        raise SystemExit("this script needs the datasets package: pip install datasets")
    try:
        ds = load_dataset("allenai/c4", data_files=SHARD, split="train")
    except Exception as e:  # offline, the hub unreachable: one line, not the library's traceback
        raise SystemExit(f"could not load allenai/c4 {SHARD} ({type(e).__name__}: {str(e).strip().splitlines()[0]}); "
                         f"it needs access to huggingface.co once, then it is cached")
    return write_data(args.out_dir or HERE, {"val": encode_docs((row["text"] for row in ds), encode_batch, separator)}, meta)

if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
