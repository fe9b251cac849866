"""A run is never lost: out_dir ownership, best and last checkpoints, checked resumes, partial metrics lines,
failed saves, setting ranges, --help, and one clear line for every bad input."""

import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch

import analyze
import configurator
import dataloader
import tokenizer
import compare as compare_module
import train as train_module
from checkpoint import CheckpointError, load_model, read_checkpoint, read_jsonl
from configurator import ConfigError, load_config
from compare import CompareConfig, compare
from eval import EvalConfig, evaluate
from sample import SampleConfig, sample
from test_model import make_char_data, tiny
from train import TrainConfig, train

REPO = os.path.dirname(os.path.abspath(__file__))


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------
# out_dir: refused when it holds a run, locked while one trains


def test_a_fresh_run_refuses_an_out_dir_that_holds_a_run(tmp_path):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, data=data, max_iters=4))
    out = tmp_path / "out"
    before = {f: (out / f).read_bytes() for f in ("ckpt.pt", "best.pt", "metrics.jsonl")}
    with pytest.raises(ConfigError, match=f"out_dir='{out}' already holds a run \\(ckpt.pt, best.pt, metrics.jsonl\\): "
                                          "continue it with --init_from=resume, choose another out_dir, or pass --overwrite=True"):
        train(tiny(tmp_path, data=data, max_iters=2))
    assert {f: (out / f).read_bytes() for f in before} == before and not (out / "train.lock").exists()
    # overwrite=True: the new run replaces the old one entirely, its best.pt included
    train(tiny(tmp_path, data=data, max_iters=0, overwrite=True))
    assert torch.load(out / "ckpt.pt", weights_only=True)["iter_num"] == torch.load(out / "best.pt", weights_only=True)["iter_num"] == 0
    assert [row["iter"] for row in read_jsonl(out / "metrics.jsonl")] == [0]


def test_the_lock_holds_the_pid_while_training_and_is_released(tmp_path, monkeypatch):
    seen = []
    real_save = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda ckpt, path: seen.append((tmp_path / "out" / "train.lock").read_text()) or real_save(ckpt, path))
    train(tiny(tmp_path, max_iters=2))
    assert seen and set(seen) == {f"{os.getpid()} {socket.gethostname()}"}
    assert not (tmp_path / "out" / "train.lock").exists()
    # released on an error too; an out_dir the failed run made is removed again
    with pytest.raises(ConfigError, match="teacher='nowhere'"):
        train(tiny(tmp_path, "student", loss="kd", teacher="nowhere"))
    assert not (tmp_path / "student").exists()


def test_a_second_process_on_the_same_out_dir_stops_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    data = make_char_data(tmp_path / "data")
    lock = tmp_path / "out" / "train.lock"
    lock.parent.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{other.pid} {socket.gethostname()}")
        with pytest.raises(ConfigError, match=f"out_dir='{lock.parent}' is in use by another run \\(pid {other.pid} on host "
                                              f"{socket.gethostname()}, as {lock} says\\): wait for it to end"):
            train(tiny(tmp_path, data=data, max_iters=1))
        assert lock.read_text() == f"{other.pid} {socket.gethostname()}"  # the other run's lock stays
    finally:
        other.kill()
        other.wait()
    train(tiny(tmp_path, data=data, max_iters=1))  # its process is gone: the lock is stale
    assert f"taking over {lock}: its run (pid {other.pid}) is gone" in capsys.readouterr().out
    assert not lock.exists() and (lock.parent / "ckpt.pt").exists()
    # a process on another machine cannot be checked, so its lock holds
    lock.write_text("1 some-other-host")
    with pytest.raises(ConfigError, match="pid 1 on host some-other-host"):
        train(tiny(tmp_path, data=data, max_iters=1, init_from="resume"))


# --------------------------------------------------------------------------------------------------
# best.pt and ckpt.pt


def scripted_val_losses(monkeypatch, val_losses):
    """estimate_loss returns these val losses, one per evaluation, so the best one is known."""
    losses = iter(val_losses)
    monkeypatch.setattr(train_module, "estimate_loss", lambda *args: {"train": 1.0, "val": next(losses)})


def test_best_and_last_checkpoints(tmp_path, monkeypatch, capsys):
    data = make_char_data(tmp_path / "data")
    saves = []
    real_save = train_module.save_checkpoint
    monkeypatch.setattr(train_module, "save_checkpoint",
                        lambda ckpt, path: saves.append((os.path.basename(path), ckpt["iter_num"])) or real_save(ckpt, path))
    kw = dict(eval_interval=2, lr_decay_iters=6, always_save_checkpoint=False)
    scripted_val_losses(monkeypatch, [3.0, 2.0, 2.5, 2.8])  # iters 0, 2, 4, 6: the best is iter 2
    train(tiny(tmp_path, data=data, max_iters=6, **kw))
    # ckpt.pt when the val loss improves and at the end; best.pt when it improves, before ckpt.pt
    assert saves == [("best.pt", 0), ("ckpt.pt", 0), ("best.pt", 2), ("ckpt.pt", 2), ("ckpt.pt", 6)]
    best, last = torch.load(tmp_path / "out" / "best.pt", weights_only=True), torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert (best["iter_num"], best["val_loss"], best["best_val_loss"]) == (2, 2.0, 2.0)
    assert (last["iter_num"], last["val_loss"], last["best_val_loss"]) == (6, 2.8, 2.0)
    # best.pt's weights are iter 2's: the same run stopped at iter 2 (same seed, batches and schedule) ends there
    scripted_val_losses(monkeypatch, [3.0, 2.0])
    train(tiny(tmp_path, "two", data, max_iters=2, **kw))
    assert same_weights(best["model"], weights(tmp_path / "two" / "ckpt.pt"))
    assert not same_weights(best["model"], last["model"])
    # an out_dir loads its best.pt, and says so
    capsys.readouterr()
    model, _, ckpt = load_model(str(tmp_path / "out"))
    assert capsys.readouterr().out == f"init_from: loaded {tmp_path / 'out' / 'best.pt'} (iter 2, val loss 2.0000)\n"
    assert same_weights(model.state_dict(), best["model"])
    # a resume continues the last checkpoint
    scripted_val_losses(monkeypatch, [2.8, 2.9])  # iters 6 (again) and 8
    result = train(tiny(tmp_path, data=data, max_iters=8, init_from="resume", **kw))
    assert result["iter_num"] == 8 and result["best_val_loss"] == 2.0
    assert torch.load(tmp_path / "out" / "best.pt", weights_only=True)["iter_num"] == 2


def test_the_val_loss_in_best_pt_is_its_weights_own(tmp_path):
    cfg = tiny(tmp_path, max_iters=4, eval_interval=2, always_save_checkpoint=False)
    train(cfg)
    best = torch.load(tmp_path / "out" / "best.pt", weights_only=True)
    model, _, _ = load_model(str(tmp_path / "out"))
    loss = train_module.estimate_loss(model, cfg, cfg.data_dir, "cpu", train_module.nullcontext())
    assert loss["val"] == pytest.approx(best["val_loss"], abs=1e-6)


def test_sample_and_analyze_load_the_best_checkpoint(tmp_path, monkeypatch, capsys):
    scripted_val_losses(monkeypatch, [3.0, 2.0, 2.5])
    train(tiny(tmp_path, max_iters=4, eval_interval=2, always_save_checkpoint=False))
    best = tmp_path / "out" / "best.pt"
    capsys.readouterr()
    sample(SampleConfig(init_from=str(tmp_path / "out"), start="abc", num_samples=1, max_new_tokens=2, device="cpu"))
    assert f"init_from: loaded {best} (iter 2, val loss 2.0000)" in capsys.readouterr().out
    analyze.main([f"--ckpt={tmp_path / 'out'}", "--num_seqs=1", "--seq_len=8", f"--plot_dir={tmp_path / 'figs'}"])
    out = capsys.readouterr().out
    assert f"--ckpt: loaded {best} (iter 2" in out and "grad_norm at iters < 500 (4 logged" in out  # its metrics.jsonl


# --------------------------------------------------------------------------------------------------
# a resume continues the same run


@pytest.mark.parametrize("change, message", [
    (dict(n_layer=3), "n_layer=2 there, 3 now"),
    (dict(attn="affine", dropout=0.1), "dropout=0.0 there, 0.1 now; attn='softmax' there, 'affine' now"),
    (dict(dataset="fineweb_edu"), "dataset='shakespeare_char' there, 'fineweb_edu' now"),
    (dict(sampling="epoch"), "sampling='random' there, 'epoch' now"),
])
def test_a_resume_with_other_settings_is_an_error_naming_both_values(tmp_path, change, message):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, data=data, max_iters=2))
    with pytest.raises(ConfigError, match=f"init_from='resume' continues {tmp_path / 'out' / 'ckpt.pt'}, but the settings "
                                          f"differ: {message}\\. Resume with the run's settings"):
        train(tiny(tmp_path, data=data, max_iters=4, init_from="resume", **change))
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["iter_num"] == 2


def test_a_resume_on_data_of_another_tokenizer_is_an_error(tmp_path):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, data=data, max_iters=2))
    make_char_data(tmp_path / "data", text="abcdefghij" * 200)  # the same folder, prepared again from another text
    with pytest.raises(ConfigError, match="was trained on character-level \\(8 characters\\) \\(vocab_size=8\\), but the data "
                                          f"in {data} is character-level \\(10 characters\\) \\(vocab_size=10\\)"):
        train(tiny(tmp_path, data=data, max_iters=4, init_from="resume"))


def test_a_resume_may_switch_between_eager_and_fused(tmp_path):
    """Both paths compute the same function, so fused is the one model setting a resume may change."""
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, data=data, max_iters=2))
    assert train(tiny(tmp_path, data=data, max_iters=3, init_from="resume", fused=False))["iter_num"] == 3


# --------------------------------------------------------------------------------------------------
# metrics.jsonl with a partial last line


def test_a_partial_metrics_line_never_blocks_a_resume_and_the_log_equals_an_uninterrupted_run(tmp_path, capsys):
    data = make_char_data(tmp_path / "data")
    kw = dict(max_iters=4, eval_interval=2, lr_decay_iters=4)
    train(tiny(tmp_path, "whole", data, **kw))
    train(tiny(tmp_path, "halves", data, **{**kw, "max_iters": 2}))
    path = tmp_path / "halves" / "metrics.jsonl"
    with open(path, "a") as f:  # rows the interrupted run logged after its checkpoint, the last cut short
        f.write(json.dumps({"iter": 2, "loss": 99.0}) + "\n" + '{"iter": 3, "lo')
    train(tiny(tmp_path, "halves", data, **kw, init_from="resume"))
    assert f"warning: {path} ends in a partial line (an interrupted write), dropped: '{{\"iter\": 3, \"lo'" in capsys.readouterr().err
    whole, halves = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(path)
    assert [r["iter"] for r in halves] == [r["iter"] for r in whole]
    for a, b in zip(whole, halves):
        timing = ("tokens_per_s", "dt_ms", "time_s", "eval_s")  # wall-clock times differ between any two runs
        assert {k: v for k, v in a.items() if k not in timing} == pytest.approx({k: v for k, v in b.items() if k not in timing}, abs=1e-6)


def test_analysis_reads_metrics_with_a_partial_last_line(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iter": 0, "loss": 2.0, "grad_norm": 1.0}\n{"iter": 0, "val_loss": 1.5}\n{"iter": 1, "lo')
    assert analyze.read_metrics(str(path)) == [{"iter": 0, "loss": 2.0, "grad_norm": 1.0}, {"iter": 0, "val_loss": 1.5}]
    assert compare_module.read_metrics(str(tmp_path)) == ([{"iter": 0, "loss": 2.0, "grad_norm": 1.0}], [{"iter": 0, "val_loss": 1.5}])
    assert capsys.readouterr().err.count("ends in a partial line") == 2
    path.write_text('{"iter": 0}\n{"iter": 1, "lo\n{"iter": 2}\n')  # not the last line: not a crash while appending
    with pytest.raises(ConfigError, match=f"{path} line 2 is not JSON"):
        read_jsonl(path)


# --------------------------------------------------------------------------------------------------
# a checkpoint that cannot be written, or read


def disk_full(obj, f):
    f.write(b"the first bytes")
    raise OSError(errno.ENOSPC, "No space left on device")


def disk_full_in_torch(obj, f):
    """What torch.save really raises on a full disk: its zip writer's RuntimeError, with the OSError as context."""
    try:
        disk_full(obj, f)
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")


@pytest.mark.parametrize("fake_save", [disk_full, disk_full_in_torch])
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fake_save):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, data=data, max_iters=1, eval_interval=1))
    ckpt_path = tmp_path / "out" / "ckpt.pt"
    saved = weights(ckpt_path)
    monkeypatch.setattr(torch, "save", fake_save)
    with pytest.raises(CheckpointError, match=f"could not write the checkpoint {ckpt_path}: the disk is full \\(no space "
                                              "left on device\\); its temporary file is removed and an earlier ckpt.pt there is unchanged"):
        train(tiny(tmp_path, data=data, max_iters=2, eval_interval=1, init_from="resume"))
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / "out")) == ["best.pt", "ckpt.pt", "metrics.jsonl"]  # no .tmp, no lock
    ckpt = read_checkpoint(str(ckpt_path))
    assert ckpt["iter_num"] == 1 and same_weights(ckpt["model"], saved)


def test_a_corrupt_or_foreign_checkpoint_is_one_clear_error(tmp_path):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, data=data, max_iters=1))
    ckpt_path = tmp_path / "out" / "ckpt.pt"
    whole = ckpt_path.read_bytes()
    ckpt_path.write_bytes(whole[: len(whole) // 2])  # truncated, as by a full disk without the atomic save
    corrupt = f"{ckpt_path} cannot be read, the file is corrupt or truncated \\(.*\\); an earlier checkpoint or a new run"
    with pytest.raises(ConfigError, match=corrupt):
        train(tiny(tmp_path, data=data, max_iters=2, init_from="resume"))
    with pytest.raises(ConfigError, match=corrupt):
        load_model(str(ckpt_path))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'other.pt'} is not a checkpoint of train.py"):
        sample(SampleConfig(init_from=str(tmp_path / "other.pt"), device="cpu"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"teacher='{tmp_path / 'empty'}' is a directory with neither a checkpoint of "
                                          "train.py \\(best.pt, ckpt.pt\\) nor a Hugging Face model \\(config.json\\)"):
        train(tiny(tmp_path, "student", data, loss="kd", teacher=str(tmp_path / "empty")))


# --------------------------------------------------------------------------------------------------
# no network, no GPU: fail at once, saying what would work


def test_a_pretrained_name_without_network_fails_at_once(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(tokenizer, "hub_reachable", lambda: False)
    with pytest.raises(ConfigError, match="teacher='gpt2-medium' needs the Hugging Face hub, which cannot be reached: "
                                          "connect, set HF_HUB_OFFLINE=1 if gpt2-medium is in the Hugging Face cache"):
        load_model("gpt2-medium", setting="teacher")


def test_a_pretrained_name_not_in_the_cache_offline(monkeypatch, tmp_path):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(ConfigError, match="init_from='gpt2-xl' could not be loaded as a Hugging Face model \\(HF_HUB_OFFLINE "
                                          "is set: is it in the Hugging Face cache\\?\\): OSError"):
        load_model("gpt2-xl")


def test_hub_reachable_is_one_quick_request(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    assert tokenizer.hub_reachable() is False


def test_a_missing_tiktoken_file_offline_says_what_to_do(monkeypatch, tmp_path):
    tiktoken = pytest.importorskip("tiktoken")
    import tiktoken.load
    import tiktoken.registry

    def no_network(url):
        raise ConnectionError(f"cannot reach {url}")

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # nothing loaded yet in this process
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match=f"tiktoken could not load the gpt2 or r50k_base BPE files \\(ConnectionError; "
                                          f"TIKTOKEN_CACHE_DIR: {tmp_path}\\): connect once to download them, or set "
                                          f"TIKTOKEN_CACHE_DIR to a folder holding them"):
        tokenizer.get_tokenizer(None)
    with pytest.raises(ConfigError, match="tiktoken has no encoding 'o300k'"):
        tokenizer.get_tokenizer({"vocab_size": 10, "encoding": "o300k"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_one_clear_error(tmp_path, capsys):
    message = "device='cuda' but torch sees no CUDA GPU here; use device=cpu"
    with pytest.raises(ConfigError, match=message):
        train(tiny(tmp_path, device="cuda"))
    assert not (tmp_path / "out").exists()
    train(tiny(tmp_path, max_iters=0))
    with pytest.raises(ConfigError, match=message):
        sample(SampleConfig(init_from=str(tmp_path / "out"), device="cuda"))
    with pytest.raises(ConfigError, match=message):
        compare(CompareConfig(out_dir=str(tmp_path / "cmp"), device="cuda", data_dir=str(tmp_path / "data")))
    with pytest.raises(ConfigError, match="^--device='cuda' but torch sees no CUDA GPU here; use --device=cpu$"):
        analyze.main([f"--ckpt={tmp_path / 'out'}", "--device=cuda"])  # its option's name, not train.py's
    with pytest.raises(ConfigError, match=message):
        evaluate(EvalConfig(init_from=str(tmp_path / "out"), device="cuda", tasks=""))
    with pytest.raises(ConfigError, match="device='cuda:x' but this machine has CUDA devices|no CUDA GPU"):
        train(tiny(tmp_path, "other", device="cuda:x"))


# --------------------------------------------------------------------------------------------------
# every setting with a range is checked, the message names the value and the range


@pytest.mark.parametrize("cls, argv, message", [
    (TrainConfig, ["--learning_rate=0"], "learning_rate=0.0 must be positive"),
    (TrainConfig, ["--learning_rate=1e-3", "--min_lr=1e-2"], "min_lr=0.01 must be in \\[0, learning_rate=0.001\\]"),
    (TrainConfig, ["--min_lr=-1e-5"], "min_lr=-1e-05 must be in \\[0, learning_rate=0.0006\\]"),
    (TrainConfig, ["--beta1=1"], "beta1=1.0 must be in \\[0, 1\\)"),
    (TrainConfig, ["--beta2=-0.5"], "beta2=-0.5 must be in \\[0, 1\\)"),
    (TrainConfig, ["--grad_clip=-1"], "grad_clip=-1.0 must not be negative"),
    (TrainConfig, ["--weight_decay=-0.1"], "weight_decay=-0.1 must not be negative"),
    (TrainConfig, ["--max_iters=100", "--warmup_iters=200"], "warmup_iters=200 must be at most max_iters=100"),
    (TrainConfig, ["--warmup_iters=100", "--lr_decay_iters=50"], "lr_decay_iters=50 must be at least warmup_iters=100"),
    (TrainConfig, ["--eval_iters=0"], "eval_iters=0 must be at least 1"),
    (TrainConfig, ["--max_iters=-1"], "max_iters=-1 must not be negative"),
    (TrainConfig, ["--dropout=1.0"], "dropout=1.0 must be in \\[0, 1\\)"),
    (TrainConfig, ["--kd_temperature=0"], "kd_temperature=0.0 must be positive"),
    (TrainConfig, ["--decay_frac=1.5"], "decay_frac=1.5 must be in \\(0, 1\\]"),
    (TrainConfig, ["--affine_momentum=2"], "affine_momentum=2.0 must be in \\[0, 1\\]"),
    (TrainConfig, ["--seed=-1"], "seed=-1 must not be negative"),
    (TrainConfig, ["--sampling=sequential"], "unknown sampling='sequential'; allowed: random, epoch"),
    (TrainConfig, ["--rope_scaling=yes"], "rope_scaling='yes' must be a dict or None \\(got str\\)"),
    (TrainConfig, ["--rope_scaling={'rope_type': 'llama3'}"], "rope_scaling is set but pos='learned': it rescales RoPE"),
    (TrainConfig, ["--pos=rope", "--rope_scaling={'rope_type': 'llama3'}"], "rope_scaling=\\{'rope_type': 'llama3'\\} "
                                                                           "lacks some of LLaMA-3's keys: factor, "),
    (SampleConfig, ["--temperature=0"], "temperature=0.0 must be positive"),
    (SampleConfig, ["--top_k=-1"], "top_k=-1 must be 0 \\(off\\) or positive"),
    (SampleConfig, ["--max_new_tokens=0"], "max_new_tokens=0 must be at least 1"),
    (CompareConfig, ["--teacher_iters=-1"], "teacher_iters=-1 must not be negative"),
    (CompareConfig, ["--early_steps=0"], "early_steps=0 must be at least 1"),
])
def test_settings_out_of_range_name_the_value_and_the_range(cls, argv, message):
    with pytest.raises(ConfigError, match=message):
        load_config(argv, cls)


@pytest.mark.parametrize("argv, message", [(["--num_seqs=0"], "--num_seqs=0 must be at least 1"),
                                           (["--early_steps=-5"], "--early_steps=-5 must be at least 1")])
def test_analyze_settings_out_of_range(argv, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        analyze.main(["--ckpt=x"] + argv)


@pytest.mark.parametrize("argv, message", [
    (["--variants=softmax,flash"], "--variants='softmax,flash': unknown 'flash'; allowed: softmax, sink, gated, affine, affine_gated"),
    (["--seq_lens=256,1k"], "--seq_lens='256,1k' must be comma-separated integers, e.g. --seq_lens=256,1024"),
    (["--seq_lens=,"], "--seq_lens=',' names none; give comma-separated values or \"\" for the default"),
    (["--loss_chunks=0,-1"], "--loss_chunks='0,-1': -1 must be an integer of at least 0"),
    (["--n_layer=0"], "--n_layer=0 must be a positive integer"),
    (["--n_head=3"], "--n_embd=128 must be divisible by --n_head=3"),
    (["--warmup=0", "--compile=True"], "--warmup=0: --compile=True needs at least 1, or compilation is timed"),
    (["--compile"], "override '--compile' must be written --key=value"),
])
def test_bench_settings_name_the_bad_value(argv, message):
    """Checked before anything is measured; a list setting names the bad item and what would work."""
    import bench

    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        bench.main(["--device=cpu"] + argv)


def test_output_paths_are_checked_before_the_work(tmp_path):
    """A file where a folder must go, or a path below a file, is refused before anything loads or runs (the
    checkpoint "x" does not even exist); a missing folder is made when the results are written."""
    import bench

    (tmp_path / "file").write_text("")
    file, below = str(tmp_path / "file"), str(tmp_path / "file" / "x")
    for argv, message in (([f"--plot_dir={file}"], f"--plot_dir='{file}' is a file; give a directory"),
                          ([f"--plot_dir={below}"], f"--plot_dir='{below}' is below {file}, which is a file, not a directory")):
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            analyze.main(["--ckpt=x"] + argv)
    for out, message in ((str(tmp_path), f"--out='{tmp_path}' is a directory; give a file name"),
                         (below, f"--out='{below}' is below {file}, which is a file, not a directory")):
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            bench.main(["--device=cpu", f"--out={out}"])
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            bench.main(["--time_to_loss=True", f"--out={out}"])


def test_a_binary_prompt_file_is_one_line(tmp_path):
    (tmp_path / "prompt.bin").write_bytes(b"ab\xff\xfecd")
    start = f"FILE:{tmp_path / 'prompt.bin'}"
    with pytest.raises(ConfigError, match=f"^start='{re.escape(start)}' is not UTF-8 text \\(byte 0xff at offset 2\\): give a text file$"):
        sample(SampleConfig(init_from="nowhere", start=start))  # before the model loads


# --------------------------------------------------------------------------------------------------
# --help on every script, generated from the settings


@pytest.mark.parametrize("script, lines", [
    ("train.py", ["usage: python train.py [config_file.py ...] [--key=value ...]", "AdamW",
                  "  --grad_clip=1.0                   0 turns clipping off",
                  "  --overwrite=False                 True: a fresh run replaces the run already in out_dir"]),
    ("sample.py", ["  --temperature=0.8     < 1 sharpens the distribution, > 1 flattens it"]),
    ("compare.py", ["\ntrain.py arguments of the teacher and of the students: a config file, maybe followed by --key=value\n"
                    "overrides, as on train.py's command line.", "  --seeds='1,2'  ", "  comma-separated\n"]),
    ("eval.py", ["  --num_fewshot=0  ", "  the paper: zero-shot\n"]),
    ("analyze.py", ["usage: python analyze.py [config_file.py ...] [--key=value ...]",
                    "  --ckpt=''          train.py out_dirs or checkpoint files, comma-separated to compare them side by side",
                    "  --num_seqs=10      validation sequences, as the paper", "\nthe heatmap (Fig. 9)\n  --layer=None  "]),
    ("bench.py", ["usage: python bench.py [config_file.py ...] [--key=value ...]", "  --iters=10  ",
                  "  --seq_lens=''  ", "\nthe model; None: GPT-2 small on CUDA, a small character-level model on CPU\n"]),
])
def test_every_script_explains_itself(script, lines):
    """-X importtime lists every module imported: --help must not pull in the optional heavy packages (eval.py
    and compare.py, which imports it, subclass lm-eval's model class when lm-eval is there)."""
    done = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert all(line in done.stdout for line in lines), done.stdout
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    heavy = {"transformers", "matplotlib", "datasets", "tokenizers"} | ({"lm_eval"} if script not in ("eval.py", "compare.py") else set())
    assert not imported & heavy


def test_help_lists_every_setting_with_its_comment():
    help_text = configurator.settings_help(TrainConfig)
    for name in (f.name for f in __import__("dataclasses").fields(TrainConfig)):
        assert f"  --{name}=" in help_text
    assert "  --dtype='bfloat16'                autocast dtype on CUDA" in help_text
    assert "\nlearning-rate schedule, both after a linear warmup\n  --lr_schedule='cosine'" in help_text
    assert "check_types" not in help_text and "must be" not in help_text  # nothing of __post_init__


# --------------------------------------------------------------------------------------------------
# set-up in two commands: the default data is prepared by the first run


def default_data_root(tmp_path, monkeypatch, prepare=None):
    """A DATA_ROOT with the embedded corpus (its first 20k characters) and the char prepare script."""
    root = tmp_path / "data"
    (root / "shakespeare").mkdir(parents=True)
    (root / "shakespeare_char").mkdir()
    text = (os.path.join(REPO, "data", "shakespeare", "input.txt"))
    with open(text, encoding="utf-8") as f:
        (root / "shakespeare" / "input.txt").write_text(f.read(20000), encoding="utf-8")
    if prepare is None:
        shutil.copy(os.path.join(REPO, "data", "shakespeare_char", "prepare.py"), root / "shakespeare_char")
    else:
        (root / "shakespeare_char" / "prepare.py").write_text(prepare)
    monkeypatch.setattr(dataloader, "DATA_ROOT", str(root))
    return root / "shakespeare_char"


def test_the_first_run_prepares_the_default_data(tmp_path, monkeypatch, capsys):
    folder = default_data_root(tmp_path, monkeypatch)
    cfg = tiny(tmp_path, data_dir="", dataset="shakespeare_char", max_iters=0)
    train(cfg)
    out = capsys.readouterr().out
    assert f"preparing {folder} from the embedded corpus data/shakespeare/input.txt (first run)" in out
    assert sorted(os.listdir(folder)) == ["meta.json", "prepare.py", "train.bin", "val.bin"]
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["meta"]["vocab_size"] == len(set((tmp_path / "data" / "shakespeare" / "input.txt").read_text()))
    train(tiny(tmp_path, "again", data_dir="", dataset="shakespeare_char", max_iters=0))
    assert "preparing" not in capsys.readouterr().out


def test_a_failed_preparation_is_one_clear_error(tmp_path, monkeypatch):
    folder = default_data_root(tmp_path, monkeypatch, prepare="raise SystemExit('input.txt is unreadable')")
    with pytest.raises(ConfigError, match=f"preparing {folder} failed \\(input.txt is unreadable\\); run python "):
        train(tiny(tmp_path, data_dir="", dataset="shakespeare_char"))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# compare.py owns its out_dir the same way


def test_compare_refuses_to_replace_earlier_runs_before_training(tmp_path, monkeypatch):
    (tmp_path / "run.py").write_text("device = 'cpu'\nmax_iters = warmup_iters = 1\n")
    cfg = CompareConfig(out_dir=str(tmp_path / "cmp"), teacher_config=str(tmp_path / "run.py"), seeds="1",
                        student_config=str(tmp_path / "run.py"), variants="softmax,affine")
    (tmp_path / "cmp" / "affine-s1").mkdir(parents=True)
    (tmp_path / "cmp" / "affine-s1" / "metrics.jsonl").write_text("")
    monkeypatch.setattr(compare_module, "train", lambda run: pytest.fail("nothing may train"))
    with pytest.raises(ConfigError, match=f"this comparison would replace runs already in out_dir='{tmp_path / 'cmp'}': "
                                          f"{tmp_path / 'cmp' / 'affine-s1'} \\(no {tmp_path / 'cmp' / 'affine-s1' / 'ckpt.pt'}\\); "
                                          f"delete them or pass --overwrite=True to train them again, or choose another out_dir$"):
        compare(cfg)


def test_a_directory_that_is_no_usable_hugging_face_model_is_one_clear_error(tmp_path):
    pytest.importorskip("transformers")
    (tmp_path / "weightless").mkdir()
    (tmp_path / "weightless" / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1}))  # no weights
    with pytest.raises(ConfigError, match=f"teacher='{tmp_path / 'weightless'}' could not be loaded as a Hugging Face model: OSError: "):
        load_model(str(tmp_path / "weightless"), setting="teacher")


# --------------------------------------------------------------------------------------------------
# sampling="epoch": every window once per epoch (appendix B.1's "1 epoch"), resumable mid-epoch


def test_an_epoch_visits_every_window_once_in_one_process_and_across_ranks():
    n_tokens, block = 10 * 16 + 1, 16  # ten windows of 17 tokens at multiples of 16
    one = train_module.EpochSampler(n_tokens, block, seed=3)
    first, second = one.next_starts(10).tolist(), one.next_starts(10).tolist()
    assert sorted(first) == sorted(second) == list(range(0, 160, 16)) and first != second  # a new order each epoch
    ranks = [train_module.EpochSampler(n_tokens, block, seed=3, rank=r, world=2) for r in range(2)]
    parts = [r.next_starts(5).tolist() for r in ranks]
    assert sorted(parts[0] + parts[1]) == list(range(0, 160, 16)) and not set(parts[0]) & set(parts[1])
    assert [r.epochs_done() for r in ranks] == [1.0, 1.0]
    odd = train_module.EpochSampler(11 * 16 + 1, block, seed=3, world=2)  # 11 windows: one left out each epoch
    assert odd.per_rank == 5 and len(set(odd.next_starts(5).tolist())) == 5


def test_a_batch_may_cross_an_epoch_and_a_restored_state_continues_it():
    sampler = train_module.EpochSampler(6 * 8 + 1, 8, seed=0)
    first = sampler.next_starts(4).tolist()
    state = sampler.get_state()
    rest = [sampler.next_starts(4).tolist() for _ in range(2)]  # the first of these finishes epoch 0
    assert state == {"epoch": 0, "taken": 4, "windows": 6} and sampler.epochs_done() == 2.0
    assert sorted(first + rest[0][:2]) == sorted(rest[0][2:] + rest[1]) == list(range(0, 48, 8))
    again = train_module.EpochSampler(6 * 8 + 1, 8, seed=0)
    again.set_state(state)
    assert [again.next_starts(4).tolist() for _ in range(2)] == rest
    with pytest.raises(ConfigError, match="the checkpoint's epochs are of 6 windows of train.bin, which now has 5: "):
        train_module.EpochSampler(5 * 8 + 1, 8, seed=0).set_state(state)


def test_a_resume_mid_epoch_draws_the_batches_of_an_uninterrupted_run(tmp_path, monkeypatch):
    data = make_char_data(tmp_path / "data")  # 2160 training tokens: 134 windows of 16, 33 batches of 4 an epoch
    batches = []
    original = train_module.get_batch

    def record(data_dir, split, batch_size, block_size, sampler, *args):
        x, y = original(data_dir, split, batch_size, block_size, sampler, *args)
        if isinstance(sampler, train_module.EpochSampler):  # training batches, not the evaluation's
            batches.append(x.clone())
        return x, y

    monkeypatch.setattr(train_module, "get_batch", record)
    kw = dict(sampling="epoch", max_iters=40, eval_interval=20, lr_decay_iters=40)
    train(tiny(tmp_path, "whole", data, **kw))
    whole, batches[:] = batches[:], []
    train(tiny(tmp_path, "halves", data, **{**kw, "max_iters": 20}))
    train(tiny(tmp_path, "halves", data, **kw, init_from="resume"))
    assert len(batches) == len(whole) == 40 and all(torch.equal(a, b) for a, b in zip(whole, batches))
    rows = [r for r in read_jsonl(tmp_path / "halves" / "metrics.jsonl") if "epoch" in r]
    assert [r["epoch"] for r in rows[:2]] == [4 / 134, 8 / 134] and rows[-1]["epoch"] == pytest.approx(160 / 134)
    assert same_weights(weights(tmp_path / "whole" / "ckpt.pt"), weights(tmp_path / "halves" / "ckpt.pt"))
