# The paper's third run (section 5.1, appendix B.1): a student of LLaMA-3.2-3B's architecture, trained from
# scratch by pure KD (kd_alpha = 1) from an 8B LLaMA. The paper names it "LLaMA3.3-8B", which is no model on
# the Hugging Face hub; this config uses meta-llama/Llama-3.1-8B, the 8B base model of the LLaMA-3 line.
# FineWeb-Edu tokenized with the teacher's tokenizer, sequence length 2048, global batch 1024 sequences, 9000
# steps, lr 1e-3, weight decay 0.1, WSD with 100 warmup steps. Gated on the hub: accept the license, log in.
#   python data/fineweb_edu/prepare.py --tokenizer=meta-llama/Llama-3.1-8B --out_dir=data/fineweb_edu_llama3.1 \
#       --config=sample-100BT --num_tokens=19_000_000_000
# (train.py compares tokenizers by their vocabulary, not their name: if it accepts data_dir =
# "data/fineweb_edu_llama3" of the 1B run, that data serves here too.)
#   torchrun --standalone --nproc_per_node=8 train.py config/kd_paper_llama3.2_3b.py
# FSDP is what makes it fit 80 GB GPUs: under DDP every GPU would hold the student's weights, gradients (with
# DDP's buckets) and AdamW state, 20 B x 3.2B = 64 GB, the 16 GB bf16 teacher and 13 GB of activations and
# logits, 93 GB at batch_size=1; sharded over 8 GPUs (fsdp and teacher_fsdp below) it is about 25 GB per GPU
# (`python parallel.py`, estimates; docs/distributed.md). One 141 GB H200 holds it unsharded (one process
# ignores fsdp). ~35 GFLOP per token: about 2.5 days on 8 H100-class GPUs at 40% MFU.
out_dir = "out-kd-paper-llama3.2-3b"
data_dir = "data/fineweb_edu_llama3.1"
loss, teacher, kd_alpha, kd_temperature = "kd", "meta-llama/Llama-3.1-8B", 1.0, 1.0
attn = "affine"
# LLaMA-3.2-3B (model.PAPER_SHAPES): 28 x 3072, 24 heads, 8 key/value heads, SwiGLU 8192, tied head (RoPE
# scaling left out: it only stretches positions beyond 8192)
n_layer, n_head, n_kv_head, n_embd, mlp_hidden = 28, 24, 8, 3072, 8192
pos, norm, mlp, bias, tie_embeddings = "rope", "rmsnorm", "swiglu", False, True
rope_theta, norm_eps = 500000.0, 1e-5
block_size = 2048
batch_size, gradient_accumulation_steps = 1, 1024  # 1024 sequences per step, over all ranks
loss_chunk = 1024
learning_rate, min_lr, weight_decay = 1e-3, 1e-4, 0.1  # min_lr: the paper does not say
lr_schedule, warmup_iters, decay_frac = "wsd", 100, 0.2  # decay_frac: the paper does not say
max_iters = 9000
eval_interval, eval_iters, log_interval = 500, 20, 10
device, dtype, compile = "cuda", "bfloat16", True
fsdp, teacher_fsdp = True, True  # shard student and teacher over the ranks (FSDP2); --activation_checkpointing=True for a bigger batch_size
