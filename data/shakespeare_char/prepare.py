"""
Prepare the Shakespeare corpus for character-level language modeling.
Instead of BPE tokens, map each character to an int; save train.bin, val.bin (np.uint16 ids) and
meta.json (vocab_size, itos, stoi, for encoding and decoding later) next to this script.

    python data/shakespeare_char/prepare.py                        # the corpus committed in data/shakespeare/input.txt
    python data/shakespeare_char/prepare.py --input=path/to/any.txt # or any other text file (UTF-8)
"""
import os
import sys
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))  # so it runs from the repo root or from this folder
sys.path.insert(0, os.path.join(HERE, os.pardir, os.pardir))  # the shared modules, at the repo root
from configurator import ConfigError, load_config
from dataloader import read_text, write_data

DEFAULT_INPUT = os.path.join(HERE, os.pardir, "shakespeare", "input.txt")


@dataclass
class PrepareConfig:
    input: str = ""  # a UTF-8 text file; "": the embedded corpus, data/shakespeare/input.txt
    out_dir: str = ""  # "": this script's folder, data/shakespeare_char


def main(input_path=None, out_dir=HERE):
    data = read_text(input_path or DEFAULT_INPUT)
    print(f"length of dataset in characters: {len(data):,}")

    # get all the unique characters that occur in this text
    chars = sorted(set(data))
    vocab_size = len(chars)
    print("all the unique characters:", repr("".join(chars)))
    print(f"vocab size: {vocab_size:,}")
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = {i: ch for i, ch in enumerate(chars)}

    # create the train and test splits: the first 90% trains, the last 10% validates
    n = len(data)
    train_data = data[: int(n * 0.9)]
    val_data = data[int(n * 0.9):]

    # encode both to integers and export to bin files, with the meta information to decode them later
    splits = {"train": [[stoi[c] for c in train_data]], "val": [[stoi[c] for c in val_data]]}
    return write_data(out_dir, splits, {"vocab_size": vocab_size, "itos": itos, "stoi": stoi})


if __name__ == "__main__":
    try:
        cfg = load_config(sys.argv[1:], PrepareConfig)
        main(cfg.input or None, cfg.out_dir or HERE)
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
