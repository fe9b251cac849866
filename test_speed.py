"""Speed: the fused paths stay on the flash kernels, the fused optimizer, the MFU's FLOP count, memory
measured on CPU, and bench.py's time-to-loss comparison. No test here asserts a time."""

import os
import subprocess
import sys

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import bench
from configurator import ConfigError
from bench import PEAK_FLOPS, peak_flops
from model import ATTN_VARIANTS
from test_model import make_char_data, make_model

# every block setting that changes what reaches F.scaled_dot_product_attention
ATTENTION_BLOCKS = [dict(), dict(pos="rope"), dict(n_kv_head=2), dict(n_kv_head=1, pos="rope")]


def loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    _, loss = model(x, x)
    loss.backward()
    return [loss] + [p.grad for p in model.parameters()]


def cached_logits(model, x):
    """Logits of the last token after a prefill of all but it, then one cached step (the generate path)."""
    kv_cache = [{} for _ in model.transformer.h]
    with torch.no_grad():
        model(x[:, :-1], kv_cache=kv_cache)
        return model(x[:, -1:], kv_cache=kv_cache)[0]


@pytest.mark.parametrize("attn", ATTN_VARIANTS)
def test_fused_paths_run_on_the_flash_kernel(attn):
    """With only the flash backend allowed, SDPA raises instead of falling back to the T x T math kernel.
    Forward, backward and the KV-cache step of every variant and attention setting run under it, and
    give what the math kernel gives."""
    for block in ATTENTION_BLOCKS:
        model = make_model(attn, n_head=4, **block)
        model.train()
        x = torch.randint(0, 37, (3, 12), generator=torch.Generator().manual_seed(0))
        results = {}
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.MATH):
            with sdpa_kernel(backend):
                results[backend] = loss_and_grads(model, x) + [cached_logits(model, x)]
        for flash, math_ in zip(*results.values()):
            torch.testing.assert_close(flash, math_, atol=1e-5, rtol=1e-4, msg=f"{attn} {block}")


def test_dropout_in_training_needs_the_math_kernel_on_cpu():
    """What the README says: PyTorch's CPU flash kernel has no dropout, so training with dropout > 0 on
    CPU runs the math kernel (CUDA's flash kernel has dropout)."""
    model = make_model("softmax", dropout=0.1).train()
    x = torch.randint(0, 37, (2, 8))
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION), pytest.raises(RuntimeError, match="No available kernel"), \
            pytest.warns(UserWarning, match="not used because|do not support non-zero dropout"):
        model(x, x)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        model.eval()(x, x)  # no dropout in eval mode: flash again


def test_adamw_is_fused_and_steps_like_the_unfused_one():
    models = [make_model("affine", seed=3) for _ in range(2)]
    fused = models[0].configure_optimizers(0.1, 1e-2, (0.9, 0.99))
    assert fused.defaults["fused"]
    groups = [{"params": [p for p in models[1].parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in models[1].parameters() if p.dim() < 2], "weight_decay": 0.0}]
    reference = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.99), foreach=False)
    x = torch.randint(0, 37, (2, 16))
    for model, optimizer in zip(models, (fused, reference)):
        model(x, x)[1].backward()
        optimizer.step()
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)  # one step: float rounding (later ones amplify it)


@pytest.mark.parametrize("block", [dict(), dict(n_kv_head=1, mlp="swiglu", tie_embeddings=False), dict(mlp="relu2", bias=True)])
def test_mfu_flops_match_torch_flop_counter(block):
    """estimate_mfu's FLOPs against PyTorch's own count of the matmuls of a forward and backward of the
    eager path (T x T like the formula); the sink and affine add their few extra FLOPs on top."""
    B, T = 2, 16
    counted = {}
    for attn in ATTN_VARIANTS:
        model = make_model(attn, fused=False, n_head=4, **block)
        x = torch.randint(0, 37, (B, T))
        with FlopCounterMode(display=False) as counter:
            model(x, x)[1].backward()
        estimate = model.estimate_mfu(B, 1.0, 1.0)  # FLOPs of one iteration of B sequences
        counted[attn] = counter.get_total_flops()
        if attn in ("softmax", "gated"):
            assert estimate == counted[attn], attn
        else:
            assert counted[attn] < estimate < 1.05 * counted[attn], attn
    assert counted["gated"] - counted["softmax"] == 6 * B * T * 2 * 16 * 16  # the gate's W_a (n_embd 16) in 2 layers


def test_peak_flops_by_gpu_name_and_dtype():
    assert peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert peak_flops("NVIDIA A100-SXM4-40GB", "float32") == 156e12  # TF32 matmuls
    assert peak_flops("NVIDIA L4", "bfloat16") == 121e12
    assert peak_flops("NVIDIA L40S", "bfloat16") is None  # not in the table, and not an L4
    assert all(set(p) == {"bfloat16", "float32"} for p in PEAK_FLOPS.values())


def test_peak_memory_on_cpu_counts_live_tensors():
    cpu = torch.device("cpu")
    peak = bench.peak_memory(lambda: (torch.ones(2**20) + 1).sum(), cpu)  # two 4 MiB tensors live at once
    assert 8 * 2**20 <= peak < 8 * 2**20 + 4096
    assert bench.peak_memory(lambda: [torch.ones(2**20).sum() for _ in range(3)], cpu) < 4 * 2**20 + 4096


def test_peak_memory_frees_no_block_the_profiler_cannot_size():
    """An affine training step replaces its alpha_sum buffer, a block allocated before the profiler started:
    torch's allocator warns "Memory block of unknown size" when it is freed while the profiler runs, unless
    it is held (keep) until the profiler stops. It warns once per process: a process of its own, kept first,
    then not kept, after a step outside the profiler has made new buffers."""
    script = ("import sys, torch, bench; from model import GPT, GPTConfig; "
              "model = GPT(GPTConfig(block_size=16, vocab_size=37, n_layer=1, n_head=2, n_embd=16, attn='affine')); "
              "opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99)); x = torch.randint(0, 37, (2, 16)); "
              "step = lambda: bench.train_step(model, opt, x, x, torch.autocast('cpu', enabled=False)); step(); "
              "bench.peak_memory(step, torch.device('cpu'), list(model.buffers())); step(); print('without keep:', file=sys.stderr); "
              "bench.peak_memory(step, torch.device('cpu'))")
    done = subprocess.run([sys.executable, "-c", script], cwd=os.path.dirname(os.path.abspath(__file__)),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    kept, not_kept = done.stderr.split("without keep:")
    assert "Memory block of unknown size" not in kept and "Memory block of unknown size" in not_kept


def test_fused_training_memory_is_linear_in_T_and_eager_is_not():
    records = [dict(T=T, variant="softmax", mode=mode, error=None,
                    train_mem_mib=train_step_memory(T, mode == "fused") / 2**20)
               for mode in ("eager", "fused") for T in (128, 512)]
    growth = {line.split()[1]: float(line.split()[-1]) for line in bench.format_memory(records, "train").splitlines()[1:]}
    assert growth["fused"] < 2.2 and growth["eager"] > 3.0  # per doubling of T: 2 is linear, 4 quadratic


def train_step_memory(T, fused):
    torch.manual_seed(0)
    model = make_model("softmax", block_size=T, fused=fused)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    x = torch.randint(0, 37, (2, T))
    step = lambda: bench.train_step(model, optimizer, x, x, torch.autocast("cpu", enabled=False))
    step()  # the optimizer state exists before the measured step, as in bench.py
    return bench.peak_memory(step, torch.device("cpu"))


def tiny_config_file(path, data_dir, **kw):
    settings = {**dict(dataset="tiny", data_dir=data_dir, device="cpu", n_layer=1, n_head=2, n_embd=16, block_size=16,
                       batch_size=4, eval_iters=2, eval_interval=5, log_interval=5, warmup_iters=0, min_lr=1e-4), **kw}
    path.write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))
    return str(path)


def test_time_to_loss_compares_runs_on_the_same_eval_batches(tmp_path, capsys):
    data = make_char_data(tmp_path / "data")
    baseline = tiny_config_file(tmp_path / "base.py", data, learning_rate=1e-3, max_iters=10, lr_decay_iters=10)
    main = tiny_config_file(tmp_path / "main.py", data, learning_rate=1e-2, max_iters=10, lr_decay_iters=10)
    runs = bench.main(["--time_to_loss=True", f"--baseline={baseline}", f"--config={main}", "--variants=softmax,affine", "--iters=1"])
    target = runs[0]["evals"][-1]["val_loss"]
    assert [r["attn"] for r in runs] == ["softmax", "softmax", "affine"]
    for run in runs:
        first = next(row for row in run["evals"] if row["val_loss"] <= target)
        assert (run["target"], run["reached_iter"], run["reached_s"]) == (target, first["iter"], first["time_s"])
        assert run["vs_baseline"] == pytest.approx(first["time_s"] / runs[0]["reached_s"])
        steps = first["iter"] * (run["forward_ms"] + run["backward_ms"] + run["optimizer_step_ms"])
        assert run["vs_baseline_steps"] == pytest.approx(steps / (runs[0]["reached_iter"] * runs[0]["step_ms"]))
    assert runs[1]["reached_iter"] < 10  # ten times the learning rate gets there sooner
    out = capsys.readouterr().out
    assert f"final val loss {target:.4f}" in out and "load average" in out
    assert sum(line.startswith("main.py attn=") for line in out.splitlines()) == 4  # two runs, each in both tables
    bad = tiny_config_file(tmp_path / "bad.py", data, batch_size=8, max_iters=1)
    with pytest.raises(ConfigError, match="batch_size is 4 in .* but 8 in"):
        bench.main(["--time_to_loss=True", f"--baseline={baseline}", f"--config={bad}"])
