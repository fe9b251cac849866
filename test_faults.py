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

import common
import train as train_module
from common import CheckpointError, ConfigError, read_jsonl
from test_model import make_char_data, tiny
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
    run = subprocess.Popen([sys.executable, "train.py", str(config)], cwd=REPO, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
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
