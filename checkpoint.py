"""
A training run's files, and the one loader of models: out_dir and who holds it, checkpoints written whole
and read without running code, metrics.jsonl, and load_model / load_teacher, which load a checkpoint of
this repo or a pretrained Hugging Face model (pretrained.py) with the meta of its tokenizer.
"""

import contextlib
import errno
import json
import os
import pickle
import re
import socket
import sys

import torch

import pretrained
from configurator import ConfigError, check_device, first_line, make_dir
from dataloader import vocab_of
from model import GPT, GPTConfig
from tokenizer import describe_tokenizers, tokenizer_of

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
# loading a model: a checkpoint of this repo or a pretrained one


def checkpoint_path(name):
    """The checkpoint of this repo that name stands for: name itself, or in an out_dir its best.pt, else its
    ckpt.pt; None if there is none."""
    path = next((os.path.join(name, f) for f in ("best.pt", "ckpt.pt") if os.path.isfile(os.path.join(name, f))), name)
    return path if os.path.isfile(path) else None


def find_model(name, setting):
    """(checkpoint path, None) for a checkpoint of this repo, (None, transformers config) for a Hugging Face
    causal LM, a local directory or a hub name (pretrained.hf_config); anything else is an error saying what would do."""
    path = checkpoint_path(name)
    if path is not None:
        return path, None
    return None, pretrained.hf_config(name, setting)


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
        meta, ckpt = pretrained.pretrained_meta(name, config, setting), None
        try:
            model = pretrained.load_gpt(name)
        except (OSError, ValueError) as e:  # files missing, a model model.py does not have
            raise pretrained.hf_load_error(name, setting, e) from None
        print(f"{setting}: loaded the pretrained {name}")
    return model.to(device), meta, ckpt


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
        teacher_meta = pretrained.pretrained_meta(name, config, "teacher")
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
        teacher = pretrained.load_hf_teacher(name, device)
    teacher.eval().requires_grad_(False)  # eval: no dropout, and an affine teacher's alpha_ma stays fixed
    return torch.compile(teacher) if compile else teacher
