"""
The paper's comparison at small scale: train a softmax teacher by cross-entropy once, then distil a
student of every attention variant from it, for several seeds, and tabulate what the paper reports:
Delta-Params and loss (Tables 1-2), validation loss and perplexity, gradient-norm statistics over the
early steps (Table 4) and gradient-norm spikes above median + k * MAD (Table 5). With eval_ppl_windows or
eval_tasks, also eval.py's columns of Tables 1-2 for every student: perplexity on its val data, zero-shot tasks
and their average. Every column of a row describes the same weights: each student's last checkpoint (ckpt.pt).

    python compare.py config/compare_shakespeare_char.py        # about 40 minutes on an idle CPU core
    python compare.py config/compare_sweep_lr_shakespeare_char.py  # the learning-rate sweep: about 20 minutes more
    python compare.py config/compare_shakespeare_char.py --teacher_iters=5 --student_iters=5 --out_dir=/tmp/try  # a quick try
    python compare.py config/compare_shakespeare_char.py --eval_ppl_windows=256 --eval_tasks=my_task --eval_include_path=tasks

A variant row may carry student settings after colons, which apply to its students only: "affine:affine_n=prefix"
(Eq. 8's N = prefix), "affine:phi=sigmoid" (Table 3), "softmax:learning_rate=3e-3". Rows that differ in the
learning rate make a sweep: a table of the final val CE against the learning rate and a figure of it. A run whose
loss stops being finite (train.py's NonFiniteLoss) is recorded as diverged, with its iteration, and the
comparison goes on. Every row's settings are checked, also against the teacher's, before anything trains.

Students of one seed start from the same seed and draw the same batches in the same order (train.py's batch
sampler has its own generator, seeded by seed alone). A finished run (the teacher, a student) of exactly the
same settings is reused, a student only if it learned from the very teacher checkpoint there now: its
out_dir/compare.json records that checkpoint's iteration and sha256 (and whether the run diverged). So an
interrupted comparison continues where it stopped, two calls on different seeds can share one out_dir, and a
teacher trained again takes its students with it; runs already in out_dir are replaced only with
--overwrite=True. Writes out_dir/results.md and results.json (other names with --results=..., as the sweep's
sweep_lr.md, .json and .png); every run's own out_dir (metrics.jsonl, ckpt.pt, best.pt) stays for analyze.py.
"""

import hashlib
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from analyze import grad_norm_stats, spike_count
from checkpoint import RUN_FILES, CheckpointError, checkpoint_path, read_checkpoint, read_jsonl
from configurator import ConfigError, check_device, check_types, load_config
from dataloader import find_data, prepare_default_data
from eval import EvalConfig, check_tasks, evaluate
from model import ATTN_VARIANTS, param_overhead
from tokenizer import describe_tokenizer, tokenizer_of
from train import NonFiniteLoss, TrainConfig, train


@dataclass
class CompareConfig:
    out_dir: str = "out-compare"
    # train.py arguments of the teacher and of the students: a config file, maybe followed by --key=value
    # overrides, as on train.py's command line. compare.py then sets out_dir, loss and teacher (and the
    # students' attn, seed, log_interval=1 and init_from='scratch') itself.
    teacher_config: str = "config/teacher_shakespeare_char.py"
    student_config: str = "config/kd_shakespeare_char_softmax.py"
    # comma-separated attn values; one may carry student settings after colons, which win over student_config
    # and student_iters, as an ablation row: "affine:affine_n=prefix" is an affine student with N = prefix (Eq. 8).
    # Rows that differ in learning_rate ("softmax,softmax:learning_rate=3e-3") make a learning-rate sweep: a
    # table and a figure of the final loss against the learning rate
    variants: str = ",".join(ATTN_VARIANTS)
    seeds: str = "1,2"  # comma-separated
    teacher_iters: int = 0  # max_iters (and lr_decay_iters; warmup_iters at most that) of the teacher; 0 keeps its config's
    student_iters: int = 0  # ... of every student
    early_steps: int = 500  # Tables 4-5 look at the gradient norms of the steps before this (0-499)
    data_dir: str = ""  # for teacher and students; "" keeps their configs' data
    device: str = ""  # for teacher and students; "" keeps their configs' device
    results: str = "results"  # out_dir/<results>.md, .json (and .png, a sweep's figure): comparisons can share an out_dir and its teacher
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
            if any("=" not in setting for setting in v.split(":")[1:]):
                raise ConfigError(f"variant {v!r} in variants={self.variants!r}: write each setting after a colon as "
                                  f"key=value, e.g. affine:affine_n=prefix")
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
        if not self.results or os.sep in self.results:
            raise ConfigError(f"results={self.results!r} must be a file name without a folder, e.g. results")
        if self.eval_ppl_windows < 0:
            raise ConfigError(f"eval_ppl_windows={self.eval_ppl_windows} must not be negative (0: no perplexity)")

    def variant_list(self):
        return [v.strip() for v in self.variants.split(",") if v.strip()]

    def seed_list(self):
        return [int(s) for s in self.seeds.split(",") if s.strip()]


def run_config(spec, iters, overrides=(), **settings):
    """The TrainConfig of spec (a config file and --key=value overrides, as train.py reads them), then
    max_iters = lr_decay_iters = iters (0 keeps spec's) with warmup_iters at most iters, so that a quick try
    of a few iters runs, then overrides (more --key=value), then settings."""
    argv = shlex.split(spec)
    if iters:
        warmup = min(load_config(argv, TrainConfig).warmup_iters, iters)
        argv += [f"--max_iters={iters}", f"--lr_decay_iters={iters}", f"--warmup_iters={warmup}"]
    return replace(load_config(argv + list(overrides), TrainConfig), **settings)


def row_settings(variant):
    """The settings a variant row carries after colons, as written: 'affine:affine_n=prefix' -> {'affine_n': 'prefix'}."""
    return dict(s.partition("=")[::2] for s in variant.split(":")[1:])


def student_config(cfg, variant, seed, teacher_dir, common):
    """The TrainConfig of one student: student_config, then student_iters, then the row's settings (a
    max_iters there takes lr_decay_iters with it unless the row sets that too), then what compare.py sets for
    every student. A row that sets one of the latter is refused: it could not apply."""
    attn, settings = variant.split(":")[0], row_settings(variant)
    # log_interval=1: Tables 4-5 need every early gradient norm, and a diverged run's last row says where it stopped
    owned = dict(attn=attn, seed=seed, loss="kd", teacher=teacher_dir, log_interval=1, init_from="scratch",
                 out_dir=os.path.join(cfg.out_dir, f"{variant.replace(':', '-').replace('=', '')}-s{seed}"), **common)
    if settings.get("attn", attn) != attn:
        raise ConfigError(f"variants: {variant!r} sets attn={settings['attn']}, but the row's name says attn={attn}; "
                          f"write {settings['attn']}:... for a {settings['attn']} student")
    clash = [k for k in settings if k in owned]
    if clash:
        raise ConfigError(f"variants: {variant!r} sets {', '.join(clash)}, which compare.py sets for every student "
                          f"({', '.join(owned)}); leave it out of the row")
    if "max_iters" in settings:
        settings.setdefault("lr_decay_iters", settings["max_iters"])
    try:
        return run_config(cfg.student_config, cfg.student_iters, [f"--{k}={v}" for k, v in settings.items()], **owned)
    except ConfigError as e:
        if not settings:
            raise
        raise ConfigError(f"variants: {variant!r}: {e}") from None


def check_students(cfg, teacher, students):
    """Every student's settings against the teacher's and the data, before anything trains: train.py would
    refuse a student that does not fit its teacher only after the teacher's training."""
    check_device(teacher.device)
    for (variant, _), s in students.items():
        check_device(s.device)
        if s.max_iters < 1:
            raise ConfigError(f"the {variant} students' max_iters={s.max_iters} must be at least 1: the table is made of their steps")
        if s.block_size > teacher.block_size:
            raise ConfigError(f"the {variant} students' block_size={s.block_size} is larger than the teacher's "
                              f"block_size={teacher.block_size} (teacher_config={cfg.teacher_config!r}): the teacher "
                              f"must see a student's whole context")
    prepare_default_data(teacher.dataset, teacher.data_dir)
    teacher_meta = find_data(teacher.data_dir, teacher.dataset, teacher.block_size)[1]
    for data in {(s.data_dir, s.dataset, s.block_size) for s in students.values()}:
        meta = find_data(*data)[1]
        if tokenizer_of(meta) != tokenizer_of(teacher_meta):
            raise ConfigError(f"students read {describe_tokenizer(meta)} data ({data[0] or data[1]}), the teacher "
                              f"{describe_tokenizer(teacher_meta)}: the teacher's logits must be over the students' tokens")


def eval_config(cfg, student):
    """eval.py's settings for a student: perplexity on its val data, cfg's tasks, on its last checkpoint
    (ckpt.pt, the weights of its final evaluation, the val CE column)."""
    data_dir = find_data(student.data_dir, student.dataset, student.block_size)[0] if cfg.eval_ppl_windows else ""
    return EvalConfig(init_from=os.path.join(student.out_dir, "ckpt.pt"), tasks=cfg.eval_tasks, include_path=cfg.eval_include_path,
                      limit=cfg.eval_limit, ppl_data_dir=data_dir, ppl_windows=max(cfg.eval_ppl_windows, 1),
                      device=student.device, dtype=student.dtype)


def finished_run(cfg, diverged_at=None):
    """Why the checkpoint in cfg.out_dir cannot stand in for training cfg, or None if it can: it must hold
    exactly these settings and have run to cfg.max_iters (or, for a run recorded as diverged, have stopped)."""
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    if not os.path.isfile(path):
        return f"no {path}"
    try:
        ckpt = read_checkpoint(path)
    except ConfigError as e:  # corrupt or truncated: the run is trained again
        return str(e)
    # overwrite says what a run may replace, not how it trains
    changed = [f"{k}: {ckpt['config'].get(k)!r} -> {v!r}" for k, v in asdict(cfg).items()
               if ckpt["config"].get(k) != v and k != "overwrite"]
    if changed:
        return f"{path} has other settings ({'; '.join(changed)})"
    if diverged_at is None and ckpt["iter_num"] != cfg.max_iters:
        return f"{path} stopped at iter {ckpt['iter_num']} of {cfg.max_iters}"
    return None


# --------------------------------------------------------------------------------------------------
# which teacher a student learned from: out_dir/compare.json of every student


RECORD = "compare.json"


def teacher_record(teacher_dir):
    """The checkpoint a student of teacher_dir learns from (load_teacher's: its best.pt, else its ckpt.pt), its
    iteration and the sha256 of the file: a teacher trained again is another teacher, whatever its settings."""
    path = checkpoint_path(teacher_dir)
    ckpt = read_checkpoint(path)  # a corrupt file is an error naming it
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"path": path, "iter_num": ckpt["iter_num"], "sha256": digest}


def describe_teacher(record):
    return f"{record['path']} of iter {record['iter_num']} (sha256 {record['sha256'][:12]})"


def read_record(run):
    """{"teacher": teacher_record(...), "diverged_at": None or the iteration} of a student, None if there is none
    or it cannot be read (then nothing says which teacher the run learned from)."""
    try:
        with open(os.path.join(run.out_dir, RECORD)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def student_state(run, teacher):
    """Why the student in run.out_dir cannot stand in for training run, or None: it must have finished (or
    diverged) with exactly these settings, distilled from teacher (a teacher_record; None: the teacher is
    trained again, so no earlier student learned from it)."""
    record = read_record(run)
    why = finished_run(run, record and record["diverged_at"])
    if why is not None:
        return why
    if record is None:
        return f"no readable {os.path.join(run.out_dir, RECORD)} says which teacher it learned from"
    if teacher is None:
        return f"it learned from {describe_teacher(record['teacher'])}, and the teacher is trained again"
    if record["teacher"] != teacher:
        return f"it learned from {describe_teacher(record['teacher'])}, the teacher now is {describe_teacher(teacher)}"
    return None


def distil(run, teacher):
    """Trains the student run, then records in its out_dir the teacher it learned from and whether it diverged.
    A NonFiniteLoss is an outcome, not an error: the iteration is recorded and the comparison goes on.
    Returns that iteration, None if the run finished."""
    path = os.path.join(run.out_dir, RECORD)
    if os.path.exists(path):
        os.remove(path)  # until it is trained again, the run's record would vouch for the old weights
    try:
        train(run)
        diverged_at = None
    except NonFiniteLoss as e:
        # log_interval=1 logs every iteration before the first non-finite one
        steps, _ = read_metrics(run.out_dir)
        diverged_at = steps[-1]["iter"] + 1 if steps else 0
        print(f"diverged: {e}")
    with open(path + ".tmp", "w") as f:
        json.dump({"teacher": teacher, "diverged_at": diverged_at}, f)
    os.replace(path + ".tmp", path)
    return diverged_at


def holds_run(out_dir):
    return any(os.path.exists(os.path.join(out_dir, f)) for f in RUN_FILES)


def read_metrics(out_dir):
    """(step rows, evaluation rows) of a run's metrics.jsonl."""
    rows = read_jsonl(os.path.join(out_dir, "metrics.jsonl"))
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


def table_rows(runs, delta_params, early_steps, last=50, scores=None):
    """runs: {variant: [(step rows, eval rows) of each seed]}. One dict per variant: the mean and standard
    deviation (ddof=0) over seeds of the final losses (train: the mean of the last `last` logged steps of the
    objective, its soft-target cross-entropy -- the paper's "Loss" --, its KL and its CE part; val: the
    cross-entropy of the last evaluation), the seeds' mean of Tables 4-5's gradient statistics over the steps
    with iter < early_steps, and under "by_seed" every seed's own value of each. A loss some rows do not log
    (soft_ce, before train.py wrote it) is None. scores: {variant: [eval.py's columns of each seed]}; their
    mean and std over seeds go under "eval"."""
    losses = {"train_loss": "loss", "train_soft_ce": "soft_ce", "train_kd": "kd", "train_ce": "ce"}
    rows = []
    for variant, seeds in runs.items():
        by_seed = {k: [] for k in (*losses, "val_loss", "val_ppl", "grad_mean", "grad_std", "grad_var", "grad_cv",
                                   "spikes_k6", "spikes_k9")}
        for steps, evals in seeds:
            tail = steps[-last:]
            for key, column in losses.items():
                by_seed[key].append(float(np.mean([r[column] for r in tail])) if all(column in r for r in tail) else None)
            by_seed["val_loss"].append(evals[-1]["val_loss"])
            by_seed["val_ppl"].append(evals[-1]["val_ppl"])
            g = [r["grad_norm"] for r in steps if r["iter"] < early_steps]
            for key, value in grad_norm_stats(g).items():
                by_seed["grad_" + key].append(value)
            by_seed["spikes_k6"].append(spike_count(g, 6))
            by_seed["spikes_k9"].append(spike_count(g, 9))
        row = {"variant": variant, "name": name(variant), "delta_params": delta_params[variant], "seeds": len(seeds)}
        for key in (*losses, "val_loss", "val_ppl"):
            values = by_seed[key]
            row[key], row[key + "_std"] = (float(np.mean(values)), float(np.std(values))) if None not in values else (None, None)
        for key in ("grad_mean", "grad_std", "grad_var", "grad_cv", "spikes_k6", "spikes_k9"):
            row[key] = float(np.mean(by_seed[key]))
        if scores:
            columns = scores[variant]
            row["eval"] = {k: (float(np.mean([c[k] for c in columns])), float(np.std([c[k] for c in columns]))) for k in columns[0]}
            by_seed["eval"] = columns
        row["by_seed"] = by_seed
        rows.append(row)
    return rows


# the paper's symbols for the settings ablation rows change (Eqs. 7-9), and lr
SYMBOLS = {"affine_n": "N", "phi": "phi", "affine_momentum": "rho", "learning_rate": "lr"}


def name(variant, leave_out=()):
    """A row's name in words: 'affine:affine_n=prefix' -> 'affine, N = prefix', 'softmax:learning_rate=0.003'
    -> 'softmax, lr = 3e-3'; without the settings in leave_out."""
    settings = [(k, v) for k, v in row_settings(variant).items() if k not in leave_out]
    return ", ".join([variant.split(":")[0]] + [f"{SYMBOLS.get(k, k)} = {number(float(v)) if k == 'learning_rate' else v}"
                                                 for k, v in settings])


def number(lr):
    """A learning rate as 3e-3 rather than 0.003: the rates of a sweep read at a glance."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


def markdown(rows, header, diverged=None):
    """The table of rows under header; diverged: {variant: [(seed, iter), ...]}, the runs left out of the rows."""
    evals = list(rows[0].get("eval", {})) if rows else []  # eval.py's columns: PPL, the tasks, Avg
    lines = header + ["",
        "| variant | Delta-Params | KD loss (train) | KL (train) | CE (train) | val CE | val ppl | grad mean | grad std | "
        "grad var | grad CV | spikes k=6 | spikes k=9 |" + "".join(f" {k} |" for k in evals),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(evals)]
    for r in rows:
        pm = lambda key, fmt: "n/a" if r[key] is None else f"{r[key]:{fmt}} +- {r[key + '_std']:{fmt}}"
        lines.append(f"| {r['name']} | {r['delta_params']:,} | {pm('train_soft_ce', '.4f')} | {pm('train_kd', '.4f')} | "
                     f"{pm('train_ce', '.4f')} | {pm('val_loss', '.4f')} | {pm('val_ppl', '.3f')} | {r['grad_mean']:.3f} | "
                     f"{r['grad_std']:.3f} | {r['grad_var']:.4f} | {r['grad_cv']:.3f} | {r['spikes_k6']:.1f} | {r['spikes_k9']:.1f} |"
                     + "".join(f" {r['eval'][k][0]:.2f} +- {r['eval'][k][1]:.2f} |" for k in evals))
    if len(rows) > 1:
        best, runner_up = sorted(rows, key=lambda r: r["val_loss"])[:2]
        gap = runner_up["val_loss"] - best["val_loss"]
        line = f"Lowest mean val CE: {best['name']}, {gap:.4f} below {runner_up['name']}; "
        if min(best["seeds"], runner_up["seeds"]) < 2:
            line += "one seed, so no spread across seeds to compare that gap with."
        else:
            spread = max(best["val_loss_std"], runner_up["val_loss_std"])
            line += f"that gap is {'larger' if gap > spread else 'not larger'} than the std across seeds ({spread:.4f})."
        lines += ["", line]
    gone = [f"{name(v)}: " + ", ".join(f"seed {seed} at iter {it}" for seed, it in runs) for v, runs in (diverged or {}).items() if runs]
    if gone:
        lines += ["", "Diverged (the loss stopped being finite; left out of the rows above): " + "; ".join(gone) + "."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# a learning-rate sweep: rows that differ in learning_rate only


def lr_sweep(rows, diverged, rates):
    """Final loss against learning rate. rates: {variant: its students' learning rate}. Returns
    {"learning_rates": sorted, "rows": [{"variant": a row's name without its lr, "cells": one per learning rate,
    {"val_loss", "val_loss_std"}, {"diverged_at": [(seed, iter), ...]} or None where no row has it}]}.
    A learning rate at which some seed diverged is a diverging one: its cell says so."""
    lrs = sorted(set(rates.values()))
    by_variant = {r["variant"]: r for r in rows}
    table = {}
    for variant, lr in rates.items():
        cells = table.setdefault(name(variant, leave_out=("learning_rate",)), [None] * len(lrs))
        row = by_variant.get(variant)
        cells[lrs.index(lr)] = {"diverged_at": diverged[variant]} if diverged[variant] else \
            {"val_loss": row["val_loss"], "val_loss_std": row["val_loss_std"]}
    return {"learning_rates": lrs, "rows": [{"variant": k, "cells": v} for k, v in table.items()]}


def sweep_markdown(sweep, seeds, figure):
    def cell(c):
        if c is None:
            return "-"
        if "diverged_at" in c:
            if seeds == 1:
                return f"diverged at iter {c['diverged_at'][0][1]}"
            return "diverged: " + ", ".join(f"seed {seed} at iter {it}" for seed, it in c["diverged_at"])
        return f"{c['val_loss']:.4f}" + (f" +- {c['val_loss_std']:.4f}" if seeds > 1 else "")
    lrs = sweep["learning_rates"]
    lines = ["", "## Final loss against learning rate", "",
             "val CE of the final evaluation" + (" (mean +- std over seeds)" if seeds > 1 else "") + " at each peak "
             f"learning rate, or the iteration at which the loss stopped being finite. Figure: {figure}.", "",
             "| variant |" + "".join(f" lr = {number(lr)} |" for lr in lrs), "|---|" + "---:|" * len(lrs)]
    lines += [f"| {r['variant']} |" + "".join(f" {cell(c)} |" for c in r["cells"]) for r in sweep["rows"]]
    return "\n".join(lines) + "\n"


def plot_sweep(sweep, path, title):
    """The sweep as a figure: final val CE against learning rate (log scale), one line per variant; a diverged
    run is an x above the highest finite loss."""
    import matplotlib
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    lrs = sweep["learning_rates"]
    cells = [c for r in sweep["rows"] for c in r["cells"] if c and "val_loss" in c]
    lo = min((c["val_loss"] - c["val_loss_std"] for c in cells), default=0.0)  # the error bars' ends
    hi = max((c["val_loss"] + c["val_loss_std"] for c in cells), default=0.0)
    pad = 0.08 * (hi - lo) or 0.05
    top = hi + 2 * pad  # where the diverged runs are drawn
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, r in enumerate(sweep["rows"]):
        ok = [(lr, c) for lr, c in zip(lrs, r["cells"]) if c and "val_loss" in c]
        line, *_ = ax.errorbar([lr for lr, _ in ok], [c["val_loss"] for _, c in ok], yerr=[c["val_loss_std"] for _, c in ok],
                               marker="o", capsize=3, label=r["variant"])
        # the variants' x side by side rather than on top of each other: 3% of the axis apart
        shift = 10 ** (0.03 * math.log10(lrs[-1] / lrs[0]) * (i - (len(sweep["rows"]) - 1) / 2))
        bad = [lr * shift for lr, c in zip(lrs, r["cells"]) if c and "diverged_at" in c]
        ax.plot(bad, [top] * len(bad), linestyle="none", marker="x", markersize=9, mew=2, color=line.get_color())
    diverged = any(c and "diverged_at" in c for r in sweep["rows"] for c in r["cells"])
    if diverged:
        ax.plot([], [], linestyle="none", marker="x", color="black", label="diverged")
    ax.set_xscale("log")
    ax.set_xticks(lrs, [number(lr) for lr in lrs])
    ax.minorticks_off()
    ax.set_ylim(lo - pad, (top if diverged else hi) + pad)
    ax.set(xlabel="peak learning rate (log scale)", ylabel="final validation cross-entropy (nats/token)", title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the axes, never over a point
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def hardware(device):
    where = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"{platform.machine()} CPU ({os.cpu_count()} cores)"
    return f"{where}, device {device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def compare(cfg):
    t0 = time.time()
    common = {k: v for k, v in (("data_dir", cfg.data_dir), ("device", cfg.device)) if v} | {"overwrite": cfg.overwrite}
    teacher_dir = os.path.join(cfg.out_dir, "teacher")
    teacher = run_config(cfg.teacher_config, cfg.teacher_iters, out_dir=teacher_dir, loss="ce", teacher="", **common)
    # every student's settings, checked against the teacher's and the data before any training, so a bad one
    # stops the comparison before it starts
    variants, seeds = cfg.variant_list(), cfg.seed_list()
    students = {(v, seed): student_config(cfg, v, seed, teacher_dir, common) for v in variants for seed in seeds}
    check_students(cfg, teacher, students)
    student = students[variants[0], seeds[0]]  # the first variant's settings describe the students
    rates = {v: students[v, seeds[0]].learning_rate for v in variants}
    cells = [(name(v, leave_out=("learning_rate",)), rates[v]) for v in variants]
    twice = [v for v, c in zip(variants, cells) if cells.count(c) > 1]
    if twice:
        raise ConfigError(f"variants {', '.join(map(repr, twice))} are the same students (the same variant and learning rate)")
    sweeping = len(set(rates.values())) > 1
    if sweeping and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("a learning-rate sweep draws its figure with the optional package matplotlib: pip install matplotlib")
    evaluating = bool(cfg.eval_ppl_windows or cfg.eval_tasks)
    if cfg.eval_tasks:
        check_tasks(eval_config(cfg, student))  # a misspelt task stops the comparison before any training

    why_not, taught_by = finished_run(teacher), None
    if why_not is None:
        try:
            taught_by = teacher_record(teacher_dir)
        except ConfigError as e:  # best.pt, what the students read, is corrupt: the teacher is trained again
            why_not = str(e)
    todo = {key: why for key, s in students.items() if (why := student_state(s, taught_by)) is not None}
    replaced = [f"{teacher_dir} ({why_not})"] if why_not is not None and holds_run(teacher_dir) else []
    replaced += [f"{students[key].out_dir} ({why})" for key, why in todo.items() if holds_run(students[key].out_dir)]
    if replaced and not cfg.overwrite:
        raise ConfigError(f"this comparison would replace runs already in out_dir={cfg.out_dir!r}: {', '.join(replaced)}; "
                          f"delete them or pass --overwrite=True to train them again, or choose another out_dir")
    if why_not is None:
        print(f"reusing the finished teacher in {teacher_dir}")
    else:
        print(f"training the teacher in {teacher_dir} ({why_not})")
        train(teacher)
        taught_by = teacher_record(teacher_dir)

    runs, scores, diverged = ({v: [] for v in variants} for _ in range(3))
    for (variant, seed), run in students.items():
        if (variant, seed) in todo:
            print(f"distilling {name(variant)}, seed {seed}, into {run.out_dir}")
            diverged_at = distil(run, taught_by)
        else:
            print(f"reusing the finished student {name(variant)}, seed {seed}, in {run.out_dir}")
            diverged_at = read_record(run)["diverged_at"]
        if diverged_at is not None:
            diverged[variant].append((seed, diverged_at))
            continue
        runs[variant].append(read_metrics(run.out_dir))
        if evaluating:
            result = evaluate(eval_config(cfg, run))
            scores[variant].append(result["columns"])
    runs = {v: r for v, r in runs.items() if r}  # a variant whose every seed diverged has no row
    # Delta-Params depends on the shape and the variant only, not on the vocabulary
    delta_params = {v: param_overhead(students[v, seeds[0]].gpt_config(vocab_size=1))[1] for v in runs}
    early = min(cfg.early_steps, *(s.max_iters for s in students.values()))
    rows = table_rows(runs, delta_params, early, scores=scores if evaluating else None)

    minutes = (time.time() - t0) / 60
    made = f"{teacher.max_iters} iters (CE), " + ("reused from an earlier run" if why_not is None else "trained in this run")
    header = [f"# Variant comparison: {len(seeds)} seeds ({cfg.seeds}), KD from a softmax teacher",
              "",
              f"Teacher: {teacher.n_layer} layers, {teacher.n_head} heads, {teacher.n_embd} dims, block {teacher.block_size}, {made}; "
              f"the students learned from {describe_teacher(taught_by)}. "
              f"Students: {student.n_layer} layers, {student.n_head} heads, {student.n_embd} dims, block {student.block_size}, "
              f"batch {student.batch_size}, {student.max_iters} iters, lr {number(student.learning_rate)}, kd_alpha {student.kd_alpha}, "
              f"tau {student.kd_temperature}, {student.lr_schedule} schedule; block: pos={student.pos}, norm={student.norm}, "
              f"mlp={student.mlp}, n_kv_head={student.n_kv_head or student.n_head}, affine_n={student.affine_n}, phi={student.phi}. "
              f"A row named with settings (\"affine, N = prefix\") differs from these in those settings only. "
              f"Every variant's student of a seed starts from that seed and draws the same batches.",
              "",
              f"Every row describes the students' last checkpoints (ckpt.pt, written after their last iteration). "
              f"KD loss: the soft-target cross-entropy H(teacher, student) = KL + H(teacher) per token (train.py's soft_ce), "
              f"the quantity of the size the paper reports as its \"Loss\" (the paper does not write its KD objective "
              f"down); KL: KL(teacher || student) per token (train.py's kd), what the students minimise; CE: the "
              f"cross-entropy on the data's next tokens. All three: the mean of the last 50 steps; val CE and perplexity: "
              f"the final evaluation ({student.eval_iters} batches); all as mean +- std (ddof=0) over seeds. Gradient "
              f"norms (before clipping): steps 0-{early - 1}, statistics per seed, then the mean over seeds; spikes: "
              f"steps above median + k * MAD.",
              "",
              f"Measured on {hardware(student.device)}: {minutes:.1f} minutes in all"
              + ("" if why_not is not None else ", the teacher's training not included")
              + (f"; {len(students) - len(todo)} of {len(students)} students reused from an earlier call." if len(todo) < len(students) else ".")]
    if evaluating:
        ppl = f"PPL: {cfg.eval_ppl_windows} random windows of {student.block_size} tokens of the val data, seed 0; " if cfg.eval_ppl_windows else ""
        header += ["", f"eval.py on the same weights as the val CE (every student's ckpt.pt), mean +- std over seeds. {ppl}"
                   + "".join(f"{task}: {metric}, " for task, metric in result["metric"].items())
                   + (f"at most {cfg.eval_limit} documents per task." if cfg.eval_limit else "all documents.")]
    text = markdown(rows, header, diverged)
    sweep = lr_sweep(rows, diverged, rates) if sweeping else None
    os.makedirs(cfg.out_dir, exist_ok=True)
    if sweep:
        figure = os.path.join(cfg.out_dir, cfg.results + ".png")
        plot_sweep(sweep, figure, f"Final validation loss against learning rate\nKD students, {student.max_iters} iters, "
                                  + (f"{len(seeds)} seeds (bars: std over seeds)" if len(seeds) > 1 else "1 seed"))
        text += sweep_markdown(sweep, len(seeds), os.path.basename(figure))
    with open(os.path.join(cfg.out_dir, cfg.results + ".md"), "w") as f:
        f.write(text)
    shared = {k: v for k, v in asdict(student).items() if k not in ("attn", "seed", "out_dir")}
    with open(os.path.join(cfg.out_dir, cfg.results + ".json"), "w") as f:
        json.dump({"config": asdict(cfg), "teacher": asdict(teacher), "teacher_reused": why_not is None,
                   "students_learned_from": taught_by, "weights": "ckpt.pt",
                   "students_reused": [s.out_dir for key, s in students.items() if key not in todo],
                   "student": shared, "runs": [s.out_dir for s in students.values()], "early_steps": early,
                   "hardware": hardware(student.device), "minutes": minutes, "rows": rows,
                   "diverged": {v: d for v, d in diverged.items() if d}, "sweep": sweep}, f, indent=1)
    print(text)
    return rows


if __name__ == "__main__":
    try:
        compare(load_config(sys.argv[1:], CompareConfig))
    except (ConfigError, NonFiniteLoss, CheckpointError) as e:
        sys.exit(f"{type(e).__name__}: {e}")
