# The paper's recipe sized for one GPU: a student of SmolLM2-135M's architecture (a LLaMA block: 30 x 576, 9
# heads, 3 key/value heads, SwiGLU 1536, tied head; 135M parameters) trained from scratch by pure KD from
# HuggingFaceTB/SmolLM2-360M, the same family one size up as in the paper, on 1B FineWeb-Edu tokens tokenized
# with the teacher's 49152-token tokenizer (uint16 ids, 2 GB). Sequence length 2048, lr 1e-3, weight decay 0.1,
# WSD with 100 warmup steps; 4000 steps of 128 sequences (the paper: 9000 of 1024).
#   python data/fineweb_edu/prepare.py --tokenizer=HuggingFaceTB/SmolLM2-360M --out_dir=data/fineweb_edu_smollm2 \
#       --num_tokens=1_100_000_000
#   python train.py config/kd_fineweb_smollm2.py
# About 2.2 GFLOP per token (student and teacher): 2-4 hours on one H100 (an estimate, not a measurement);
# ~38 GB of GPU memory at batch_size=16, 30 GB of it activations (`python parallel.py`, estimates); on a 24 GB
# GPU --activation_checkpointing=True (about 10 GB) or batch_size=8, gradient_accumulation_steps=16. Sharding
# (FSDP) does not help a model this small: its weights and AdamW state are 2 GB.
# Measure before renting a GPU: two training steps on a CPU at the real shapes and batch_size=1, with a small
# prepare of the same data. "Maximum resident set size" is the peak memory (float32 on a CPU; a measured 7.3 GB),
# the "ms/iter: ... train" line at the end the time per step (about 28 s on 2 cores):
#   python data/fineweb_edu/prepare.py --tokenizer=HuggingFaceTB/SmolLM2-360M --out_dir=data/fineweb_edu_smollm2_check \
#       --num_tokens=2_000_000
#   /usr/bin/time -v python train.py config/kd_fineweb_smollm2.py --data_dir=data/fineweb_edu_smollm2_check \
#       --out_dir=out-kd-check --device=cpu --compile=False --batch_size=1 --gradient_accumulation_steps=1 \
#       --max_iters=2 --warmup_iters=0 --eval_iters=1
# --attn=softmax gives the baseline to compare with.
out_dir = "out-kd-fineweb-smollm2"
data_dir = "data/fineweb_edu_smollm2"
loss, teacher, kd_alpha, kd_temperature = "kd", "HuggingFaceTB/SmolLM2-360M", 1.0, 1.0
attn = "affine"
n_layer, n_head, n_kv_head, n_embd, mlp_hidden = 30, 9, 3, 576, 1536
pos, norm, mlp, bias, tie_embeddings = "rope", "rmsnorm", "swiglu", False, True
rope_theta, norm_eps = 100000.0, 1e-5
block_size = 2048
batch_size, gradient_accumulation_steps = 16, 8  # 128 sequences, 262,144 tokens per step
loss_chunk = 4096  # tokens of 49152-way logits at a time: 0.8 GB in fp32, not 6.4 GB for a micro-batch
learning_rate, min_lr, weight_decay = 1e-3, 1e-4, 0.1
lr_schedule, warmup_iters, decay_frac = "wsd", 100, 0.2
max_iters = 4000
eval_interval, eval_iters, log_interval = 250, 20, 10
device, dtype, compile = "cuda", "bfloat16", True
