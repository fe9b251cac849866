"""
The paper's comparison at small scale: train a softmax teacher by cross-entropy once, then distil a
student of every attention variant from it, for several seeds, and tabulate what the paper reports:
Delta-Params and loss (Tables 1-2), validation loss and perplexity, gradient-norm statistics over the
early steps (Table 4) and gradient-norm spikes above median + k * MAD (Table 5). With eval_ppl_windows or
eval_tasks, also eval.py's columns of Tables 1-2 for every student: perplexity on its val data, zero-shot tasks
and their average.

    python compare.py config/compare_shakespeare_char.py        # about 20 minutes on 2 CPU cores
    python compare.py config/compare_shakespeare_char.py --seeds=1,2,3 --student_iters=2000
    python compare.py config/compare_shakespeare_char.py --eval_ppl_windows=256 --eval_tasks=my_task --eval_include_path=tasks

Students of one seed start from the same seed and draw the same batches in the same order (train.py's batch
sampler has its own generator, seeded by seed alone). A finished run (the teacher, a student) of exactly the
same settings is reused, so an interrupted comparison continues where it stopped and two calls on different
seeds can share one out_dir; other runs already in out_dir are trained again only with --overwrite=True. Writes
out_dir/results.md and out_dir/results.json; every run's own out_dir (metrics.jsonl, ckpt.pt, best.pt)
stays for analyze.py.
"""

import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from analyze import grad_norm_stats, spike_count
from model import ATTN_VARIANTS, param_overhead
from common import (RUN_FILES, CheckpointError, ConfigError, check_device, check_types, find_data, load_config,
                    read_checkpoint, read_jsonl)
from eval import EvalConfig, check_tasks, evaluate
from train import NonFiniteLoss, TrainConfig, train


@dataclass
class CompareConfig:
    out_dir: str = "out-compare"
    # train.py arguments of the teacher and of the students: a config file, maybe followed by --key=value
    # overrides, as on train.py's command line. compare.py then sets out_dir, loss and teacher (and the
    # students' attn, seed and log_interval=1) itself.
    teacher_config: str = "config/teacher_shakespeare_char.py"
    student_config: str = "config/kd_shakespeare_char_softmax.py"
    # comma-separated attn values; one may carry student settings after colons, as an ablation row:
    # "affine:affine_n=prefix" is an affine student with N = prefix (Eq. 8)
    variants: str = ",".join(ATTN_VARIANTS)
    seeds: str = "1,2"  # comma-separated
    teacher_iters: int = 0  # max_iters (and lr_decay_iters) of the teacher; 0 keeps its config's
    student_iters: int = 0  # ... of every student
    early_steps: int = 500  # Tables 4-5 look at the gradient norms of the steps before this (0-499)
    data_dir: str = ""  # for teacher and students; "" keeps their configs' data
    device: str = ""  # for teacher and students; "" keeps their configs' device
    overwrite: bool = False  # True: train again the runs already in out_dir that cannot be reused (unfinished, other settings)
    # eval.py's columns for every student; off by default
    eval_ppl_windows: int = 0  # perplexity on the students' val.bin over this many windows; 0: no PPL column
    eval_tasks: str = ""  # harness task names or YAML paths, comma-separated; "" for none
    eval_include_path: str = ""  # a folder of task YAMLs, as eval.py's include_path
    eval_limit: int = 0  # documents per task, 0 for all

    def __post_init__(self):
        check_types(self)
        variants = self.variant_list()
        for v in variants:
            if v.split(":")[0] not in ATTN_VARIANTS:
                raise ConfigError(f"unknown variant {v!r} in variants={self.variants!r}; allowed: {', '.join(ATTN_VARIANTS)}, "
                                  f"each maybe followed by settings, e.g. affine:affine_n=prefix")
        try:
            seeds = self.seed_list()
        except ValueError:
            raise ConfigError(f"seeds={self.seeds!r} must be comma-separated integers, e.g. 1,2,3") from None
        for name, values in (("variants", variants), ("seeds", seeds)):
            if not values or len(set(values)) != len(values):
                raise ConfigError(f"{name}={getattr(self, name)!r} must name at least one, each once")
        for name in ("teacher_iters", "student_iters"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative (0 keeps the config's max_iters)")
        if self.early_steps < 1:
            raise ConfigError(f"early_steps={self.early_steps} must be at least 1")
        if self.eval_ppl_windows < 0:
            raise ConfigError(f"eval_ppl_windows={self.eval_ppl_windows} must not be negative (0: no perplexity)")

    def variant_list(self):
        return [v.strip() for v in self.variants.split(",") if v.strip()]

    def seed_list(self):
        return [int(s) for s in self.seeds.split(",") if s.strip()]


def run_config(spec, iters, **settings):
    """The TrainConfig of spec (a config file and --key=value overrides), then iters and settings over it."""
    cfg = load_config(shlex.split(spec), TrainConfig)
    if iters:
        settings.update(max_iters=iters, lr_decay_iters=iters)
    return replace(cfg, **settings)


def eval_config(cfg, student):
    """eval.py's settings for a student: perplexity on its val data, cfg's tasks."""
    data_dir = find_data(student.data_dir, student.dataset, student.block_size)[0] if cfg.eval_ppl_windows else ""
    return EvalConfig(init_from=student.out_dir, tasks=cfg.eval_tasks, include_path=cfg.eval_include_path,
                      limit=cfg.eval_limit, ppl_data_dir=data_dir, ppl_windows=max(cfg.eval_ppl_windows, 1),
                      device=student.device, dtype=student.dtype)


def finished_run(cfg):
    """Why the checkpoint in cfg.out_dir cannot stand in for training cfg, or None if it can: it must have
    run to cfg.max_iters with exactly these settings."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        return f"no {path}"
    ckpt = read_checkpoint(path)
    # overwrite says what a run may replace, not how it trains
    changed = [f"{k}: {ckpt['config'].get(k)!r} -> {v!r}" for k, v in asdict(cfg).items()
               if ckpt["config"].get(k) != v and k != "overwrite"]
    if changed:
        return f"{path} has other settings ({'; '.join(changed)})"
    if ckpt["iter_num"] != cfg.max_iters:
        return f"{path} stopped at iter {ckpt['iter_num']} of {cfg.max_iters}"
    return None


def holds_run(out_dir):
    return any(os.path.exists(os.path.join(out_dir, f)) for f in RUN_FILES)


def read_metrics(out_dir):
    """(step rows, evaluation rows) of a run's metrics.jsonl."""
    rows = read_jsonl(os.path.join(out_dir, "metrics.jsonl"))
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


def table_rows(runs, delta_params, early_steps, last=50, scores=None):
    """runs: {variant: [(step rows, eval rows) of each seed]}. One dict per variant: the mean and standard
    deviation (ddof=0) over seeds of the final losses (train: the mean of the last `last` logged steps of the
    objective, its KD part -- the paper's "Loss" -- and its CE part; val: the cross-entropy of the last evaluation),
    the seeds' mean of Tables 4-5's gradient statistics over the steps with iter < early_steps, and under "by_seed"
    every seed's own value of each. scores: {variant: [eval.py's columns of each seed]}; their mean and std over
    seeds go under "eval"."""
    rows = []
    for variant, seeds in runs.items():
        by_seed = {k: [] for k in ("train_loss", "train_kd", "train_ce", "val_loss", "val_ppl",
                                   "grad_mean", "grad_std", "grad_var", "grad_cv", "spikes_k6", "spikes_k9")}
        for steps, evals in seeds:
            by_seed["train_loss"].append(float(np.mean([r["loss"] for r in steps[-last:]])))
            by_seed["train_kd"].append(float(np.mean([r["kd"] for r in steps[-last:]])))
            by_seed["train_ce"].append(float(np.mean([r["ce"] for r in steps[-last:]])))
            by_seed["val_loss"].append(evals[-1]["val_loss"])
            by_seed["val_ppl"].append(evals[-1]["val_ppl"])
            g = [r["grad_norm"] for r in steps if r["iter"] < early_steps]
            for key, value in grad_norm_stats(g).items():
                by_seed["grad_" + key].append(value)
            by_seed["spikes_k6"].append(spike_count(g, 6))
            by_seed["spikes_k9"].append(spike_count(g, 9))
        row = {"variant": variant, "delta_params": delta_params[variant], "seeds": len(seeds)}
        for key in ("train_loss", "train_kd", "train_ce", "val_loss", "val_ppl"):
            row[key], row[key + "_std"] = float(np.mean(by_seed[key])), float(np.std(by_seed[key]))
        for key in ("grad_mean", "grad_std", "grad_var", "grad_cv", "spikes_k6", "spikes_k9"):
            row[key] = float(np.mean(by_seed[key]))
        if scores:
            columns = scores[variant]
            row["eval"] = {k: (float(np.mean([c[k] for c in columns])), float(np.std([c[k] for c in columns]))) for k in columns[0]}
            by_seed["eval"] = columns
        row["by_seed"] = by_seed
        rows.append(row)
    return rows


def markdown(rows, header):
    evals = list(rows[0].get("eval", {}))  # eval.py's columns: PPL, the tasks, Avg
    lines = header + ["",
        "| variant | Delta-Params | KD loss (train) | CE (train) | val CE | val ppl | grad mean | grad std | grad var | grad CV | spikes k=6 | spikes k=9 |"
        + "".join(f" {k} |" for k in evals),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(evals)]
    for r in rows:
        pm = lambda key, fmt: f"{r[key]:{fmt}} +- {r[key + '_std']:{fmt}}"
        lines.append(f"| {r['variant']} | {r['delta_params']:,} | {pm('train_kd', '.4f')} | {pm('train_ce', '.4f')} | "
                     f"{pm('val_loss', '.4f')} | {pm('val_ppl', '.3f')} | {r['grad_mean']:.3f} | {r['grad_std']:.3f} | "
                     f"{r['grad_var']:.4f} | {r['grad_cv']:.3f} | {r['spikes_k6']:.1f} | {r['spikes_k9']:.1f} |"
                     + "".join(f" {r['eval'][k][0]:.2f} +- {r['eval'][k][1]:.2f} |" for k in evals))
    if len(rows) > 1:
        best, runner_up = sorted(rows, key=lambda r: r["val_loss"])[:2]
        gap = runner_up["val_loss"] - best["val_loss"]
        line = f"Lowest mean val CE: {best['variant']}, {gap:.4f} below {runner_up['variant']}; "
        if min(best["seeds"], runner_up["seeds"]) < 2:
            line += "one seed, so no spread across seeds to compare that gap with."
        else:
            spread = max(best["val_loss_std"], runner_up["val_loss_std"])
            line += f"that gap is {'larger' if gap > spread else 'not larger'} than the std across seeds ({spread:.4f})."
        lines += ["", line]
    return "\n".join(lines) + "\n"


def hardware(device):
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{platform.machine()} CPU ({os.cpu_count()} cores)"
    return f"{where}, device {device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def compare(cfg):
    t0 = time.time()
    common = {k: v for k, v in (("data_dir", cfg.data_dir), ("device", cfg.device)) if v} | {"overwrite": cfg.overwrite}
    teacher_dir = os.path.join(cfg.out_dir, "teacher")
    teacher = run_config(cfg.teacher_config, cfg.teacher_iters, out_dir=teacher_dir, loss="ce", teacher="", **common)
    # every student's settings before any training, so a bad one stops the comparison before it starts;
    # log_interval=1: Tables 4-5 need every early gradient norm
    students = {}
    for variant in cfg.variant_list():
        attn, *settings = variant.split(":")
        spec = " ".join([cfg.student_config] + [shlex.quote("--" + s) for s in settings])
        for seed in cfg.seed_list():
            name = variant.replace(":", "-").replace("=", "")
            students[variant, seed] = run_config(spec, cfg.student_iters, attn=attn, seed=seed, loss="kd", teacher=teacher_dir,
                                                 log_interval=1, out_dir=os.path.join(cfg.out_dir, f"{name}-s{seed}"), **common)
    student = students[cfg.variant_list()[0], seed]  # the first variant's settings describe the students
    for run in (teacher, student):
        check_device(run.device)
    if student.max_iters < 1:
        raise ConfigError(f"the students' max_iters={student.max_iters} must be at least 1: the table is made of their steps")
    evaluating = bool(cfg.eval_ppl_windows or cfg.eval_tasks)
    if cfg.eval_tasks:
        check_tasks(eval_config(cfg, student))  # a misspelt task stops the comparison before any training

    why_not = finished_run(teacher)
    todo = {key: s for key, s in students.items() if finished_run(s) is not None}  # finished ones are reused
    replaced = [f"{teacher_dir} ({why_not})"] if why_not is not None and holds_run(teacher_dir) else []
    replaced += [s.out_dir for s in todo.values() if holds_run(s.out_dir)]
    if replaced and not cfg.overwrite:
        raise ConfigError(f"this comparison would replace runs already in out_dir={cfg.out_dir!r}: {', '.join(replaced)}; "
                          f"pass --overwrite=True to train them again, or choose another out_dir")
    if why_not is None:
        print(f"reusing the finished teacher in {teacher_dir}")
    else:
        print(f"training the teacher in {teacher_dir} ({why_not})")
        train(teacher)

    runs = {variant: [] for variant in cfg.variant_list()}
    scores = {variant: [] for variant in cfg.variant_list()}
    for (variant, seed), run in students.items():  # `student` stays the first variant's
        if (variant, seed) in todo:
            print(f"distilling {variant}, seed {seed}, into {run.out_dir}")
            train(run)
        else:
            print(f"reusing the finished student {variant}, seed {seed}, in {run.out_dir}")
        runs[variant].append(read_metrics(run.out_dir))
        if evaluating:
            result = evaluate(eval_config(cfg, run))
            scores[variant].append(result["columns"])
    # Delta-Params depends on the shape and the variant only, not on the vocabulary
    delta_params = {v: param_overhead(students[v, seed].gpt_config(vocab_size=1))[1] for v in runs}
    early = min(cfg.early_steps, student.max_iters)
    rows = table_rows(runs, delta_params, early, scores=scores if evaluating else None)

    minutes = (time.time() - t0) / 60
    made = f"{teacher.max_iters} iters (CE), " + ("reused from an earlier run" if why_not is None else "trained in this run")
    header = [f"# Variant comparison: {len(cfg.seed_list())} seeds ({cfg.seeds}), KD from a softmax teacher",
              "",
              f"Teacher: {teacher.n_layer} layers, {teacher.n_head} heads, {teacher.n_embd} dims, block {teacher.block_size}, {made}. "
              f"Students: {student.n_layer} layers, {student.n_head} heads, {student.n_embd} dims, block {student.block_size}, "
              f"batch {student.batch_size}, {student.max_iters} iters, lr {student.learning_rate:g}, kd_alpha {student.kd_alpha}, "
              f"tau {student.kd_temperature}, {student.lr_schedule} schedule; block: pos={student.pos}, norm={student.norm}, "
              f"mlp={student.mlp}, n_kv_head={student.n_kv_head or student.n_head}, affine_n={student.affine_n}. "
              f"Every variant's student of a seed starts from that seed and draws the same batches.",
              "",
              f"KD loss (the paper's \"Loss\", KL(teacher || student) per token) and CE (train): the mean of the last 50 "
              f"steps; val CE and perplexity: the final evaluation ({student.eval_iters} batches); all "
              f"as mean +- std (ddof=0) over seeds. Gradient norms (before clipping): steps 0-{early - 1}, statistics per "
              f"seed, then the mean over seeds; spikes: steps above median + k * MAD.",
              "",
              f"Measured on {hardware(student.device)}: {minutes:.1f} minutes in all"
              + ("" if why_not is not None else ", the teacher's training not included")
              + (f"; {len(students) - len(todo)} of {len(students)} students reused from an earlier call." if len(todo) < len(students) else ".")]
    if evaluating:
        ppl = f"PPL: {cfg.eval_ppl_windows} random windows of {student.block_size} tokens of the val data, seed 0; " if cfg.eval_ppl_windows else ""
        header += ["", f"eval.py on every student's last checkpoint, mean +- std over seeds. {ppl}"
                   + "".join(f"{task}: {metric}, " for task, metric in result["metric"].items())
                   + (f"at most {cfg.eval_limit} documents per task." if cfg.eval_limit else "all documents.")]
    text = markdown(rows, header)
    os.makedirs(cfg.out_dir, exist_ok=True)
    with open(os.path.join(cfg.out_dir, "results.md"), "w") as f:
        f.write(text)
    shared = {k: v for k, v in asdict(student).items() if k not in ("attn", "seed", "out_dir")}
    with open(os.path.join(cfg.out_dir, "results.json"), "w") as f:
        json.dump({"config": asdict(cfg), "teacher": asdict(teacher), "teacher_reused": why_not is None,
                   "students_reused": [s.out_dir for key, s in students.items() if key not in todo],
                   "student": shared, "runs": [s.out_dir for s in students.values()],
                   "early_steps": early, "hardware": hardware(student.device), "minutes": minutes, "rows": rows}, f, indent=1)
    print(text)
    return rows


if __name__ == "__main__":
    try:
        compare(load_config(sys.argv[1:], CompareConfig))
    except (ConfigError, NonFiniteLoss, CheckpointError) as e:
        sys.exit(f"{type(e).__name__}: {e}")
