# The paper's recipe (section 5.1, appendix B) at GPT-2 scale: distil gpt2-medium into a GPT-2-small-shaped
# affine student on FineWeb-Edu (GPT-2 BPE; python data/fineweb_edu/prepare.py), WSD schedule with 100
# warmup steps, lr 1e-3, weight decay 0.1, 9000 steps. Block 1024, not the paper's 2048: GPT-2's learned
# positions stop at 1024. For 8 GPUs: torchrun --standalone --nproc_per_node=8 train.py config/train_fineweb_kd_gpt2.py
out_dir = "out-fineweb-kd-gpt2"
dataset = "fineweb_edu"
attn = "affine"
loss, teacher, kd_alpha = "kd", "gpt2-medium", 1.0  # pure KD, the paper's loss
n_layer, n_head, n_embd, block_size = 12, 12, 768, 1024
batch_size, gradient_accumulation_steps = 16, 32  # 524,288 tokens per iteration (the paper: 2M)
learning_rate, min_lr, weight_decay = 1e-3, 1e-4, 0.1
lr_schedule, warmup_iters, decay_frac = "wsd", 100, 0.2
max_iters = 9000
eval_interval, eval_iters, log_interval = 500, 100, 10
device, dtype, compile = "cuda", "bfloat16", True
