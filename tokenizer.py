"""
What a token id means, from a meta dict (a data folder's meta.json, or a checkpoint's copy of it). Three kinds:
characters ("stoi", "itos"), a tiktoken BPE ("encoding") and a Hugging Face tokenizer ("tokenizer": its hub
name or absolute directory, "vocab_hash": a digest of its token -> id table). Also the Hugging Face hub
checks that tokenizers and pretrained models (pretrained.py) share, and the refusal of code shipped with them.
"""

import hashlib
import json
import os
import urllib.error
import urllib.request

from configurator import ConfigError

GPT2_ENCODINGS = ("gpt2", "r50k_base")  # two tiktoken names for the same GPT-2 BPE token ids


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


# --------------------------------------------------------------------------------------------------
# tiktoken


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


def tiktoken_encoding(meta):
    name = "gpt2" if meta is None else meta["encoding"]
    return gpt2_encoding() if name in GPT2_ENCODINGS else load_tiktoken(name)


# --------------------------------------------------------------------------------------------------
# Hugging Face tokenizers, and the hub


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


def local_path(name):
    """Whether name can only be a local path, never a hub name: absolute, ./ or ../ or ~, more than one /,
    or a first part that is a local directory (out/teachr)."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1
            or ("/" in name and os.path.isdir(name.split("/")[0])))


def check_hub(name, setting):
    """A name that is no local directory comes from the Hugging Face hub; without network, fail at once
    saying what would work, rather than after minutes of retries."""
    if local_path(name) and not os.path.exists(name):
        raise ConfigError(f"{setting}={name!r} does not exist (a local path, not a Hugging Face hub name): "
                          f"deleted, moved or mistyped")
    if not os.path.isdir(name) and not hub_offline() and not hub_reachable():
        raise ConfigError(f"{setting}={name!r} needs the Hugging Face hub, which cannot be reached: connect, set "
                          f"HF_HUB_OFFLINE=1 if {name} is in the Hugging Face cache, or give a local directory")


def refuse_custom_code(name, setting, config, file):
    """A Hugging Face model or tokenizer whose file (config.json, tokenizer_config.json) maps classes to Python
    modules shipped with it (auto_map) is meant to run that code: refused, as nothing here ever runs code
    that comes with a model (trust_remote_code=False), and transformers' own classes would load it otherwise."""
    if "auto_map" in config:
        raise ConfigError(f"{setting}={name!r} needs code shipped with it ({file} has auto_map for "
                          f"{', '.join(config['auto_map'])}), and such code is never run here: only models and "
                          f"tokenizers that transformers implements itself load")


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


def checked_hf_tokenizer(meta):
    """The Hugging Face tokenizer meta names, once known to be the one that made the data."""
    tok = hf_tokenizer(meta["tokenizer"])
    if hf_meta(tok, meta["tokenizer"])["vocab_hash"] != meta["vocab_hash"]:
        raise ConfigError(f"the tokenizer now at {meta['tokenizer']!r} is not the one the model's data was made with "
                          f"(another vocabulary)")
    return tok


# --------------------------------------------------------------------------------------------------
# a tokenizer by name (to prepare data) or by meta (to encode and decode for a model)


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


def eot_token(meta):
    """The id of the token that separates documents, the one data/fineweb_edu puts before every document
    (tiktoken's <|endoftext|>, a Hugging Face tokenizer's hf_separator), or None: character-level data has
    no such token."""
    if meta is not None and "stoi" in meta:
        return None
    if meta is not None and "vocab_hash" in meta:
        return hf_separator(checked_hf_tokenizer(meta))
    return tiktoken_encoding(meta).eot_token
