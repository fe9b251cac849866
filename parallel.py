"""
Training beyond one GPU, in one place: how train.py spreads a run over torchrun's ranks.

  DDP (the default)  every rank holds the whole student, its gradients and AdamW state, and the teacher;
                     the gradients are all-reduced. Fastest while all of it fits on one GPU.
  FSDP (fsdp=True)   PyTorch's FSDP2 (torch.distributed.fsdp.fully_shard): each rank keeps 1/N of every
                     parameter, gradient and AdamW state; a Block's parameters are all-gathered for its
                     forward and backward only, its gradients reduce-scattered back to the shards.
  teacher_fsdp=True  the frozen teacher sharded the same way, forward only.

train.py calls process_group (one rank's device and process group) and set_up (the student and teacher
placed, sharded, compiled and wrapped for the run) and nothing else to set any of it up. Also here:
activation checkpointing per Block, the full checkpoint gathered on rank 0, and the memory per GPU of the
paper's configs, which `python parallel.py` prints (docs/distributed.md has the table).
"""

import functools
import inspect
import os
import sys
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint

from checkpoint import load_teacher
from configurator import ConfigError
from model import GPT, GPTConfig

# every rank gets the whole state, on the CPU (other ranks get {} where only rank 0 writes)
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@contextmanager
def process_group(device):
    """One rank of a torchrun launch, inside the with statement: its device (cuda:LOCAL_RANK on CUDA, as
    device says) with the process group set up (NCCL on CUDA, gloo elsewhere) and destroyed at the end."""
    if device.startswith("cuda"):
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    own_group = not dist.is_initialized()  # a caller's process group (several runs in one launch) is used as it is
    if own_group:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        yield device
    finally:
        if own_group:
            dist.destroy_process_group()


def set_up(model, cfg, device, ddp, meta):
    """(teacher, compiled, runner, ctx) for training model, a GPT on the CPU, as TrainConfig cfg says:
    model moved to device, with activation checkpointing and under FSDP sharded (in place); the teacher
    (None without one) loaded for the data meta describes, whole or sharded; compiled, model compiled if
    cfg.compile, which evaluations run; runner, which training runs: compiled, wrapped in DDP under DDP;
    ctx, the bf16 autocast on CUDA (nullcontext under FSDP, whose mixed precision casts instead, and on
    CPU and MPS). ddp: whether this is one rank of a torchrun launch (process_group)."""
    fsdp = ddp and cfg.fsdp
    device_type = device.split(":")[0]
    if cfg.activation_checkpointing:
        checkpoint_blocks(model)
    model.to(device)
    mp_policy = mixed_precision(device, cfg.dtype)
    if fsdp:
        shard(model, mp_policy)
    teacher = None
    if cfg.loss == "kd":
        shard_teacher = ddp and cfg.teacher_fsdp
        teacher = load_teacher(cfg.teacher, device, meta, cfg.block_size, cfg.compile and not shard_teacher)
        if shard_teacher or fsdp:
            teacher = prepare_teacher(teacher, shard_teacher, mp_policy, cfg.compile)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    use_bf16 = device_type == "cuda" and cfg.dtype == "bfloat16"
    if use_bf16 and not torch.cuda.is_bf16_supported():
        raise ConfigError("dtype='bfloat16' but this GPU has no bfloat16; allowed here: float32")
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
    return teacher, compiled, runner, ctx


def mixed_precision(device, dtype):
    """FSDP's mixed precision, which replaces autocast under FSDP (as in torchtitan): on CUDA with
    dtype="bfloat16" the gathered parameters and so the whole forward and backward are bf16 (the residual
    stream too, where autocast keeps it fp32), while the shards, AdamW and the gradient reduction stay fp32.
    CPU, MPS and dtype="float32" compute in fp32."""
    if device.startswith("cuda") and dtype == "bfloat16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def decoder_layers(model):
    """The repeated layers of a student or teacher: our Blocks, or a Hugging Face decoder's layers."""
    if isinstance(model, GPT):
        return model.transformer.h
    body = model.body  # pretrained.HFTeacher
    return body.layers if hasattr(body, "layers") else body.h  # LLaMA / Qwen2, GPT-2


def shard(model, mp_policy):
    """fully_shard every decoder layer, then the root, which takes the rest: the embeddings, the final norm
    and lm_head (tied to the embedding, both stay in one group, as they must). The root keeps its
    parameters gathered from its forward to its backward, because the loss applies lm_head outside the
    forward (train.forward_loss, chunk by chunk)."""
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp_policy)
    fully_shard(model, mp_policy=mp_policy, reshard_after_forward=False)
    return model


def prepare_teacher(teacher, sharded, mp_policy, compile):
    """The frozen teacher of an FSDP run, or a sharded one (teacher_fsdp, for the 8B teacher of the 3B run):
    sharded like the student (then compiled, if compile), or else kept whole and cast to the compute dtype,
    as FSDP's mixed precision replaces autocast (a Hugging Face teacher is bf16 on CUDA already)."""
    if sharded:
        shard(teacher, mp_policy)
        return torch.compile(teacher) if compile else teacher
    return teacher.to(mp_policy.param_dtype) if mp_policy.param_dtype is not None else teacher


@contextmanager
def root_gathered(model):
    """The root's parameters (embeddings, final norm, lm_head) gathered inside the with statement, for code
    that calls parts of the model outside its forward (the attention statistics); each Block gathers its own."""
    if not isinstance(model, FSDPModule):
        yield
        return
    model.unshard()
    try:
        yield
    finally:
        model.reshard()


def checkpoint_blocks(model):
    """Activation checkpointing per Block: a training forward keeps only each Block's input, and the
    backward runs the Block's forward again (same dropout masks) to get the rest: activations shrink from
    about 30 n_embd values per token and layer to 1 (see activation_bytes), for about a third more compute.
    Applied before sharding, under FSDP the gathered parameters serve the recomputation too."""
    # torch.compile traces a checkpointed Block whose forward updates buffers (affine's alpha accumulators)
    # only if the recomputation does not replay that update, which is what Eq. 9 needs too
    torch._dynamo.config.skip_fwd_side_effects_in_bwd_under_checkpoint = True
    for block in decoder_layers(model):
        block.forward = functools.partial(_checkpointed, block, block.forward)


def _checkpointed(block, forward, x, rope=None, kv=None, record=None):
    if not torch.is_grad_enabled() or kv is not None or record is not None:  # generation, attention maps
        return forward(x, rope, kv, record)
    if torch.compiler.is_compiling():  # compiled, the recomputation does not replay the buffer updates
        return checkpoint(forward, x, rope, use_reentrant=False)
    return checkpoint(forward, x, rope, use_reentrant=False,
                      context_fn=lambda: (nullcontext(), alpha_sums_kept(block.attn)))


@contextmanager
def alpha_sums_kept(attn):
    """The recomputation is a training forward, which adds its batch mean of alpha to the affine layer's
    accumulators (Eq. 9's E) a second time: they are put back as the real forward left them."""
    kept = (attn.alpha_sum, attn.alpha_count) if attn.affine else None
    try:
        yield
    finally:
        if kept is not None:
            attn.alpha_sum, attn.alpha_count = kept


def full_norm(grad_norm):
    """clip_grad_norm_'s result as a plain tensor: under FSDP it is a DTensor of the norm over all shards."""
    return grad_norm.full_tensor() if isinstance(grad_norm, DTensor) else grad_norm


def full_state(model, optimizer):
    """(model state, optimizer state) of the whole run, on the CPU, for a checkpoint. Under FSDP every
    rank must call it (the shards are gathered) and only rank 0 gets them, the others {}. The optimizer
    state is keyed by parameter names ("transformer.h.0.attn.c_attn.weight"), not by position, so it loads
    into the model wrapped or not, sharded over any number of ranks or in one process."""
    fresh = not optimizer.state
    model_state = get_model_state_dict(model, options=FULL)  # first: it leaves FSDP's parameters sharded, the
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=FULL)  # ones the optimizer holds
    if fresh:  # before the first step get_optimizer_state_dict makes the state by a step of zero gradients at
        # learning rate 0: zero moments, as AdamW's first step makes them, but step = 1; back to 0, or the first
        # real step would be AdamW's second (its bias correction shifted)
        for state in (*optimizer.state.values(), *optimizer_state.get("state", {}).values()):
            state["step"].zero_()
    return model_state, optimizer_state


def load_optimizer_state(model, optimizer, state):
    """Loads full_state's optimizer state into optimizer, which holds model's parameters, sharded or not.
    A checkpoint written before the states were keyed by names has positions 0, 1, ...: those load into
    the same unsharded model only."""
    if not isinstance(state["param_groups"][0]["params"][0], int):
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    elif isinstance(model, FSDPModule):
        raise ConfigError("the checkpoint's AdamW state is keyed by position (written before they were keyed by "
                          "parameter names), which FSDP cannot map to its shards; resume it without fsdp")
    else:
        optimizer.load_state_dict(state)


# --------------------------------------------------------------------------------------------------
# memory per GPU

GB = 1e9
# the teachers of the configs, as their Hugging Face config.json files give them, and their tokenizers' sizes
# (the data's vocab_size, which the student's embedding gets)
LLAMA = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False)
TEACHERS = {
    "Qwen/Qwen1.5-1.8B": (dict(n_layer=24, n_head=16, n_embd=2048, mlp_hidden=5504, vocab_size=151936,
                               qkv_bias=True, tie_embeddings=False, **LLAMA), 151646),
    "meta-llama/Llama-3.2-3B": (dict(n_layer=28, n_head=24, n_kv_head=8, n_embd=3072, mlp_hidden=8192,
                                     vocab_size=128256, tie_embeddings=True, **LLAMA), 128256),
    "meta-llama/Llama-3.1-8B": (dict(n_layer=32, n_head=32, n_kv_head=8, n_embd=4096, mlp_hidden=14336,
                                     vocab_size=128256, tie_embeddings=False, **LLAMA), 128256),
    "HuggingFaceTB/SmolLM2-360M": (dict(n_layer=32, n_head=15, n_kv_head=5, n_embd=960, mlp_hidden=2560,
                                        vocab_size=49152, tie_embeddings=True, **LLAMA), 49152),
}
CONFIGS = ("config/kd_paper_qwen1.5_0.5b.py", "config/kd_paper_llama3.2_1b.py", "config/kd_paper_llama3.2_3b.py",
           "config/kd_fineweb_smollm2.py")


def param_groups(config):
    """(all parameters, the root's: embeddings, final norm and lm_head, one Block's) of a GPTConfig,
    counted on the meta device."""
    with torch.device("meta"):
        model = GPT(config)
    total = sum(p.numel() for p in model.parameters())
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    return total, total - config.n_layer * block, block


def activation_bytes(config, batch_size, checkpointed):
    """Bytes autograd keeps for the backward of one micro-batch of batch_size x block_size tokens of a
    LLaMA-block student in bf16 with the fused attention. A Block saves, per token,
      softmax  13 C + 3 C_kv + 4 H + 3 nh   values of 2 bytes
      affine   15 C + 3 C_kv + 4 H + 6 nh   (alpha, beta and the running sum of V besides)
    (C = n_embd, C_kv = key/value width, H = mlp_hidden, nh = n_head; counted on CPU by test_fsdp), times
    n_layer. With activation checkpointing each Block keeps its input (C per token) and one Block's full
    set exists again during its backward. The final hidden states (C per token) wait for the loss."""
    c = config
    if (c.pos, c.norm, c.mlp) != ("rope", "rmsnorm", "swiglu") or c.attn not in ("softmax", "affine"):
        raise ValueError(f"activation_bytes counts the LLaMA block with softmax or affine attention, not "
                         f"pos={c.pos}, norm={c.norm}, mlp={c.mlp}, attn={c.attn}")
    C, C_kv, H, nh = c.n_embd, c.n_embd // c.n_head * c.n_kv_head, c.mlp_hidden, c.n_head
    block = (15 * C + 6 * nh if c.attn == "affine" else 13 * C + 3 * nh) + 3 * C_kv + 4 * H
    per_token = (c.n_layer * C + block) if checkpointed else c.n_layer * block
    return 2 * batch_size * c.block_size * (per_token + C)


def memory_per_gpu(cfg, vocab_size, teacher_shape, n_gpus=8, sharded=True, checkpointed=False):
    """Estimated GB per GPU of a KD run of TrainConfig cfg on n_gpus, as a dict of weights, grads, adamw,
    teacher, activations, loss and total. DDP (sharded=False): fp32 weights (4 B/param), fp32 gradients
    twice (4 B/param, and DDP's all-reduce buckets as much again), AdamW's two fp32 moments (8 B/param) and
    the whole bf16 teacher (2 B/param) on every GPU. FSDP (sharded=True, teacher_fsdp too): 1/n_gpus of
    each, plus what is gathered in bf16 at once: the root (embeddings, lm_head), which stays gathered over
    a micro-step, and two Blocks (the one computing and the next, prefetched), for student and teacher.
    activations: activation_bytes; loss: about six fp32 (loss_chunk, vocab) tensors at once (student and
    teacher logits, their log-softmaxes, the KL's terms). Leaves out the CUDA context, allocator slack and
    the teacher's forward, whose activations are freed layer by layer."""
    student = cfg.gpt_config(vocab_size)
    p, p_root, p_block = param_groups(student)
    t, t_root, t_block = param_groups(GPTConfig(**teacher_shape))
    n = n_gpus if sharded else 1
    gathered = 2 * (p_root + 2 * p_block) if sharded else 0
    mem = {"weights": 4 * p / n + gathered, "grads": 4 * p / n * (1 if sharded else 2), "adamw": 8 * p / n,
           "teacher": 2 * t / n + (2 * (t_root + 2 * t_block) if sharded else 0),
           "activations": activation_bytes(student, cfg.batch_size, checkpointed),
           "loss": 24 * min(cfg.loss_chunk or cfg.batch_size * cfg.block_size, cfg.batch_size * cfg.block_size) * vocab_size}
    mem = {k: v / GB for k, v in mem.items()}
    return {**mem, "total": sum(mem.values())}


def memory_table(n_gpus=8, repo=os.path.dirname(os.path.abspath(__file__))):
    """Markdown table of memory_per_gpu for CONFIGS: DDP, FSDP, FSDP with activation checkpointing."""
    from configurator import load_config
    from train import TrainConfig
    cols = ("weights", "grads", "adamw", "teacher", "activations", "loss", "total")
    lines = [f"| config (batch_size) | {n_gpus} GPUs | " + " | ".join(cols) + " |", "|---|---|" + "---:|" * len(cols)]
    for path in CONFIGS:
        cfg = load_config([os.path.join(repo, path)], TrainConfig)
        shape, vocab = TEACHERS[cfg.teacher]
        for how, sharded, ckpt in (("DDP", False, False), ("FSDP", True, False), ("FSDP, act. ckpt", True, True)):
            mem = memory_per_gpu(cfg, vocab, shape, n_gpus, sharded, ckpt)
            name = f"{os.path.basename(path)} ({cfg.batch_size})" if how == "DDP" else ""
            lines.append(f"| {name} | {how} | " + " | ".join(f"{mem[c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 2 or (len(sys.argv) == 2 and not sys.argv[1].isdigit()) or sys.argv[1:] == ["0"]:
        sys.exit(f"usage: python parallel.py [number of GPUs, default 8]; got {' '.join(sys.argv[1:])!r}")
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    print(f"Estimated memory per GPU in GB (1e9 bytes) on {n} GPUs, training in bf16 (parallel.memory_per_gpu):")
    print(memory_table(n))
