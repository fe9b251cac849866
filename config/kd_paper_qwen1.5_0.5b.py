# The paper's first run (section 5.1, appendix B.1): a student of Qwen1.5-0.5B's architecture, trained from
# scratch by pure KD (kd_alpha = 1) from Qwen/Qwen1.5-1.8B on FineWeb-Edu tokenized with the teacher's
# tokenizer; sequence length 2048, global batch 1024 sequences (2.1M tokens), 1 epoch of 9000 steps, lr 1e-3,
# weight decay 0.1, WSD with 100 warmup steps. --attn=softmax / sink / gated gives the baselines.
# Tokens: the paper says 20B, but its 9000 steps x 1024 sequences x 2048 tokens are 18.87B. The command below
# prepares exactly one epoch of that: 9,216,000 windows of 2048 tokens (+1, the last target) in train.bin
# after the 1M tokens of val.bin, 75.5 GB of uint32 ids; sampling="epoch" visits each window once.
#   python data/fineweb_edu/prepare.py --tokenizer=Qwen/Qwen1.5-1.8B --out_dir=data/fineweb_edu_qwen1.5 \
#       --config=sample-100BT --num_tokens=18_875_368_001
#   torchrun --standalone --nproc_per_node=8 train.py config/kd_paper_qwen1.5_0.5b.py
# One 80 GB GPU holds it under DDP (about 43 GB per GPU at batch_size=8, most of it activations; `python
# parallel.py`, estimates); on 40 GB GPUs add --activation_checkpointing=True (about 22 GB; sharding with
# --fsdp=True alone saves only 12 GB). What it lacks is time: ~7 GFLOP per token, so about
# 4 days on one H100 at 40% MFU, half a day on 8. With fewer GPUs keep batch_size x gradient_accumulation_steps
# = 1024; to finish sooner lower max_iters (the schedule follows) and say so.
import model

out_dir = "out-kd-paper-qwen1.5-0.5b"
data_dir = "data/fineweb_edu_qwen1.5"
sampling = "epoch"
loss, teacher, kd_alpha, kd_temperature = "kd", "Qwen/Qwen1.5-1.8B", 1.0, 1.0
attn = "affine"
# The student: Qwen1.5-0.5B's architecture as its config.json gives it (model.PAPER_SHAPES): 24 layers of 1024,
# 16 heads, SwiGLU 2816, q/k/v biases, untied head. The vocabulary comes from the data; block_size is the
# paper's sequence length, not the model's 32768 positions.
student = model.PAPER_SHAPES["Qwen1.5-0.5B"]
n_layer, n_head, n_kv_head, n_embd, mlp_hidden = [student[k] for k in
                                                  ("n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden")]
pos, norm, mlp, bias, qkv_bias = [student[k] for k in ("pos", "norm", "mlp", "bias", "qkv_bias")]
tie_embeddings, rope_theta, norm_eps = student["tie_embeddings"], student["rope_theta"], student["norm_eps"]
del student  # every other name a config file leaves is a setting
block_size = 2048
batch_size, gradient_accumulation_steps = 8, 128  # 1024 sequences per step, over all ranks
loss_chunk = 1024  # tokens of 151646-way logits at a time: 0.6 GB in fp32, not 10 GB for a micro-batch
learning_rate, min_lr, weight_decay = 1e-3, 1e-4, 0.1  # min_lr: the paper does not say
lr_schedule, warmup_iters, decay_frac = "wsd", 100, 0.2  # decay_frac: the paper does not say
max_iters = 9000
eval_interval, eval_iters, log_interval = 500, 20, 10
device, dtype, compile = "cuda", "bfloat16", True
