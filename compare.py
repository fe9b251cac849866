"""
The paper's comparison at small scale: train a softmax teacher by cross-entropy once, then distil a
student of every attention variant from it, for several seeds, and tabulate what the paper reports:
Delta-Params and loss (Tables 1-2), validation loss and perplexity, gradient-norm statistics over the
early steps (Table 4) and gradient-norm spikes above median + k * MAD (Table 5).

    python compare.py config/compare_shakespeare_char.py        # about 20 minutes on 2 CPU cores
    python compare.py config/compare_shakespeare_char.py --seeds=1,2,3 --student_iters=2000

Students of one seed start from the same seed and see the same batches in the same order. Writes out_dir/results.md
and out_dir/results.json; every run's own out_dir (metrics.jsonl, ckpt.pt) stays for analyze.py.
"""

import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from analyze import grad_norm_stats, spike_count
from model import ATTN_VARIANTS, param_overhead
from train import ConfigError, NonFiniteLoss, check_types, load_config, train


@dataclass
class CompareConfig:
    out_dir: str = "out-compare"
    teacher_config: str = "config/teacher_shakespeare_char.py"  # train.py settings of the teacher
    student_config: str = "config/kd_shakespeare_char_softmax.py"  # ... and of the students, but attn
    variants: str = ",".join(ATTN_VARIANTS)  # comma-separated attn values
    seeds: str = "1,2"  # comma-separated
    teacher_iters: int = 0  # max_iters (and lr_decay_iters) of the teacher; 0 keeps its config's
    student_iters: int = 0  # ... of every student
    early_steps: int = 500  # Tables 4-5 look at the gradient norms of the steps before this
    data_dir: str = ""  # for teacher and students; "" keeps their configs' data
    device: str = ""  # for teacher and students; "" keeps their configs' device

    def __post_init__(self):
        check_types(self)
        for v in self.variant_list():
            if v not in ATTN_VARIANTS:
                raise ConfigError(f"unknown variant {v!r} in variants={self.variants!r}; allowed: {', '.join(ATTN_VARIANTS)}")
        try:
            self.seed_list()
        except ValueError:
            raise ConfigError(f"seeds={self.seeds!r} must be comma-separated integers, e.g. 1,2,3") from None

    def variant_list(self):
        return [v for v in self.variants.split(",") if v]

    def seed_list(self):
        return [int(s) for s in str(self.seeds).split(",") if s]


def run_config(path, iters, **settings):
    cfg = load_config([path])
    if iters:
        settings.update(max_iters=iters, lr_decay_iters=iters)
    return replace(cfg, **settings)


def read_metrics(out_dir):
    """(step rows, evaluation rows) of a run's metrics.jsonl."""
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


def mean_std(values):
    return float(np.mean(values)), float(np.std(values))


def table_rows(runs, delta_params, early_steps, last=50):
    """runs: {variant: [(step rows, eval rows) of each seed]}. One dict per variant: means and standard
    deviations over seeds of the final losses, and the seeds' mean of Tables 4-5's gradient statistics."""
    rows = []
    for variant, seeds in runs.items():
        row = {"variant": variant, "delta_params": delta_params[variant], "seeds": len(seeds)}
        finals = {"train_loss": [], "train_ce": [], "val_loss": [], "val_ppl": []}
        grads = {"grad_mean": [], "grad_std": [], "grad_var": [], "grad_cv": [], "spikes_k6": [], "spikes_k9": []}
        for steps, evals in seeds:
            finals["train_loss"].append(np.mean([r["loss"] for r in steps[-last:]]))
            finals["train_ce"].append(np.mean([r["ce"] for r in steps[-last:]]))
            finals["val_loss"].append(evals[-1]["val_loss"])
            finals["val_ppl"].append(evals[-1]["val_ppl"])
            g = [r["grad_norm"] for r in steps if r["iter"] < early_steps]
            stats = grad_norm_stats(g)
            for key in ("mean", "std", "var", "cv"):
                grads["grad_" + key].append(stats[key])
            grads["spikes_k6"].append(spike_count(g, 6))
            grads["spikes_k9"].append(spike_count(g, 9))
        for key, values in finals.items():
            row[key], row[key + "_std"] = mean_std(values)
        for key, values in grads.items():
            row[key] = float(np.mean(values))
        rows.append(row)
    return rows


def markdown(rows, header):
    lines = header + ["",
        "| variant | Delta-Params | train loss (KD) | train CE | val loss | val ppl | grad mean | grad std | grad var | grad CV | spikes k=6 | spikes k=9 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pm = lambda key, fmt: f"{r[key]:{fmt}} +- {r[key + '_std']:{fmt}}"
        lines.append(f"| {r['variant']} | {r['delta_params']:,} | {pm('train_loss', '.4f')} | {pm('train_ce', '.4f')} | "
                     f"{pm('val_loss', '.4f')} | {pm('val_ppl', '.3f')} | {r['grad_mean']:.3f} | {r['grad_std']:.3f} | "
                     f"{r['grad_var']:.4f} | {r['grad_cv']:.3f} | {r['spikes_k6']:.1f} | {r['spikes_k9']:.1f} |")
    best = min(rows, key=lambda r: r["val_loss"])
    others = [r for r in rows if r is not best]
    if others:
        runner_up = min(others, key=lambda r: r["val_loss"])
        gap = runner_up["val_loss"] - best["val_loss"]
        spread = max(best["val_loss_std"], runner_up["val_loss_std"])
        verdict = "larger" if gap > spread else "not larger"
        lines += ["", f"Lowest mean val loss: {best['variant']}, {gap:.4f} below {runner_up['variant']}; "
                      f"that gap is {verdict} than the std across seeds ({spread:.4f})."]
    return "\n".join(lines) + "\n"


def compare(cfg):
    t0 = time.time()
    data = {k: v for k, v in (("data_dir", cfg.data_dir), ("device", cfg.device)) if v}
    teacher_dir = os.path.join(cfg.out_dir, "teacher")
    teacher = run_config(cfg.teacher_config, cfg.teacher_iters, out_dir=teacher_dir, loss="ce", teacher="", **data)
    ckpt = os.path.join(teacher_dir, "ckpt.pt")
    done = os.path.isfile(ckpt) and torch.load(ckpt, map_location="cpu")["iter_num"] == teacher.max_iters
    if done:
        print(f"reusing the finished teacher in {teacher_dir}")
    else:
        print(f"training the teacher in {teacher_dir}")
        train(teacher)

    runs, delta_params = {}, {}
    for variant in cfg.variant_list():
        runs[variant] = []
        for seed in cfg.seed_list():
            # log every step: Tables 4-5 need every early gradient norm
            student = run_config(cfg.student_config, cfg.student_iters, out_dir=os.path.join(cfg.out_dir, f"{variant}-s{seed}"),
                                 attn=variant, seed=seed, loss="kd", teacher=teacher_dir, log_interval=1, **data)
            print(f"distilling {variant}, seed {seed}, into {student.out_dir}")
            train(student)
            runs[variant].append(read_metrics(student.out_dir))
        delta_params[variant] = param_overhead(student.gpt_config(vocab_size=1))[1]

    rows = table_rows(runs, delta_params, cfg.early_steps)
    threads = torch.get_num_threads()
    header = [f"# Variant comparison: {len(cfg.seed_list())} seeds ({cfg.seeds}), KD from a softmax teacher",
              "",
              f"Teacher: {teacher.n_layer} layers, {teacher.n_embd} dims, {teacher.max_iters} iters (CE). "
              f"Students: {student.n_layer} layers, {student.n_head} heads, {student.n_embd} dims, block {student.block_size}, "
              f"batch {student.batch_size}, {student.max_iters} iters, kd_alpha {student.kd_alpha}, tau {student.kd_temperature}. "
              f"Train losses: mean of the last 50 steps; val: the final evaluation ({student.eval_iters} batches); "
              f"values are mean +- std over seeds. Gradient statistics: steps < {cfg.early_steps}, mean over seeds.",
              "",
              f"Measured on {platform.machine()} {student.device} ({threads} threads), torch {torch.__version__}, "
              f"{(time.time() - t0) / 60:.1f} minutes in all."]
    text = markdown(rows, header)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump({"config": asdict(cfg), "teacher": asdict(teacher), "student": asdict(student), "rows": rows,
                   "minutes": (time.time() - t0) / 60}, f, indent=1)
    print(text)
    return rows


if __name__ == "__main__":
    try:
        compare(load_config(sys.argv[1:], CompareConfig))
    except (ConfigError, NonFiniteLoss) as e:
        sys.exit(f"{type(e).__name__}: {e}")
