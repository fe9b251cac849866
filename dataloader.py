"""
The data on disk and the batches drawn from it. A data folder holds train.bin and val.bin, token ids one
after another, and meta.json saying what the ids mean (the tokenizer: tokenizer.py) and how they are stored.
Reading checks both against each other; writing (the data/*/prepare.py scripts) never leaves a
half-written file.
"""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import torch

from configurator import ConfigError, first_line, make_dir

REPO = os.path.dirname(os.path.abspath(__file__))
DATA_ROOT = os.path.join(REPO, "data")
GPT2_VOCAB = 50257  # what data without metadata (meta.json) is: GPT-2 BPE token ids, as in nanoGPT
# meta.json, not a pickle, because reading it cannot run code: prepared data is shared, and a pickle runs
# whatever it names
META_DTYPES = ("uint16", "uint32")


def bin_dtype(meta):
    """The numpy dtype of a data folder's .bin files: meta's "dtype", else uint16 (data prepared before
    the dtype was recorded, or without metadata, as in nanoGPT)."""
    return np.dtype((meta or {}).get("dtype", "uint16"))


def read_tokens(folder, split, meta=None):
    """The token ids of folder/<split>.bin, as a read-only memmap in the dtype of folder's metadata (pass
    meta when it is read already)."""
    return np.memmap(os.path.join(folder, f"{split}.bin"), dtype=bin_dtype(meta or read_meta(folder)), mode="r")


def vocab_of(meta):
    """The number of token ids the data's tokenizer has (not the model's, which may pad it)."""
    return meta["vocab_size"] if meta is not None else GPT2_VOCAB


def meta_file(folder):
    """folder's metadata: meta.json, else the meta.pkl of data prepared before it (or by nanoGPT); meta.json
    when there is neither."""
    path = os.path.join(folder, "meta.json")
    legacy = os.path.join(folder, "meta.pkl")
    return legacy if not os.path.isfile(path) and os.path.isfile(legacy) else path


def prepare_again(folder):
    """What rewrites folder's data and its metadata as meta.json."""
    prepare = os.path.join(folder, "prepare.py")
    if os.path.isfile(prepare):
        return f"run python {os.path.relpath(prepare)} again"
    return "prepare the data again with its data/*/prepare.py"


class NotPlainData(pickle.UnpicklingError):
    """A pickle that holds more than plain data."""


class PlainUnpickler(pickle.Unpickler):
    """Reads a pickle of plain data only. A pickle builds anything else by calling a class or function it
    names, which is how a meta.pkl can run code; every name is refused, so nothing is ever called."""

    def find_class(self, module, name):
        raise NotPlainData(f"it names {module}.{name}, which reading it would call")


def plain(value):
    """Whether value is dicts, lists and tuples of strings, numbers, booleans and None, all the way down."""
    if isinstance(value, dict):
        return all(plain(k) and plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def load_legacy_meta(path):
    """The dict in a meta.pkl of earlier data, read by PlainUnpickler: plain data, or refused."""
    with open(path, "rb") as f:
        meta = PlainUnpickler(f).load()
    if not plain(meta):
        raise NotPlainData(f"it holds a {type(meta).__name__} with more than plain data")
    return meta


def read_meta(folder):
    """folder's metadata (meta.json, else a meta.pkl of earlier data, read as plain data only) as a dict,
    checked by check_meta; None if there is none (GPT-2 BPE data, as in nanoGPT)."""
    path = meta_file(folder)
    if not os.path.isfile(path):
        return None
    try:
        if path.endswith(".json"):
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
        else:
            meta = load_legacy_meta(path)
    except NotPlainData as e:
        raise ConfigError(f"{path} is refused: {e} (a meta.pkl is read only if it is plain data: dicts, lists, "
                          f"strings, numbers); {prepare_again(folder)}, which writes meta.json") from None
    except Exception as e:  # not JSON, not a pickle, cut short
        raise ConfigError(f"{path} is not readable ({first_line(e)}); {prepare_again(folder)}") from None
    if isinstance(meta, dict) and isinstance(meta.get("itos"), dict) and path.endswith(".json"):
        # JSON keys are strings: itos's ids come back as ints (a key that is no id stays, for check_meta to name)
        meta["itos"] = {int(k) if k.isascii() and k.isdigit() else k: c for k, c in meta["itos"].items()}
    check_meta(meta, path)
    return meta


def check_meta(meta, path):
    """Refuses metadata that cannot say what token ids mean, naming path, the field and its value: a
    vocab_size that is no positive integer, a dtype other than uint16 and uint32, no tokenizer, token counts
    that are no counts, or stoi and itos that are not each other's inverse over ids 0..vocab_size-1."""
    if not isinstance(meta, dict) or "vocab_size" not in meta:
        raise ConfigError(f"{path} has no vocab_size: not the metadata of a prepare.py; prepare the data again")
    vocab_size, dtype = meta["vocab_size"], meta.get("dtype", "uint16")
    if type(vocab_size) is not int or vocab_size < 1:
        raise ConfigError(f"{path}: vocab_size={vocab_size!r} must be a positive integer")
    if dtype not in META_DTYPES:
        raise ConfigError(f"{path}: dtype={dtype!r} is not a dtype of token ids; allowed: {', '.join(META_DTYPES)}")
    tokens = meta.get("tokens", {})
    if not isinstance(tokens, dict) or not all(type(n) is int and n >= 0 for n in tokens.values()):
        raise ConfigError(f"{path}: tokens={tokens!r} must map each split to its number of tokens")
    for field in ("encoding", "tokenizer", "vocab_hash"):
        if field in meta and type(meta[field]) is not str:
            raise ConfigError(f"{path}: {field}={meta[field]!r} must be a string")
    if "stoi" in meta or "itos" in meta:
        check_characters(meta.get("stoi"), meta.get("itos"), vocab_size, path)
    elif "encoding" not in meta and not {"tokenizer", "vocab_hash"} <= set(meta):
        raise ConfigError(f"{path} names no tokenizer: it needs stoi and itos (characters), encoding (a tiktoken "
                          f"BPE) or tokenizer and vocab_hash (Hugging Face); prepare the data again")


def check_characters(stoi, itos, vocab_size, path):
    """stoi maps single characters to distinct ids in 0..vocab_size-1 and itos maps them back, nothing more."""
    for field, table in (("stoi", stoi), ("itos", itos)):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {field}={table!r:.80} must be a dict (character-level data has both stoi and itos)")
    for c, i in stoi.items():
        if type(c) is not str or len(c) != 1 or type(i) is not int or not 0 <= i < vocab_size or itos.get(i) != c:
            raise ConfigError(f"{path}: stoi[{c!r}]={i!r} is not the id in 0..{vocab_size - 1} of one character "
                              f"that itos maps back to it")
    for i, c in itos.items():
        if type(c) is not str or stoi.get(c) != i:
            raise ConfigError(f"{path}: itos[{i!r}]={c!r} has no stoi entry mapping {c!r} back to it")


def check_bin(path, meta, block_size):
    """Refuses a .bin that cannot be what meta says: a partial id, too few tokens for one block, another
    token count than the prepare that wrote the metadata counted, or ids beyond the vocabulary. The ids are
    checked on 16 evenly spread blocks of 64k tokens: cheap on a 40 GB file, and data of another
    tokenizer shows in any block."""
    dtype, meta_name = bin_dtype(meta), os.path.basename(meta_file(os.path.dirname(path)))
    size = os.path.getsize(path)
    if size % dtype.itemsize:
        raise ConfigError(f"{path} has {size} bytes, not a whole number of {dtype} token ids ({meta_name}'s dtype); "
                          f"prepare the data again")
    n = size // dtype.itemsize
    if n <= block_size:
        raise ConfigError(f"{path} holds {n} tokens, too few for block_size={block_size}")
    counted = (meta or {}).get("tokens", {}).get(os.path.basename(path).removesuffix(".bin"))
    if counted is not None and counted != n:
        raise ConfigError(f"{path} holds {n} tokens but its {meta_name} counted {counted}: files of two preparations "
                          f"(an interrupted one?); prepare the data again")
    vocab_size = vocab_of(meta)
    data = np.memmap(path, dtype=dtype, mode="r")
    top = max(int(data[s:s + 65536].max()) for s in np.linspace(0, max(0, n - 65536), 16).astype(np.int64))
    if meta is None and top < 256:
        # GPT-2 BPE text uses ids far beyond its 256 byte tokens; ids that stay below are another tokenizer's
        raise ConfigError(f"{path} has no meta.json beside it, so it would be read as GPT-2 BPE, but its ids stay below "
                          f"256 (the largest is {top}): data of another tokenizer (characters?); put the meta.json of "
                          f"the prepare that made it beside it, or prepare the data again")
    if top >= vocab_size:
        where = f"{meta_name}'s" if meta is not None else "GPT-2's (there is no meta.json)"
        raise ConfigError(f"{path} holds token id {top}, beyond {where} vocab_size={vocab_size}: "
                          f"data of another tokenizer? prepare the data again")


def find_data(data_dir, dataset, block_size):
    """(data_dir, meta): the folder with train.bin and val.bin (data_dir, else data/<dataset>), and its
    metadata's dict or None, once both files are known to fit meta and block_size."""
    folder = data_dir or os.path.join(DATA_ROOT, dataset)
    missing = [s for s in ("train.bin", "val.bin") if not os.path.isfile(os.path.join(folder, s))]
    if missing == ["train.bin"]:
        raise ConfigError(f"{folder} has val.bin but no train.bin: data prepared for evaluation only (eval.py), "
                          f"not for training; train on another dataset or data_dir")
    if missing and data_dir:
        raise ConfigError(f"data_dir={data_dir!r} has no {' or '.join(missing)}")
    if missing:
        prepare = os.path.join(DATA_ROOT, dataset, "prepare.py")
        if os.path.isfile(prepare):
            raise ConfigError(f"no prepared data for dataset={dataset!r} in {folder}; "
                              f"run first: python {os.path.relpath(prepare)}")
        known = sorted(d for d in os.listdir(DATA_ROOT) if os.path.isfile(os.path.join(DATA_ROOT, d, "prepare.py")))
        raise ConfigError(f"unknown dataset={dataset!r}; allowed: {', '.join(known)} (or set data_dir)")
    meta = read_meta(folder)
    if meta is None and os.path.isfile(os.path.join(folder, "prepare.py")):
        # every prepare.py here writes meta.json; without it character ids would be read as GPT-2's
        raise ConfigError(f"{meta_file(folder)} is missing; {prepare_again(folder)}")
    dtype = bin_dtype(meta)
    if meta is not None and meta["vocab_size"] > np.iinfo(dtype).max + 1:
        raise ConfigError(f"{meta_file(folder)} says vocab_size={meta['vocab_size']} but its .bin files "
                          f"are {dtype}, ids up to {np.iinfo(dtype).max}; prepare the data again (it writes uint32)")
    for split in ("train", "val"):
        check_bin(os.path.join(folder, f"{split}.bin"), meta, block_size)
    return folder, meta


def prepare_default_data(dataset, data_dir):
    """data/shakespeare_char is made from the corpus committed in data/shakespeare/input.txt the first time a
    run needs it, so installing and training are the whole set-up. Other datasets are prepared by hand."""
    folder = os.path.join(DATA_ROOT, "shakespeare_char")
    if data_dir or dataset != "shakespeare_char" or all(
            os.path.isfile(os.path.join(folder, s)) for s in ("train.bin", "val.bin")):
        return
    prepare = os.path.join(folder, "prepare.py")
    print(f"preparing {folder} from the embedded corpus data/shakespeare/input.txt (first run): python {prepare}")
    # run as the script it is: scripts share code only through the modules at the repo root, found through PYTHONPATH
    # wherever DATA_ROOT is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (REPO, os.environ.get("PYTHONPATH"))))}
    done = subprocess.run([sys.executable, prepare], capture_output=True, text=True, env=env)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ConfigError(f"preparing {folder} failed ({why}); run python {prepare} to see why")


# --------------------------------------------------------------------------------------------------
# preparing data: the data/*/prepare.py scripts


def read_text(path, setting="input", given=None):
    """The text of a UTF-8 file (to prepare, or a prompt); a missing or binary file is one line naming the
    setting and the value given for it (path, unless given says otherwise)."""
    given = path if given is None else given
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{setting}={given!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
                          f"give a text file") from None
    except OSError as e:
        raise ConfigError(f"{setting}={given!r} cannot be read ({e.strerror})") from None


def encode_docs(docs, encode_batch, separator, batch_size=256):
    """Yields the token ids of each text document, each preceded by separator (as nanoGPT's openwebtext
    does with GPT-2's <|endoftext|>); the documents go to encode_batch in batches, which tiktoken and
    Hugging Face tokenizers encode in parallel threads."""
    batch = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == batch_size:
            yield from ([separator] + ids for ids in encode_batch(batch))
            batch = []
    if batch:
        yield from ([separator] + ids for ids in encode_batch(batch))


def write_data(out_dir, splits, meta):
    """Writes out_dir/<split>.bin for each split of splits ({"val": ids, "train": ids}, written in that
    order; ids: an iterable of token-id sequences, streamed to disk), then out_dir/meta.json: meta with
    "dtype" (uint16 if the vocabulary fits, else uint32) and "tokens" (each file's count). Every file is
    written under a temporary name and renamed when whole, meta.json last, and find_data checks the counts:
    an interrupted run leaves no half-written file and no new .bin unnoticed beside an old meta.json.
    A split of fewer than 2 tokens (not one next-token pair) is refused, and a full disk or file-size limit
    is one line, before anything is replaced; an out_dir this made is removed again then. Returns the meta written."""
    vocab_size = meta["vocab_size"]
    dtype = np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    made = not os.path.isdir(out_dir)
    make_dir(out_dir, "out_dir")
    tmp = {split: os.path.join(out_dir, f"{split}.bin.tmp") for split in splits}
    tmp["meta"] = os.path.join(out_dir, "meta.json.tmp")
    tokens = {}
    try:
        for split, chunks in splits.items():
            with open(tmp[split], "wb") as f:
                tokens[split] = 0
                for ids in chunks:
                    ids = np.asarray(ids, dtype=np.int64)
                    if ids.size and not 0 <= ids.min() <= ids.max() < vocab_size:
                        raise ConfigError(f"token ids {ids.min()}..{ids.max()} are outside the vocabulary 0..{vocab_size - 1}")
                    f.write(ids.astype(dtype).tobytes())
                    tokens[split] += ids.size
            if tokens[split] < 2:
                raise ConfigError(f"the {split} split has {tokens[split]} tokens: the input is empty or too short")
        meta = {**meta, "dtype": dtype.name, "tokens": tokens}
        write_meta(out_dir, meta, publish=False)
        for split in splits:
            os.replace(tmp[split], os.path.join(out_dir, f"{split}.bin"))
        publish_meta(out_dir)
    except OSError as e:  # a full disk (ENOSPC), a file-size limit (EFBIG)
        raise ConfigError(f"could not write the data in out_dir={out_dir!r} ({e.strerror}); "
                          f"nothing there was changed") from None
    finally:
        for path in tmp.values():
            if os.path.exists(path):
                os.remove(path)
        if made and not os.listdir(out_dir):
            os.rmdir(out_dir)
    print(", ".join(f"{split} has {n:,} tokens" for split, n in tokens.items()) + f" ({dtype.name})")
    return meta


def write_meta(folder, meta, publish=True):
    """Writes meta as folder/meta.json, whole or not at all: to meta.json.tmp, then (publish) renamed. The
    meta.pkl of an earlier preparation goes: it described .bin files that are replaced now. JSON keys are
    strings, so itos's ids are written as strings; read_meta makes them ints again."""
    with open(os.path.join(folder, "meta.json.tmp"), "w", encoding="utf-8") as f:
        json.dump(meta, f, ensure_ascii=False, indent=1)
    if publish:
        publish_meta(folder)


def publish_meta(folder):
    os.replace(os.path.join(folder, "meta.json.tmp"), os.path.join(folder, "meta.json"))
    if os.path.isfile(os.path.join(folder, "meta.pkl")):
        os.remove(os.path.join(folder, "meta.pkl"))


# --------------------------------------------------------------------------------------------------
# batches for training and evaluation


class EpochSampler:
    """The windows of block_size + 1 tokens that start at multiples of block_size (every token is an input
    once; a window's last token, a target, is the next one's first), each once per epoch, as appendix B.1's
    "1 epoch" means. Each epoch is a new permutation of all windows, seeded by (seed, epoch); rank r of
    world takes every world-th window of it, so the ranks' parts are disjoint (the last windows % world of
    an epoch's order are left out, so that every rank has as many). The state is (epoch, windows taken):
    a resume continues exactly where the run was. The permutation holds 8 bytes per window while it is
    made (74 MB for the paper's 9.2M windows; up to ~1e8 windows, 800 MB, is fine)."""

    def __init__(self, n_tokens, block_size, seed, rank=0, world=1):
        self.windows = (n_tokens - 1) // block_size
        self.per_rank = self.windows // world
        if self.per_rank == 0:
            raise ConfigError(f"train.bin holds {self.windows} windows of block_size={block_size}, fewer than the "
                              f"{world} ranks; sampling='epoch' needs more data or a smaller block_size")
        self.block_size, self.seed, self.rank, self.world = block_size, seed, rank, world
        self.epoch, self.taken = 0, 0
        self._order = self._order_epoch = None

    def order(self):
        """This rank's windows of the current epoch, in their shuffled order."""
        if self._order_epoch != self.epoch:
            perm = np.random.default_rng((self.seed, self.epoch)).permutation(self.windows)
            self._order, self._order_epoch = perm[self.rank::self.world][:self.per_rank].copy(), self.epoch
        return self._order

    def next_starts(self, n):
        """The first token of each of the next n windows; a batch may finish one epoch and begin the next."""
        parts = []
        while n:
            if self.taken == self.per_rank:
                self.epoch, self.taken = self.epoch + 1, 0
            k = min(n, self.per_rank - self.taken)
            parts.append(self.order()[self.taken:self.taken + k])
            self.taken, n = self.taken + k, n - k
        return np.concatenate(parts) * self.block_size

    def epochs_done(self):
        """Epochs completed, as a fraction: 0.5 is half way through the first."""
        return self.epoch + self.taken / self.per_rank

    def get_state(self):
        return {"epoch": self.epoch, "taken": self.taken, "windows": self.windows}

    def set_state(self, state):
        if state.get("windows") != self.windows:
            raise ConfigError(f"the checkpoint's epochs are of {state.get('windows')} windows of train.bin, which now "
                              f"has {self.windows}: the data changed; resume on the run's data")
        self.epoch, self.taken = state["epoch"], state["taken"]


def get_batch(data_dir, split, batch_size, block_size, sampler, device, meta=None):
    """batch_size windows of block_size + 1 tokens, as inputs x and next-token targets y. sampler: a
    torch.Generator draws random windows (with replacement), an EpochSampler the next ones of its epoch.
    meta: the data's meta.json dict, which says how the ids are stored."""
    # a new memmap every call, as in nanoGPT: one kept open grows the process's memory (a numpy quirk)
    data = read_tokens(data_dir, split, meta)
    if isinstance(sampler, EpochSampler):
        ix = sampler.next_starts(batch_size)
    else:
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=sampler).numpy()
    xy = torch.from_numpy(data[ix[:, None] + np.arange(block_size + 1)].astype(np.int64))
    if device.startswith("cuda"):
        xy = xy.pin_memory().to(device, non_blocking=True)  # the copy overlaps the work already queued
    else:
        xy = xy.to(device)
    return xy[:, :-1], xy[:, 1:]
