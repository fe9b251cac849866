# The paper's second run (section 5.1, appendix B.1): a student of LLaMA-3.2-1B's architecture, trained from
# scratch by pure KD (kd_alpha = 1) from meta-llama/Llama-3.2-3B on FineWeb-Edu tokenized with the teacher's
# tokenizer; sequence length 2048, global batch 1024 sequences, 1 epoch of 9000 steps, lr 1e-3, weight decay 0.1,
# WSD with 100 warmup steps. The LLaMA models are gated on the hub: accept the license, then `huggingface-cli login`.
# Tokens: the paper says 20B, but its 9000 steps x 1024 sequences x 2048 tokens are 18.87B. The command below
# prepares exactly one epoch of that: 9,216,000 windows of 2048 tokens (+1, the last target) in train.bin
# after the 1M tokens of val.bin, 75.5 GB of uint32 ids; sampling="epoch" visits each window once.
#   python data/fineweb_edu/prepare.py --tokenizer=meta-llama/Llama-3.2-3B --out_dir=data/fineweb_edu_llama3 \
#       --config=sample-100BT --num_tokens=18_875_368_001
#   torchrun --standalone --nproc_per_node=8 train.py config/kd_paper_llama3.2_1b.py
# An 80 GB GPU holds it under DDP (about 51 GB per GPU at batch_size=4: student weights, gradients and AdamW
# 20 B x 1.24B with DDP's buckets, teacher bf16 6.4 GB, activations 17 GB; `python parallel.py`, estimates);
# on 40 GB GPUs add --fsdp=True --teacher_fsdp=True (about 26 GB) or --activation_checkpointing=True.
# What it lacks is time: ~14 GFLOP per token, so about 8 days on one H100 at 40% MFU, one day on 8.
# Keep batch_size x gradient_accumulation_steps = 1024.
import model

out_dir = "out-kd-paper-llama3.2-1b"
data_dir = "data/fineweb_edu_llama3"
sampling = "epoch"
loss, teacher, kd_alpha, kd_temperature = "kd", "meta-llama/Llama-3.2-3B", 1.0, 1.0
attn = "affine"
# The student: LLaMA-3.2-1B's architecture as its config.json gives it (model.PAPER_SHAPES): 16 layers of 2048,
# 32 heads, 8 key/value heads, SwiGLU 8192, tied head, RoPE theta 500000 with LLaMA-3's frequency scaling, which
# changes 17 of the 32 frequencies of its 64-wide heads (it acts at 2048 positions too). The vocabulary comes from
# the data; block_size is the paper's sequence length, not the model's 131072 positions.
student = model.PAPER_SHAPES["LLaMA-3.2-1B"]
n_layer, n_head, n_kv_head, n_embd, mlp_hidden = [student[k] for k in
                                                  ("n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden")]
pos, norm, mlp, bias, tie_embeddings = [student[k] for k in ("pos", "norm", "mlp", "bias", "tie_embeddings")]
rope_theta, rope_scaling = student["rope_theta"], student["rope_scaling"]
del student  # every other name a config file leaves is a setting
block_size = 2048
batch_size, gradient_accumulation_steps = 4, 256  # 1024 sequences per step, over all ranks
loss_chunk = 1024  # tokens of 128256-way logits at a time: 0.5 GB in fp32, not 4 GB for a micro-batch
learning_rate, min_lr, weight_decay = 1e-3, 1e-4, 0.1  # min_lr: the paper does not say
lr_schedule, warmup_iters, decay_frac = "wsd", 100, 0.2  # decay_frac: the paper does not say
max_iters = 9000
eval_interval, eval_iters, log_interval = 500, 20, 10
device, dtype, compile = "cuda", "bfloat16", True
