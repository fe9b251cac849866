"""
What every script shares, in one place: settings from the command line, the data on disk, and the one
function that loads a model with its tokenizer (a checkpoint of this repo or a pretrained model).
"""

import ast
import contextlib
import dataclasses
import difflib
import errno
import hashlib
import inspect
import io
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import textwrap
import tokenize
import traceback
import types
import urllib.error
import urllib.request

import numpy as np
import torch

from model import GPT, GPTConfig

REPO = os.path.dirname(os.path.abspath(__file__))
DATA_ROOT = os.path.join(REPO, "data")
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GPT2_ENCODINGS = ("gpt2", "r50k_base")  # two tiktoken names for the same GPT-2 BPE token ids
GPT2_VOCAB = 50257  # what data without metadata (meta.json) is: GPT-2 BPE token ids, as in nanoGPT


class ConfigError(ValueError):
    """A bad setting, or data or a model that does not fit: the message says what and what would do."""


# --------------------------------------------------------------------------------------------------
# settings: a dataclass per script, filled from config files and --key=value overrides


def check_types(cfg):
    """Every field of the dataclass cfg must have its default's type; an int is taken for a float. A field
    whose default is None (rope_scaling) takes None or its annotation's type (dict)."""
    for f in dataclasses.fields(cfg):
        value, want = getattr(cfg, f.name), type(f.default) if f.default is not None else f.type
        if want is float and type(value) is int:
            setattr(cfg, f.name, float(value))
        elif type(value) is not want and not (f.default is None and value is None):
            need = {bool: "True or False", int: "an integer", float: "a number", str: "a string", dict: "a dict or None"}[want]
            raise ConfigError(f"{f.name}={value!r} must be {need} (got {type(value).__name__})")


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"unknown {name}={value!r}; allowed: {', '.join(allowed)}")


def check_device(device, name="device"):
    """device must be cpu, cuda, cuda:N or mps, and present on this machine."""
    kind, _, index = device.partition(":")
    check_choice(name, kind, ("cpu", "cuda", "mps"))
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name}={device!r} but torch sees no CUDA GPU here; use {name}=cpu")
    if kind == "cuda" and index and not (index.isdigit() and int(index) < torch.cuda.device_count()):
        raise ConfigError(f"{name}={device!r} but this machine has CUDA devices 0..{torch.cuda.device_count() - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{name}={device!r} but MPS is not available here; use {name}=cpu")


def check_writable(path, setting, folder=False):
    """Refuses, before the work whose results go there, an output file (or with folder=True an output folder)
    that could not be written at the end: a folder where a file must go or the reverse, a path below a file,
    or a place without write permission. Missing folders are fine: the writer makes them (os.makedirs)."""
    if os.path.exists(path) and os.path.isdir(path) != folder:
        raise ConfigError(f"{setting}={path!r} is a {'file' if folder else 'directory'}; give "
                          f"{'a directory' if folder else 'a file name'}")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) and existing != os.path.abspath(path):
        raise ConfigError(f"{setting}={path!r} is below {existing}, which is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"{setting}={path!r}: {existing} is not writable")


# Below this many parameters a CPU run uses one thread unless OMP_NUM_THREADS says otherwise: the operations of
# so small a model are too small to share between cores, and on a busy 2-core machine torch's default, a thread
# per core, made the main job (config/train_shakespeare_char_cpu.py) 10-22x slower to train (1151 vs 116 and
# 3845 vs 176 ms/iter) and 16x slower to sample (sample.py, 3 x 500 tokens: 233 vs 14 s).
SMALL_MODEL = 10_000_000


def cpu_threads(model, device):
    """One thread for a model of fewer than SMALL_MODEL parameters on a CPU, where OMP_NUM_THREADS is not
    set. Returns True if it set the thread count."""
    if device != "cpu" or "OMP_NUM_THREADS" in os.environ or model.get_num_params() >= SMALL_MODEL:
        return False
    torch.set_num_threads(1)
    return True


def read_config_file(path):
    """The names a config file assigns (it is python, run with exec), less dunders and imported modules."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found (overrides are written --key=value)")
    if not path.endswith(".py"):  # python to run: never a data file given where a config file goes
        raise ConfigError(f"{path!r} is not a config file (python, .py); settings are written --key=value (see --help)")
    namespace = {}
    with open(path) as f:
        source = f.read()
    try:
        exec(compile(source, path, "exec"), namespace)
    except SyntaxError as e:
        raise ConfigError(f"config file {path}, line {e.lineno}: SyntaxError: {e.msg}") from None
    except Exception as e:  # the line of the file itself, not of whatever it called
        line = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if frame.filename == path][-1]
        raise ConfigError(f"config file {path}, line {line}: {first_line(e)}") from None
    return {k: v for k, v in namespace.items() if not k.startswith("__") and not isinstance(v, types.ModuleType)}


def settings_help(cls):
    """The --help of a script whose settings are the dataclass cls: its module's docstring, then every field
    with its default and the comment beside it in cls's source (comment lines between fields are headings),
    so the help cannot drift from the settings."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {t.start[0]: t.string.lstrip("#").strip()
                for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
    body = ast.parse(source).body[0].body
    fields = {node.lineno: node for node in body if isinstance(node, ast.AnnAssign)}
    end = min([node.lineno for node in body if isinstance(node, ast.FunctionDef)] + [len(source.splitlines()) + 1])
    defaults = {f.name: f"--{f.name}={f.default!r}" for f in dataclasses.fields(cls)}
    width = max(map(len, defaults.values())) + 2
    module = sys.modules[cls.__module__]
    lines = [f"usage: python {os.path.basename(module.__file__)} [config_file.py ...] [--key=value ...]", "",
             (module.__doc__ or "").strip(), "", "settings, with their defaults:"]
    in_field = {row for node in fields.values() for row in range(node.lineno, node.end_lineno + 1)}
    headings = {row for row in comments if row not in in_field and row < end}
    for row in range(1, end):
        if row in fields:
            node = fields[row]
            comment = " ".join(comments[r] for r in range(node.lineno, node.end_lineno + 1) if r in comments)
            lines.append(f"  {defaults[node.target.id]:<{width}}{comment}".rstrip())
        elif row in headings:  # a blank line before each heading; consecutive comment lines are one paragraph
            lines += [comments[row]] if row - 1 in headings else ["", comments[row]]
    return "\n".join(lines)


def load_config(argv, cls):
    """nanoGPT-style settings from the command line: config files and --key=value overrides, in order.
    An override's value is a python literal (--lr=3e-4, --bias=False); string fields also take bare text.
    -h or --help prints the settings with their defaults and comments, and exits."""
    if "-h" in argv or "--help" in argv:
        try:
            print(settings_help(cls), flush=True)
        except BrokenPipeError:  # python train.py --help | head -1: the reader has all it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when python flushes at exit
        sys.exit(0)
    types_ = {f.name: type(f.default) for f in dataclasses.fields(cls)}
    values = {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise ConfigError(f"override {arg!r} must be written --key=value")
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
            if types_.get(key) is str and not isinstance(value, str):
                value = text  # --out_dir=2024 is the folder "2024"
            settings, source = {key: value}, arg
        else:
            settings, source = read_config_file(arg), arg
        for key, value in settings.items():
            if key not in types_:
                close = difflib.get_close_matches(key, types_, n=3)
                hint = f"did you mean {' or '.join(close)}?" if close else f"see the fields of {cls.__name__}"
                raise ConfigError(f"unknown setting {key!r} (from {source}); {hint}")
            values[key] = value
    return cls(**values)


# --------------------------------------------------------------------------------------------------
# data: train.bin and val.bin of token ids, and meta.json saying what the ids mean and how they are stored.
# JSON because reading it cannot run code: prepared data is shared, and a pickle runs whatever it names.

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
    # run as the script it is: scripts share code only through common.py and model.py, found through PYTHONPATH
    # wherever DATA_ROOT is
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (REPO, os.environ.get("PYTHONPATH"))))}
    done = subprocess.run([sys.executable, prepare], capture_output=True, text=True, env=env)
    if done.returncode:
        why = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise ConfigError(f"preparing {folder} failed ({why}); run python {prepare} to see why")


def read_text(path):
    """The text of a UTF-8 file to prepare; a missing or binary file is one line naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(f"input={path!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
                          f"give a text file") from None
    except OSError as e:
        raise ConfigError(f"input={path!r} cannot be read ({e.strerror})") from None


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
# metrics.jsonl: one JSON object per line, appended as training goes


def read_jsonl(path):
    """The rows of a JSON-lines file. A partial last line (a crash while it was written) is dropped with a
    warning, so it never blocks a resume or an analysis; a bad line before it is an error naming it."""
    with open(path) as f:
        lines = f.read().splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            if line.strip():
                rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise ConfigError(f"{path} line {i + 1} is not JSON: {line[:80]!r}") from None
            print(f"warning: {path} ends in a partial line (an interrupted write), dropped: {line[:80]!r}", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------------------------------
# tokenizers: what a token id means, from a meta dict (meta.json, or a checkpoint's copy of it).
# Three kinds: characters ("stoi", "itos"), a tiktoken BPE ("encoding") and a Hugging Face tokenizer
# ("tokenizer": its hub name or absolute directory, "vocab_hash": a digest of its token -> id table).


def tokenizer_of(meta):
    """What a token id means, as a value two tokenizers share when their ids mean the same: the
    characters' ids, the BPE's name, or a Hugging Face tokenizer's vocab_hash (so the same tokenizer
    under two names, or from a local copy, is one tokenizer). Data without metadata is GPT-2 BPE."""
    if meta is None:
        return "gpt2"
    if "stoi" in meta:
        return meta["stoi"]
    if "vocab_hash" in meta:
        return meta["vocab_hash"]
    return "gpt2" if meta["encoding"] in GPT2_ENCODINGS else meta["encoding"]


def describe_tokenizer(meta):
    kind = tokenizer_of(meta)
    if isinstance(kind, dict):
        return f"character-level ({len(kind)} characters)"
    if "vocab_hash" in (meta or {}):
        return f"Hugging Face tokenizer {meta['tokenizer']!r} ({meta['vocab_size']} tokens)"
    return "GPT-2 BPE" if kind == "gpt2" else f"BPE {kind!r}"


def describe_tokenizers(meta, other):
    """describe_tokenizer of two tokenizers, told apart where the words alone would read the same: two
    character sets of one size name the first character they map differently."""
    a, b = describe_tokenizer(meta), describe_tokenizer(other)
    if a != b or tokenizer_of(meta) == tokenizer_of(other) or "stoi" not in (meta or {}):
        return a, b
    stoi, other_stoi = meta["stoi"], other["stoi"]
    c = min(ch for ch in stoi.keys() | other_stoi.keys() if stoi.get(ch) != other_stoi.get(ch))

    def maps(s):
        return f"{c!r} is id {s[c]}" if c in s else f"no {c!r}"

    return f"{a[:-1]}, {maps(stoi)}: the mappings differ)", f"{b[:-1]}, {maps(other_stoi)})"


def load_tiktoken(*names):
    """The first of these tiktoken encodings that loads. tiktoken downloads an encoding's files once and
    keeps them in TIKTOKEN_CACHE_DIR; offline without them, say so instead of a network traceback."""
    import tiktoken
    for name in names:
        if name not in tiktoken.list_encoding_names():
            raise ConfigError(f"tiktoken has no encoding {name!r}; it has {', '.join(tiktoken.list_encoding_names())}")
        try:
            return tiktoken.get_encoding(name)
        except Exception as e:  # no network, or no cached files for this name: try the next one
            error = e
    where = os.environ.get("TIKTOKEN_CACHE_DIR", "not set")
    raise ConfigError(f"tiktoken could not load the {' or '.join(names)} BPE files ({type(error).__name__}; "
                      f"TIKTOKEN_CACHE_DIR: {where}): connect once to download them, or set TIKTOKEN_CACHE_DIR "
                      f"to a folder holding them")


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. "gpt2" downloads its files; "r50k_base" has the same token ids and also
    loads offline from a TIKTOKEN_CACHE_DIR holding its ranks file."""
    return load_tiktoken("gpt2", "r50k_base")


def hub_offline():
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable(timeout=5):
    """Whether the Hugging Face hub answers one request (transformers retries for minutes when it does not)."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # an answer, if not a welcome one
    except OSError:  # URLError, a timeout, no route
        return False
    return True


def check_hub(name, setting):
    """A name that is no local directory comes from the Hugging Face hub; without network, fail at once
    saying what would work, rather than after minutes of retries."""
    if local_path(name) and not os.path.exists(name):
        raise ConfigError(f"{setting}={name!r} does not exist (a local path, not a Hugging Face hub name): "
                          f"deleted, moved or mistyped")
    if not os.path.isdir(name) and not hub_offline() and not hub_reachable():
        raise ConfigError(f"{setting}={name!r} needs the Hugging Face hub, which cannot be reached: connect, set "
                          f"HF_HUB_OFFLINE=1 if {name} is in the Hugging Face cache, or give a local directory")


def hf_tokenizer(name, setting="tokenizer"):
    """A Hugging Face tokenizer (AutoTokenizer) from a hub name or a local directory."""
    check_hub(name, setting)
    saved = ("tokenizer.json", "tokenizer_config.json")
    if os.path.isdir(name) and not any(os.path.isfile(os.path.join(name, f)) for f in saved):
        raise ConfigError(f"{setting}={name!r} is a directory without a Hugging Face tokenizer (no tokenizer.json or "
                          f"tokenizer_config.json, which tokenizer.save_pretrained writes)")
    try:
        from transformers import AutoTokenizer
        from transformers.models.auto.tokenization_auto import get_tokenizer_config
    except ImportError:
        raise ImportError("Hugging Face tokenizers need the optional package transformers: pip install transformers") from None
    try:
        refuse_custom_code(name, setting, get_tokenizer_config(name), "tokenizer_config.json")
        return AutoTokenizer.from_pretrained(name, trust_remote_code=False)
    except ConfigError:
        raise
    except (OSError, ValueError) as e:
        raise ConfigError(f"{setting}={name!r}: no Hugging Face tokenizer there ({str(e).strip().splitlines()[0]})") from None


def refuse_custom_code(name, setting, config, file):
    """A Hugging Face model or tokenizer whose file (config.json, tokenizer_config.json) maps classes to Python
    modules shipped with it (auto_map) is meant to run that code: refused, as nothing here ever runs code
    that comes with a model (trust_remote_code=False), and transformers' own classes would load it otherwise."""
    if "auto_map" in config:
        raise ConfigError(f"{setting}={name!r} needs code shipped with it ({file} has auto_map for "
                          f"{', '.join(config['auto_map'])}), and such code is never run here: only models and "
                          f"tokenizers that transformers implements itself load")


def hf_meta(tok, name):
    """The meta of a Hugging Face tokenizer: vocab_size covers every id it can emit, added tokens too."""
    vocab = tok.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]
    return {"vocab_size": max(vocab.values()) + 1, "tokenizer": os.path.abspath(name) if os.path.isdir(name) else name,
            "vocab_hash": digest}


def hf_separator(tok):
    """The token a Hugging Face tokenizer's models see between documents: BOS (LLaMA-3 starts every
    document with <|begin_of_text|>), else EOS (Qwen ends one with <|endoftext|>)."""
    return tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id


def open_tokenizer(name):
    """(meta, encode_batch, separator) of a tokenizer by name, to prepare data with: a tiktoken encoding
    (gpt2, r50k_base, cl100k_base, ...) or else a Hugging Face tokenizer (hub name or directory). meta is
    what meta.json records; encode_batch maps a list of texts to lists of ids, reading special-token text
    such as "<|endoftext|>" as plain text; separator is the id that goes before each document (eot_token)."""
    import tiktoken
    if name in tiktoken.list_encoding_names():
        enc = tiktoken_encoding({"encoding": name})
        return {"vocab_size": enc.n_vocab, "encoding": name}, enc.encode_ordinary_batch, enc.eot_token
    try:
        tok = hf_tokenizer(name)
    except ConfigError as e:
        raise ConfigError(f"{e}; nor is it a tiktoken encoding ({', '.join(tiktoken.list_encoding_names())})") from None
    separator = hf_separator(tok)
    if separator is None:
        raise ConfigError(f"tokenizer={name!r} has neither a BOS nor an EOS token to separate documents with")

    def encode_batch(texts):
        # verbose=False: a whole document is longer than the model's context (model_max_length), and
        # transformers warns that it would be too long for the model; here it is cut into windows later
        return tok(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]

    return hf_meta(tok, name), encode_batch, separator


def get_tokenizer(meta):
    """(encode, decode) for a model's meta: its characters, a tiktoken BPE (GPT-2's without meta) or its
    Hugging Face tokenizer."""
    if meta is not None and "stoi" in meta:
        stoi, itos = meta["stoi"], meta["itos"]

        def encode(text):
            unknown = sorted(set(text) - set(stoi))
            if unknown:
                raise ConfigError(f"the text has characters not in the model's vocabulary: {', '.join(map(repr, unknown))}")
            return [stoi[c] for c in text]

        return encode, lambda ids: "".join(itos[i] for i in ids)
    if meta is not None and "vocab_hash" in meta:
        tok = checked_hf_tokenizer(meta)
        return (lambda text: tok.encode(text, add_special_tokens=False)), tok.decode
    enc = tiktoken_encoding(meta)
    return (lambda text: enc.encode(text, allowed_special={"<|endoftext|>"})), enc.decode


def tiktoken_encoding(meta):
    name = "gpt2" if meta is None else meta["encoding"]
    return gpt2_encoding() if name in GPT2_ENCODINGS else load_tiktoken(name)


def checked_hf_tokenizer(meta):
    """The Hugging Face tokenizer meta names, once known to be the one that made the data."""
    tok = hf_tokenizer(meta["tokenizer"])
    if hf_meta(tok, meta["tokenizer"])["vocab_hash"] != meta["vocab_hash"]:
        raise ConfigError(f"the tokenizer now at {meta['tokenizer']!r} is not the one the model's data was made with "
                          f"(another vocabulary)")
    return tok


def eot_token(meta):
    """The id of the token that separates documents, the one data/fineweb_edu puts before every document
    (tiktoken's <|endoftext|>, a Hugging Face tokenizer's hf_separator), or None: character-level data has
    no such token."""
    if meta is not None and "stoi" in meta:
        return None
    if meta is not None and "vocab_hash" in meta:
        return hf_separator(checked_hf_tokenizer(meta))
    return tiktoken_encoding(meta).eot_token


# --------------------------------------------------------------------------------------------------
# out_dir: one training run's files, written by one process at a time
#   ckpt.pt        the last checkpoint: init_from="resume" continues it
#   best.pt        the checkpoint of the lowest val loss so far: sample, analyze and KD teachers load it
#   metrics.jsonl  what train.py logs
#   train.lock     the pid and host of the process training there, while it does

RUN_FILES = ("ckpt.pt", "best.pt", "metrics.jsonl")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written; the message names it and says why."""


@contextlib.contextmanager
def hold_out_dir(out_dir, fresh, overwrite):
    """out_dir for one training run, held through out_dir/train.lock until the run ends, also on an error.
    A lock of a live process is an error; one left by a process that is gone is taken over. A fresh run
    refuses an out_dir that already holds a run, unless overwrite. An out_dir this made and left empty (the
    run stopped before writing anything) is removed again."""
    made = not os.path.isdir(out_dir)
    make_dir(out_dir, "out_dir")
    lock = os.path.join(out_dir, "train.lock")
    take_lock(lock, out_dir)
    try:
        found = [f for f in RUN_FILES if os.path.exists(os.path.join(out_dir, f))]
        if fresh and found and not overwrite:
            raise ConfigError(f"out_dir={out_dir!r} already holds a run ({', '.join(found)}): continue it with "
                              f"--init_from=resume, choose another out_dir, or pass --overwrite=True to replace it")
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)
        if made and not os.listdir(out_dir):
            os.rmdir(out_dir)


def make_dir(path, setting):
    """os.makedirs(path), with one line for a path that is a file, lies below one, or cannot be written."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(f"{setting}={path!r} is a file, not a directory; choose another {setting}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        parent = os.path.dirname(os.path.abspath(path))
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            raise ConfigError(f"{setting}={path!r} lies below {parent}, which is a file, not a directory") from None
        raise ConfigError(f"{setting}={path!r} cannot be made ({e.strerror}); choose another {setting}") from None


def take_lock(lock, out_dir):
    """Creates lock holding this process's pid and host, taking over one whose process is gone. The lock is
    written whole under another name and linked into place, so it is never seen empty: an empty one was
    left by an old failed write, and is stale."""
    mine = f"{lock}.{os.getpid()}"
    while True:
        try:
            with open(mine, "w") as f:
                f.write(f"{os.getpid()} {socket.gethostname()}")
            os.link(mine, lock)  # fails if lock exists, so of two processes only one takes it
            return
        except FileExistsError:
            pass
        except OSError as e:  # a full disk, a read-only file system
            raise ConfigError(f"out_dir={out_dir!r}: could not write the lock {lock} ({e.strerror}); "
                              f"out_dir must be writable, with some free space") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(mine)
        try:
            with open(lock) as f:
                holder = f.read().split()
        except FileNotFoundError:
            continue  # its run ended meanwhile
        pid, host = (holder + ["?", "?"])[:2]
        if holder and (not pid.isdigit() or process_alive(int(pid), host)):
            raise ConfigError(f"out_dir={out_dir!r} is in use by another run (pid {pid} on host {host}, as {lock} "
                              f"says): wait for it to end or choose another out_dir; if no run uses it, delete {lock}")
        print(f"taking over {lock}: " + (f"its run (pid {pid}) is gone, it crashed or was killed" if holder
                                          else "it is empty, left by a failed write (a full disk?)"))
        with contextlib.suppress(FileNotFoundError):  # another process took it over first
            os.remove(lock)


def process_alive(pid, host):
    if host != socket.gethostname():
        return True  # another machine's process: no way to tell, so assume it runs
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def save_checkpoint(ckpt, path):
    """Writes ckpt to path through a temporary file and a rename: a crash, or a full disk, while saving
    leaves the previous checkpoint at path whole."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:  # a file object: torch's RuntimeError then carries the OSError behind it
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C too: no temporary file left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        if not isinstance(e, (OSError, RuntimeError)):
            raise
        cause = e if isinstance(e, OSError) else e.__context__
        if isinstance(cause, OSError) and cause.errno == errno.ENOSPC:
            why = "the disk is full (no space left on device)"
        else:
            why = first_line(cause or e)
        raise CheckpointError(f"could not write the checkpoint {path}: {why}; its temporary file is removed "
                              f"and an earlier {os.path.basename(path)} there is unchanged") from None


def first_line(error):
    """An exception's type and first sentence: the gist of library messages that run over several."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0].split('. ')[0]}"


def read_checkpoint(path, mmap=False):
    """The dict a train.py checkpoint file holds. Read with weights_only=True, said explicitly (torch before
    2.6 defaults to False): tensors, numbers, strings and containers only, all a checkpoint of train.py holds,
    so opening someone else's checkpoint never runs code (a pickle calls whatever it names); mmap reads
    tensors lazily (a large checkpoint's iter_num without its weights). A file that
    needs more is refused, a corrupt or truncated one is an error, each naming the file."""
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)
    except Exception as e:  # torch says "failed finding central directory" and the like
        needs = re.search(r"GLOBAL ([\w.]+)", str(e))  # what torch's weights-only unpickler refused to call
        if isinstance(e, pickle.UnpicklingError) and needs:
            raise ConfigError(f"{path} is refused: loading it would call {needs[1]}; a checkpoint is read only if it "
                              f"holds tensors, numbers, strings, lists and dicts (torch.load with weights_only=True), "
                              f"as every checkpoint of train.py does") from None
        raise ConfigError(f"{path} cannot be read, the file is corrupt or truncated ({first_line(e)}); "
                          f"an earlier checkpoint or a new run is needed{other_checkpoint(path)}") from None
    if not isinstance(ckpt, dict) or not {"model", "model_args"} <= set(ckpt):
        raise ConfigError(f"{path} is not a checkpoint of train.py (it has no model and model_args)")
    return ckpt


def other_checkpoint(path):
    """A hint naming the run's other checkpoint beside path (best.pt for ckpt.pt and back), if there is one."""
    other = {"best.pt": "ckpt.pt", "ckpt.pt": "best.pt"}.get(os.path.basename(path))
    other_path = os.path.join(os.path.dirname(path), other or "")
    if other is None or not os.path.isfile(other_path):
        return ""
    if other == "ckpt.pt":
        return f"; the run's last checkpoint {other_path} is beside it: load that file instead"
    return (f"; the run's best checkpoint {other_path} is beside it: load that file instead, or copy it to {path} "
            f"to resume from its iteration")


def describe_checkpoint(path, ckpt):
    loss = ckpt.get("val_loss")
    return f"{path} (iter {ckpt.get('iter_num', '?')}" + (f", val loss {loss:.4f})" if loss is not None else ")")


# --------------------------------------------------------------------------------------------------
# loading a model: a checkpoint of this repo or a pretrained one


HUB_NAME = re.compile(r"\w[\w.-]*/\w[\w.-]*")  # a hub name is organisation/model; older ones have no organisation


def local_path(name):
    """Whether name can only be a local path, never a hub name: absolute, ./ or ../ or ~, more than one /,
    or a first part that is a local directory (out/teachr)."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
            or ("/" in name and os.path.isdir(name.split("/")[0])))


def checkpoint_path(name):
    """The checkpoint of this repo that name stands for: name itself, or in an out_dir its best.pt, else its
    ckpt.pt; None if there is none."""
    path = next((os.path.join(name, f) for f in ("best.pt", "ckpt.pt") if os.path.isfile(os.path.join(name, f))), name)
    return path if os.path.isfile(path) else None


def hf_load_error(name, setting, e):
    hint = " (HF_HUB_OFFLINE is set: is it in the Hugging Face cache?)" if hub_offline() and not os.path.isdir(name) else ""
    return ConfigError(f"{setting}={name!r} could not be loaded as a Hugging Face model{hint}: {first_line(e)}")


def find_model(name, setting):
    """(checkpoint path, None) for a checkpoint of this repo, (None, transformers config) for a Hugging Face
    causal LM, a local directory or a hub name; anything else is an error saying what would do."""
    path = checkpoint_path(name)
    if path is not None:
        return path, None
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
    return None, config


def pretrained_meta(name, config, setting):
    """The meta of a pretrained model's tokenizer: GPT-2's BPE for GPT-2 weights (our GPT-2 data is
    tokenized by tiktoken), else the Hugging Face tokenizer saved with the model."""
    if config.model_type == "gpt2":
        return {"vocab_size": config.vocab_size, "encoding": "gpt2"}
    return hf_meta(hf_tokenizer(name, setting), name)


def load_model(name, device="cpu", setting="init_from"):
    """(model, meta, ckpt) from a checkpoint of this repo (a file, or an out_dir: its best.pt, else its
    ckpt.pt) or from a pretrained GPT-2, LLaMA or Qwen2 (a hub name or a local directory, through
    transformers); says which it loaded. meta tells the tokenizer, as a meta.json does; ckpt is the
    checkpoint dict, None for a pretrained model. setting names the setting name came from, for the messages."""
    check_device(device)
    path, config = find_model(name, setting)
    if path is not None:
        ckpt = read_checkpoint(path)
        model = GPT(GPTConfig(**ckpt["model_args"]))
        # a checkpoint of a torch.compile'd model has every key prefixed by the wrapper's attribute name
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
        meta = ckpt.get("meta")
        print(f"{setting}: loaded {describe_checkpoint(path, ckpt)}")
    else:
        meta, ckpt = pretrained_meta(name, config, setting), None
        try:
            model = GPT.from_pretrained(name)
        except (OSError, ValueError) as e:  # files missing, a model model.py does not have
            raise hf_load_error(name, setting, e) from None
        print(f"{setting}: loaded the pretrained {name}")
    return model.to(device), meta, ckpt


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
    return teacher


def load_teacher(name, device, meta, block_size, compile=False):
    """The frozen teacher for distillation on data described by meta (None: GPT-2 BPE): a checkpoint of
    this repo (an out_dir: its best.pt, as load_model) or any Hugging Face causal LM, a hub name or local directory, through
    AutoModelForCausalLM (bf16 on CUDA, fp32 elsewhere; its tokenizer is the one saved with it). In eval
    mode, without gradients, compiled if compile; train.py calls teacher(idx, return_hidden=True) and
    teacher.lm_head. Refused when its tokenizer is not the data's, its context is shorter than block_size
    or it has fewer logits than the vocabulary; for a Hugging Face model before its weights are loaded."""
    path, config = find_model(name, "teacher")
    if path is not None:
        teacher, teacher_meta, _ = load_model(path, device, "teacher")
        context, vocab_size = ("block_size", teacher.config.block_size), teacher.config.vocab_size
    else:
        teacher_meta = pretrained_meta(name, config, "teacher")
        text = config.get_text_config()
        context, vocab_size = ("max_position_embeddings", text.max_position_embeddings), text.vocab_size
    tokenizers = "teacher: {}, data: {}".format(*describe_tokenizers(teacher_meta, meta))
    if tokenizer_of(teacher_meta) != tokenizer_of(meta):
        raise ConfigError(f"teacher {name!r} has another tokenizer than the data; {tokenizers}")
    if context[1] < block_size:
        raise ConfigError(f"teacher {name!r} has {context[0]}={context[1]}, smaller than the student's block_size={block_size}")
    data_vocab = vocab_of(meta)
    if vocab_size < data_vocab:
        raise ConfigError(f"teacher {name!r} has {vocab_size} logits, fewer than the data's vocab_size={data_vocab}; {tokenizers}")
    if path is None:
        teacher = load_hf_teacher(name, device)
    teacher.eval().requires_grad_(False)  # eval: no dropout, and an affine teacher's alpha_ma stays fixed
    return torch.compile(teacher) if compile else teacher
