"""
Speed and memory of every attention variant: a training step (forward + backward + AdamW step) and a
forward pass without gradients, for the eager reference (fused=False), the fused SDPA path (fused=True)
and torch.compile of the fused model, at a few sequence lengths.

    python bench.py                              # CUDA if present (bf16 autocast, GPT-2 small), else a small CPU model
    python bench.py --device=cpu --seq_lens=256,1024 --variants=softmax,affine --out=bench.json

Each variant's time is also given as a ratio to softmax in the same mode at the same T, measured in the
same run (softmax is therefore always measured), and each mode's speedup over eager. To keep those ratios
honest on a busy machine the variants of one mode are timed in rounds of one step each, in a rotated
order, and every time is the median over the rounds.
"""

import argparse
import gc
import json
import statistics
import time
from contextlib import nullcontext

import torch

from model import ATTN_VARIANTS, GPT, GPTConfig

MODES = ("eager", "fused", "compile")

# GPT-2 small on CUDA. On CPU a model small enough to finish in a few minutes, with GPT-2's head size of
# 64 (the sink's extra feature costs relatively more in smaller heads) and a character-level vocabulary
# (with GPT-2's 50k tokens the lm_head would be nearly all of a small model's time and would hide what
# the attention variants cost).
DEFAULTS = {
    "cuda": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50304, batch_size=8, seq_lens=[256, 1024, 2048], compile=True),
    "cpu": dict(n_layer=2, n_head=2, n_embd=128, vocab_size=65, batch_size=4, seq_lens=[256, 1024], compile=False),
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(variant, mode, T, args, device):
    """A fresh model; the same seed for every variant, so the parameters they share start equal."""
    torch.manual_seed(args.seed)
    config = GPTConfig(block_size=T, vocab_size=args.vocab_size, n_layer=args.n_layer, n_head=args.n_head,
                       n_embd=args.n_embd, dropout=0.0, attn=variant, fused=mode != "eager")
    model = GPT(config).to(device)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95), device.type)
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
    """Seconds of one call of fn and, on CUDA, the peak memory it allocated above what was allocated
    before (weights and optimizer state excluded: what is left is what grows with T)."""
    sync(device)  # CUDA launches are asynchronous: time the work, not the queueing
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    dt = time.perf_counter() - t0
    return dt, torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None


def bench_mode(T, mode, x, y, args, device, ctx):
    """The records of every variant in one mode at one T. The variants are interleaved step by step, in
    a rotated order each round, so a burst of load from elsewhere slows them all alike. The modes come
    one after the other, so GPT-2 small on CUDA holds five models in memory, not fifteen (freed when
    this returns)."""
    runs = []
    for variant in args.variants:
        run = dict(rec=dict(T=T, variant=variant, mode=mode, error=None), train=[], fwd=[], mem={"train": 0, "fwd": 0})
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
                    dt, mem = measure(run["steps"][kind], device)
                except torch.OutOfMemoryError:
                    run["rec"]["error"] = "out of memory"
                    continue
                run[kind].append(dt)
                run["mem"][kind] = max(run["mem"][kind], mem or 0)
    for run in runs:
        rec = run["rec"]
        if rec["error"]:
            continue
        for kind in ("train", "fwd"):
            dt = statistics.median(run[kind])
            rec[f"{kind}_ms"] = 1e3 * dt
            rec[f"{kind}_tok_s"] = args.batch_size * T / dt
            rec[f"{kind}_mem_mib"] = run["mem"][kind] / 2**20 if device.type == "cuda" else None
        # MFU against an H100's bf16 peak (model.estimate_mfu); it means nothing for an fp32 CPU run
        rec["mfu"] = run["model"].estimate_mfu(args.batch_size, rec["train_ms"] / 1e3) if device.type == "cuda" else None
    return [run["rec"] for run in runs]


def bench(args):
    """One record per (T, variant, mode): median times, tokens/s, ratios and memory."""
    device = torch.device(args.device)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    modes = MODES if args.compile else MODES[:2]
    if args.compile:
        # every variant is a separate graph in train and in eval mode; without a higher limit dynamo would
        # silently fall back to eager after 8 of them, and "compile" would time eager code
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(args.variants))
    records = []
    for T in args.seq_lens:
        g = torch.Generator().manual_seed(args.seed)
        x, y = (torch.randint(0, args.vocab_size, (args.batch_size, T), generator=g).to(device) for _ in range(2))
        for mode in modes:
            print(f"timing T={T}, {mode} ...", flush=True)  # compiling GPT-2 small takes minutes
            records += bench_mode(T, mode, x, y, args, device, ctx)
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
        line += f"{f(rec[kind + '_speedup'], '.2f'):>9}{f(rec[kind + '_mem_mib'], '.0f'):>9}"
        line += f"{f(rec['mfu'], '.1%'):>7}" if kind == "train" else ""
        lines.append(line)
    return "\n".join(lines)


def csv_list(cast, allowed=None):
    def parse(text):
        items = list(dict.fromkeys(cast(t.strip()) for t in text.split(",") if t.strip()))  # in order, once each
        if not items:
            raise argparse.ArgumentTypeError(f"empty list {text!r}")
        for item in items:
            if allowed is not None and item not in allowed:
                raise argparse.ArgumentTypeError(f"unknown {item!r}; allowed: {', '.join(allowed)}")
            if allowed is None and item < 1:
                raise argparse.ArgumentTypeError(f"{item} must be a positive integer")
        return items
    return parse


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be a positive integer")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N (default: cuda if present, else cpu)")
    p.add_argument("--variants", type=csv_list(str, ATTN_VARIANTS), default=list(ATTN_VARIANTS),
                   help=f"comma-separated, from {','.join(ATTN_VARIANTS)} (default: all); softmax is always added (the ratios' reference)")
    p.add_argument("--seq_lens", type=csv_list(int), help="comma-separated; default 256,1024,2048 on CUDA, 256,1024 on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="also time torch.compile of the fused model (default: on CUDA only)")
    for name in ("n_layer", "n_head", "n_embd", "vocab_size", "batch_size"):
        p.add_argument(f"--{name}", type=positive, help=f"default: {DEFAULTS['cuda'][name]} on CUDA (GPT-2 small), {DEFAULTS['cpu'][name]} on CPU")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations per model before the rounds (default: 2)")
    p.add_argument("--iters", type=positive, default=10, help="timed rounds; each times one step of every variant (default: 10)")
    p.add_argument("--seed", type=int, default=1337, help="default: 1337")
    p.add_argument("--out", help="also write the results as JSON to this file")
    args = p.parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEFAULTS:
        p.error(f"--device={args.device!r}: allowed device types are {', '.join(DEFAULTS)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device={args.device!r} but torch sees no CUDA device; use --device=cpu")
    for name, value in DEFAULTS[device.type].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if "softmax" not in args.variants:
        args.variants = ["softmax"] + args.variants
    if args.n_embd % args.n_head:
        p.error(f"--n_embd={args.n_embd} must be divisible by --n_head={args.n_head}")
    if args.warmup < 0:
        p.error(f"--warmup={args.warmup} must be 0 or more")
    if args.warmup < 1 and args.compile:
        p.error(f"--warmup={args.warmup}: --compile needs at least 1, or compilation is timed")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # as in training; bf16 autocast covers most matmuls anyway
        torch.backends.cudnn.allow_tf32 = True
        where = f"{torch.cuda.get_device_name(device)}, bf16 autocast"
    else:
        where = f"cpu, {torch.get_num_threads()} threads, fp32"
    print(f"{where}, torch {torch.__version__}; n_layer={args.n_layer} n_head={args.n_head} n_embd={args.n_embd} "
          f"vocab_size={args.vocab_size} batch_size={args.batch_size}; median of {args.iters} interleaved rounds")
    records = bench(args)
    notes = ("x softmax: time / softmax's time, same mode and T (cost ratio, 1.05 = 5% slower); "
             "speedup: eager's time / this time; MiB: peak CUDA memory above the resident weights and optimizer state")
    print(f"\ntraining step (forward + backward + AdamW step)\n{format_table(records, 'train')}")
    print(f"\nforward pass (no grad)\n{format_table(records, 'fwd')}\n\n{notes}")
    if args.out:
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        with open(args.out, "w") as f:
            json.dump({"settings": settings, "device": where, "torch": torch.__version__, "results": records}, f, indent=1)
        print(f"wrote {args.out}")
    return records


if __name__ == "__main__":
    main()
