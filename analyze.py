"""
Where the attention of trained checkpoints goes (paper section 4, appendices A and B), side by side:

    python analyze.py --ckpt out-softmax --ckpt out-sink --ckpt out-affine/ckpt.pt

An out_dir stands for its best.pt (the lowest val loss), else its ckpt.pt; a file for itself.

On a few validation sequences (evenly spread over the run's val.bin, the same for every checkpoint),
per layer and head, from GPT.attention_maps: the weight on the first token (Fig. 4), each query's total
attention mass (Fig. 3), the head-wise total mass normalised to [0, 1] (Fig. 5), the attention entropy
(Fig. 6), a 30 x 30 attention heatmap (Fig. 9) and, for affine models, alpha and alpha_ma. From each run's
metrics.jsonl (next to its checkpoint): the training loss (the KD loss when distilling, Fig. 7; its last 20% of
steps, Fig. 10), the |QK^T| magnitude (qk_mag) and gradient-norm curves (Fig. 2, 8) and the early-training
gradient-norm statistics of Tables 4 and 5.

A text summary is always printed; with matplotlib installed, figures go to --plot_dir.
"""

import argparse
import os
import sys

import numpy as np
import torch

from common import DATA_ROOT, ConfigError, load_model, read_jsonl, read_tokens

# --------------------------------------------------------------------------------------------------
# the statistics: small pure functions. weights is (B, nh, T, S), the weights that multiply V (the
# "weights" of GPT.attention_maps): zero on masked keys, the sink column already dropped.


def first_token_mass(weights):
    """Fig. 4: per head, the weight on the first token, averaged over the batch and the queries -> (nh,)."""
    return weights[..., 0].mean(dim=(0, 2))


def query_mass(weights):
    """Fig. 3: each query's total weight over the tokens -> (B, nh, T). Exactly 1 for softmax and gated;
    1 minus the sink's share for sink; alpha + N beta for affine, which is alpha_ma with N = "prefix"."""
    return weights.sum(dim=-1)


def headwise_mass(mass):
    """Fig. 5: mass (L, nh), each head's mean query_mass -> the grid min-max normalised to [0, 1].
    The paper normalises each model's layer x head heatmap "to the range [0, 1]", so one min and one max
    over the whole grid, not per layer. A grid with no spread beyond rounding (softmax: every head carries
    exactly 1) has no range to normalise: all nan."""
    lo, hi = mass.min(), mass.max()
    if hi - lo < 1e-5:
        return torch.full_like(mass, float("nan"))
    return (mass - lo) / (hi - lo)


def attention_entropy(weights):
    """Fig. 6: per head, the entropy in nats of each query's weights over the keys, averaged over the batch
    and the queries -> (nh,). Weights that do not sum to one are made a distribution first: clamped at 0
    (affine's alpha p + beta goes below 0 where beta < 0) and divided by their sum. That is the entropy of
    where a query's attention goes, whatever its total: for sink the softmax over the real tokens, for
    affine the mix of softmax and uniform that beta makes, which is how the bias flattens attention.
    A query with no positive weight has no distribution and is left out of the mean."""
    w = weights.clamp(min=0)
    p = w / w.sum(dim=-1, keepdim=True)  # 0 / 0 = nan for a query with no positive weight
    h = -torch.xlogy(p, p).sum(dim=-1)  # xlogy: 0 log 0 = 0 on masked keys
    return h.nanmean(dim=(0, 2))


def attention_heatmap(weights, head=None, size=30):
    """Fig. 9: the first size x size block of the weights, averaged over the batch and over the heads
    (head=None, as the paper does) or of one head -> (size, size)."""
    w = weights.mean(dim=1) if head is None else weights[:, head]
    return w[:, :size, :size].mean(dim=0)


def grad_norm_stats(g):
    """Table 4: mean, standard deviation, variance and coefficient of variation (std / mean) of a series of
    gradient norms, raw (no smoothing), population statistics (ddof=0)."""
    g = series(g)
    mean, std = g.mean(), g.std()
    return {"mean": float(mean), "std": float(std), "var": float(std**2), "cv": float(std / mean)}


def spike_threshold(g, k):
    """Table 5's tau = median(g) + k MAD(g), MAD = median(|g - median(g)|), unscaled."""
    g = series(g)
    median = np.median(g)
    return float(median + k * np.median(np.abs(g - median)))


def spike_count(g, k):
    """Table 5: how many steps' gradient norm exceeds spike_threshold(g, k) (the paper uses k = 6 and 9)."""
    return int((series(g) > spike_threshold(g, k)).sum())


def series(g):
    g = np.asarray(g, dtype=np.float64)
    if g.ndim != 1 or g.size == 0:
        raise ValueError(f"expected a non-empty 1-D series of gradient norms, got shape {g.shape}")
    return g


# --------------------------------------------------------------------------------------------------
# checkpoints, data, metrics


def val_sequences(path, num_seqs, seq_len, vocab_size):
    """num_seqs windows of seq_len tokens, evenly spread over the file path (a val.bin), so every checkpoint
    sees the same. The ids are read in the dtype of the meta.pkl beside it."""
    if not os.path.exists(path):
        raise ConfigError(f"no validation data at {path}: run the dataset's prepare.py or pass --data_dir")
    data = read_tokens(os.path.dirname(path), "val")
    if len(data) < seq_len:
        raise ConfigError(f"{path} has {len(data)} tokens, fewer than --seq_len={seq_len}")
    starts = np.linspace(0, len(data) - seq_len, num_seqs).astype(np.int64)
    x = torch.from_numpy(np.stack([data[s:s + seq_len].astype(np.int64) for s in starts]))
    if x.max() >= vocab_size:
        raise ConfigError(f"{path} holds token id {int(x.max())} but the model's vocab_size is {vocab_size}: "
                         f"data of another tokenizer? (--data_dir)")
    return x


def read_metrics(path):
    """The rows of a metrics.jsonl, [] if there is none."""
    return read_jsonl(path) if os.path.exists(path) else []


def smooth(iters, values, window=20):
    """A moving mean over window logged rows (the first window - 1 rows dropped): a per-step loss is too noisy
    to tell variants apart by eye."""
    if len(values) < window:
        return iters, values
    return iters[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid")


def curve(rows, key):
    """(iters, values) of the rows that have key."""
    rows = [r for r in rows if r.get(key) is not None]
    return np.array([r["iter"] for r in rows]), np.array([r[key] for r in rows], dtype=np.float64)


# --------------------------------------------------------------------------------------------------
# analysis of one checkpoint


@torch.no_grad()
def attention_stats(model, x, layer, head):
    """Every statistic above on the sequences x (num_seqs, T), one sequence and one layer at a time: the maps
    of one sequence are n_layer x n_head x T x T (9 GB at 30 layers of 9 heads and T = 2048), so each
    layer's are reduced before the next layer runs."""
    L, nh = model.config.n_layer, model.config.n_head
    n, T = x.shape

    def reduce(m):
        w = m["weights"].cpu()
        alpha = None if m["alpha"] is None else m["alpha"][0, :, :, 0].cpu()
        return dict(first=first_token_mass(w), q=query_mass(w), entropy=attention_entropy(w),
                    heat=attention_heatmap(w, head, min(30, T)), alpha=alpha)

    first, mass, entropy = (torch.zeros(L, nh) for _ in range(3))
    per_query = torch.zeros(n, L, T)  # Fig. 3: each query's mass, averaged over heads as in the paper
    qmin, qmax = torch.full((L,), float("inf")), torch.full((L,), float("-inf"))  # over every query and head
    alpha = torch.zeros(n, L, nh, T)
    heat = 0
    for i, seq in enumerate(x):
        maps = model.attention_maps(seq[None], reduce)
        for l, m in enumerate(maps):
            first[l] += m["first"] / n
            q = m["q"]
            mass[l] += q.mean(dim=(0, 2)) / n
            per_query[i, l] = q.mean(dim=1)[0]
            qmin[l], qmax[l] = min(qmin[l], q.min()), max(qmax[l], q.max())
            entropy[l] += m["entropy"] / n
            if m["alpha"] is not None:
                alpha[i, l] = m["alpha"]
        heat = heat + maps[layer]["heat"] / n
    affine = maps[0]["alpha"] is not None
    heat_of = f"layer {layer % L}, " + ("mean over heads" if head is None else f"head {head}")
    stats = dict(first=first, mass=mass, headwise=headwise_mass(mass), per_query=per_query, qmin=qmin, qmax=qmax,
                 entropy=entropy, heat=heat, heat_of=heat_of, alpha=alpha if affine else None, alpha_ma=None)
    if affine:
        stats["alpha_ma"] = torch.stack([b.attn.alpha_ma.cpu() for b in model.transformer.h])
    return stats


def summarize(name, ckpt, config, stats, rows, data_path, early_steps):
    n, L, T = stats["per_query"].shape
    affine = stats["alpha"] is not None
    it = f", iter {ckpt['iter_num']}" if "iter_num" in ckpt else ""
    out = [f"== {name}: attn={config.attn}" + (f" (affine_n={config.affine_n})" if affine else "") +
           f", n_layer={L} n_head={config.n_head} n_embd={config.n_embd}{it}; {n} sequences x {T} tokens of {data_path}"]
    head_line = f"{'layer':>5}  {'first_tok':>9}  {'query_mass':>10} {'min':>7} {'max':>7}  {'entropy':>7}"
    out.append(head_line + (f"  {'alpha':>6} {'(std)':>7}  alpha_ma per head" if affine else ""))
    for l in range(L):
        line = (f"{l:>5}  {stats['first'][l].mean():>9.4f}  {stats['mass'][l].mean():>10.4f} {stats['qmin'][l]:>7.4f} "
                f"{stats['qmax'][l]:>7.4f}  {stats['entropy'][l].nanmean():>7.3f}")
        if affine:
            a = stats["alpha"][:, l]
            line += f"  {a.mean():>6.3f} ({a.std():.3f})  " + " ".join(f"{v:.3f}" for v in stats["alpha_ma"][l].tolist())
        out.append(line)
    pq = stats["per_query"].flatten()
    out.append(f"per-query mass, head-averaged, all layers (Fig. 3): mean {pq.mean():.4f} median {pq.median():.4f} "
               f"5%..95% {pq.quantile(0.05):.4f}..{pq.quantile(0.95):.4f}")
    if stats["headwise"].isnan().all():
        out.append("head-wise total mass (Fig. 5): the same in every head, no spread to normalise")
    else:
        out.append(f"head-wise total mass, min-max normalised over the model (Fig. 5; raw {stats['mass'].min():.4f}.."
                   f"{stats['mass'].max():.4f}), one row per layer:")
        out += [f"{l:>5}  " + " ".join(f"{v:.2f}" for v in stats["headwise"][l].tolist()) for l in range(L)]
    heat = stats["heat"]
    out.append(f"heatmap ({stats['heat_of']}, first {heat.shape[0]} tokens), queries 1..{heat.shape[0] - 1}: mean "
               f"weight on token 0 {heat[1:, 0].mean():.4f}, on the query itself {heat.diagonal()[1:].mean():.4f}")
    if not rows:
        out.append("no metrics.jsonl next to the checkpoint: no curves")
        return "\n".join(out)
    for key in ("loss", "val_loss", "qk_mag", "grad_norm"):
        iters, values = curve(rows, key)
        if len(values):
            out.append(f"{key:>9}: {values[0]:.4g} (iter {iters[0]}) -> {values[-1]:.4g} (iter {iters[-1]}), "
                       f"{len(values)} logged")
    iters, g = curve(rows, "grad_norm")
    g = g[iters < early_steps]
    if len(g):
        s = grad_norm_stats(g)
        out.append(f"grad_norm at iters < {early_steps} ({len(g)} logged; Tables 4-5): mean {s['mean']:.4g} "
                   f"std {s['std']:.4g} var {s['var']:.4g} CV {s['cv']:.3f}; "
                   f"spikes k=6: {spike_count(g, 6)}, k=9: {spike_count(g, 9)}")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# figures


def plot(runs, plot_dir):
    """One figure per statistic, every checkpoint in it. runs: list of (label, stats, rows)."""
    try:
        import matplotlib
        matplotlib.use("Agg")  # files only, no display needed
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        print("matplotlib is not installed, so no figures: pip install matplotlib")
        return []
    os.makedirs(plot_dir, exist_ok=True)
    written = []

    def save(fig, name):
        fig.tight_layout()
        path = os.path.join(plot_dir, name)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)

    for key, name, ylabel in (("first", "first_token.png", "attention on the first token"),
                              ("entropy", "entropy.png", "attention entropy (nats)")):
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for label, stats, _ in runs:
            per_layer = stats[key].nanmean(dim=1).numpy()
            ax.plot(range(len(per_layer)), per_layer, marker="o", label=label)
        ax.set(xlabel="layer", ylabel=ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        save(fig, name)

    n = len(runs)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False, sharex=True)
    # one x range for all, at least [0, 1]: softmax's masses, all 1 up to rounding, have no range of their own
    values = [stats["per_query"].flatten().double().numpy() for _, stats, _ in runs]
    span = (min(0.0, *(v.min() for v in values)), max(1.0, *(v.max() for v in values)))
    for ax, (label, _, _), v in zip(axes[0], runs, values):
        ax.hist(v, bins=50, range=span)
        ax.axvline(v.mean(), color="k", linestyle="--", label=f"mean {v.mean():.3f}")
        ax.axvline(np.median(v), color="r", linestyle=":", label=f"median {np.median(v):.3f}")
        ax.set(title=label, xlabel="attention mass per query")
        ax.legend(fontsize=7)
    save(fig, "query_mass.png")

    for key, name, xlabel, ylabel in (("headwise", "headwise.png", "head", "layer"), ("heat", "heatmap.png", "key", "query")):
        fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), squeeze=False)
        for ax, (label, stats, _) in zip(axes[0], runs):
            im = ax.imshow(stats[key].numpy(), vmin=0, vmax=1 if key == "headwise" else None, cmap="viridis")
            about = f"mass {stats['mass'].min():.3f}..{stats['mass'].max():.3f}" if key == "headwise" else stats["heat_of"]
            ax.set(title=f"{label}\n{about}", xlabel=xlabel, ylabel=ylabel)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(MaxNLocator(integer=True))  # layers, heads and tokens are whole numbers
            if stats[key].isnan().all():
                ax.text(0.5, 0.5, "the same mass\nin every head", ha="center", va="center", transform=ax.transAxes)
            fig.colorbar(im, ax=ax, fraction=0.046)
        save(fig, name)

    # Fig. 7: the training loss, the KD loss when distilling (the paper's "Loss"); Fig. 10: its last 20% of steps
    key = "kd" if all(any("kd" in r for r in rows) for _, _, rows in runs) else "loss"
    curves = [(label, smooth(*curve(rows, key))) for label, _, rows in runs]
    if all(len(values) for _, (_, values) in curves):
        for name, tail in (("train_loss.png", 1.0), ("train_loss_end.png", 0.2)):
            fig, ax = plt.subplots(figsize=(4.5, 3.2))
            for label, (iters, values) in curves:
                keep = iters >= iters[-1] * (1 - tail)
                ax.plot(iters[keep], values[keep], label=label, linewidth=1)
            ax.set(xlabel="iteration", ylabel=f"training {'KD' if key == 'kd' else 'CE'} loss (moving mean of 20 rows)",
                   title="last 20% of the steps" if tail < 1 else None)
            ax.legend()
            save(fig, name)

    for key, name in (("qk_mag", "qk_mag.png"), ("grad_norm", "grad_norm.png")):
        curves = [(label, curve(rows, key)) for label, _, rows in runs]
        if not any(len(values) for _, (_, values) in curves):
            continue
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for label, (iters, values) in curves:
            ax.plot(iters, values, label=label, linewidth=1)
        ax.set(xlabel="iteration", ylabel=key)
        ax.legend()
        save(fig, name)
    return written


# --------------------------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", action="append", required=True, help="a train.py out_dir or checkpoint file; repeat to compare")
    p.add_argument("--data_dir", help="folder holding val.bin (default: the run's, as train.py: data_dir or data/<dataset>)")
    p.add_argument("--num_seqs", type=int, default=10, help="validation sequences (default: 10, as the paper)")
    p.add_argument("--seq_len", type=int, help="tokens per sequence (default: the model's block_size)")
    p.add_argument("--layer", type=int, help="layer of the heatmap, from 0 (default: the paper's relative depth, "
                   "its layer 8 of 16: n_layer // 2 - 1)")
    p.add_argument("--head", type=int, help="head of the heatmap (default: the mean over heads, as the paper)")
    p.add_argument("--early_steps", type=int, default=500, help="gradient-norm statistics over iters < this (Tables 4-5), as compare.py (default: 500)")
    p.add_argument("--plot_dir", help="where figures go (default: the checkpoint's folder, or analysis/ for several)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu)")
    args = p.parse_args(argv)
    for name in ("num_seqs", "early_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name}={getattr(args, name)} must be at least 1")
    run_dirs = [path if os.path.isdir(path) else os.path.dirname(path) or "." for path in args.ckpt]
    plot_dir = args.plot_dir or (run_dirs[0] if len(args.ckpt) == 1 else "analysis")

    runs, summaries = [], []
    for path, run_dir in zip(args.ckpt, run_dirs):
        model, _, ckpt = load_model(path, args.device, "--ckpt")
        if ckpt is None:
            p.error(f"--ckpt={path} is not a train.py checkpoint")
        model.eval()
        cfg = model.config
        seq_len = args.seq_len or cfg.block_size
        if not 1 <= seq_len <= cfg.block_size:
            p.error(f"--seq_len={seq_len}: {path} takes 1..{cfg.block_size} (its block_size)")
        layer = max(cfg.n_layer // 2 - 1, 0) if args.layer is None else args.layer
        if not -cfg.n_layer <= layer < cfg.n_layer:
            p.error(f"--layer={layer}: {path} has layers {-cfg.n_layer}..{cfg.n_layer - 1}")
        if args.head is not None and not 0 <= args.head < cfg.n_head:
            p.error(f"--head={args.head}: {path} has heads 0..{cfg.n_head - 1}")
        data_dir = args.data_dir or ckpt["config"].get("data_dir")  # as train.py: its data_dir, else data/<dataset>
        if not data_dir and "dataset" not in ckpt["config"]:
            p.error(f"{path} names no dataset in its config: pass --data_dir")
        data_path = os.path.join(data_dir or os.path.join(DATA_ROOT, ckpt["config"]["dataset"]), "val.bin")
        x = val_sequences(data_path, args.num_seqs, seq_len, cfg.vocab_size).to(args.device)
        stats = attention_stats(model, x, layer, args.head)
        rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        summaries.append(summarize(path, ckpt, cfg, stats, rows, data_path, args.early_steps))
        runs.append((cfg.attn, stats, rows))
    labels = [label for label, _, _ in runs]
    runs = [(f"{label} ({run_dir})" if labels.count(label) > 1 else label, stats, rows)
            for (label, stats, rows), run_dir in zip(runs, run_dirs)]
    summary = "\n\n".join(summaries)
    print(summary)
    written = plot(runs, plot_dir)
    if written:
        print(f"\nwrote {', '.join(written)}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
