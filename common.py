"""
What every script shares, in one place: settings from the command line, the data on disk, and the one
function that loads a model with its tokenizer (a checkpoint of this repo or a pretrained model).
"""

import ast
import dataclasses
import difflib
import os
import pickle
import types

import numpy as np
import torch

from model import GPT, GPTConfig

DATA_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
GPT2_ENCODINGS = ("gpt2", "r50k_base")  # two tiktoken names for the same GPT-2 BPE token ids


class ConfigError(ValueError):
    """A bad setting, or data or a model that does not fit: the message says what and what would do."""


# --------------------------------------------------------------------------------------------------
# settings: a dataclass per script, filled from config files and --key=value overrides


def check_types(cfg):
    """Every field of the dataclass cfg must have its default's type; an int is taken for a float."""
    for f in dataclasses.fields(cfg):
        value, want = getattr(cfg, f.name), type(f.default)
        if want is float and type(value) is int:
            setattr(cfg, f.name, float(value))
        elif type(value) is not want:
            need = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}[want]
            raise ConfigError(f"{f.name}={value!r} must be {need} (got {type(value).__name__})")


def check_choice(name, value, allowed):
    if value not in allowed:
        raise ConfigError(f"unknown {name}={value!r}; allowed: {', '.join(allowed)}")


def read_config_file(path):
    """The names a config file assigns (it is python, run with exec), less dunders and imported modules."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found (overrides are written --key=value)")
    namespace = {}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), namespace)
    return {k: v for k, v in namespace.items() if not k.startswith("__") and not isinstance(v, types.ModuleType)}


def load_config(argv, cls):
    """nanoGPT-style settings from the command line: config files and --key=value overrides, in order.
    An override's value is a python literal (--lr=3e-4, --bias=False); string fields also take bare text."""
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
# data: train.bin and val.bin of token ids, and meta.pkl saying what the ids mean


def find_data(data_dir, dataset, block_size):
    """(data_dir, meta): the folder with train.bin and val.bin (data_dir, else data/<dataset>), and its
    meta.pkl's dict or None."""
    folder = data_dir or os.path.join(DATA_ROOT, dataset)
    missing = [s for s in ("train.bin", "val.bin") if not os.path.isfile(os.path.join(folder, s))]
    if missing and data_dir:
        raise ConfigError(f"data_dir={data_dir!r} has no {' or '.join(missing)}")
    if missing:
        prepare = os.path.join(DATA_ROOT, dataset, "prepare.py")
        if os.path.isfile(prepare):
            raise ConfigError(f"no prepared data for dataset={dataset!r} in {folder}; "
                              f"run first: python {os.path.relpath(prepare)}")
        known = sorted(d for d in os.listdir(DATA_ROOT) if os.path.isfile(os.path.join(DATA_ROOT, d, "prepare.py")))
        raise ConfigError(f"unknown dataset={dataset!r}; allowed: {', '.join(known)} (or set data_dir)")
    for split in ("train", "val"):
        n = len(read_tokens(folder, split))
        if n <= block_size:
            raise ConfigError(f"{split}.bin in {folder} holds {n} tokens, too few for block_size={block_size}")
    return folder, read_meta(folder)


def read_tokens(folder, split):
    """The token ids of folder/<split>.bin, as a read-only memmap."""
    return np.memmap(os.path.join(folder, f"{split}.bin"), dtype=np.uint16, mode="r")


def read_meta(folder):
    """folder/meta.pkl's dict, or None if there is none (GPT-2 BPE data, as in nanoGPT)."""
    path = os.path.join(folder, "meta.pkl")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


# --------------------------------------------------------------------------------------------------
# tokenizers: what a token id means, from a meta dict (meta.pkl, or a checkpoint's copy of it)


def tokenizer_of(meta):
    """What a token id means: the characters' ids for char data, else the BPE's name. Data without
    meta.pkl is GPT-2 BPE, as in nanoGPT."""
    if meta is None:
        return "gpt2"
    if "stoi" in meta:
        return meta["stoi"]
    return "gpt2" if meta["encoding"] in GPT2_ENCODINGS else meta["encoding"]


def describe_tokenizer(meta):
    kind = tokenizer_of(meta)
    if isinstance(kind, dict):
        return f"character-level ({len(kind)} characters)"
    return "GPT-2 BPE" if kind == "gpt2" else f"BPE {kind!r}"


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. "gpt2" downloads its files; "r50k_base" has the same token ids and also
    loads offline from a TIKTOKEN_CACHE_DIR holding its ranks file."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception:  # no network, or no cached files for this name: try the other one
        return tiktoken.get_encoding("r50k_base")


def get_tokenizer(meta):
    """(encode, decode) for a model's meta: its characters, or a tiktoken BPE (GPT-2's without meta)."""
    if meta is not None and "stoi" in meta:
        stoi, itos = meta["stoi"], meta["itos"]

        def encode(text):
            unknown = sorted(set(text) - set(stoi))
            if unknown:
                raise ConfigError(f"the text has characters not in the model's vocabulary: {', '.join(map(repr, unknown))}")
            return [stoi[c] for c in text]

        return encode, lambda ids: "".join(itos[i] for i in ids)
    enc = tiktoken_encoding(meta)
    return (lambda text: enc.encode(text, allowed_special={"<|endoftext|>"})), enc.decode


def tiktoken_encoding(meta):
    name = "gpt2" if meta is None else meta["encoding"]
    if name in GPT2_ENCODINGS:
        return gpt2_encoding()
    import tiktoken
    return tiktoken.get_encoding(name)


def eot_token(meta):
    """The id of the token that separates documents (tiktoken's <|endoftext|>, which data/fineweb_edu puts
    before every document), or None: character-level data has no such token."""
    if meta is not None and "stoi" in meta:
        return None
    return tiktoken_encoding(meta).eot_token


# --------------------------------------------------------------------------------------------------
# checkpoints and pretrained models


def save_checkpoint(ckpt, path):
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # atomic: a crash while saving leaves the previous checkpoint whole


def load_model(name, device="cpu", setting="init_from"):
    """(model, meta, ckpt) from a checkpoint of this repo (a ckpt.pt or an out_dir holding one) or from a
    pretrained model (a name or a local directory, through transformers). meta tells the tokenizer, as a
    meta.pkl does; ckpt is the checkpoint dict, None for a pretrained model. setting names the setting
    name came from, for the error message."""
    path = os.path.join(name, "ckpt.pt") if os.path.isfile(os.path.join(name, "ckpt.pt")) else name
    if os.path.isfile(path):
        ckpt = torch.load(path, map_location="cpu")
        model = GPT(GPTConfig(**ckpt["model_args"]))
        # a checkpoint of a torch.compile'd model has every key prefixed by the wrapper's attribute name
        model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
        meta = ckpt.get("meta")
    elif os.path.isdir(name) or name in GPT2_NAMES:
        model, ckpt = GPT.from_pretrained(name), None
        meta = {"vocab_size": model.config.vocab_size, "encoding": "gpt2"}
    else:
        raise ConfigError(f"{setting}={name!r} is no file or directory: expected a ckpt.pt of this repo, an out_dir "
                          f"holding one, a local GPT-2 directory, or one of {', '.join(GPT2_NAMES)}")
    return model.to(device), meta, ckpt
