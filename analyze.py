"""
Where the attention of trained checkpoints goes (paper section 4, appendices A and B), side by side:

    python analyze.py --ckpt=out-softmax,out-sink,out-affine/ckpt.pt

An out_dir stands for its best.pt (the lowest val loss), else its ckpt.pt; a file for itself.
Settings are the fields of AnalyzeConfig, given as in train.py (config files and --key=value overrides).

On validation sequences as appendix A.1 takes them (10 windows of min(1024, block_size) tokens at seeded
random places in a val.bin, the same for every checkpoint; the paper's is C4 validation, which
data/c4/prepare.py makes for --data_dir; the default is the run's own val.bin), per layer and head, from
GPT.attention_maps: the weight on the first token (Fig. 4), each query's total attention mass (Fig. 3), the
head-wise total mass normalised to [0, 1] (Fig. 5), the attention entropy (Fig. 6), a 30 x 30 attention
heatmap (Fig. 9) and, for affine models, alpha and alpha_ma. From each run's metrics.jsonl (next to its
checkpoint): the training loss (the KD loss when distilling, Fig. 7; its last 2/9 of steps, Fig. 10: steps
7k-9k of 9k), the |QK^T| magnitude (qk_mag) and gradient-norm curves (Fig. 2, 8) and the early-training
gradient-norm statistics of Tables 4 and 5. The figures add phi, sigmoid against linear clipping (Fig. 11).

A text summary is always printed; with matplotlib installed, figures go to --plot_dir.
"""

import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from checkpoint import load_model, read_jsonl
from configurator import ConfigError, check_device, check_types, check_writable, load_config
from dataloader import DATA_ROOT, read_tokens
from model import linear_clipping

LATE = 2 / 9  # Fig. 10's share of training: steps 7k-9k of 9k

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


def val_sequences(path, num_seqs, seq_len, vocab_size, seed=0):
    """num_seqs windows of seq_len tokens at distinct random places of the file path (a val.bin), in file
    order, "10 sampled sequences" of appendix A.1: seeded, so every checkpoint sees the same. The ids are
    read in the dtype of the meta.json beside it."""
    if not os.path.exists(path):
        raise ConfigError(f"no validation data at {path}: run the dataset's prepare.py or pass --data_dir")
    data = read_tokens(os.path.dirname(path), "val")
    if len(data) - seq_len + 1 < num_seqs:
        raise ConfigError(f"{path} has {len(data)} tokens, too few for --num_seqs={num_seqs} windows of "
                          f"--seq_len={seq_len}")
    starts = np.sort(np.random.default_rng(seed).choice(len(data) - seq_len + 1, size=num_seqs, replace=False))
    x = torch.from_numpy(np.stack([data[s:s + seq_len].astype(np.int64) for s in starts]))
    if x.max() >= vocab_size:
        raise ConfigError(f"{path} holds token id {int(x.max())} but the model's vocab_size is {vocab_size}: "
                         f"data of another tokenizer? (--data_dir)")
    return x


def read_metrics(path):
    """The rows of a metrics.jsonl, [] if there is none."""
    return read_jsonl(path) if os.path.exists(path) else []


def run_labels(configs, seeds, run_dirs):
    """Names of the runs in words: the variant and its ablations ("affine, N = prefix", "affine, phi =
    sigmoid"); runs of the same name told apart by their seed, else by their folder."""
    labels = []
    for config in configs:
        label = config.attn
        if config.attn.startswith("affine"):
            label += f", N = {config.affine_n}" if config.affine_n != "context" else ""
            label += f", phi = {config.phi}" if config.phi != "linear_clip" else ""
        labels.append(label)
    labels = [f"{label}, seed {seed}" if labels.count(label) > 1 else label for label, seed in zip(labels, seeds)]
    return [f"{label} ({os.path.basename(os.path.abspath(d))})" if labels.count(label) > 1 else label
            for label, d in zip(labels, run_dirs)]


def smooth(iters, values, window=20):
    """A moving mean over window logged rows (the first window - 1 rows dropped): a per-step loss is too noisy
    to tell variants apart by eye."""
    if len(values) < window:
        return iters, values
    return iters[window - 1:], np.convolve(values, np.ones(window) / window, mode="valid")


def late_phase(iters, values):
    """The points of the last LATE (2/9) of the steps, as Fig. 10 shows steps 7k-9k of 9k."""
    keep = iters >= iters[-1] * (1 - LATE)
    return iters[keep], values[keep]


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
    out = [f"== {name}: attn={config.attn}" + (f" (affine_n={config.affine_n}, phi={config.phi})" if affine else "") +
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


LOSS_LABELS = {"soft_ce": "KD loss: soft-target cross-entropy", "kd": "KD loss: KL divergence", "loss": "training loss"}


def plot(runs, plot_dir):
    """One figure per statistic, every checkpoint in it, the paper's figure number in its title; and phi's two
    shapes (Fig. 11). runs: list of (label, stats, rows)."""
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
        path = os.path.join(plot_dir, name)
        fig.savefig(path, dpi=90, bbox_inches="tight")  # tight: no label or title is cut off
        plt.close(fig)
        written.append(path)

    def lines(title, xlabel, ylabel, curves, integer_x=False):
        """A line per run, the legend beside the axes, where it covers no data."""
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for label, (x, y) in curves:
            ax.plot(x, y, label=label, linewidth=1, marker="o" if integer_x else None, markersize=3)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
        return fig

    def panels(title):
        """One panel per run, at most 3 in a row, so that each stays large enough to read."""
        cols = min(len(runs), 3)
        rows = -(-len(runs) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False, layout="constrained")
        for ax in axes.flat[len(runs):]:
            ax.set_visible(False)
        fig.suptitle(title)
        return fig, axes.flat[:len(runs)]

    for key, name, title, ylabel in (("first", "first_token.png", "Fig. 4: attention on the first token",
                                      "attention weight"),
                                     ("entropy", "entropy.png", "Fig. 6: attention entropy", "entropy (nats)")):
        curves = [(label, (range(stats[key].shape[0]), stats[key].nanmean(dim=1).numpy())) for label, stats, _ in runs]
        save(lines(title + ", per layer", "layer", ylabel, curves, integer_x=True), name)

    fig, axes = panels("Fig. 3: attention mass per query (heads averaged, all layers)\n"
                       "dashed: mean, dotted: median")
    # one x range for all, at least [0, 1]: softmax's masses, all 1 up to rounding, have no range of their own
    values = [stats["per_query"].flatten().double().numpy() for _, stats, _ in runs]
    span = (min(0.0, *(v.min() for v in values)), max(1.0, *(v.max() for v in values)))
    for ax, (label, _, _), v in zip(axes, runs, values):
        ax.hist(v, bins=50, range=span)
        ax.axvline(v.mean(), color="k", linestyle="--")
        ax.axvline(np.median(v), color="r", linestyle=":")
        ax.set(title=f"{label}\nmean {v.mean():.3f}, median {np.median(v):.3f}", xlabel="attention mass",
               ylabel="queries")
    save(fig, "query_mass.png")

    heat_of = sorted({stats["heat_of"] for _, stats, _ in runs})
    # query 0 sees only itself (weight 1 in softmax): the colours stop at the largest weight of the later queries
    top = max(float(stats["heat"][1:].max()) for _, stats, _ in runs)
    for key, name, title, xlabel, ylabel, vmax in (
            ("headwise", "headwise.png", "Fig. 5: total attention mass per head, min-max normalised per model",
             "head", "layer", 1.0),
            ("heat", "heatmap.png", f"Fig. 9: attention weights of the first tokens ({', '.join(heat_of)})\n"
             f"one colour scale, up to the largest weight of queries 1 and later", "key", "query", top)):
        fig, axes = panels(title)
        for ax, (label, stats, _) in zip(axes, runs):
            # one colour scale for every panel, so that the panels compare
            im = ax.imshow(stats[key].numpy(), vmin=0, vmax=vmax, cmap="viridis")
            about = f"\nraw mass {stats['mass'].min():.3f}..{stats['mass'].max():.3f}" if key == "headwise" else ""
            ax.set(title=label + about, xlabel=xlabel, ylabel=ylabel)
            for axis in (ax.xaxis, ax.yaxis):
                axis.set_major_locator(MaxNLocator(integer=True))  # layers, heads and tokens are whole numbers
            if stats[key].isnan().all():
                ax.text(0.5, 0.5, "the same mass\nin every head", ha="center", va="center", transform=ax.transAxes)
        fig.colorbar(im, ax=list(axes), shrink=0.6, label="normalised mass" if key == "headwise" else "weight")
        save(fig, name)

    # Fig. 7: the training loss, the KD loss when distilling (the paper's "Loss"); Fig. 10: its last 2/9
    logged = [k for k in ("soft_ce", "kd") if all(any(k in r for r in rows) for _, _, rows in runs)]
    key = (logged + ["loss"])[0]
    curves = [(label, smooth(*curve(rows, key))) for label, _, rows in runs]
    if all(len(values) for _, (_, values) in curves):
        save(lines("Fig. 7: training loss (moving mean of 20 logged rows)", "iteration", LOSS_LABELS[key], curves),
             "train_loss.png")
        late = [(label, late_phase(x, y)) for label, (x, y) in curves]
        save(lines("Fig. 10: the last 2/9 of training (the paper's steps 7k-9k of 9k)", "iteration",
                   LOSS_LABELS[key], late), "train_loss_end.png")

    for key, name, title, ylabel in (("qk_mag", "qk_mag.png", "Fig. 2: |QK^T| over training",
                                      "mean |QK^T| (visible pairs)"),
                                     ("grad_norm", "grad_norm.png", "Fig. 8: gradient norm over training",
                                      "gradient norm (before clipping)")):
        curves = [(label, curve(rows, key)) for label, _, rows in runs]
        if any(len(values) for _, (_, values) in curves):
            save(lines(title, "iteration", ylabel, curves), name)

    x = torch.linspace(-10, 10, 401)
    save(lines("Fig. 11: phi, the activation of alpha (Eq. 7)", "x", "phi(x)",
               [("linear clipping (Eq. 11)", (x, linear_clipping(x))), ("sigmoid (Eq. 10)", (x, torch.sigmoid(x)))]),
         "phi.png")
    return written


# --------------------------------------------------------------------------------------------------


@dataclass
class AnalyzeConfig:
    ckpt: str = ""  # train.py out_dirs or checkpoint files, comma-separated to compare them side by side
    data_dir: str = ""  # folder holding val.bin; "": the run's, as train.py: data_dir or data/<dataset>
    num_seqs: int = 10  # validation sequences, as the paper
    seq_len: int = None  # tokens per sequence; None: min(1024, block_size), as the paper's 1k
    seed: int = 0  # where the sequences are taken from val.bin
    early_steps: int = 500  # gradient-norm statistics over iters < this (Tables 4-5), as compare.py
    plot_dir: str = ""  # where figures go; "": the checkpoint's folder, or analysis/ for several
    device: str = "cpu"  # cpu, cuda, cuda:N or mps
    # the heatmap (Fig. 9)
    layer: int = None  # its layer, from 0; None: the paper's relative depth, its layer 8 of 16: n_layer // 2 - 1
    head: int = None  # its head; None: the mean over heads, as the paper

    def __post_init__(self):
        check_types(self)
        if not self.ckpt_list():
            raise ConfigError("no --ckpt: give a train.py out_dir or checkpoint file, e.g. --ckpt=out-shakespeare-char-cpu, "
                              "or several, comma-separated")
        for name in ("num_seqs", "early_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name}={getattr(self, name)} must be at least 1")
        check_device(self.device, "--device")  # its messages name this script's option, not train.py's device=

    def ckpt_list(self):
        return [path.strip() for path in self.ckpt.split(",") if path.strip()]


def main(argv):
    if sum(arg.startswith("--ckpt=") for arg in argv) > 1:  # a later override would silently replace the earlier
        raise ConfigError("--ckpt is given more than once; name the checkpoints in one, comma-separated: --ckpt=a,b")
    args = load_config(argv, AnalyzeConfig)
    ckpts = args.ckpt_list()
    run_dirs = [path if os.path.isdir(path) else os.path.dirname(path) or "." for path in ckpts]
    plot_dir = args.plot_dir or (run_dirs[0] if len(ckpts) == 1 else "analysis")
    check_writable(plot_dir, "--plot_dir", folder=True)  # before the analysis, not when the figures are saved

    runs, summaries = [], []
    for path, run_dir in zip(ckpts, run_dirs):
        model, _, ckpt = load_model(path, args.device, "--ckpt")
        if ckpt is None:
            raise ConfigError(f"--ckpt={path} is not a train.py checkpoint")
        model.eval()
        cfg = model.config
        seq_len = args.seq_len or min(1024, cfg.block_size)
        if not 1 <= seq_len <= cfg.block_size:
            raise ConfigError(f"--seq_len={seq_len}: {path} takes 1..{cfg.block_size} (its block_size)")
        layer = max(cfg.n_layer // 2 - 1, 0) if args.layer is None else args.layer
        if not -cfg.n_layer <= layer < cfg.n_layer:
            raise ConfigError(f"--layer={layer}: {path} has layers {-cfg.n_layer}..{cfg.n_layer - 1}")
        if args.head is not None and not 0 <= args.head < cfg.n_head:
            raise ConfigError(f"--head={args.head}: {path} has heads 0..{cfg.n_head - 1}")
        data_dir = args.data_dir or ckpt["config"].get("data_dir")  # as train.py: its data_dir, else data/<dataset>
        if not data_dir and "dataset" not in ckpt["config"]:
            raise ConfigError(f"{path} names no dataset in its config: pass --data_dir")
        data_path = os.path.join(data_dir or os.path.join(DATA_ROOT, ckpt["config"]["dataset"]), "val.bin")
        x = val_sequences(data_path, args.num_seqs, seq_len, cfg.vocab_size, args.seed).to(args.device)
        stats = attention_stats(model, x, layer, args.head)
        rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
        summaries.append(summarize(path, ckpt, cfg, stats, rows, data_path, args.early_steps))
        runs.append((cfg, stats, rows, ckpt["config"].get("seed")))
    labels = run_labels([r[0] for r in runs], [r[3] for r in runs], run_dirs)
    runs = [(label, stats, rows) for label, (_, stats, rows, _) in zip(labels, runs)]
    summary = "\n\n".join(summaries)
    print(summary)
    written = plot(runs, plot_dir)
    if written:
        print(f"\nwrote {', '.join(written)}")
    return summary


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ConfigError as e:
        sys.exit(f"ConfigError: {e}")
