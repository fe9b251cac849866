"""Opening someone else's data, checkpoint or Hugging Face model never runs their code: metadata is JSON (a
legacy meta.pkl is read as plain data only), checkpoints load with weights_only=True, and a model or
tokenizer that ships its own code is refused. The malicious files here would create a file if loaded."""

import datetime
import json
import math
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import dataloader
import tokenizer
from checkpoint import find_model, load_model, read_checkpoint, save_checkpoint
from configurator import ConfigError
from dataloader import find_data, read_meta, write_data
from test_model import make_char_data, tiny
from train import train

REPO = os.path.dirname(os.path.abspath(__file__))
CHAR_META = {"vocab_size": 8, "itos": dict(enumerate("abcdefgh")), "stoi": {c: i for i, c in enumerate("abcdefgh")}}


class Payload:
    """Unpickling this creates the file marker: what a malicious meta.pkl or checkpoint would do instead."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def evil_data(folder, marker):
    """A data folder whose meta.pkl runs code when pickle.load reads it."""
    make_char_data(folder)
    os.remove(os.path.join(folder, "meta.json"))
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({**CHAR_META, "dtype": "uint16", "note": Payload(marker)}, f)
    return str(folder)


def evil_checkpoint(good, path, marker):
    """The checkpoint good with something added that runs code when torch.load reads it unrestricted."""
    torch.save({**torch.load(good, weights_only=True), "note": Payload(marker)}, path)
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good data and a good run, and a malicious data folder and checkpoint, all made once."""
    tmp = tmp_path_factory.mktemp("sec")
    data = make_char_data(tmp / "data")
    train(tiny(tmp, data=data, max_iters=0))
    marker = tmp / "code_ran"
    os.makedirs(tmp / "evil_run")  # an out_dir to resume, whose ckpt.pt is malicious
    return {"data": data, "run": str(tmp / "out"), "marker": marker, "tmp": tmp,
            "evil_data": evil_data(tmp / "evil_data", marker),
            "evil_ckpt": evil_checkpoint(tmp / "out" / "ckpt.pt", tmp / "evil.pt", marker),
            "evil_run": evil_checkpoint(tmp / "out" / "ckpt.pt", tmp / "evil_run" / "ckpt.pt", marker)}


def meta_refusal(folder):
    return (f"ConfigError: {folder}/meta.pkl is refused: it names builtins.exec, which reading it would call (a meta.pkl "
            f"is read only if it is plain data: dicts, lists, strings, numbers); prepare the data again with its "
            f"data/*/prepare.py, which writes meta.json")


def ckpt_refusal(path):
    return (f"ConfigError: {path} is refused: loading it would call exec; a checkpoint is read only if it holds tensors, "
            f"numbers, strings, lists and dicts (torch.load with weights_only=True), as every checkpoint of train.py does")


def script_cases(f):
    """(command line, the one line it must exit with) of each script given a malicious file. sample.py reads
    no data folder, only a checkpoint."""
    out = str(f["tmp"] / "new_run")
    return {
        "train.py data_dir": (["train.py", f"--data_dir={f['evil_data']}", f"--out_dir={out}", "--device=cpu"],
                              meta_refusal(f["evil_data"])),
        "train.py resume": (["train.py", f"--data_dir={f['data']}", f"--out_dir={os.path.dirname(f['evil_run'])}",
                             "--init_from=resume", "--block_size=16", "--device=cpu"], ckpt_refusal(f["evil_run"])),
        "sample.py init_from": (["sample.py", f"--init_from={f['evil_ckpt']}", "--device=cpu"], ckpt_refusal(f["evil_ckpt"])),
        "eval.py init_from": (["eval.py", f"--init_from={f['evil_ckpt']}", "--device=cpu"], ckpt_refusal(f["evil_ckpt"])),
        "eval.py ppl_data_dir": (["eval.py", f"--init_from={f['run']}", f"--ppl_data_dir={f['evil_data']}", "--device=cpu"],
                                 meta_refusal(f["evil_data"])),
        "analyze.py ckpt": (["analyze.py", f"--ckpt={f['evil_ckpt']}"], ckpt_refusal(f["evil_ckpt"])),
        "analyze.py data_dir": (["analyze.py", f"--ckpt={f['run']}", f"--data_dir={f['evil_data']}"], meta_refusal(f["evil_data"])),
    }


@pytest.mark.parametrize("case", ["train.py data_dir", "train.py resume", "sample.py init_from", "eval.py init_from",
                                  "eval.py ppl_data_dir", "analyze.py ckpt", "analyze.py data_dir"])
def test_the_scripts_refuse_malicious_files_without_running_them(files, case):
    argv, message = script_cases(files)[case]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1 and done.stderr.strip() == message  # one line, no traceback
    assert not files["marker"].exists()


# --------------------------------------------------------------------------------------------------
# metadata: meta.json, or a legacy meta.pkl of plain data


def test_meta_json_round_trip_and_a_stale_meta_pkl_goes(tmp_path):
    folder = make_char_data(tmp_path / "d")
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:  # an earlier preparation's, describing other files
        pickle.dump({"vocab_size": 3, "encoding": "x"}, f)
    meta = write_data(folder, {"val": [[0, 1, 7]], "train": [[5, 6, 7, 0]]}, CHAR_META)
    assert sorted(os.listdir(folder)) == ["meta.json", "train.bin", "val.bin"]
    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
        written = json.load(f)
    assert written["itos"] == {str(i): c for i, c in enumerate("abcdefgh")}  # JSON's keys are strings ...
    assert read_meta(folder) == meta == {**CHAR_META, "dtype": "uint16", "tokens": {"val": 3, "train": 4}}  # ... read as ids
    assert tokenizer.get_tokenizer(read_meta(folder))[1]([7, 0, 1]) == "hab"


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_a_legacy_meta_pkl_of_plain_data_is_read(tmp_path, protocol):
    folder = make_char_data(tmp_path / "d")
    os.remove(os.path.join(folder, "meta.json"))
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:  # as nanoGPT's shakespeare_char/prepare.py writes it
        pickle.dump(CHAR_META, f, protocol=protocol)
    assert find_data(folder, "", block_size=16) == (folder, CHAR_META)


@pytest.mark.parametrize("content, refused", [
    ({**CHAR_META, "when": datetime.date(2024, 1, 1)}, "it names datetime.date, which reading it would call"),
    ({**CHAR_META, "vocab_size": np.int64(8)}, "it names numpy."),
    ({**CHAR_META, "chars": set("ab")}, "it holds a dict with more than plain data"),
    ({**CHAR_META, "raw": b"ab"}, "it holds a dict with more than plain data"),
])
def test_the_restricted_unpickler_refuses_anything_but_plain_data(tmp_path, content, refused):
    folder = make_char_data(tmp_path / "d")
    os.remove(os.path.join(folder, "meta.json"))
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump(content, f)
    with pytest.raises(ConfigError) as e:
        read_meta(folder)
    assert str(e.value).startswith(f"{folder}/meta.pkl is refused: {refused}")


def test_meta_json_comes_before_a_meta_pkl(tmp_path):
    folder = make_char_data(tmp_path / "d")
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({"note": Payload(tmp_path / "code_ran")}, f)
    assert read_meta(folder) == CHAR_META and not (tmp_path / "code_ran").exists()


@pytest.mark.parametrize("change, message", [
    ({"vocab_size": "8"}, "vocab_size='8' must be a positive integer"),
    ({"vocab_size": 8.0}, "vocab_size=8.0 must be a positive integer"),
    ({"vocab_size": 0}, "vocab_size=0 must be a positive integer"),
    ({"vocab_size": True}, "vocab_size=True must be a positive integer"),
    ({"dtype": "int8"}, "dtype='int8' is not a dtype of token ids; allowed: uint16, uint32"),
    ({"tokens": {"train": -1}}, "tokens={'train': -1} must map each split to its number of tokens"),
    ({"encoding": 5}, "encoding=5 must be a string"),
    ({"stoi": ["a", "b"]}, "stoi=['a', 'b'] must be a dict (character-level data has both stoi and itos)"),
    ({"itos": None}, "itos=None must be a dict (character-level data has both stoi and itos)"),
    ({"stoi": {**CHAR_META["stoi"], "a": 9}}, "stoi['a']=9 is not the id in 0..7 of one character that itos maps back to it"),
    ({"stoi": {**CHAR_META["stoi"], "ab": 0}}, "stoi['ab']=0 is not the id in 0..7 of one character that itos maps back to it"),
    ({"stoi": {**CHAR_META["stoi"], "a": 1}}, "stoi['a']=1 is not the id in 0..7 of one character that itos maps back to it"),
    ({"itos": {**CHAR_META["itos"], "x": "a"}}, "itos['x']='a' has no stoi entry mapping 'a' back to it"),
    ({"itos": {**CHAR_META["itos"], 8: "z"}}, "itos[8]='z' has no stoi entry mapping 'z' back to it"),
])
def test_meta_contents_are_checked_naming_file_field_and_value(tmp_path, change, message):
    folder = make_char_data(tmp_path / "d")
    dataloader.write_meta(folder, {**CHAR_META, **change})
    with pytest.raises(ConfigError) as e:
        find_data(folder, "", block_size=16)
    assert str(e.value) == f"{folder}/meta.json: {message}"


def test_meta_without_vocab_size_or_tokenizer_is_refused(tmp_path):
    folder = make_char_data(tmp_path / "d")
    for meta, message in (({"encoding": "gpt2"}, "has no vocab_size: not the metadata of a prepare.py; prepare the data again"),
                          ({"vocab_size": 8}, "names no tokenizer: it needs stoi and itos (characters), encoding (a tiktoken "
                                              "BPE) or tokenizer and vocab_hash (Hugging Face); prepare the data again")):
        dataloader.write_meta(folder, meta)
        with pytest.raises(ConfigError) as e:
            find_data(folder, "", block_size=16)
        assert str(e.value) == f"{folder}/meta.json {message}"


def test_a_legacy_meta_pkl_is_checked_too(tmp_path):
    folder = make_char_data(tmp_path / "d")
    os.remove(os.path.join(folder, "meta.json"))
    with open(os.path.join(folder, "meta.pkl"), "wb") as f:
        pickle.dump({**CHAR_META, "vocab_size": "65"}, f)
    with pytest.raises(ConfigError) as e:
        find_data(folder, "", block_size=16)
    assert str(e.value) == f"{folder}/meta.pkl: vocab_size='65' must be a positive integer"


# --------------------------------------------------------------------------------------------------
# checkpoints: weights_only=True


def test_a_checkpoint_needing_code_is_refused_and_a_corrupt_one_told_apart(files, tmp_path):
    with pytest.raises(ConfigError) as e:
        read_checkpoint(files["evil_ckpt"])
    assert f"ConfigError: {e.value}" == ckpt_refusal(files["evil_ckpt"]) and not files["marker"].exists()
    good = open(os.path.join(files["run"], "ckpt.pt"), "rb").read()
    for name, content in (("cut.pt", good[:len(good) // 2]), ("text.pt", b"not a checkpoint")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError, match=f"^{re.escape(str(tmp_path / name))} cannot be read, the file is corrupt or truncated "):
            read_checkpoint(str(tmp_path / name))


def test_every_kind_of_checkpoint_train_writes_loads_and_resumes(tmp_path):
    """ckpt.pt and best.pt with a character meta and with a Hugging Face tokenizer's, a resume from each
    (optimizer state and random states), and the floats a checkpoint may hold (inf, nan)."""
    hf_meta = {"vocab_size": 8, "tokenizer": "/models/some-tokenizer", "vocab_hash": "0123456789abcdef"}
    for name, meta in (("char", CHAR_META), ("hf", hf_meta)):
        data = make_char_data(tmp_path / name / "data")
        dataloader.write_meta(data, meta)
        cfg = tiny(tmp_path / name, data=data, max_iters=4, eval_interval=2)
        train(cfg)
        best, last = (read_checkpoint(str(tmp_path / name / "out" / f)) for f in ("best.pt", "ckpt.pt"))
        assert last["meta"] == best["meta"] == meta and last["iter_num"] == 4
        assert last["optimizer"]["state"] and last["rng"][0]["torch"].dtype == torch.uint8
        assert train(tiny(tmp_path / name, data=data, max_iters=6, eval_interval=2, init_from="resume"))["iter_num"] == 6
    save_checkpoint({**last, "best_val_loss": math.inf, "val_loss": math.nan}, str(tmp_path / "floats.pt"))
    floats = read_checkpoint(str(tmp_path / "floats.pt"))
    assert floats["best_val_loss"] == math.inf and math.isnan(floats["val_loss"])


def test_read_checkpoint_is_the_only_torch_load_and_remote_code_is_never_trusted():
    """Every script loads checkpoints through checkpoint.read_checkpoint (weights_only=True, its refusals); no
    from_pretrained runs code shipped with a model."""
    loads, hf_loads = [], []
    for name in sorted(os.listdir(REPO)):
        if name.endswith(".py") and not name.startswith("test_"):
            with open(os.path.join(REPO, name), encoding="utf-8") as f:
                src = f.read()
            loads += re.findall(r"torch\.load\([^\n]*", src)
            hf_loads += re.findall(r"Auto\w+\.from_pretrained\([^\n]*", src)
    assert loads == ['torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)']
    assert hf_loads and all("trust_remote_code=False" in call for call in hf_loads)


# --------------------------------------------------------------------------------------------------
# Hugging Face models and tokenizers that ship code


def hf_model_dir(folder, marker, **config_changes):
    """A tiny LLaMA saved by save_pretrained, config.json changed, with a module that would create marker."""
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    with open(os.path.join(folder, "config.json")) as f:
        config_json = json.load(f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**config_json, **config_changes}, f)
    for module in ("configuration_evil.py", "modeling_evil.py"):
        with open(os.path.join(folder, module), "w") as f:
            f.write(f"open({str(marker)!r}, 'w').close()\n")
    return str(folder)


AUTO_MAP = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.EvilModel"}


def test_a_model_that_ships_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    plain = hf_model_dir(tmp_path / "plain", marker)
    assert find_model(plain, "teacher")[1].model_type == "llama"  # the same model without auto_map loads
    custom = hf_model_dir(tmp_path / "custom", marker, auto_map=AUTO_MAP)
    for setting, load in (("init_from", lambda: load_model(custom, "cpu")),
                          ("teacher", lambda: checkpoint.load_teacher(custom, "cpu", None, 16))):
        with pytest.raises(ConfigError) as e:
            load()
        assert str(e.value) == (f"{setting}={custom!r} needs code shipped with it (config.json has auto_map for AutoConfig, "
                                f"AutoModelForCausalLM), and such code is never run here: only models and tokenizers "
                                f"that transformers implements itself load")
    unknown = hf_model_dir(tmp_path / "unknown", marker, model_type="evil")
    with pytest.raises(ConfigError) as e:
        load_model(unknown, "cpu")
    assert str(e.value) == (f"init_from={unknown!r} has model_type='evil', which transformers does not implement: it "
                            f"would need code shipped with the model, and such code is never run here")
    assert not marker.exists()


def test_a_tokenizer_that_ships_code_is_refused(tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<eos>": 0, "a": 1, "b": 2}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<eos>"))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>").save_pretrained(tmp_path)
    assert tokenizer.open_tokenizer(str(tmp_path))[0]["vocab_size"] == 3  # as saved, it loads
    with open(tmp_path / "tokenizer_config.json") as f:
        config = json.load(f)
    with open(tmp_path / "tokenizer_config.json", "w") as f:
        json.dump({**config, "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}, f)
    with pytest.raises(ConfigError) as e:
        tokenizer.hf_tokenizer(str(tmp_path))
    assert str(e.value) == (f"tokenizer={str(tmp_path)!r} needs code shipped with it (tokenizer_config.json has auto_map "
                            f"for AutoTokenizer), and such code is never run here: only models and tokenizers that "
                            f"transformers implements itself load")
