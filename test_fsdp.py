"""Training beyond one GPU (parallel.py): FSDP2 on two CPU ranks (gloo, one torchrun launch) against one
process, sharded teachers, checkpoints across sharded and single-process runs, activation checkpointing,
and the memory per GPU against counted parameters."""

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import parallel
import train as train_module
from checkpoint import load_model, read_checkpoint, read_jsonl
from eval import EvalConfig, evaluate
from model import GPT, GPTConfig, param_overhead
from sample import SampleConfig, sample
from test_model import make_char_data, tiny
from train import TrainConfig, train

REPO = os.path.dirname(os.path.abspath(__file__))
LAUNCH_TIMEOUT_S = 300  # a rank that waits for ever ends the launch here, and the test fails


def lockstep(real_get_batch, rank, world):
    """get_batch for the parity runs: every rank draws the training micro-batches of all ranks from one
    generator, the same on every rank, and keeps its own, so N ranks with k micro-steps each train on
    exactly the N k micro-batches one process with N k micro-steps draws. Evaluation batches, which
    estimate_loss draws from its own generator, are left as they are."""
    shared = torch.Generator().manual_seed(0)

    def get_batch(data_dir, split, batch_size, block_size, generator, device, meta=None):
        if sys._getframe(1).f_code.co_name == "estimate_loss":
            return real_get_batch(data_dir, split, batch_size, block_size, generator, device, meta)
        batches = [real_get_batch(data_dir, split, batch_size, block_size, shared, device, meta) for _ in range(world)]
        return batches[rank]

    return get_batch


def recording(real_full_state, folder, rank):
    """parallel.full_state, which every rank calls at each checkpoint, also saving what the test compares:
    this rank's alpha_ma, the live (sharded) model's logits on a fixed input, and on rank 0 the first
    gathered weights (the initial ones, assembled from both ranks' shards)."""

    def full_state(model, optimizer):
        model.eval()  # a training forward would move alpha_ma
        with torch.no_grad():
            probe = (torch.arange(16) % model.config.vocab_size)[None]
            logits = model(probe, targets=probe)[0]
        model.train()
        alpha_ma = [b.attn.alpha_ma.clone() for b in model.transformer.h if b.attn.affine]
        torch.save({"alpha_ma": alpha_ma, "logits": logits}, os.path.join(folder, f"live-rank{rank}.pt"))
        state = real_full_state(model, optimizer)
        if rank == 0 and not os.path.exists(os.path.join(folder, "init.pt")):
            torch.save(state[0], os.path.join(folder, "init.pt"))
        return state

    return full_state


def run_ranks(plan_path):
    """One rank of the launch: the runs of plan.json in order, each into its own out_dir."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    # one process group for all the runs (train uses it): one per run, made and destroyed again and again in
    # one process, can hang in the rendezvous; the timeout ends any collective that waits for a failed rank
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    real_get_batch, real_full_state = train_module.get_batch, parallel.full_state
    with open(plan_path) as f:
        plan = json.load(f)
    for step in plan:
        if step.get("copy"):  # rank 0 copies an out_dir (between runs: no rank is training)
            if rank == 0:
                shutil.copytree(*step["copy"])
            continue
        cfg = TrainConfig(**step["settings"])
        train_module.get_batch = lockstep(real_get_batch, rank, world) if step.get("lockstep") else real_get_batch
        parallel.full_state = recording(real_full_state, cfg.out_dir, rank)
        train(cfg)
    dist.destroy_process_group()


def launch(plan, folder):
    """torchrun --standalone --nproc_per_node=2 of run_ranks(plan); the whole launch is killed after
    LAUNCH_TIMEOUT_S (a hang fails the test, it does not keep ranks waiting)."""
    plan_path = os.path.join(folder, "plan.json")
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(REPO, "test_fsdp.py"), plan_path]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the 2-rank launch did not end in {LAUNCH_TIMEOUT_S} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-5000:]


def losses(out_dir, key="loss"):
    return {row["iter"]: row[key] for row in read_jsonl(os.path.join(out_dir, "metrics.jsonl")) if key in row}


def close(a, b, atol):
    return a.keys() == b.keys() and all(abs(a[k] - b[k]) <= atol for k in a)


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """The one 2-rank launch all the tests below read: parity runs, KD runs, a resume."""
    from test_distill import load_script, save_bpe, save_llama

    tmp = tmp_path_factory.mktemp("fsdp")
    data = make_char_data(tmp / "data")
    train(tiny(tmp, "teacher", data=data, max_iters=20, eval_interval=20, n_layer=2, n_embd=32))
    hf_teacher = save_llama(save_bpe(tmp / "hf_teacher"))
    bpe_data = str(tmp / "bpe_data")
    load_script("data/shakespeare/prepare.py").main(out_dir=bpe_data, tokenizer=hf_teacher)

    def settings(name, **kw):
        return {**{k: v for k, v in tiny(tmp, name, data=data).__dict__.items()}, "fsdp": True, "max_iters": 4,
                "eval_interval": 2, "gradient_accumulation_steps": 4, **kw}

    kd_ours = dict(loss="kd", teacher=str(tmp / "teacher"), kd_alpha=0.5)
    kd_hf = dict(loss="kd", teacher=hf_teacher, data_dir=bpe_data, kd_alpha=0.5)
    resume = dict(attn="affine", dropout=0.1, gradient_accumulation_steps=2, eval_interval=3)
    plan = [
        {"settings": settings("softmax"), "lockstep": True},
        {"settings": settings("affine", attn="affine", activation_checkpointing=True), "lockstep": True},
        {"settings": settings("kd_ours", **kd_ours)},
        {"settings": settings("kd_ours_sharded", **kd_ours, teacher_fsdp=True)},
        {"settings": settings("kd_ddp", **kd_ours, fsdp=False)},
        {"settings": settings("kd_ddp_sharded", **kd_ours, fsdp=False, teacher_fsdp=True)},
        {"settings": settings("kd_hf", **kd_hf)},
        {"settings": settings("kd_hf_sharded", **kd_hf, teacher_fsdp=True)},
        {"settings": settings("uninterrupted", **resume, max_iters=6)},
        {"settings": settings("interrupted", **resume, max_iters=3)},
        {"copy": [str(tmp / "interrupted"), str(tmp / "interrupted_ddp")]},
        {"settings": settings("interrupted", **resume, max_iters=6, init_from="resume")},
        {"settings": settings("interrupted_ddp", **resume, max_iters=6, init_from="resume", fsdp=False)},
    ]
    launch(plan, str(tmp))
    return tmp, {step["settings"]["out_dir"].rsplit(os.sep, 1)[1]: step["settings"] for step in plan if "settings" in step}


def single_process(tmp, settings, name, monkeypatch):
    """The run of settings in this process (fsdp=True is then a no-op), on the same batches as the ranks."""
    monkeypatch.setattr(train_module, "get_batch", lockstep(train_module.get_batch, 0, 1))
    train(TrainConfig(**{**settings, "out_dir": str(tmp / name), "fsdp": False}))
    monkeypatch.undo()
    return str(tmp / name)


@pytest.mark.parametrize("attn", ["softmax", "affine"])
def test_fsdp_equals_one_process_on_the_same_global_batch(launched, attn, monkeypatch):
    """4 iterations of 4 micro-batches: 2 ranks x 2 micro-steps under FSDP (affine: with activation
    checkpointing) against 1 process x 4. Losses and final weights agree within 1e-5 in fp32, and the ranks
    start from the same weights (the first checkpoint's gathered shards are one process's initial weights)."""
    tmp, runs = launched
    ref = single_process(tmp, runs[attn], f"{attn}_single", monkeypatch)
    got = str(tmp / attn)
    assert close(losses(got), losses(ref), 1e-5) and len(losses(got)) == 4
    assert close(losses(got, "val_loss"), losses(ref, "val_loss"), 1e-5) and len(losses(got, "val_loss")) == 3
    torch.manual_seed(runs[attn]["seed"])
    init = GPT(TrainConfig(**runs[attn]).gpt_config(vocab_size=8)).state_dict()
    assert max_diff(torch.load(os.path.join(got, "init.pt")), init) == 0
    final, final_ref = read_checkpoint(os.path.join(got, "ckpt.pt")), read_checkpoint(os.path.join(ref, "ckpt.pt"))
    assert final["iter_num"] == 4 and max_diff(final["model"], final_ref["model"]) < 1e-5
    if attn == "affine":  # alpha_ma (Eq. 9): equal on both ranks, and to one process's
        ranks = [torch.load(os.path.join(got, f"live-rank{r}.pt"))["alpha_ma"] for r in (0, 1)]
        assert all(torch.equal(a, b) for a, b in zip(*ranks))
        ref_alpha = [v for k, v in final_ref["model"].items() if k.endswith("alpha_ma")]
        assert len(ref_alpha) == 2 and all(torch.allclose(a, b, atol=1e-6, rtol=0) for a, b in zip(ranks[0], ref_alpha))
        assert ref_alpha[0].abs().min() > 0.01  # it moved


@pytest.mark.parametrize("teacher", ["ours", "hf", "ddp"])
def test_kd_with_a_sharded_teacher_equals_a_replicated_one(launched, teacher):
    """Under FSDP, a teacher of ours and a Hugging Face one; and ours under DDP (teacher_fsdp without fsdp)."""
    tmp, _ = launched
    for key in ("loss", "kd", "ce"):
        a, b = losses(str(tmp / f"kd_{teacher}"), key), losses(str(tmp / f"kd_{teacher}_sharded"), key)
        assert len(a) == 4 and close(a, b, 1e-6)
    assert min(losses(str(tmp / f"kd_{teacher}"), "kd").values()) > 0


def test_an_fsdp_checkpoint_loads_in_one_process_as_sample_and_eval_load_it(launched, monkeypatch):
    """The checkpoint holds plain full tensors under the model's own names: load_model (sample.py, eval.py,
    analyze.py, a KD teacher given as an out_dir) gives the logits the sharded model computed; sampling and
    perplexity equal those of the one-process run's checkpoint."""
    tmp, runs = launched
    got = str(tmp / "affine")
    model, _, _ = load_model(got)
    live = torch.load(os.path.join(got, "live-rank0.pt"))["logits"]
    probe = torch.arange(16)[None] % model.config.vocab_size
    torch.testing.assert_close(model(probe, targets=probe)[0], live, atol=1e-6, rtol=0)
    ref = str(tmp / "affine_single")
    if not os.path.exists(ref):
        single_process(tmp, runs["affine"], "affine_single", monkeypatch)
    texts = [sample(SampleConfig(init_from=d, device="cpu", start="a", num_samples=1, max_new_tokens=20, top_k=1))
             for d in (got, ref)]
    assert texts[0] == texts[1] and len(texts[0][0]) == 21
    ppl = [evaluate(EvalConfig(init_from=d, device="cpu", tasks="", ppl_data_dir=runs["affine"]["data_dir"],
                               ppl_windows=4))["perplexity"]["ppl"] for d in (got, ref)]
    assert abs(ppl[0] - ppl[1]) < 1e-4 * ppl[1]


def test_resume_under_fsdp_continues_exactly(launched):
    """An FSDP run stopped after iter 3 and resumed (dropout on, so every rank's random state matters)
    logs what the uninterrupted run logged and ends with its weights; resumed under DDP instead, the name-keyed
    optimizer state loads into the unsharded model and the run continues within rounding."""
    tmp, _ = launched
    whole, resumed, ddp = (str(tmp / n) for n in ("uninterrupted", "interrupted", "interrupted_ddp"))
    assert losses(resumed) == losses(whole) and len(losses(whole)) == 6
    assert max_diff(read_checkpoint(os.path.join(resumed, "ckpt.pt"))["model"],
                    read_checkpoint(os.path.join(whole, "ckpt.pt"))["model"]) == 0
    assert close(losses(ddp), losses(whole), 1e-5)


# --------------------------------------------------------------------------------------------------
# one process


def test_fsdp_without_torchrun_says_so_and_trains_unsharded(tmp_path, capsys):
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, "plain", data=data, max_iters=3))
    train(tiny(tmp_path, "fsdp", data=data, max_iters=3, fsdp=True))
    assert "fsdp=True / teacher_fsdp=True shard over torchrun's ranks; this is one process, so nothing is sharded" \
        in capsys.readouterr().out
    assert losses(str(tmp_path / "fsdp")) == losses(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="teacher_fsdp=True shards the teacher, but loss='ce' has none; set loss='kd' and a teacher"):
        TrainConfig(teacher_fsdp=True)


def test_a_checkpoint_with_positional_optimizer_state_still_resumes(tmp_path):
    """Checkpoints written before the optimizer state was keyed by names hold torch's own format (0, 1, ...)."""
    data = make_char_data(tmp_path / "data")
    train(tiny(tmp_path, "whole", data=data, max_iters=4, eval_interval=2))
    train(tiny(tmp_path, "old", data=data, max_iters=2, eval_interval=2))
    path = tmp_path / "old" / "ckpt.pt"
    ckpt = read_checkpoint(str(path))
    model = GPT(GPTConfig(**ckpt["model_args"]))
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95))
    parallel.load_optimizer_state(model, optimizer, ckpt["optimizer"])
    ckpt["optimizer"] = optimizer.state_dict()
    assert list(ckpt["optimizer"]["state"])[:2] == [0, 1]
    torch.save(ckpt, path)
    train(tiny(tmp_path, "old", data=data, max_iters=4, eval_interval=2, init_from="resume"))
    assert losses(str(tmp_path / "old")) == losses(str(tmp_path / "whole"))


def test_a_checkpoint_before_the_first_step_leaves_adamw_at_step_one(tmp_path):
    """The checkpoint of iter 0 is written before any optimizer step. get_optimizer_state_dict initialises an
    empty optimizer by a step of zero gradients; left so, the first real step would be AdamW's second (its bias
    correction shifted) and every run would train otherwise than a plain optimizer (found in review)."""
    data = make_char_data(tmp_path / "data")
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=16, vocab_size=8))
    optimizer = model.configure_optimizers(0.1, 1e-2, (0.9, 0.95))
    _, state = parallel.full_state(model, optimizer)
    assert {float(s["step"]) for s in (*state["state"].values(), *optimizer.state.values())} == {0.0}
    train(tiny(tmp_path, "run", data=data, max_iters=3, eval_interval=1))  # checkpoints at iters 0, 1, 2, 3
    steps = {float(s["step"]) for s in read_checkpoint(str(tmp_path / "run" / "ckpt.pt"))["optimizer"]["state"].values()}
    assert steps == {3.0}
    train(tiny(tmp_path, "run0", data=data, max_iters=0))
    assert {float(s["step"]) for s in read_checkpoint(str(tmp_path / "run0" / "ckpt.pt"))["optimizer"]["state"].values()} == {0.0}
    train(tiny(tmp_path, "run0", data=data, max_iters=3, eval_interval=1, init_from="resume"))
    assert losses(str(tmp_path / "run0")) == losses(str(tmp_path / "run"))


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path):
    """With dropout and 2 micro-steps: the same losses, weights and alpha_ma (the recomputed forward does
    not count its alpha twice in Eq. 9), and autograd keeps only each Block's input."""
    data = make_char_data(tmp_path / "data")
    for name, ac in (("plain", False), ("ac", True)):
        train(tiny(tmp_path, name, data=data, attn="affine", dropout=0.1, gradient_accumulation_steps=2, max_iters=4,
                   activation_checkpointing=ac))
    assert losses(str(tmp_path / "ac")) == losses(str(tmp_path / "plain"))
    a, b = (read_checkpoint(str(tmp_path / n / "ckpt.pt"))["model"] for n in ("ac", "plain"))
    assert max_diff(a, b) == 0
    model = GPT(tiny_llama("affine"))
    parallel.checkpoint_blocks(model)
    idx = torch.randint(0, 50, (2, 16))
    model(idx, targets=idx)[1].backward()  # one forward, and one recomputed in the backward
    assert [b.attn.alpha_count.item() for b in model.transformer.h] == [1, 1]
    config = tiny_llama("affine")
    x = torch.randn(2, 16, config.n_embd, dtype=torch.bfloat16, requires_grad=True)
    plain, checkpointed = GPT(config).to(torch.bfloat16), GPT(config).to(torch.bfloat16)
    parallel.checkpoint_blocks(checkpointed)
    assert saved_bytes(plain, x) > 10 * saved_bytes(checkpointed, x)
    assert saved_bytes(checkpointed, x) == x.numel() * 2 * config.n_layer  # each Block's input, in bf16


# --------------------------------------------------------------------------------------------------
# memory per GPU


def tiny_llama(attn, **kw):
    return GPTConfig(**{**dict(block_size=16, vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                               mlp_hidden=96, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, attn=attn), **kw})


def saved_bytes(model, x):
    """Bytes of the distinct tensors autograd keeps for the backward of the model's Blocks on input x,
    parameters and the RoPE tables left out."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    T = x.size(1)
    rope = (model.rope_cos[:T].to(x.dtype), model.rope_sin[:T].to(x.dtype))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h = x
        for block in model.transformer.h:
            h = block(h, rope)
    skip = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *rope)}
    return sum(n for ptr, n in seen.items() if ptr not in skip)


@pytest.mark.parametrize("attn", ["softmax", "affine"])
@pytest.mark.parametrize("shape", [{}, dict(n_kv_head=4), dict(n_embd=128), dict(mlp_hidden=200), dict(n_head=8)])
def test_activation_bytes_are_what_autograd_keeps(attn, shape):
    config = tiny_llama(attn, **shape)
    x = torch.randn(3, config.block_size, config.n_embd, dtype=torch.bfloat16, requires_grad=True)
    per_token = parallel.activation_bytes(config, 3, False) / (3 * config.block_size) - 2 * config.n_embd
    assert saved_bytes(GPT(config).to(torch.bfloat16), x) / (3 * config.block_size) == pytest.approx(per_token, rel=0.01)


def test_memory_per_gpu_follows_the_counted_parameters(capsys):
    """Every byte count of the weights, gradients, AdamW state and teacher comes from parameters counted on
    the meta device, as model.param_overhead counts them; `python parallel.py` prints the table."""
    from configurator import load_config
    counted = {name: param_overhead(GPTConfig(**shape))[0] for name, (shape, _) in parallel.TEACHERS.items()}
    assert {k: round(v / 1e9, 2) for k, v in counted.items()} == {  # the published sizes
        "Qwen/Qwen1.5-1.8B": 1.84, "meta-llama/Llama-3.2-3B": 3.21, "meta-llama/Llama-3.1-8B": 8.03,
        "HuggingFaceTB/SmolLM2-360M": 0.36}
    for path in parallel.CONFIGS:
        cfg = load_config([os.path.join(REPO, path)], TrainConfig)
        shape, vocab = parallel.TEACHERS[cfg.teacher]
        p, t = param_overhead(cfg.gpt_config(vocab))[0], counted[cfg.teacher]
        ddp = parallel.memory_per_gpu(cfg, vocab, shape, 8, sharded=False)
        assert [ddp[k] * 1e9 for k in ("weights", "grads", "adamw", "teacher")] == pytest.approx([4 * p, 8 * p, 8 * p, 2 * t])
        fsdp = parallel.memory_per_gpu(cfg, vocab, shape, 8, sharded=True)
        assert [fsdp[k] * 1e9 for k in ("grads", "adamw")] == pytest.approx([4 * p / 8, 8 * p / 8])
        # gathered in bf16: the root (all but the Blocks) and two Blocks; a Block counted as 2 layers less 1
        for config, n, key, size in ((cfg.gpt_config(vocab), p, "weights", 4), (GPTConfig(**shape), t, "teacher", 2)):
            block = (param_overhead(GPTConfig(**{**config.__dict__, "n_layer": 2}))[0]
                     - param_overhead(GPTConfig(**{**config.__dict__, "n_layer": 1}))[0])
            gathered = 2 * (n - config.n_layer * block) + 2 * 2 * block
            assert fsdp[key] * 1e9 == pytest.approx(size * n / 8 + gathered)
        assert fsdp["total"] < ddp["total"]
    # the 3B run needs FSDP on 80 GB GPUs
    assert parallel.memory_per_gpu(cfg, vocab, shape, 8, sharded=False)["total"] > 80 if "3b" in path else True
    table = parallel.memory_table().splitlines()
    assert len(table) == 2 + 3 * len(parallel.CONFIGS) and table[2].startswith("| kd_paper_qwen1.5_0.5b.py (8) | DDP |")


if __name__ == "__main__":
    run_ranks(sys.argv[1])
