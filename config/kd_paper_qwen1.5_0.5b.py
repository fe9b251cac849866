# The paper's first run (section 5.1, appendix B.1): a student of Qwen1.5-0.5B's architecture, trained from
# scratch by pure KD (kd_alpha = 1) from Qwen/Qwen1.5-1.8B on FineWeb-Edu tokenized with the teacher's
# tokenizer; sequence length 2048, global batch 1024 sequences (2.1M tokens), 9000 steps (18.9B tokens),
# lr 1e-3, weight decay 0.1, WSD with 100 warmup steps. --attn=softmax / sink / gated gives the baselines.
#   python data/fineweb_edu/prepare.py --tokenizer=Qwen/Qwen1.5-1.8B --out_dir=data/fineweb_edu_qwen1.5 \
#       --config=sample-100BT --num_tokens=19_000_000_000         # 76 GB of uint32 ids
#   torchrun --standalone --nproc_per_node=8 train.py config/kd_paper_qwen1.5_0.5b.py
# One 80 GB GPU holds it under DDP (about 43 GB per GPU at batch_size=8, most of it activations; `python
# parallel.py`, estimates); on 40 GB GPUs add --activation_checkpointing=True (about 22 GB; sharding with
# --fsdp=True alone saves only 12 GB). What it lacks is time: ~7 GFLOP per token, so about
# 4 days on one H100 at 40% MFU, half a day on 8. With fewer GPUs keep batch_size x gradient_accumulation_steps
# = 1024; to finish sooner lower max_iters (the schedule follows) and say so.
out_dir = "out-kd-paper-qwen1.5-0.5b"
data_dir = "data/fineweb_edu_qwen1.5"
loss, teacher, kd_alpha, kd_temperature = "kd", "Qwen/Qwen1.5-1.8B", 1.0, 1.0
attn = "affine"
# Qwen1.5-0.5B (model.PAPER_SHAPES): 24 x 1024, 16 heads, SwiGLU 2816, q/k/v biases, untied head; vocab from the data
n_layer, n_head, n_kv_head, n_embd, mlp_hidden = 24, 16, 16, 1024, 2816
pos, norm, mlp, bias, qkv_bias, tie_embeddings = "rope", "rmsnorm", "swiglu", False, True, False
rope_theta, norm_eps = 1000000.0, 1e-6
block_size = 2048
batch_size, gradient_accumulation_steps = 8, 128  # 1024 sequences per step, over all ranks
loss_chunk = 1024  # tokens of 151646-way logits at a time: 0.6 GB in fp32, not 10 GB for a micro-batch
learning_rate, min_lr, weight_decay = 1e-3, 1e-4, 0.1  # min_lr: the paper does not say
lr_schedule, warmup_iters, decay_frac = "wsd", 100, 0.2  # decay_frac: the paper does not say
max_iters = 9000
eval_interval, eval_iters, log_interval = 500, 20, 10
device, dtype, compile = "cuda", "bfloat16", True
