"""
Speed and memory of every attention variant: a training step (forward + backward + AdamW step) and a
forward pass without gradients, for the eager reference (fused=False), the fused SDPA path (fused=True)
and torch.compile of the fused model, at a few sequence lengths.

    python bench.py                              # CUDA if present (bf16 autocast, GPT-2 small), else a small CPU model
    python bench.py --device=cpu --seq_lens=256,1024 --variants=softmax,affine --out=bench.json
    python bench.py --loss_chunks=0,2048,512,128 --out=loss_chunks.json  # instead: KD loss memory against loss_chunk
    python bench.py --time_to_loss=True --variants=softmax,affine  # instead: the main job's time to nanoGPT's val loss

Each variant's time is also given as a ratio to softmax in the same mode at the same T, measured in the
same run (softmax is therefore always measured), and each mode's speedup over eager. To keep those ratios
honest on a busy machine the variants of one mode are timed in rounds of one step each, in a rotated
order, and every time is the median over the rounds.

Settings are the fields of BenchConfig, given as in train.py (config files and --key=value overrides).
"""

import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext

import torch

from configurator import ConfigError, check_types, check_writable, load_config
from dataloader import find_data
from model import ATTN_VARIANTS, GPT, GPTConfig
from train import NonFiniteLoss, TrainConfig, forward_loss, train

MODES = ("eager", "fused", "compile")

# Dense peak FLOP/s (no sparsity) of some GPUs, from NVIDIA's data sheets, for the two dtypes training runs
# in: "bfloat16" (autocast) and "float32", whose matmuls run in TF32 (train.py and bench.py allow it).
# The first entry whose words are all words of torch.cuda.get_device_name() wins.
PEAK_FLOPS = {
    "H100 PCIe": {"bfloat16": 756e12, "float32": 378e12},
    "H100 NVL": {"bfloat16": 835e12, "float32": 418e12},
    "H100": {"bfloat16": 989e12, "float32": 495e12},  # SXM
    "H200 NVL": {"bfloat16": 835e12, "float32": 418e12},
    "H200": {"bfloat16": 989e12, "float32": 495e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
}


def peak_flops(device_name, dtype):
    """PEAK_FLOPS of the GPU named device_name (e.g. "NVIDIA A100-SXM4-80GB") in dtype, None if unknown."""
    words = set(device_name.replace("-", " ").split())
    return next((peaks[dtype] for name, peaks in PEAK_FLOPS.items() if set(name.split()) <= words), None)


# GPT-2 small on CUDA. On CPU a model small enough to finish in a few minutes, with GPT-2's head size of
# 64 (the sink's extra feature costs relatively more in smaller heads) and a character-level vocabulary
# (with GPT-2's 50k tokens the lm_head would be nearly all of a small model's time and would hide what
# the attention variants cost).
DEFAULTS = {
    "cuda": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, batch_size=8, seq_lens=[256, 1024, 2048], compile=True),
    "cpu": dict(n_layer=2, n_head=2, n_embd=128, vocab_size=65, batch_size=4, seq_lens=[256, 1024], compile=False),
}
# --loss_chunks: one 2048-token sequence of the paper's first student (width 1024) over Qwen's vocabulary. On
# CPU, where that takes about an hour, a narrower student over a smaller vocabulary: a few minutes.
LOSS_DEFAULTS = {"cuda": dict(n_embd=1024, vocab_size=151936, batch_size=1, seq_lens=[2048]),
                 "cpu": dict(n_embd=64, vocab_size=16384, batch_size=1, seq_lens=[2048])}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(variant, mode, T, args, device):
    """A fresh model; the same seed for every variant, so the parameters they share start equal."""
    torch.manual_seed(args.seed)
    config = GPTConfig(block_size=T, vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, dropout=0.0, attn=variant, fused=mode != "eager")
    model = GPT(config).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95))
    runner = torch.compile(model, dynamic=False) if mode == "compile" else model
    return model, runner, optimizer


def train_step(runner, optimizer, x, y, ctx):
    runner.train()
    with ctx:
        _, loss = runner(x, y)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # so the step's peak memory counts the gradients


@torch.no_grad()
def forward_pass(runner, x, y, ctx):
    runner.eval()
    with ctx:
        runner(x, y)  # with targets: logits of every position, the same forward as in training


def measure(fn, device):
    """Seconds of one call of fn."""
    sync(device)  # CUDA launches are asynchronous: time the work, not the queueing
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def peak_memory(fn, device, keep=()):
    """Bytes of tensor memory one call of fn holds at its peak above what was allocated before it (weights
    and optimizer state excluded: what is left is what grows with T). On CUDA the caching allocator's own
    counters. On CPU torch.profiler's memory events: every allocation (+bytes) and free (-bytes) by torch's
    CPU allocator while fn runs, kernels' scratch buffers included; the peak is the maximum of their running
    sum in time order. Frees of blocks allocated before fn are not recorded, so this never understates. keep:
    tensors of that kind which fn replaces (a model's buffers: affine's alpha_sum), held until the profiler
    stops, so that it sees no free of a block it cannot size (it would warn "Memory block of unknown size")."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        return torch.cuda.max_memory_allocated(device) - base
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # else the profiler logs two lines to stderr per call
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak


def bench_mode(T, mode, x, y, args, device, ctx, peak):
    """The records of every variant in one mode at one T. The variants are interleaved step by step, in
    a rotated order each round, so a burst of load from elsewhere slows them all alike. The modes come
    one after the other, so GPT-2 small on CUDA holds five models in memory, not fifteen (freed when
    this returns)."""
    runs = []
    for variant in args.variant_list():
        run = dict(rec=dict(T=T, variant=variant, mode=mode, error=None), train=[], fwd=[])
        runs.append(run)
        try:
            run["model"], runner, optimizer = build(variant, mode, T, args, device)
            run["steps"] = {"train": lambda r=runner, o=optimizer: train_step(r, o, x, y, ctx),
                            "fwd": lambda r=runner: forward_pass(r, x, y, ctx)}
            for _ in range(args.warmup):  # the first calls compile, allocate and tune
                run["steps"]["train"]()
                run["steps"]["fwd"]()
        except torch.OutOfMemoryError:
            run["rec"]["error"] = "out of memory"
    for i in range(args.iters):
        for kind in ("train", "fwd"):
            for run in runs[i % len(runs):] + runs[:i % len(runs)]:
                if run["rec"]["error"]:
                    continue
                try:
                    run[kind].append(measure(run["steps"][kind], device))
                except torch.OutOfMemoryError:
                    run["rec"]["error"] = "out of memory"
    for run in runs:
        rec = run["rec"]
        try:  # memory in calls of their own: the CPU profiler would slow the timed ones
            mem = {kind: peak_memory(run["steps"][kind], device, list(run["model"].buffers()))
                   for kind in ("train", "fwd")} if not rec["error"] else {}
        except torch.OutOfMemoryError:
            rec["error"] = "out of memory"
        if rec["error"]:
            continue
        for kind in ("train", "fwd"):
            dt = statistics.median(run[kind])
            rec[f"{kind}_ms"] = 1e3 * dt
            rec[f"{kind}_tok_s"] = args.batch_size * T / dt
            rec[f"{kind}_mem_mib"] = mem[kind] / 2**20
        rec["mfu"] = run["model"].estimate_mfu(args.batch_size, rec["train_ms"] / 1e3, peak) if peak else None
    return [run["rec"] for run in runs]


def bench(args, peak=None):
    """One record per (T, variant, mode): median times, tokens/s, ratios and memory; MFU against peak FLOP/s,
    if given."""
    device = torch.device(args.device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    modes = MODES if args.compile else MODES[:2]
    if args.compile:
        # every variant is a separate graph in train and in eval mode; without a higher limit dynamo would
        # silently fall back to eager after 8 of them, and "compile" would time eager code
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(args.variant_list()))
    records = []
    for T in args.seq_len_list():
        g = torch.Generator().manual_seed(args.seed)
        x, y = (torch.randint(0, args.vocab_size, (args.batch_size, T), generator=g).to(device) for _ in range(2))
        for mode in modes:
            print(f"timing T={T}, {mode} ...", flush=True)  # compiling GPT-2 small takes minutes
            records += bench_mode(T, mode, x, y, args, device, ctx, peak)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            if mode == "compile":
                torch._dynamo.reset()  # drop this T's graphs
    # ratios within this run: to softmax in the same mode at the same T, and speedup over eager
    done = {(r["T"], r["variant"], r["mode"]): r for r in records if not r["error"]}
    for rec in done.values():
        softmax, eager = done.get((rec["T"], "softmax", rec["mode"])), done.get((rec["T"], rec["variant"], "eager"))
        for kind in ("train", "fwd"):
            rec[f"{kind}_vs_softmax"] = rec[f"{kind}_ms"] / softmax[f"{kind}_ms"] if softmax else None
            rec[f"{kind}_speedup"] = eager[f"{kind}_ms"] / rec[f"{kind}_ms"] if eager else None
    return records


def format_table(records, kind):
    """kind "train" or "fwd": one row per (T, variant, mode)."""
    def f(value, spec):
        return "-" if value is None else format(value, spec)

    head = f"{'T':>5}  {'variant':<13}{'mode':<8}{'ms':>9}{'tok/s':>10}{'x softmax':>11}{'speedup':>9}{'MiB':>9}"
    head += f"{'MFU':>7}" if kind == "train" else ""
    lines = [head]
    for i, rec in enumerate(records):
        if i and rec["T"] != records[i - 1]["T"]:
            lines.append("")
        line = f"{rec['T']:>5}  {rec['variant']:<13}{rec['mode']:<8}"
        if rec["error"]:
            lines.append(line + rec["error"])
            continue
        line += f"{rec[kind + '_ms']:>9.2f}{rec[kind + '_tok_s']:>10.0f}{f(rec[kind + '_vs_softmax'], '.3f'):>11}"
        line += f"{f(rec[kind + '_speedup'], '.2f'):>9}{f(rec[kind + '_mem_mib'], '.1f'):>9}"
        line += f"{f(rec['mfu'], '.1%'):>7}" if kind == "train" else ""
        lines.append(line)
    return "\n".join(lines)


def format_memory(records, kind):
    """Peak memory against T, one row per (variant, mode), and its growth per doubling of T from the
    first T to the last: about 2 where memory is linear in T, 4 where it is quadratic."""
    Ts = sorted({r["T"] for r in records})
    lines = [f"{'variant':<13}{'mode':<8}" + "".join(f"{f'T={T}':>10}" for T in Ts) + f"{'x per 2T':>10}"]
    for variant, mode in dict.fromkeys((r["variant"], r["mode"]) for r in records):
        mib = {r["T"]: r.get(f"{kind}_mem_mib") for r in records if (r["variant"], r["mode"]) == (variant, mode)}
        line = f"{variant:<13}{mode:<8}" + "".join("{:>10}".format("-" if mib.get(T) is None else f"{mib[T]:.1f}") for T in Ts)
        if len(Ts) > 1 and all(mib.get(T) for T in (Ts[0], Ts[-1])):
            line += f"{(mib[Ts[-1]] / mib[Ts[0]]) ** (1 / math.log2(Ts[-1] / Ts[0])):>10.2f}"
        lines.append(line)
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# --time_to_loss=True: time to reach the nanoGPT-equivalent run's quality, training runs side by side

SAME_EVAL = ("dataset", "data_dir", "seed", "batch_size", "block_size", "eval_iters")  # what picks the eval batches


def cpu_name():
    """The CPU model as lscpu names it, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def step_breakdown(cfgs, vocab_size, rounds):
    """Median ms of forward, backward and optimizer step (clipping included) of each config's model on
    random tokens, its steps interleaved with the other configs' round by round (as in bench_mode)."""
    runs = []
    for cfg in cfgs:
        torch.manual_seed(cfg.seed)
        model = GPT(cfg.gpt_config(vocab_size)).to(cfg.device)
        optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2))
        x, y = (torch.randint(0, vocab_size, (cfg.batch_size, cfg.block_size), device=cfg.device) for _ in range(2))
        runs.append(dict(model=model, optimizer=optimizer, clip=cfg.grad_clip or float("inf"), x=x, y=y, loss=None,
                         forward=[], backward=[], optimizer_step=[]))

    def forward(r):
        r["loss"] = r["model"](r["x"], r["y"])[1]

    def optimizer_step(r):
        torch.nn.utils.clip_grad_norm_(r["model"].parameters(), r["clip"])
        r["optimizer"].step()
        r["optimizer"].zero_grad(set_to_none=True)

    phases = {"forward": forward, "backward": lambda r: r["loss"].backward(), "optimizer_step": optimizer_step}
    for i in range(rounds + 1):  # an untimed round first
        for cfg, r in list(zip(cfgs, runs))[i % len(runs):] + list(zip(cfgs, runs))[:i % len(runs)]:
            for name, fn in phases.items():
                dt = measure(lambda: fn(r), torch.device(cfg.device))
                if i >= 1:
                    r[name].append(dt)
    return [{name: 1e3 * statistics.median(r[name]) for name in phases} for r in runs]


def time_to_loss(args):
    """Train the baseline config, then the main config once per attn in args.variants, on the same data;
    the target is the baseline's final val loss, on the same eval batches. A run's time to the target is
    time_s of its first evaluation at or below it: wall seconds from its start, its earlier evaluations
    and logging included. The runs write into a temporary folder, deleted at the end."""
    cfgs = [load_config([args.baseline], TrainConfig)]
    cfgs += [load_config([args.config] + ([f"--attn={a}"] if a else []), TrainConfig) for a in args.variant_list()]
    for name in SAME_EVAL:
        if getattr(cfgs[0], name) != getattr(cfgs[1], name):
            raise ConfigError(f"{name} is {getattr(cfgs[0], name)!r} in {args.baseline} but {getattr(cfgs[1], name)!r} "
                              f"in {args.config}: the runs must share {', '.join(SAME_EVAL)} to see the same eval batches")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, cfg in enumerate(cfgs):
            cfg = dataclasses.replace(cfg, out_dir=os.path.join(tmp, str(i)))
            print(f"\n{'baseline' if i == 0 else 'main'} run: {args.baseline if i == 0 else args.config} (attn={cfg.attn})", flush=True)
            result = train(cfg)
            with open(os.path.join(cfg.out_dir, "metrics.jsonl")) as f:
                evals = [row for row in map(json.loads, f) if "val_loss" in row]
            evals = [{k: row[k] for k in ("iter", "val_loss", "time_s")} for row in evals]
            runs.append(dict(config=args.baseline if i == 0 else args.config, attn=cfg.attn, iters=result["iter_num"],
                             wall_s=result["elapsed_s"], val_loss=result["val_loss"], evals=evals,
                             eval_ms=1e3 * result["eval_s"] / result["iter_num"], log_ms=1e3 * result["log_s"] / result["iter_num"]))
        _, meta = find_data(cfgs[0].data_dir, cfgs[0].dataset, cfgs[0].block_size)
    target = runs[0]["val_loss"]
    for run, ms in zip(runs, step_breakdown(cfgs, meta["vocab_size"] if meta else 50304, args.iters)):
        hit = next((row for row in run["evals"] if row["val_loss"] <= target), None)
        run.update(target=target, reached_iter=hit["iter"] if hit else None, reached_s=hit["time_s"] if hit else None,
                   step_ms=sum(ms.values()), **{f"{name}_ms": value for name, value in ms.items()})
    base = runs[0]  # reaches its own final loss, at the end or before
    for run in runs:  # x (steps): the ratio from iterations and interleaved step times, which load from elsewhere spares
        hit = run["reached_iter"] is not None
        run["vs_baseline"] = run["reached_s"] / base["reached_s"] if hit else None
        run["vs_baseline_steps"] = run["reached_iter"] * run["step_ms"] / (base["reached_iter"] * base["step_ms"]) if hit else None
    return runs


class HiddenStates(torch.nn.Module):
    """Stands in for a model in train.forward_loss: final hidden states (B, T, width), then an lm_head."""

    def __init__(self, B, T, width, vocab_size):
        super().__init__()
        self.h = torch.nn.Parameter(torch.randn(B, T, width))
        self.lm_head = torch.nn.Linear(width, vocab_size, bias=False)

    def forward(self, idx, return_hidden=False):
        return self.h * 1.0  # a new tensor each call, as a body's output is


def loss_chunks(args, device):
    """Peak memory and time of train.forward_loss's forward and backward alone against loss_chunk: pure KD
    (its CE computed too) of a student of width n_embd from a teacher twice as wide, over vocab_size
    tokens, on batch_size sequences of seq_lens[0] tokens. Hidden states stand in for both models' bodies,
    so what is measured is the loss's own memory, the gradient of the student's lm_head included."""
    T, V, C = args.seq_len_list()[0], args.vocab_size, args.n_embd
    torch.manual_seed(args.seed)
    student = HiddenStates(args.batch_size, T, C, V).to(device)
    teacher = HiddenStates(args.batch_size, T, 2 * C, V).to(device).requires_grad_(False)
    x = torch.randint(V, (args.batch_size, T), device=device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    rows = []
    for chunk in args.loss_chunk_list():
        cfg = TrainConfig(loss="kd", teacher="-", kd_alpha=1.0, loss_chunk=chunk, device=device.type)

        def step():
            with ctx:
                loss, *_ = forward_loss(student, teacher, x, x, cfg, V)
            loss.backward()
            student.zero_grad(set_to_none=True)  # so the peak counts the gradients
            return loss.item()

        loss = step()  # warm-up, and the value
        ms = statistics.median(measure(step, device) for _ in range(args.iters)) * 1e3
        rows.append({"loss_chunk": chunk, "peak_mib": peak_memory(step, device) / 2**20, "ms": ms, "loss": loss})
        print(format_loss_chunk(rows[-1]), flush=True)  # as it comes: on CPU each row takes a while
    return rows


LOSS_CHUNK_HEAD = "loss_chunk   peak MiB        ms        loss"


def format_loss_chunk(r):
    return f"{r['loss_chunk']:>10} {r['peak_mib']:>10.0f} {r['ms']:>9.0f} {r['loss']:>11.6f}"


def format_time_to_loss(runs):
    def f(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [f"{'run':<48}{'iters':>6}{'wall s':>8}{'val loss':>10}{'target at iter':>16}{'after s':>9}{'x baseline':>12}"
             f"{'x (steps)':>11}"]
    for run in runs:
        lines.append(f"{os.path.basename(run['config']) + ' attn=' + run['attn']:<48}{run['iters']:>6}{run['wall_s']:>8.1f}{run['val_loss']:>10.4f}"
                     f"{f(run['reached_iter'], 'd'):>16}{f(run['reached_s'], '.1f'):>9}{f(run['vs_baseline'], '.2f'):>12}"
                     f"{f(run['vs_baseline_steps'], '.2f'):>11}")
    lines += ["x baseline: wall seconds to the target / the baseline's; x (steps): iterations to the target x the "
              "interleaved step time below, / the baseline's (steadier when the machine is shared)",
              "", "ms per iteration: forward, backward, optimizer step (median of interleaved steps), eval, logging (the run's)"]
    for run in runs:
        lines.append(f"{os.path.basename(run['config']) + ' attn=' + run['attn']:<48}" + "".join(
            f"{run[k + '_ms']:>10.2f}" for k in ("forward", "backward", "optimizer_step", "eval", "log")))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# settings


@dataclasses.dataclass
class BenchConfig:
    device: str = "cuda" if torch.cuda.is_available() else "cpu"  # cpu, cuda or cuda:N
    variants: str = ""  # comma-separated attn variants; "": all; softmax is always added (the ratios' reference)
    seq_lens: str = ""  # comma-separated; "": 256,1024,2048 on CUDA, 256,1024 on CPU
    compile: bool = None  # also time torch.compile of the fused model; None: on CUDA only
    # the model; None: GPT-2 small on CUDA, a small character-level model on CPU
    n_layer: int = None  # 12 on CUDA, 2 on CPU
    n_head: int = None  # 12 on CUDA, 2 on CPU
    n_embd: int = None  # 768 on CUDA, 128 on CPU
    vocab_size: int = None  # 50304 on CUDA, 65 on CPU
    batch_size: int = None  # 8 on CUDA, 4 on CPU
    # the measurement
    warmup: int = 2  # untimed iterations per model before the rounds
    iters: int = 10  # timed rounds; each times one step of every variant
    seed: int = 1337
    out: str = ""  # also write the results as JSON to this file
    # instead: the KD loss's peak memory and time for each of these loss_chunk values (0: unchunked), comma-separated;
    # by default for one 2048-token sequence, on CUDA with n_embd=1024 and vocab_size=151936 (the paper's Qwen
    # student), on CPU with n_embd=64 and vocab_size=16384 (minutes instead of an hour)
    loss_chunks: str = ""
    # instead: train baseline and config on the same data and compare their times to the baseline's final val loss,
    # config once per variants ("": its own attn); the device is the configs'
    time_to_loss: bool = False
    baseline: str = "config/train_shakespeare_char_nanogpt.py"  # the run whose final val loss is the target
    config: str = "config/train_shakespeare_char_cpu.py"  # the run timed to the target

    def __post_init__(self):
        check_types(self)
        self.variant_list(), self.seq_len_list(), self.loss_chunk_list()  # a bad list fails here, not after minutes
        if self.iters < 1:
            raise ConfigError(f"--iters={self.iters} must be a positive integer")
        if self.warmup < 0:
            raise ConfigError(f"--warmup={self.warmup} must be 0 or more")
        if self.time_to_loss:
            return
        try:
            device = torch.device(self.device)
        except RuntimeError:
            device = None
        if device is None or device.type not in DEFAULTS:
            raise ConfigError(f"--device={self.device!r}: allowed device types are {', '.join(DEFAULTS)}")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device={self.device!r} but torch sees no CUDA device; use --device=cpu")
        defaults = {**DEFAULTS[device.type], **(LOSS_DEFAULTS[device.type] if self.loss_chunks else {})}
        for name, value in defaults.items():
            if getattr(self, name) in (None, ""):
                setattr(self, name, value if name != "seq_lens" else ",".join(map(str, value)))
        for name in ("n_layer", "n_head", "n_embd", "vocab_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}={getattr(self, name)} must be a positive integer")
        if self.n_embd % self.n_head:
            raise ConfigError(f"--n_embd={self.n_embd} must be divisible by --n_head={self.n_head}")
        if self.warmup < 1 and self.compile:
            raise ConfigError(f"--warmup={self.warmup}: --compile=True needs at least 1, or compilation is timed")

    def variant_list(self):
        """The variants to time; with time_to_loss the attn values of the main runs ([""]: its config's)."""
        variants = csv_list("variants", self.variants, str, ATTN_VARIANTS)
        if self.time_to_loss:
            return variants or [""]
        variants = variants or list(ATTN_VARIANTS)
        return ["softmax"] * ("softmax" not in variants) + variants

    def seq_len_list(self):
        return csv_list("seq_lens", self.seq_lens, int)

    def loss_chunk_list(self):
        return csv_list("loss_chunks", self.loss_chunks, int, least=0)


def csv_list(name, text, cast, allowed=None, least=1):
    """The comma-separated items of the setting name=text, in order, once each; [] for ""."""
    try:
        items = list(dict.fromkeys(cast(t.strip()) for t in text.split(",") if t.strip()))
    except ValueError:
        raise ConfigError(f"--{name}={text!r} must be comma-separated integers, e.g. --{name}=256,1024") from None
    if text.strip() and not items:
        raise ConfigError(f"--{name}={text!r} names none; give comma-separated values or \"\" for the default")
    for item in items:
        if allowed is not None and item not in allowed:
            raise ConfigError(f"--{name}={text!r}: unknown {item!r}; allowed: {', '.join(allowed)}")
        if allowed is None and item < least:
            raise ConfigError(f"--{name}={text!r}: {item} must be an integer of at least {least}")
    return items


def save_json(path, results):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    print(f"wrote {path}")


def main(argv):
    args = load_config(argv, BenchConfig)
    if args.out:
        check_writable(args.out, "--out")  # before the minutes of measuring whose results it keeps
    if args.time_to_loss:
        return main_time_to_loss(args)
    device = torch.device(args.device)
    if args.loss_chunks:
        counter = "the CUDA allocator's counters" if device.type == "cuda" else "torch.profiler's CPU allocation events"
        where = (f"{torch.cuda.get_device_name(device)}, bf16 autocast" if device.type == "cuda" else
                 f"{cpu_name()}, {torch.get_num_threads()} threads, fp32")
        print(f"KD loss, forward and backward: {args.batch_size} x {args.seq_len_list()[0]} tokens, vocab_size={args.vocab_size}, "
              f"student width {args.n_embd}, teacher {2 * args.n_embd}; {where}, torch {torch.__version__}; peak memory "
              f"from {counter}, median of {args.iters} times\n{LOSS_CHUNK_HEAD}", flush=True)
        rows = loss_chunks(args, device)
        if args.out:
            settings = {"loss_chunks": args.loss_chunk_list(), "seq_lens": args.seq_len_list(),
                        **{k: getattr(args, k) for k in ("batch_size", "n_embd", "vocab_size", "iters", "seed")}}
            save_json(args.out, {"settings": settings, "device": where, "torch": torch.__version__, "results": rows})
        return rows
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as in training; bf16 autocast covers most matmuls anyway
        torch.backends.cudnn.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
        peak = peak_flops(name, "bfloat16")
        known = f"MFU against {peak / 1e12:.0f} TFLOP/s" if peak else "MFU: - (add its peak to bench.PEAK_FLOPS)"
        where = f"{name}, bf16 autocast, {known}"
    else:
        peak = None  # no MFU on CPU
        where = f"{cpu_name()}, {torch.get_num_threads()} threads, fp32"
    print(f"{where}, torch {torch.__version__}; n_layer={args.n_layer} n_head={args.n_head} n_embd={args.n_embd} "
          f"vocab_size={args.vocab_size} batch_size={args.batch_size}; median of {args.iters} interleaved rounds")
    records = bench(args, peak)
    counter = "the CUDA allocator's counters" if device.type == "cuda" else "torch.profiler's CPU allocation events"
    notes = ("x softmax: time / softmax's time, same mode and T (cost ratio, 1.05 = 5% slower); "
             f"speedup: eager's time / this time; MiB: peak memory above the resident weights and optimizer state, from {counter}")
    print(f"\ntraining step (forward + backward + AdamW step)\n{format_table(records, 'train')}")
    print(f"\nforward pass (no grad)\n{format_table(records, 'fwd')}\n\n{notes}")
    print(f"\npeak memory of a training step (MiB) against T\n{format_memory(records, 'train')}")
    if args.out:
        settings = {**dataclasses.asdict(args), "variants": args.variant_list(), "seq_lens": args.seq_len_list(),
                    "peak_flops": peak}
        del settings["out"]
        save_json(args.out, {"settings": settings, "device": where, "torch": torch.__version__, "results": records})
    return records


def main_time_to_loss(args):
    load = os.getloadavg()
    runs = time_to_loss(args)
    where = (f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}; load average (1, 5, 15 min) "
             f"before {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, after " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"\ntime to the baseline's final val loss {runs[0]['target']:.4f} (same data, same eval batches); {where}")
    print(format_time_to_loss(runs))
    if args.out:
        save_json(args.out, {"device": where, "results": runs})
    return runs


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, NonFiniteLoss) as e:
        sys.exit(f"{type(e).__name__}: {e}")
