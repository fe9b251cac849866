"""Faults and bad inputs around training and data preparation: an interrupted run resumes to the same log and
checkpoints, and every bad path, file or setting ends in one line naming it."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import checkpoint
import configurator
import dataloader
import tokenizer
import train as train_module
from checkpoint import CheckpointError, read_jsonl
from configurator import ConfigError
from test_model import load_script, make_char_data, tiny
from test_runs import same_weights, weights
from train import Interrupted, TrainConfig, train

REPO = os.path.dirname(os.path.abspath(__file__))
TIMING = ("tokens_per_s", "dt_ms", "time_s", "eval_s")  # wall-clock times differ between any two runs


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


# --------------------------------------------------------------------------------------------------
# a resumed run is the uninterrupted one


def test_a_resumed_log_equals_the_uninterrupted_one_with_a_checkpoint_between_two_rows(tmp_path):
    """Rows every 3 iters, the checkpoint at iter 5: the row at iter 6 averages iters 4-6 either way (the
    checkpoint carries iter 4's losses), with KD rows, dropout and two micro-steps."""
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, "teacher", data, max_iters=4))
    kw = dict(loss="kd", teacher=str(tmp_path / "teacher"), attn="affine", dropout=0.1, gradient_accumulation_steps=2,
              log_interval=3, eval_interval=5, max_iters=9)
    train(tiny(tmp_path, "whole", data, **kw))
    train(tiny(tmp_path, "halves", data, **{**kw, "max_iters": 5}))
    train(tiny(tmp_path, "halves", data, **kw, init_from="resume"))
    whole, halves = (read_jsonl(tmp_path / name / "metrics.jsonl") for name in ("whole", "halves"))
    assert [r["iter"] for r in whole if "kd" in r] == [0, 3, 6]
    assert without_timing(halves) == without_timing(whole)
    assert same_weights(weights(tmp_path / "whole" / "ckpt.pt"), weights(tmp_path / "halves" / "ckpt.pt"))


@pytest.mark.parametrize("change, message", [
    (dict(teacher="other"), "teacher='{teacher}' there, '{other}' now"),
    (dict(loss="ce", teacher=""), "loss='kd' there, 'ce' now; teacher='{teacher}' there, '' now"),
    (dict(kd_alpha=0.9, kd_temperature=2.0, kd_reverse=True),
     "kd_alpha=0.5 there, 0.9 now; kd_temperature=1.0 there, 2.0 now; kd_reverse=False there, True now"),
])
def test_a_kd_run_resumed_with_another_teacher_or_loss_is_refused(tmp_path, change, message):
    data = make_char_data(tmp_path / "data")
    for name in ("teacher", "other"):
        train(tiny(tmp_path, name, data, max_iters=1))
    teacher, other = str(tmp_path / "teacher"), str(tmp_path / "other")
    train(tiny(tmp_path, data=data, max_iters=2, loss="kd", teacher=teacher))
    change = {k: other if v == "other" else v for k, v in change.items()}
    with pytest.raises(ConfigError) as e:
        train(tiny(tmp_path, data=data, max_iters=4, init_from="resume", **{"loss": "kd", "teacher": teacher, **change}))
    assert f"but the settings differ: {message.format(teacher=teacher, other=other)}. Resume with" in str(e.value)


# --------------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM


def test_an_interruption_between_best_pt_and_ckpt_pt_resumes_to_the_same_best(tmp_path, monkeypatch):
    """best.pt is written first: stopped before ckpt.pt, the resume starts from the earlier ckpt.pt, whose
    best_val_loss makes it write best.pt again at the same iteration, as the uninterrupted run has it."""
    data = make_char_data(tmp_path / "data")
    kw = dict(max_iters=6, eval_interval=2, lr_decay_iters=6)
    train(tiny(tmp_path, "whole", data, **kw))
    real_save = train_module.save_checkpoint

    def stopped_at_iter_4(ckpt, path):
        if ckpt["iter_num"] == 4 and path.endswith("ckpt.pt"):
            raise KeyboardInterrupt
        real_save(ckpt, path)

    monkeypatch.setattr(train_module, "save_checkpoint", stopped_at_iter_4)
    out = tmp_path / "out"
    with pytest.raises(Interrupted, match=f"^stopped by Ctrl-C; {out / 'ckpt.pt'} keeps iter 2 \\(continue with "
                                          f"--init_from=resume\\); the iterations after it are lost$"):
        train(tiny(tmp_path, data=data, **kw))
    assert (torch.load(out / "best.pt")["iter_num"], torch.load(out / "ckpt.pt")["iter_num"]) == (4, 2)
    assert sorted(os.listdir(out)) == ["best.pt", "ckpt.pt", "metrics.jsonl"]  # no lock, no .tmp
    monkeypatch.undo()
    train(tiny(tmp_path, data=data, **kw, init_from="resume"))
    best, whole = torch.load(out / "best.pt"), torch.load(tmp_path / "whole" / "best.pt")
    assert (best["iter_num"], best["val_loss"]) == (whole["iter_num"], whole["val_loss"])
    assert same_weights(best["model"], whole["model"])
    assert torch.load(out / "ckpt.pt")["best_val_loss"] == best["val_loss"]


def test_an_interruption_before_any_checkpoint_says_nothing_was_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "estimate_loss", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(Interrupted, match="^stopped by Ctrl-C; no checkpoint was written, so the run is lost$"):
        train(tiny(tmp_path))
    assert os.listdir(tmp_path / "out") == ["metrics.jsonl"]


@pytest.mark.parametrize("signum, name", [(signal.SIGINT, "Ctrl-C"), (signal.SIGTERM, "SIGTERM")])
def test_ctrl_c_and_sigterm_stop_in_one_line_after_the_bar(tmp_path, signum, name):
    data = make_char_data(tmp_path / "data")
    config = tmp_path / "run.py"
    config.write_text(f"out_dir, data_dir, device = {str(tmp_path / 'out')!r}, {data!r}, 'cpu'\n"
                      "n_layer, n_head, n_embd, block_size, batch_size = 1, 2, 16, 16, 2\n"
                      "max_iters = lr_decay_iters = 10**6\nwarmup_iters, eval_interval, eval_iters = 0, 20, 1\n")
    ckpt = tmp_path / "out" / "ckpt.pt"
    # a shell starts its background jobs with Ctrl-C ignored, and python keeps an inherited SIG_IGN: give the
    # run SIGINT's default, as a terminal would, whatever launched the tests
    run = subprocess.Popen([sys.executable, "train.py", str(config)], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    while not ckpt.exists() and run.poll() is None:
        time.sleep(0.2)
    run.send_signal(signum)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1 and "Traceback" not in err, err
    last = err.splitlines()[-1]
    assert last.startswith(f"Interrupted: stopped by {name}; {ckpt} keeps iter ") and last.endswith(
        " (continue with --init_from=resume); the iterations after it are lost"), err
    assert not (tmp_path / "out" / "train.lock").exists()


def test_a_checkpoint_error_is_printed_after_the_progress_bar_is_closed(tmp_path, monkeypatch, capsys):
    def disk_full(ckpt, path):
        raise CheckpointError(f"could not write the checkpoint {path}")

    monkeypatch.setattr(train_module, "save_checkpoint", disk_full)
    with pytest.raises(CheckpointError):
        train(tiny(tmp_path, max_iters=4, eval_interval=2))
    err = capsys.readouterr().err
    assert err.endswith("\n") and "0/4" in err  # the bar ended its line: what follows starts a line of its own


# --------------------------------------------------------------------------------------------------
# settings: the lr schedule follows --max_iters, config files that fail, --help into a closed pipe


def test_max_iters_alone_carries_the_cosine_decay():
    """lr_decay_iters=0 (the default, and what the configs leave) is max_iters: a shorter run still ends at min_lr."""
    cfg = configurator.load_config(["config/train_shakespeare_char_cpu.py", "--max_iters=200"], TrainConfig)
    assert (cfg.lr_decay_iters, train_module.get_lr(cfg, 200)) == (0, cfg.min_lr)
    assert train_module.get_lr(cfg, 150) > cfg.min_lr
    cfg = configurator.load_config(["config/train_shakespeare_char_cpu.py", "--max_iters=200", "--lr_decay_iters=400"], TrainConfig)
    assert train_module.get_lr(cfg, 200) > cfg.min_lr  # given, it is kept


@pytest.mark.parametrize("text, message", [
    ("n_layer = 2\nn_head = 1 / 0\n", "line 2: ZeroDivisionError: division by zero"),
    ("n_layer = (2,\n", "line 1: SyntaxError: '(' was never closed"),
    ("import os\nout_dir = os.path.join(1)\n", "line 2: TypeError: expected str, bytes or os.PathLike object, not int"),
])
def test_a_config_file_that_fails_is_one_line_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.py"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:  # which train.py prints as its one line
        configurator.load_config([str(path)], TrainConfig)
    assert str(e.value) == f"config file {path}, {message}"


@pytest.mark.parametrize("script", ["train.py", "sample.py", "eval.py", "compare.py", "analyze.py", "bench.py",
                                    "data/shakespeare_char/prepare.py"])
def test_help_into_a_closed_pipe_exits_quietly(script):
    """python SCRIPT --help | head -1, for every script: the reader is gone before the help is written."""
    read, write = os.pipe()
    os.close(read)
    done = subprocess.run([sys.executable, script, "--help"], cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert (done.returncode, done.stderr) == (0, "")


# --------------------------------------------------------------------------------------------------
# out_dir that cannot be one, and its lock


def test_an_out_dir_that_is_a_file_or_below_one_or_read_only(tmp_path, monkeypatch):
    data = make_char_data(tmp_path / "data")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=f"^out_dir='{tmp_path / 'file'}' is a file, not a directory; choose another out_dir$"):
        train(tiny(tmp_path, "file", data))
    with pytest.raises(ConfigError, match=f"^out_dir='{tmp_path / 'file' / 'a' / 'b'}' lies below {tmp_path / 'file'}, "
                                          "which is a file, not a directory$"):
        train(tiny(tmp_path, "file/a/b", data))

    def read_only(path, exist_ok=False):  # chmod does not stop root, so the file system's answer is mocked
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(os, "makedirs", read_only)
    with pytest.raises(ConfigError, match=f"^out_dir='{tmp_path / 'ro'}' cannot be made \\(Read-only file system\\); "
                                          "choose another out_dir$"):
        train(tiny(tmp_path, "ro", data))


def test_an_empty_lock_is_taken_over_and_a_lock_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, capsys):
    """A full disk once left a 0-byte train.lock; the lock is now written whole before it is linked into place."""
    data = make_char_data(tmp_path / "data")
    (tmp_path / "out").mkdir()
    lock = tmp_path / "out" / "train.lock"
    lock.write_text("")
    train(tiny(tmp_path, data=data, max_iters=1))
    assert f"taking over {lock}: it is empty, left by a failed write (a full disk?)" in capsys.readouterr().out
    assert not lock.exists()
    real_open = open

    def disk_full(path, mode="r", *args, **kw):
        if str(path).startswith(str(lock)) and "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr("builtins.open", disk_full)
    with pytest.raises(ConfigError, match=f"^out_dir='{tmp_path / 'out'}': could not write the lock {lock} \\(No space left "
                                          f"on device\\); out_dir must be writable, with some free space$"):
        train(tiny(tmp_path, data=data, max_iters=2, init_from="resume"))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "out")) == ["best.pt", "ckpt.pt", "metrics.jsonl"]


# --------------------------------------------------------------------------------------------------
# data, checkpoints and tokenizers that are not what they seem


def test_character_data_without_meta_is_refused_not_read_as_gpt2(tmp_path):
    data = make_char_data(tmp_path / "data")
    os.remove(os.path.join(data, "meta.json"))  # a copied folder, without its meta.json
    with pytest.raises(ConfigError, match=f"^{data}/train.bin has no meta.json beside it, so it would be read as GPT-2 BPE, "
                                          "but its ids stay below 256 \\(the largest is 7\\): data of another tokenizer"):
        train(tiny(tmp_path, data=data))


def test_eval_only_data_says_so(tmp_path):
    data = make_char_data(tmp_path / "c4")
    os.remove(os.path.join(data, "train.bin"))
    with pytest.raises(ConfigError, match=f"^{data} has val.bin but no train.bin: data prepared for evaluation only "
                                          "\\(eval.py\\), not for training; train on another dataset or data_dir$"):
        train(tiny(tmp_path, data=data))


def test_swapped_characters_say_the_mappings_differ(tmp_path):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, "teacher", data, max_iters=1))
    swapped = data  # prepared again, with two characters swapped
    meta = dataloader.read_meta(swapped)
    meta["stoi"].update(a=1, b=0)
    meta["itos"].update({0: "b", 1: "a"})
    dataloader.write_meta(swapped, meta)
    with pytest.raises(ConfigError, match="another tokenizer than the data; teacher: character-level \\(8 characters, "
                                          "'a' is id 0: the mappings differ\\), data: character-level \\(8 characters, 'a' is id 1\\)$"):
        train(tiny(tmp_path, "student", swapped, loss="kd", teacher=str(tmp_path / "teacher")))
    with pytest.raises(ConfigError, match="was trained on character-level \\(8 characters, 'a' is id 0: the mappings "
                                          "differ\\) \\(vocab_size=8\\), but the data in .* is character-level \\(8 characters, 'a' is id 1\\)"):
        train(tiny(tmp_path, "teacher", swapped, max_iters=2, init_from="resume"))


def test_a_corrupt_checkpoint_names_the_other_one_beside_it(tmp_path):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, data=data, max_iters=1))
    out = tmp_path / "out"
    (out / "best.pt").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match=f"; the run's last checkpoint {out / 'ckpt.pt'} is beside it: load that file instead$"):
        checkpoint.load_model(str(out / "best.pt"))
    (out / "best.pt").write_bytes((out / "ckpt.pt").read_bytes())
    (out / "ckpt.pt").write_bytes(b"not a zip")
    hint = f"the run's best checkpoint {out / 'best.pt'} is beside it: load that file instead, or copy it to {out / 'ckpt.pt'}"
    with pytest.raises(ConfigError, match=f"; {hint} to resume from its iteration$"):
        train(tiny(tmp_path, data=data, max_iters=2, init_from="resume"))
    os.remove(out / "ckpt.pt")
    with pytest.raises(ConfigError, match=f"^init_from='resume' but there is no {out / 'ckpt.pt'}; {out / 'best.pt'} is "
                                          f"there: copy it to {out / 'ckpt.pt'} to resume from its iteration$"):
        train(tiny(tmp_path, data=data, max_iters=2, init_from="resume"))


@pytest.mark.parametrize("teacher", ["./out-teachr", "../x", "out/teachr"])
def test_a_mistyped_teacher_path_is_missing_not_a_hub_name(tmp_path, monkeypatch, teacher):
    monkeypatch.chdir(tmp_path)
    data = make_char_data(tmp_path / "data")
    (tmp_path / "out").mkdir()
    with pytest.raises(ConfigError, match=f"^teacher='{teacher}' (is no file or directory|does not exist \\(a local path, not "
                                          "a Hugging Face hub name\\))"):
        train(tiny(tmp_path, "student", data, loss="kd", teacher=teacher))


def test_a_deleted_tokenizer_directory_is_missing_not_needing_the_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(tokenizer, "hub_reachable", lambda: False)
    gone = str(tmp_path / "tokenizer")
    with pytest.raises(ConfigError, match=f"^tokenizer='{gone}' does not exist \\(a local path, not a Hugging Face hub name\\): "
                                          "deleted, moved or mistyped$"):
        tokenizer.get_tokenizer({"vocab_size": 10, "tokenizer": gone, "vocab_hash": "0"})
    os.mkdir(gone)
    with pytest.raises(ConfigError, match=f"^tokenizer='{gone}' is a directory without a Hugging Face tokenizer \\(no "
                                          "tokenizer.json or tokenizer_config.json, which tokenizer.save_pretrained writes\\)"):
        tokenizer.hf_tokenizer(gone)


# --------------------------------------------------------------------------------------------------
# the prepare scripts


PREPARE = ("shakespeare_char", "shakespeare", "c4", "fineweb_edu")


def prepare(name, *args, **kw):
    return subprocess.run([sys.executable, os.path.join(REPO, "data", name, "prepare.py"), *args], capture_output=True,
                          text=True, **kw)


def test_every_prepare_script_has_a_help(monkeypatch):
    """--help, not the input file named --help; the other scripts' help from their dataclass, as --help prints it."""
    done = prepare("shakespeare_char", "--help")
    assert done.returncode == 0 and "\nsettings, with their defaults:\n  --input=''    a UTF-8 text file" in done.stdout
    for name in PREPARE[1:]:
        module = load_script(f"data/{name}/prepare.py")
        monkeypatch.setitem(sys.modules, module.__name__, module)
        assert "\n  --out_dir=''  " in configurator.settings_help(module.PrepareConfig)


@pytest.mark.parametrize("name", ["shakespeare_char", "shakespeare"])
def test_a_missing_or_binary_input_is_one_line(tmp_path, name):
    module = load_script(f"data/{name}/prepare.py")
    missing, binary, out = str(tmp_path / "missing.txt"), tmp_path / "binary", str(tmp_path / "out")
    with pytest.raises(ConfigError, match=f"^input='{missing}' cannot be read \\(No such file or directory\\)$"):
        module.main(missing, out)
    binary.write_bytes(b"text, then \xff\xfe")
    with pytest.raises(ConfigError, match=f"^input='{binary}' is not UTF-8 text \\(byte 0xff at offset 11\\): give a text file$"):
        module.main(str(binary), out)
    with pytest.raises(ConfigError, match=f"^'{binary}' is not a config file \\(python, .py\\); settings are written "
                                          "--key=value \\(see --help\\)$"):  # not --input=: read as a config file
        configurator.load_config([str(binary)], module.PrepareConfig)
    assert not (tmp_path / "out").exists()


def test_a_file_size_limit_while_preparing_leaves_the_data_as_it_was(tmp_path):
    """RLIMIT_FSIZE makes writes past 100 kB fail with EFBIG, as a full disk fails with ENOSPC: the earlier
    data stays whole, and a new out_dir is not left behind empty."""
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    old = make_char_data(tmp_path / "old")
    before = {name: (tmp_path / "old" / name).read_bytes() for name in os.listdir(old)}
    for out in (old, str(tmp_path / "new")):
        done = prepare("shakespeare_char", f"--out_dir={out}", preexec_fn=limit)
        assert (done.returncode, done.stderr) == (1, f"ConfigError: could not write the data in out_dir='{out}' "
                                                     "(File too large); nothing there was changed\n")
    assert {name: (tmp_path / "old" / name).read_bytes() for name in os.listdir(old)} == before
    assert not (tmp_path / "new").exists()


def test_fineweb_checks_its_token_counts_before_the_hub(monkeypatch):
    monkeypatch.setattr(tokenizer, "hub_reachable", lambda: pytest.fail("the hub was asked first"))
    prep = load_script("data/fineweb_edu/prepare.py")
    with pytest.raises(ConfigError, match="^need 0 < val_tokens < num_tokens, got val_tokens=10, num_tokens=5$"):
        prep.main(["--val_tokens=10", "--num_tokens=5"])
