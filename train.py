"""
Train a GPT of model.py, with any of its attention variants, by cross-entropy or by knowledge distillation.

    python train.py config/train_shakespeare_char_cpu.py                  # the README's CPU run
    python train.py config/train_shakespeare_char_cpu.py --attn=affine --max_iters=500
    torchrun --standalone --nproc_per_node=8 train.py config/train_fineweb_kd_gpt2.py

Every setting is a field of TrainConfig. A config file is python that assigns some of them; --key=value
overrides follow; later ones win. As a library: train(load_config([...], TrainConfig)) or train(TrainConfig(...)).
A fresh run (init_from="scratch") refuses an out_dir that already holds one (--overwrite=True replaces it);
one process at a time trains in an out_dir (out_dir/train.lock holds its pid while it does). Writes
  out_dir/ckpt.pt        the last checkpoint, which init_from="resume" continues (it must have the same
                         model settings, data, tokenizer, loss and teacher)
  out_dir/best.pt        the checkpoint of the lowest val loss, which sample.py, analyze.py and a KD
                         teacher given as an out_dir load; val_loss and iter_num in it are its own
  out_dir/metrics.jsonl  one JSON object per logged step:
  every log_interval iters  iter, lr, loss, ce (and when distilling kd, the KL, and but for kd_reverse
                            soft_ce, the soft-target cross-entropy: see forward_loss), grad_norm (before
                            clipping), tokens_per_s and dt_ms (training alone: evaluation and logging left out),
                            and with sampling="epoch" epoch (epochs completed: 0.5 is half the first);
                            loss, ce, kd, soft_ce and dt_ms are means over the iterations since the previous row
  every stats_interval iters the log row also has qk_mag (the paper's Fig. 2: mean |QK^T|, not divided by
                            sqrt(d_k), over the causally visible entries of every layer and head) and, for
                            the affine variants, alpha and alpha_ma (per layer, means over heads and tokens),
                            on the first STATS_TOKENS tokens of the step's last micro-batch
  every eval_interval iters iter, train_loss, val_loss, val_ppl (cross-entropy, also when distilling),
                            time_s (wall seconds from the start to this evaluation), eval_s (its seconds);
  and after the last iter   the same, and the last checkpoint is written
With always_save_checkpoint=True ckpt.pt is written at every evaluation, else only when the val loss
improves and after the last iter. The first run of the default dataset prepares it from the embedded corpus.
At the end it prints the wall time, where it went ("X ms/iter: Y train, Z eval, W logging") and where the
checkpoints and metrics are. Ctrl-C or SIGTERM stops it with one line naming the checkpoint that is kept.
"""

import contextlib
import dataclasses
import datetime
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

import parallel
from checkpoint import CheckpointError, hold_out_dir, read_checkpoint, read_jsonl, save_checkpoint
from configurator import ConfigError, check_choice, check_device, check_types, cpu_threads, load_config
from dataloader import EpochSampler, find_data, get_batch, prepare_default_data, read_meta, read_tokens, vocab_of
from model import GPT, GPTConfig
from tokenizer import describe_tokenizers, tokenizer_of

MODEL_FIELDS = ("n_layer", "n_head", "n_kv_head", "n_embd", "block_size", "dropout", "bias", "qkv_bias", "pos",
                "rope_theta", "rope_scaling", "norm", "norm_eps", "mlp", "mlp_hidden", "tie_embeddings", "attn",
                "fused", "phi", "affine_momentum", "affine_n")
# the data and the loss are part of a run too: a resume must not change what the model learns from
RUN_FIELDS = ("dataset", "data_dir", "loss", "teacher", "kd_alpha", "kd_temperature", "kd_reverse")


class NonFiniteLoss(RuntimeError):
    """Training met a non-finite loss and stopped; no checkpoint was written after it."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training; the message says which checkpoint was kept."""


@dataclass
class TrainConfig:
    # output and evaluation
    out_dir: str = "out"
    eval_interval: int = 2000
    eval_iters: int = 200  # batches per split at each evaluation
    log_interval: int = 10
    # the attention statistics cost one extra eager forward of a few sequences, so they are measured more rarely
    stats_interval: int = 100  # in the first log row at or after every multiple of it
    always_save_checkpoint: bool = True  # False: ckpt.pt only when val loss improves, and at the end (best.pt: when it improves)
    init_from: str = "scratch"  # or "resume" from out_dir/ckpt.pt
    overwrite: bool = False  # True: a fresh run replaces the run already in out_dir
    seed: int = 1337
    # data
    dataset: str = "shakespeare_char"
    data_dir: str = ""  # folder with train.bin, val.bin and maybe meta.json; "" is data/<dataset>
    sampling: str = "random"  # training windows: "random" (with replacement) or "epoch" (each once per epoch, shuffled)
    gradient_accumulation_steps: int = 1  # micro-steps per iteration, all DDP ranks together
    batch_size: int = 12  # sequences per micro-step and rank
    block_size: int = 1024
    # model (GPTConfig; vocab_size comes from the data's meta.json, else GPT-2's padded 50304)
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int = 0  # fewer than n_head: grouped-query attention; 0: n_head
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False
    qkv_bias: bool = False  # q, k, v biases even when bias=False (Qwen)
    pos: str = "learned"  # "learned" or "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict = None  # LLaMA-3's frequency scaling as its config.json gives it (model.PAPER_SHAPES), or None
    norm: str = "layernorm"  # or "rmsnorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu"  # "gelu", "swiglu" or "relu2"
    mlp_hidden: int = 0  # 0: 4 * n_embd
    tie_embeddings: bool = True
    attn: str = "softmax"  # softmax, sink, gated, affine, affine_gated
    fused: bool = True
    phi: str = "linear_clip"  # phi of Eq. 7: "linear_clip" (Eq. 11) or "sigmoid"
    affine_momentum: float = 0.9  # rho of Eq. 9
    affine_n: str = "context"  # N of Eq. 8: "context" (block_size) or "prefix" (keys the query sees)
    # loss
    loss: str = "ce"  # "ce", or "kd" to distil from teacher
    teacher: str = ""  # a checkpoint file, an out_dir (its best.pt), or a Hugging Face causal LM (hub name or directory)
    kd_alpha: float = 0.5  # loss = kd_alpha * tau^2 * KL + (1 - kd_alpha) * CE
    kd_temperature: float = 1.0  # tau
    kd_reverse: bool = False  # KL(student || teacher) instead of KL(teacher || student)
    loss_chunk: int = 0  # tokens whose logits exist at once in the loss (student's and teacher's); 0: all of them
    # AdamW
    learning_rate: float = 6e-4
    max_iters: int = 600000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 turns clipping off
    # learning-rate schedule, both after a linear warmup
    lr_schedule: str = "cosine"  # "cosine" down to min_lr at lr_decay_iters, or "wsd" (warmup-stable-decay)
    warmup_iters: int = 2000
    lr_decay_iters: int = 0  # cosine only; 0: max_iters, so that --max_iters alone still ends the decay
    decay_frac: float = 0.2  # wsd only: linear decay to min_lr over the last decay_frac of max_iters
    min_lr: float = 6e-5
    # system
    device: str = "cuda" if torch.cuda.is_available() else "cpu"  # cpu, cuda, cuda:N or mps
    dtype: str = "bfloat16"  # autocast dtype on CUDA (FSDP: its compute dtype), "float32" for none; CPU and MPS always run float32
    compile: bool = False
    # beyond one GPU (docs/distributed.md; `python parallel.py` prints the memory per GPU of the paper's configs).
    # Under torchrun the default is DDP: every GPU holds the whole student, its gradients and AdamW state.
    fsdp: bool = False  # True: shard them over the ranks (FSDP2), for a student that DDP cannot fit (the 3B run)
    teacher_fsdp: bool = False  # True: shard the frozen teacher over the ranks too (the 8B teacher of the 3B run)
    activation_checkpointing: bool = False  # True: recompute each Block's activations in the backward (~1/3 more compute, ~1/10 the activations)

    def __post_init__(self):
        check_types(self)
        check_choice("init_from", self.init_from, ("scratch", "resume"))
        check_choice("loss", self.loss, ("ce", "kd"))
        check_choice("lr_schedule", self.lr_schedule, ("cosine", "wsd"))
        check_choice("sampling", self.sampling, ("random", "epoch"))
        check_choice("dtype", self.dtype, ("float32", "bfloat16"))
        check_choice("device", self.device.split(":")[0], ("cpu", "cuda", "mps"))
        for name in ("eval_interval", "eval_iters", "log_interval", "stats_interval", "gradient_accumulation_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be at least 1")
        for name in ("seed", "max_iters", "warmup_iters", "lr_decay_iters", "weight_decay", "grad_clip", "loss_chunk"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must not be negative")
        if self.learning_rate <= 0:
            raise ConfigError(f"learning_rate={self.learning_rate} must be positive")
        if not 0 <= self.min_lr <= self.learning_rate:
            raise ConfigError(f"min_lr={self.min_lr} must be in [0, learning_rate={self.learning_rate}]")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.warmup_iters > self.max_iters:
            raise ConfigError(f"warmup_iters={self.warmup_iters} must be at most max_iters={self.max_iters}")
        if self.lr_schedule == "cosine" and 0 < self.lr_decay_iters < self.warmup_iters:
            raise ConfigError(f"lr_decay_iters={self.lr_decay_iters} must be at least warmup_iters={self.warmup_iters} "
                              f"(the cosine decay follows the warmup)")
        if self.loss == "kd" and not self.teacher:
            raise ConfigError("loss='kd' needs a teacher: a ckpt.pt, an out_dir holding one, or a Hugging Face causal LM")
        if self.loss == "ce" and self.teacher:
            raise ConfigError(f"teacher={self.teacher!r} is set but loss='ce'; set loss='kd' to distil")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ConfigError(f"kd_alpha={self.kd_alpha} must be in [0, 1]")
        if self.kd_temperature <= 0:
            raise ConfigError(f"kd_temperature={self.kd_temperature} must be positive")
        if self.teacher_fsdp and self.loss != "kd":
            raise ConfigError("teacher_fsdp=True shards the teacher, but loss='ce' has none; set loss='kd' and a teacher")
        if not 0.0 < self.decay_frac <= 1.0:
            raise ConfigError(f"decay_frac={self.decay_frac} must be in (0, 1]")
        self.gpt_config(vocab_size=1)  # the model fields, checked by GPTConfig now rather than after loading data

    def gpt_config(self, vocab_size):
        try:
            return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in MODEL_FIELDS})
        except ValueError as e:
            raise ConfigError(str(e)) from None


def get_lr(cfg, it):
    """Linear warmup, then nanoGPT's cosine decay or warmup-stable-decay (constant, then linear to min_lr)."""
    if it < cfg.warmup_iters:
        return cfg.learning_rate * (it + 1) / (cfg.warmup_iters + 1)
    if cfg.lr_schedule == "wsd":
        decay_start = cfg.max_iters * (1.0 - cfg.decay_frac)
        if it < decay_start:
            return cfg.learning_rate
        frac = min(1.0, (it - decay_start) / (cfg.max_iters - decay_start))
        return cfg.learning_rate + frac * (cfg.min_lr - cfg.learning_rate)
    decay_iters = cfg.lr_decay_iters or cfg.max_iters
    if it > decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.learning_rate - cfg.min_lr)


def chunk_losses(h, lm_head, y, vocab, teacher_h, teacher_head, tau, reverse):
    """Sums over one chunk of tokens of the cross-entropy and, with a teacher, of tau^2 * KL(teacher ||
    student) of the next-token distributions at temperature tau (KL(student || teacher) if reverse) and of
    tau^2 * H(teacher) (0 if reverse), the teacher's entropy. Tokens whose target is -1 count in no sum:
    they are neither learned nor distilled. h, teacher_h: (N, C) final hidden states; y: (N,) targets.
    tau^2 keeps the gradients' scale independent of tau (Hinton et al., 2015). KD compares the first vocab
    logits only, the tokenizer's real vocabulary: a Hugging Face teacher pads its embedding (Qwen: 151936
    rows for 151646 tokens), and a padded student's extra rows are no token. In float32: under bf16
    autocast the two log-softmaxes nearly cancel."""
    logits = lm_head(h).float()
    ce = F.cross_entropy(logits, y, ignore_index=-1, reduction="sum")
    if teacher_h is None:
        return ce, torch.zeros_like(ce), torch.zeros_like(ce)
    real = y != -1
    with torch.no_grad():
        t = F.log_softmax(teacher_head(teacher_h)[:, :vocab].float() / tau, dim=-1)
        entropy = torch.zeros_like(ce) if reverse else torch.where(real, -(t.exp() * t).sum(-1), 0.0).sum()
    s = F.log_softmax(logits[:, :vocab] / tau, dim=-1)
    log_p, log_q = (s, t) if reverse else (t, s)
    kl = torch.where(real, (log_p.exp() * (log_p - log_q)).sum(-1), 0.0)  # a masked row adds exactly 0
    return ce, tau**2 * kl.sum(), tau**2 * entropy


def forward_loss(model, teacher, x, y, cfg, vocab):
    """(loss to minimise, its cross-entropy part, its KD part, soft_ce), means over the tokens whose target
    is not -1 (ignore_index): every part is divided by the number of real targets. The KD part is
    tau^2 * KL(teacher || student), or KL(student || teacher) with kd_reverse, and 0 without a teacher.
    soft_ce is the soft-target cross-entropy tau^2 * H(teacher, student) = KD part + tau^2 * H(teacher),
    the quantity the paper's "KD loss" has the size of (torchtune's ForwardKLLoss returns it); H(teacher)
    does not depend on the student, so the KL and soft_ce have the same gradients. With kd_reverse the
    matching cross-entropy would differ from the KL by the student's entropy, no constant: soft_ce is 0
    there, as without a teacher.
    Under gradient accumulation each micro-step's loss is this mean over its own real targets, and an
    iteration minimises (and logs) the mean of its micro-steps' losses (DDP: of its ranks' too). That is
    the mean over all the iteration's real targets when every micro-batch has as many, as get_batch (no
    -1 targets) always gives.
    vocab: the data's real vocabulary size. The logits are made chunk by chunk of cfg.loss_chunk tokens
    from the final hidden states, each chunk under activation checkpointing: only one chunk's logits
    (student's and teacher's) exist at a time, forward and backward, and the sums make the value and
    gradients those of the whole batch at once (loss_chunk=0)."""
    lm_head = getattr(model, "module", model).lm_head  # DDP keeps the model in .module
    h, y = model(x, return_hidden=True).flatten(0, 1), y.flatten()
    teacher_h = teacher_head = None
    if teacher is not None:
        with torch.no_grad():
            teacher_h, teacher_head = teacher(x, return_hidden=True).flatten(0, 1), teacher.lm_head
    n = cfg.loss_chunk or len(y)
    sums = torch.zeros(3, device=h.device)
    for i in range(0, len(y), n):
        chunk = slice(i, i + n)
        args = (h[chunk], lm_head, y[chunk], vocab, None if teacher_h is None else teacher_h[chunk], teacher_head,
                cfg.kd_temperature, cfg.kd_reverse)
        if cfg.loss_chunk and torch.is_grad_enabled():  # backward recomputes this chunk's logits
            sums = sums + torch.stack(checkpoint(chunk_losses, *args, use_reentrant=False))
        else:
            sums = sums + torch.stack(chunk_losses(*args))
    ce, kd, entropy = sums / (y != -1).sum()
    soft_ce = torch.zeros_like(kd) if cfg.kd_reverse else kd + entropy  # without a teacher 0 + 0
    if teacher is None:
        return ce, ce, kd, soft_ce
    return cfg.kd_alpha * kd + (1.0 - cfg.kd_alpha) * ce, ce, kd, soft_ce


def check_resume(cfg, ckpt, path, meta, vocab_size, data_dir):
    """A resume continues the run of its checkpoint: the model settings, the data and its tokenizer, the loss
    and the teacher must be the checkpoint's. A difference is an error naming both values, never ignored or
    mixed into the run. fused may differ: both paths compute the same function."""
    was = ckpt["config"]  # the settings as given: model_args resolves some (n_kv_head=0 is n_head)
    changed = [f"{k}={was.get(k)!r} there, {getattr(cfg, k)!r} now" for k in MODEL_FIELDS + RUN_FIELDS
               if k != "fused" and was.get(k) != getattr(cfg, k)]
    if was.get("sampling", "random") != cfg.sampling:  # checkpoints from before the setting drew random windows
        changed.append(f"sampling={was.get('sampling', 'random')!r} there, {cfg.sampling!r} now")
    if changed:
        raise ConfigError(f"init_from='resume' continues {path}, but the settings differ: {'; '.join(changed)}. "
                          f"Resume with the run's settings (its config, without those overrides) or start a new out_dir")
    ckpt_vocab = ckpt["model_args"]["vocab_size"]
    if ckpt_vocab != vocab_size or tokenizer_of(ckpt.get("meta")) != tokenizer_of(meta):
        there, here = describe_tokenizers(ckpt.get("meta"), meta)
        raise ConfigError(f"init_from='resume': {path} was trained on {there} "
                          f"(vocab_size={ckpt_vocab}), but the data in {data_dir} is {here} "
                          f"(vocab_size={vocab_size}); resume on the run's data or start a new out_dir")


@torch.no_grad()
def estimate_loss(model, cfg, data_dir, device, ctx):
    """Mean cross-entropy on eval_iters batches of each split. The generator is seeded afresh each time:
    every evaluation sees the same batches, so curves compare across evaluations and runs, and the
    training sampler's state is left alone (a resumed run draws what an uninterrupted one would). The train
    batches come from seed - 1, a stream no rank trains on (rank r draws from seed + r): drawn from seed,
    they were rank 0's first training batches. The val batches come from seed, as before."""
    model.eval()
    meta = read_meta(data_dir)
    out = {}
    for split in ("train", "val"):
        generator = torch.Generator().manual_seed(cfg.seed - 1 if split == "train" else cfg.seed)
        total = torch.zeros((), device=device)
        for _ in range(cfg.eval_iters):
            x, y = get_batch(data_dir, split, cfg.batch_size, cfg.block_size, generator, device, meta)
            with ctx:
                loss, *_ = forward_loss(model, None, x, y, cfg, vocab_of(meta))
            total += loss.float()
        out[split] = total.item() / cfg.eval_iters
    model.train()
    return out


# the attention statistics look at the first sequences of a micro-batch, this many tokens (at least one sequence)
STATS_TOKENS = 2048


@torch.no_grad()
def attention_stats(model, x):
    """The paper's Fig. 2 quantity, qk_mag: the mean |QK^T| (not divided by sqrt(d_k)) over every layer, head
    and causally visible query-key pair; and, for the affine variants, alpha (per layer, the mean over heads
    and tokens) and alpha_ma (per layer, the mean over heads). On the first sequences of x, at most
    STATS_TOKENS tokens, one layer at a time: each layer's T x T maps are reduced to these numbers before
    the next layer runs, so the cost is one layer's maps of a few sequences, whatever the batch and depth."""
    x = x[:max(1, STATS_TOKENS // x.size(1))]
    T = x.size(1)
    masked = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)  # keys a query does not see
    sqrt_d = math.sqrt(model.config.n_embd // model.config.n_head)

    def reduce(maps):
        qk = maps["logits"].masked_fill(masked, 0.0).abs().sum(dtype=torch.float32) * sqrt_d
        alpha = maps["alpha"].float().mean() if maps["alpha"] is not None else qk.new_zeros(())
        return torch.stack([qk, alpha])

    per_layer = torch.stack(model.attention_maps(x, reduce)).tolist()  # one sync for all layers
    pairs = len(per_layer) * x.size(0) * model.config.n_head * T * (T + 1) / 2  # visible (query, key) pairs
    stats = {"qk_mag": sum(qk for qk, _ in per_layer) / pairs}
    if model.transformer.h[0].attn.affine:
        stats["alpha"] = [alpha for _, alpha in per_layer]
        stats["alpha_ma"] = [block.attn.alpha_ma.float().mean().item() for block in model.transformer.h]
    return stats


def rng_states(sampler, device_type, ddp):
    """Every rank's random state: the batch sampler's and torch's (dropout), for an exact resume."""
    state = {"sampler": sampler.get_state(), "torch": torch.get_rng_state()}
    if device_type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state()
    if not ddp:
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def train(cfg):
    """Train as cfg says. Under torchrun (RANK in the environment) this is one rank of a DDP run, or of an
    FSDP run with fsdp=True (parallel.py).
    Returns {"iter_num", "train_loss", "val_loss", "best_val_loss", "elapsed_s", "out_dir"}; the losses
    are the last evaluation's (None if none ran). Raises ConfigError before training starts when the
    settings, data or teacher do not fit, NonFiniteLoss if the loss stops being finite and CheckpointError
    if a checkpoint cannot be written."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    check_device(cfg.device)
    if not ddp and (cfg.fsdp or cfg.teacher_fsdp):
        print("fsdp=True / teacher_fsdp=True shard over torchrun's ranks; this is one process, so nothing is sharded")
    # rank 0 holds out_dir (if it cannot, it stops, and torchrun ends the other ranks)
    master = int(os.environ.get("RANK", 0)) == 0
    # cleanup closes the progress bar on any error, before the error is printed
    with hold_out_dir(cfg.out_dir, cfg.init_from == "scratch", cfg.overwrite) if master else nullcontext(), \
            contextlib.ExitStack() as cleanup, reported_interrupts(cfg.out_dir), \
            parallel.process_group(cfg.device) if ddp else nullcontext(cfg.device) as device:
        return _train(cfg, device, ddp, cleanup)


@contextlib.contextmanager
def reported_interrupts(out_dir):
    """Ctrl-C (and SIGTERM, which the script turns into Ctrl-C) raises Interrupted, saying what out_dir keeps:
    the iteration its ckpt.pt holds (read lazily: mmap), or none."""
    try:
        yield
    except KeyboardInterrupt as e:
        path = os.path.join(out_dir, "ckpt.pt")
        if not os.path.isfile(path):
            kept = "no checkpoint was written, so the run is lost"
        else:
            iter_num = read_checkpoint(path, mmap=True)["iter_num"]
            kept = f"{path} keeps iter {iter_num} (continue with --init_from=resume); the iterations after it are lost"
        raise Interrupted(f"stopped by {e.args[0] if e.args else 'Ctrl-C'}; {kept}") from None


def _train(cfg, device, ddp, cleanup):
    """The training loop: set up, then every eval_interval evaluate and checkpoint, every iteration one
    optimizer step, every log_interval a metrics row."""
    run = set_up(cfg, device, ddp)
    start_iter = run.iter_num
    run.t_start = run.t_row = time.time()
    pbar = cleanup.enter_context(tqdm(total=cfg.max_iters, initial=run.iter_num, disable=not run.master,
                                      dynamic_ncols=True))
    while True:
        if run.iter_num % cfg.eval_interval == 0 or run.iter_num == cfg.max_iters:
            evaluate_and_checkpoint(run, pbar)
        if run.iter_num >= cfg.max_iters:
            break
        lr, grad_norm, x = optimizer_step(run)
        if run.iter_num % cfg.log_interval == 0:
            log_step(run, lr, grad_norm, x, pbar)
        run.iter_num += 1
        pbar.update()
    pbar.close()
    return finish(run, start_iter)


@dataclass
class Run:
    """What the steps of one training run share: set_up makes it, _train's loop moves it on."""
    cfg: TrainConfig
    device: str  # this rank's
    ddp: bool  # one rank of a torchrun launch (DDP, or FSDP with cfg.fsdp)
    rank: int
    world: int
    accum: int  # micro-steps per iteration on this rank
    data_dir: str
    meta: dict  # the data's meta.json; None: GPT-2 BPE data without one
    sampler: object  # the training batches': a torch.Generator (random windows) or an EpochSampler
    model: GPT  # the student (its shards under FSDP): the optimizer's parameters, checkpoints, statistics
    compiled: torch.nn.Module  # model, compiled if cfg.compile: what evaluations run
    runner: torch.nn.Module  # compiled, in DDP under DDP: what training steps run
    teacher: torch.nn.Module  # None without one
    optimizer: torch.optim.Optimizer
    ctx: object  # bf16 autocast, or nullcontext (parallel.set_up)
    iter_num: int = 0
    best_val_loss: float = float("inf")
    # (iter, tensor of (loss, ce, kd, soft_ce)) since the last row, read in one go: no sync per iteration
    pending: list = dataclasses.field(default_factory=list)
    saved_iter: int = None  # the iteration of this run's last checkpoint
    last_eval: dict = dataclasses.field(default_factory=lambda: {"train_loss": None, "val_loss": None})
    # wall seconds outside the training steps, so the log says what training alone costs. Each timer starts
    # after check_pending(), whose sync waits for the queued training work (CUDA) and counts as training.
    spent: dict = dataclasses.field(default_factory=lambda: {"eval": 0.0, "log": 0.0})
    t_start: float = 0.0
    t_row: float = 0.0  # when the time of the next metrics row began
    spent_at_row: float = 0.0  # sum(spent) then

    @property
    def master(self):
        return self.rank == 0

    @property
    def fsdp(self):
        return self.ddp and self.cfg.fsdp

    @property
    def vocab(self):
        return vocab_of(self.meta)  # the tokenizer's; the model's may be padded

    @property
    def ckpt_path(self):
        return os.path.join(self.cfg.out_dir, "ckpt.pt")

    @property
    def best_path(self):
        return os.path.join(self.cfg.out_dir, "best.pt")

    @property
    def metrics_path(self):
        return os.path.join(self.cfg.out_dir, "metrics.jsonl")


# --------------------------------------------------------------------------------------------------
# set-up: data, student, teacher, optimizer, and a resumed run's state


def set_up(cfg, device, ddp):
    """The Run, ready for its first iteration: the data found (the default dataset prepared on a first run),
    the student built or read from ckpt.pt, placed, sharded and wrapped with its teacher (parallel.set_up),
    its optimizer, a resumed run's state, and metrics.jsonl begun."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    if cfg.gradient_accumulation_steps % world:
        raise ConfigError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a "
                          f"multiple of the {world} DDP ranks")
    if rank == 0:
        prepare_default_data(cfg.dataset, cfg.data_dir)
    if ddp:
        dist.barrier()  # the other ranks wait for the data
    data_dir, meta = find_data(cfg.data_dir, cfg.dataset, cfg.block_size)
    vocab_size = meta["vocab_size"] if meta is not None else 50304  # the model's: GPT-2's padded, as in nanoGPT

    # the same initial weights on every rank: FSDP shards each rank's own, it does not broadcast rank 0's as
    # DDP does (test_fsdp checks that the ranks start equal)
    torch.manual_seed(cfg.seed)
    if cfg.sampling == "epoch":  # one shuffled order for all ranks, each rank its part
        sampler = EpochSampler(len(read_tokens(data_dir, "train", meta)), cfg.block_size, cfg.seed, rank, world)
    else:
        sampler = torch.Generator().manual_seed(cfg.seed + rank)  # training batches, a different stream per rank
    ckpt = read_resumed(cfg, meta, vocab_size, data_dir, world) if cfg.init_from == "resume" else None
    if ckpt is not None:
        model = GPT(GPTConfig(**{**ckpt["model_args"], "fused": cfg.fused}))
        model.load_state_dict(ckpt["model"])
    else:
        model = GPT(cfg.gpt_config(vocab_size))
    if ddp:
        torch.manual_seed(cfg.seed + rank)  # a different dropout stream on every rank
    one_thread = cpu_threads(model, device)
    teacher, compiled, runner, ctx = parallel.set_up(model, cfg, device, ddp, meta)
    # after sharding: FSDP's optimizer holds the shards
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2))
    run = Run(cfg, device, ddp, rank, world, cfg.gradient_accumulation_steps // world, data_dir, meta, sampler,
              model, compiled, runner, teacher, optimizer, ctx)
    if ckpt is not None:
        resume_state(run, ckpt)
    if run.master:
        begin_metrics(run, one_thread)
    return run


def read_resumed(cfg, meta, vocab_size, data_dir, world):
    """The checkpoint init_from="resume" continues, out_dir/ckpt.pt, once it is known to be this run's."""
    ckpt_path, best_path = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir, "best.pt")
    if not os.path.isfile(ckpt_path):
        hint = f"; {best_path} is there: copy it to {ckpt_path} to resume from its iteration"
        raise ConfigError(f"init_from='resume' but there is no {ckpt_path}{hint if os.path.isfile(best_path) else ''}")
    ckpt = read_checkpoint(ckpt_path)
    check_resume(cfg, ckpt, ckpt_path, meta, vocab_size, data_dir)
    if len(ckpt["rng"]) != world:
        raise ConfigError(f"{ckpt_path} was written by {len(ckpt['rng'])} DDP ranks; resume it on as many, not {world}")
    return ckpt


def resume_state(run, ckpt):
    """The resumed run continues as if never stopped: AdamW's state, this rank's random states (batches,
    dropout), the iteration, the best val loss and the losses logged in no row yet."""
    parallel.load_optimizer_state(run.model, run.optimizer, ckpt["optimizer"])
    rng = ckpt["rng"][run.rank]
    run.sampler.set_state(rng["sampler"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and run.device.startswith("cuda"):
        torch.cuda.set_rng_state(rng["cuda"])
    run.iter_num, run.best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
    # the checkpoint's pending losses, so the first row after it averages what it would have
    run.pending = [(it, torch.tensor(values, device=run.device)) for it, values in ckpt.get("pending", [])]


def begin_metrics(run, one_thread):
    """Rank 0: metrics.jsonl as the run starts it (what a resumed run logged after its checkpoint is
    logged again, as an uninterrupted run would), and the size of the run."""
    cfg, rows = run.cfg, []
    if cfg.init_from == "resume" and os.path.isfile(run.metrics_path):
        rows = [row for row in read_jsonl(run.metrics_path) if row["iter"] < run.iter_num]
    else:
        for path in (run.ckpt_path, run.best_path):  # a fresh run (overwrite=True): nothing of the old one stays
            if os.path.exists(path):
                os.remove(path)
    with open(run.metrics_path + ".tmp", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(run.metrics_path + ".tmp", run.metrics_path)
    print(f"{run.model.get_num_params() / 1e6:.2f}M parameters, "
          f"{run.accum * run.world * cfg.batch_size * cfg.block_size:,} tokens per iteration "
          f"({run.accum} micro-steps x {run.world} ranks x {cfg.batch_size} x {cfg.block_size})")
    if one_thread:
        print("cpu: one thread for this small model (set OMP_NUM_THREADS to choose)")


# --------------------------------------------------------------------------------------------------
# the steps of the loop


def evaluate_and_checkpoint(run, pbar):
    """estimate_loss on both splits, logged and printed, then the checkpoints: best.pt when the val loss
    improves, ckpt.pt then, at every evaluation with always_save_checkpoint, and after the last iter. Every
    rank takes the same decisions; never after a non-finite loss."""
    cfg = run.cfg
    # never save a checkpoint after a non-finite loss
    pending_values = [(it, v) for (it, _), v in zip(run.pending, check_pending(run))] if run.pending else []
    t_eval = time.time()
    # under FSDP every rank takes part in every forward (the gathers are collective): all evaluate
    losses = [estimate_loss(run.compiled, cfg, run.data_dir, run.device, run.ctx) if run.master or run.fsdp else None]
    if run.ddp:
        dist.broadcast_object_list(losses, src=0)  # every rank takes the same decisions below
    losses = losses[0]
    if not math.isfinite(losses["val"] + losses["train"]):
        stop(run, "evaluation loss", losses["val"] + losses["train"], run.iter_num)
    run.last_eval = {"train_loss": losses["train"], "val_loss": losses["val"]}
    ppl = math.exp(losses["val"]) if losses["val"] < 700 else float("inf")  # exp overflows past 709
    write_row(run, {"iter": run.iter_num, "train_loss": losses["train"], "val_loss": losses["val"], "val_ppl": ppl,
                    "time_s": t_eval - run.t_start, "eval_s": time.time() - t_eval})
    if run.master:
        pbar.write(f"iter {run.iter_num}: train CE {losses['train']:.4f}, val CE {losses['val']:.4f}, val ppl {ppl:.2f}")
    best = losses["val"] < run.best_val_loss
    run.best_val_loss = min(run.best_val_loss, losses["val"])
    if best or cfg.always_save_checkpoint or run.iter_num == cfg.max_iters:
        write_checkpoints(run, losses["val"], best, pending_values)
    run.spent["eval"] += time.time() - t_eval  # checkpoints included


def write_checkpoints(run, val_loss, best, pending_values):
    """ckpt.pt, and best.pt if best, of the run as it is now (under FSDP gathered by all ranks, written by rank 0)."""
    rng = rng_states(run.sampler, run.device.split(":")[0], run.ddp)
    model_state, optimizer_state = parallel.full_state(run.model, run.optimizer)  # under FSDP: on rank 0
    if run.master:
        # val_loss is these weights' own; best_val_loss the run's lowest so far, for a resume
        ckpt = {"model": model_state, "optimizer": optimizer_state,
                "model_args": dataclasses.asdict(run.model.config), "config": dataclasses.asdict(run.cfg),
                "iter_num": run.iter_num, "val_loss": val_loss, "best_val_loss": run.best_val_loss,
                "meta": run.meta, "rng": rng, "pending": pending_values}
        # best.pt first: stopped between the two, ckpt.pt is the earlier one, whose best_val_loss
        # makes the resumed run write this best.pt again when it gets here
        if best:
            save_checkpoint(ckpt, run.best_path)
        save_checkpoint(ckpt, run.ckpt_path)
    run.saved_iter = run.iter_num


def optimizer_step(run):
    """One iteration: accum micro-steps of forward and backward, gradient clipping, AdamW's step and Eq. 9's
    alpha_ma update; its losses join run.pending. Returns (lr, grad_norm, the last micro-batch's inputs)."""
    cfg = run.cfg
    lr = get_lr(cfg, run.iter_num)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros(4, device=run.device)
    for micro_step in range(run.accum):
        x, y = get_batch(run.data_dir, "train", cfg.batch_size, cfg.block_size, run.sampler, run.device, run.meta)
        # DDP all-reduces on the last micro-step only. FSDP reduce-scatters after every micro-step (its
        # default): skipping that would keep an unsharded fp32 gradient of the whole model on every rank
        # (4 B/param, 13 GB at 3B), and the reduce-scatter overlaps with the backward of the next layers.
        if run.ddp and not run.fsdp:
            run.runner.require_backward_grad_sync = micro_step == run.accum - 1
        with run.ctx:
            loss, ce, kd, soft_ce = forward_loss(run.runner, run.teacher, x, y, cfg, run.vocab)
        (loss / run.accum).backward()  # the iteration's loss: the mean of its micro-steps' (see forward_loss)
        total += torch.stack([loss, ce, kd, soft_ce]).detach().float() / run.accum
    grad_norm = parallel.full_norm(torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip or float("inf")))
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.model.update_alpha_ma(run.ddp)
    run.pending.append((run.iter_num, total))
    return lr, grad_norm, x


def log_step(run, lr, grad_norm, x, pbar):
    """The metrics row of the iterations since the previous one, and their losses on the progress bar."""
    values = check_pending(run)
    t_log = time.time()
    train_s = t_log - run.t_row - (sum(run.spent.values()) - run.spent_at_row)
    row = metrics_row(run, lr, grad_norm, values, train_s)
    if (run.master or run.fsdp) and run.iter_num % run.cfg.stats_interval < run.cfg.log_interval:
        with run.ctx, parallel.root_gathered(run.model):  # FSDP: a forward on all ranks
            row.update(attention_stats(run.model, x))
    write_row(run, row)
    # each loss by its name: when distilling, the loss minimised is (mostly) kd, and ce is what evaluations print
    shown = {"kd": f"{row['kd']:.4f}"} if run.teacher is not None else {}
    shown.update(ce=f"{row['ce']:.4f}", tok_s=f"{row['tokens_per_s']:,.0f}")
    pbar.set_postfix(shown, refresh=False)  # a dict keeps this order (keywords would be sorted)
    run.pending.clear()
    run.spent["log"] += time.time() - t_log
    run.t_row, run.spent_at_row = time.time(), sum(run.spent.values())


def metrics_row(run, lr, grad_norm, values, train_s):
    """The log row: the means of the pending iterations' losses, and the speed of training alone (train_s)."""
    cfg = run.cfg
    mean = [sum(v) / len(values) for v in zip(*values)]
    row = {"iter": run.iter_num, "lr": lr, "loss": mean[0], "ce": mean[1]}
    if run.teacher is not None:
        row["kd"] = mean[2]
        if not cfg.kd_reverse:
            row["soft_ce"] = mean[3]
    if cfg.sampling == "epoch":
        row["epoch"] = run.sampler.epochs_done()
    row.update(grad_norm=grad_norm.item(), dt_ms=1e3 * train_s / len(values),
               tokens_per_s=len(values) * run.accum * run.world * cfg.batch_size * cfg.block_size / train_s)
    return row


def write_row(run, row):
    if run.master:
        with open(run.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")


def check_pending(run):
    """The pending losses, as floats averaged over ranks; stops on a non-finite one, on every rank."""
    values = torch.stack([v for _, v in run.pending])
    if run.ddp:
        dist.all_reduce(values)  # a NaN anywhere reaches every rank, so all of them stop together
        values /= run.world
    values = values.tolist()
    for (it, _), (loss, *_) in zip(run.pending, values):
        if not math.isfinite(loss):
            stop(run, "loss", loss, it)
    return values


def stop(run, what, value, it):
    kept = f"{run.ckpt_path} is the last good checkpoint (iter {run.saved_iter})" if run.saved_iter is not None \
        else "no checkpoint was written in this run"
    raise NonFiniteLoss(f"non-finite {what} {value} at iter {it}; stopped, {kept}")


def finish(run, start_iter):
    """Says how long the run took, where the time went and where its files are; returns train's result."""
    elapsed = time.time() - run.t_start
    if run.master and run.iter_num > start_iter:
        n = run.iter_num - start_iter
        total, ev, lg = (1e3 * t / n for t in (elapsed, run.spent["eval"], run.spent["log"]))
        print(f"{n} iters in {datetime.timedelta(seconds=round(elapsed))} (h:mm:ss), {total:.1f} ms/iter: "
              f"{total - ev - lg:.1f} train, {ev:.1f} eval (with checkpoints), {lg:.1f} logging")
        best_kept = f", {run.best_path} (the lowest val CE, {run.best_val_loss:.4f})" if os.path.exists(run.best_path) else ""
        print(f"checkpoints: {run.ckpt_path} (iter {run.saved_iter}){best_kept}; metrics: {run.metrics_path}")
    return {"iter_num": run.iter_num, **run.last_eval, "best_val_loss": run.best_val_loss,
            "elapsed_s": elapsed, **{f"{k}_s": v for k, v in run.spent.items()}, "out_dir": run.cfg.out_dir}


def terminated(signum, frame):
    raise KeyboardInterrupt("SIGTERM")  # stops the same way as Ctrl-C


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, terminated)
    try:
        train(load_config(sys.argv[1:], TrainConfig))
    except (ConfigError, NonFiniteLoss, CheckpointError, Interrupted) as e:
        sys.exit(f"{type(e).__name__}: {e}")
    except KeyboardInterrupt:  # while reading the settings, before training started
        sys.exit("Interrupted: stopped before training started")
