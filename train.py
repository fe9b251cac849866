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
import inspect
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
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

import parallel
from checkpoint import CheckpointError, hold_out_dir, load_teacher, read_checkpoint, read_jsonl, save_checkpoint
from configurator import ConfigError, check_choice, check_device, check_types, cpu_threads, load_config
from dataloader import EpochSampler, find_data, get_batch, prepare_default_data, read_meta, read_tokens, vocab_of
from tokenizer import describe_tokenizers, tokenizer_of
from model import GPT, GPTConfig

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
            contextlib.ExitStack() as cleanup, reported_interrupts(cfg.out_dir):
        if not ddp:
            return _train(cfg, cfg.device, ddp, cleanup)
        device = cfg.device
        if device.startswith("cuda"):
            device = f"cuda:{os.environ['LOCAL_RANK']}"
            torch.cuda.set_device(device)
        own_group = not dist.is_initialized()  # a caller's process group (several runs in one launch) is used as it is
        if own_group:
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        try:
            return _train(cfg, device, ddp, cleanup)
        finally:
            if own_group:
                dist.destroy_process_group()


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
    rank, world = (dist.get_rank(), dist.get_world_size()) if ddp else (0, 1)
    master = rank == 0
    device_type = device.split(":")[0]
    if cfg.gradient_accumulation_steps % world:
        raise ConfigError(f"gradient_accumulation_steps={cfg.gradient_accumulation_steps} must be a "
                          f"multiple of the {world} DDP ranks")
    accum = cfg.gradient_accumulation_steps // world
    if master:
        prepare_default_data(cfg.dataset, cfg.data_dir)
    if ddp:
        dist.barrier()  # the other ranks wait for the data
    data_dir, meta = find_data(cfg.data_dir, cfg.dataset, cfg.block_size)
    vocab = vocab_of(meta)  # the tokenizer's
    vocab_size = meta["vocab_size"] if meta is not None else 50304  # the model's: GPT-2's padded, as in nanoGPT

    fsdp = ddp and cfg.fsdp
    # the same initial weights on every rank: FSDP shards each rank's own, it does not broadcast rank 0's as
    # DDP does (test_fsdp checks that the ranks start equal)
    torch.manual_seed(cfg.seed)
    if cfg.sampling == "epoch":  # one shuffled order for all ranks, each rank its part
        sampler = EpochSampler(len(read_tokens(data_dir, "train", meta)), cfg.block_size, cfg.seed, rank, world)
    else:
        sampler = torch.Generator().manual_seed(cfg.seed + rank)  # training batches, a different stream per rank
    iter_num, best_val_loss = 0, float("inf")
    ckpt_path, best_path = os.path.join(cfg.out_dir, "ckpt.pt"), os.path.join(cfg.out_dir, "best.pt")
    if cfg.init_from == "resume":
        if not os.path.isfile(ckpt_path):
            hint = f"; {best_path} is there: copy it to {ckpt_path} to resume from its iteration"
            raise ConfigError(f"init_from='resume' but there is no {ckpt_path}{hint if os.path.isfile(best_path) else ''}")
        ckpt = read_checkpoint(ckpt_path)
        check_resume(cfg, ckpt, ckpt_path, meta, vocab_size, data_dir)
        if len(ckpt["rng"]) != world:
            raise ConfigError(f"{ckpt_path} was written by {len(ckpt['rng'])} DDP ranks; resume it on as many, not {world}")
        model = GPT(GPTConfig(**{**ckpt["model_args"], "fused": cfg.fused}))
        model.load_state_dict(ckpt["model"])
    else:
        model = GPT(cfg.gpt_config(vocab_size))
    if ddp:
        torch.manual_seed(cfg.seed + rank)  # a different dropout stream on every rank
    if cfg.activation_checkpointing:
        parallel.checkpoint_blocks(model)
    model.to(device)
    one_thread = cpu_threads(model, device)
    mp_policy = parallel.mixed_precision(device, cfg.dtype)
    if fsdp:
        parallel.shard(model, mp_policy)
    teacher = None
    if cfg.loss == "kd":
        shard_teacher = ddp and cfg.teacher_fsdp
        teacher = load_teacher(cfg.teacher, device, meta, cfg.block_size, cfg.compile and not shard_teacher)
        if shard_teacher or fsdp:
            teacher = parallel.prepare_teacher(teacher, shard_teacher, mp_policy, cfg.compile)

    # after sharding: FSDP's optimizer holds the shards
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.learning_rate, (cfg.beta1, cfg.beta2))
    if cfg.init_from == "resume":
        parallel.load_optimizer_state(model, optimizer, ckpt["optimizer"])
        rng = ckpt["rng"][rank]
        sampler.set_state(rng["sampler"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device_type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"])
        iter_num, best_val_loss = ckpt["iter_num"], ckpt["best_val_loss"]
        resumed_pending = ckpt.get("pending", [])
        del ckpt
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_bf16 = device_type == "cuda" and cfg.dtype == "bfloat16"
    if use_bf16 and not torch.cuda.is_bf16_supported():
        raise ConfigError("dtype='bfloat16' but this GPU has no bfloat16; allowed here: float32")
    # under FSDP its mixed precision policy casts instead (parallel.mixed_precision)
    ctx = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if use_bf16 and not fsdp else nullcontext()
    compiled = torch.compile(model) if cfg.compile else model
    # alpha_ma (Eq. 9) moves once per optimizer step, by the mean of alpha over the step's whole batch, all
    # micro-steps and ranks (model.update_alpha_ma). The ranks stay equal without DDP's broadcast of rank 0's
    # buffers before every forward, which is off: it would overwrite the other ranks' gathered means of alpha.
    # torch 2.13 calls that setting forward_sync_buffers (and warns about broadcast_buffers, its old name,
    # which also skipped the sync at set-up, where every rank's buffers are equal anyway).
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DDP).parameters else "broadcast_buffers"
    runner = DDP(compiled, device_ids=[torch.cuda.current_device()] if device_type == "cuda" else None,
                 **{no_sync: False}) if ddp and not fsdp else compiled

    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    if master:
        rows = []
        if cfg.init_from == "resume" and os.path.isfile(metrics_path):
            # what the interrupted run logged after its checkpoint is logged again, as an uninterrupted run would
            rows = [row for row in read_jsonl(metrics_path) if row["iter"] < iter_num]
        else:
            for path in (ckpt_path, best_path):  # a fresh run (overwrite=True): nothing of the old one stays
                if os.path.exists(path):
                    os.remove(path)
        with open(metrics_path + ".tmp", "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        os.replace(metrics_path + ".tmp", metrics_path)
        print(f"{model.get_num_params() / 1e6:.2f}M parameters, {accum * world * cfg.batch_size * cfg.block_size:,} "
              f"tokens per iteration ({accum} micro-steps x {world} ranks x {cfg.batch_size} x {cfg.block_size})")
        if one_thread:
            print("cpu: one thread for this small model (set OMP_NUM_THREADS to choose)")

    def log(row):
        if master:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    pending = []  # (iter, (loss, ce, kd, soft_ce)) since the last row, read in one go: no sync per iteration
    if cfg.init_from == "resume":  # the checkpoint's, so the first row after it averages what it would have
        pending = [(it, torch.tensor(values, device=device)) for it, values in resumed_pending]

    def check_pending():
        """The pending losses, as floats averaged over ranks; stops on a non-finite one, on every rank."""
        values = torch.stack([v for _, v in pending])
        if ddp:
            dist.all_reduce(values)  # a NaN anywhere reaches every rank, so all of them stop together
            values /= world
        values = values.tolist()
        for (it, _), (loss, *_) in zip(pending, values):
            if not math.isfinite(loss):
                stop("loss", loss, it)
        return values

    saved_iter = None

    def stop(what, value, it):
        kept = f"{ckpt_path} is the last good checkpoint (iter {saved_iter})" if saved_iter is not None \
            else "no checkpoint was written in this run"
        raise NonFiniteLoss(f"non-finite {what} {value} at iter {it}; stopped, {kept}")

    last_eval = {"train_loss": None, "val_loss": None}
    # wall seconds outside the training steps, so the log says what training alone costs. Each timer starts
    # after check_pending(), whose sync waits for the queued training work (CUDA) and counts as training.
    spent = {"eval": 0.0, "log": 0.0}
    start_iter, t_start = iter_num, time.time()
    t_row, spent_at_row = t_start, 0.0
    pbar = cleanup.enter_context(tqdm(total=cfg.max_iters, initial=iter_num, disable=not master, dynamic_ncols=True))
    while True:
        if iter_num % cfg.eval_interval == 0 or iter_num == cfg.max_iters:
            # never save a checkpoint after a non-finite loss
            pending_values = [(it, v) for (it, _), v in zip(pending, check_pending())] if pending else []
            t_eval = time.time()
            # under FSDP every rank takes part in every forward (the gathers are collective): all evaluate
            losses = [estimate_loss(compiled, cfg, data_dir, device, ctx) if master or fsdp else None]
            if ddp:
                dist.broadcast_object_list(losses, src=0)  # every rank takes the same decisions below
            losses = losses[0]
            if not math.isfinite(losses["val"] + losses["train"]):
                stop("evaluation loss", losses["val"] + losses["train"], iter_num)
            last_eval = {"train_loss": losses["train"], "val_loss": losses["val"]}
            ppl = math.exp(losses["val"]) if losses["val"] < 700 else float("inf")  # exp overflows past 709
            log({"iter": iter_num, "train_loss": losses["train"], "val_loss": losses["val"], "val_ppl": ppl,
                 "time_s": t_eval - t_start, "eval_s": time.time() - t_eval})
            if master:
                pbar.write(f"iter {iter_num}: train CE {losses['train']:.4f}, val CE {losses['val']:.4f}, val ppl {ppl:.2f}")
            best = losses["val"] < best_val_loss
            best_val_loss = min(best_val_loss, losses["val"])
            if best or cfg.always_save_checkpoint or iter_num == cfg.max_iters:
                rng = rng_states(sampler, device_type, ddp)
                model_state, optimizer_state = parallel.full_state(model, optimizer)  # under FSDP: on rank 0
                if master:
                    # val_loss is these weights' own; best_val_loss the run's lowest so far, for a resume
                    ckpt = {"model": model_state, "optimizer": optimizer_state,
                            "model_args": dataclasses.asdict(model.config), "config": dataclasses.asdict(cfg),
                            "iter_num": iter_num, "val_loss": losses["val"], "best_val_loss": best_val_loss,
                            "meta": meta, "rng": rng, "pending": pending_values}
                    # best.pt first: stopped between the two, ckpt.pt is the earlier one, whose best_val_loss
                    # makes the resumed run write this best.pt again when it gets here
                    if best:
                        save_checkpoint(ckpt, best_path)
                    save_checkpoint(ckpt, ckpt_path)
                saved_iter = iter_num
            spent["eval"] += time.time() - t_eval  # checkpoints included
        if iter_num >= cfg.max_iters:
            break

        lr = get_lr(cfg, iter_num)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros(4, device=device)
        for micro_step in range(accum):
            x, y = get_batch(data_dir, "train", cfg.batch_size, cfg.block_size, sampler, device, meta)
            # DDP all-reduces on the last micro-step only. FSDP reduce-scatters after every micro-step (its
            # default): skipping that would keep an unsharded fp32 gradient of the whole model on every rank
            # (4 B/param, 13 GB at 3B), and the reduce-scatter overlaps with the backward of the next layers.
            if ddp and not fsdp:
                runner.require_backward_grad_sync = micro_step == accum - 1
            with ctx:
                loss, ce, kd, soft_ce = forward_loss(runner, teacher, x, y, cfg, vocab)
            (loss / accum).backward()  # the iteration's loss: the mean of its micro-steps' (see forward_loss)
            total += torch.stack([loss, ce, kd, soft_ce]).detach().float() / accum
        grad_norm = parallel.full_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf")))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_alpha_ma(ddp)
        pending.append((iter_num, total))

        if iter_num % cfg.log_interval == 0:
            values = check_pending()
            t_log = time.time()
            train_s = t_log - t_row - (sum(spent.values()) - spent_at_row)
            mean = [sum(v) / len(values) for v in zip(*values)]
            row = {"iter": iter_num, "lr": lr, "loss": mean[0], "ce": mean[1]}
            if teacher is not None:
                row["kd"] = mean[2]
                if not cfg.kd_reverse:
                    row["soft_ce"] = mean[3]
            if cfg.sampling == "epoch":
                row["epoch"] = sampler.epochs_done()
            row.update(grad_norm=grad_norm.item(), dt_ms=1e3 * train_s / len(values),
                       tokens_per_s=len(values) * accum * world * cfg.batch_size * cfg.block_size / train_s)
            if (master or fsdp) and iter_num % cfg.stats_interval < cfg.log_interval:  # FSDP: a forward on all ranks
                with ctx, parallel.root_gathered(model):
                    row.update(attention_stats(model, x))
            log(row)
            # each loss by its name: when distilling, the loss minimised is (mostly) kd, and ce is what evaluations print
            shown = {"kd": f"{mean[2]:.4f}"} if teacher is not None else {}
            shown.update(ce=f"{mean[1]:.4f}", tok_s=f"{row['tokens_per_s']:,.0f}")
            pbar.set_postfix(shown, refresh=False)  # a dict keeps this order (keywords would be sorted)
            pending.clear()
            spent["log"] += time.time() - t_log
            t_row, spent_at_row = time.time(), sum(spent.values())
        iter_num += 1
        pbar.update()
    pbar.close()
    elapsed = time.time() - t_start
    if master and iter_num > start_iter:
        total, ev, lg = (1e3 * t / (iter_num - start_iter) for t in (elapsed, spent["eval"], spent["log"]))
        print(f"{iter_num - start_iter} iters in {datetime.timedelta(seconds=round(elapsed))} (h:mm:ss), {total:.1f} ms/iter: "
              f"{total - ev - lg:.1f} train, {ev:.1f} eval (with checkpoints), {lg:.1f} logging")
        best_kept = f", {best_path} (the lowest val CE, {best_val_loss:.4f})" if os.path.exists(best_path) else ""
        print(f"checkpoints: {ckpt_path} (iter {saved_iter}){best_kept}; metrics: {metrics_path}")
    return {"iter_num": iter_num, **last_eval, "best_val_loss": best_val_loss,
            "elapsed_s": elapsed, **{f"{k}_s": v for k, v in spent.items()}, "out_dir": cfg.out_dir}


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
