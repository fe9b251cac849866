# The paper's second run (section 5.1, appendix B.1): a student of LLaMA-3.2-1B's architecture, trained from
# scratch by pure KD (kd_alpha = 1) from meta-llama/Llama-3.2-3B on FineWeb-Edu tokenized with the teacher's
# tokenizer; sequence length 2048, global batch 1024 sequences, 9000 steps, lr 1e-3, weight decay 0.1, WSD with
# 100 warmup steps. The LLaMA models are gated on the hub: accept the license, then `huggingface-cli login`.
#   python data/fineweb_edu/prepare.py --tokenizer=meta-llama/Llama-3.2-3B --out_dir=data/fineweb_edu_llama3 \
#       --config=sample-100BT --num_tokens=19_000_000_000         # 76 GB of uint32 ids
#   torchrun --standalone --nproc_per_node=8 train.py config/kd_paper_llama3.2_1b.py
# An 80 GB GPU holds it under DDP (about 51 GB per GPU at batch_size=4: student weights, gradients and AdamW
# 20 B x 1.24B with DDP's buckets, teacher bf16 6.4 GB, activations 17 GB; `python parallel.py`, estimates);
# on 40 GB GPUs add --fsdp=True --teacher_fsdp=True (about 26 GB) or --activation_checkpointing=True.
# What it lacks is time: ~14 GFLOP per token, so about 8 days on one H100 at 40% MFU, one day on 8.
# Keep batch_size x gradient_accumulation_steps = 1024.
out_dir = "out-kd-paper-llama3.2-1b"
data_dir = "data/fineweb_edu_llama3"
loss, teacher, kd_alpha, kd_temperature = "kd", "meta-llama/Llama-3.2-3B", 1.0, 1.0
attn = "affine"
# LLaMA-3.2-1B (model.PAPER_SHAPES): 16 x 2048, 32 heads, 8 key/value heads, SwiGLU 8192, tied head. Its RoPE
# scaling only stretches positions beyond 8192, which a 2048-token student never sees, so it is left out.
n_layer, n_head, n_kv_head, n_embd, mlp_hidden = 16, 32, 8, 2048, 8192
pos, norm, mlp, bias, tie_embeddings = "rope", "rmsnorm", "swiglu", False, True
rope_theta, norm_eps = 500000.0, 1e-5
block_size = 2048
batch_size, gradient_accumulation_steps = 4, 256  # 1024 sequences per step, over all ranks
loss_chunk = 1024  # tokens of 128256-way logits at a time: 0.5 GB in fp32, not 4 GB for a micro-batch
learning_rate, min_lr, weight_decay = 1e-3, 1e-4, 0.1  # min_lr: the paper does not say
lr_schedule, warmup_iters, decay_frac = "wsd", 100, 0.2  # decay_frac: the paper does not say
max_iters = 9000
eval_interval, eval_iters, log_interval = 500, 20, 10
device, dtype, compile = "cuda", "bfloat16", True
