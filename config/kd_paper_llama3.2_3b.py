# The paper's third run (section 5.1, appendix B.1): a student of LLaMA-3.2-3B's architecture, trained from
# scratch by pure KD (kd_alpha = 1) from an 8B LLaMA. The paper names it "LLaMA3.3-8B", which is no model on
# the Hugging Face hub; this config uses meta-llama/Llama-3.1-8B, the 8B base model of the LLaMA-3 line.
# FineWeb-Edu tokenized with the teacher's tokenizer, sequence length 2048, global batch 1024 sequences, 1 epoch
# of 9000 steps, lr 1e-3, weight decay 0.1, WSD with 100 warmup steps. Gated on the hub: accept the license, log in.
# Tokens: the paper says 20B, but its 9000 steps x 1024 sequences x 2048 tokens are 18.87B. The command below
# prepares exactly one epoch of that: 9,216,000 windows of 2048 tokens (+1, the last target) in train.bin
# after the 1M tokens of val.bin, 75.5 GB of uint32 ids; sampling="epoch" visits each window once.
#   python data/fineweb_edu/prepare.py --tokenizer=meta-llama/Llama-3.1-8B --out_dir=data/fineweb_edu_llama3.1 \
#       --config=sample-100BT --num_tokens=18_875_368_001
# (train.py compares tokenizers by their vocabulary, not their name: if it accepts data_dir =
# "data/fineweb_edu_llama3" of the 1B run, that data serves here too.)
#   torchrun --standalone --nproc_per_node=8 train.py config/kd_paper_llama3.2_3b.py
# FSDP is what makes it fit 80 GB GPUs: under DDP every GPU would hold the student's weights, gradients (with
# DDP's buckets) and AdamW state, 20 B x 3.2B = 64 GB, the 16 GB bf16 teacher and 13 GB of activations and
# logits, 93 GB at batch_size=1; sharded over 8 GPUs (fsdp and teacher_fsdp below) it is about 25 GB per GPU
# (`python parallel.py`, estimates; docs/distributed.md). One 141 GB H200 holds it unsharded (one process
# ignores fsdp). ~35 GFLOP per token: about 2.5 days on 8 H100-class GPUs at 40% MFU.
import model

out_dir = "out-kd-paper-llama3.2-3b"
data_dir = "data/fineweb_edu_llama3.1"
sampling = "epoch"
loss, teacher, kd_alpha, kd_temperature = "kd", "meta-llama/Llama-3.1-8B", 1.0, 1.0
attn = "affine"
# The student: LLaMA-3.2-3B's architecture as its config.json gives it (model.PAPER_SHAPES): 28 layers of 3072,
# 24 heads, 8 key/value heads, SwiGLU 8192, tied head, RoPE theta 500000 with LLaMA-3's frequency scaling, which
# changes 35 of the 64 frequencies of its 128-wide heads (it acts at 2048 positions too). The vocabulary comes from
# the data; block_size is the paper's sequence length, not the model's 131072 positions.
student = model.PAPER_SHAPES["LLaMA-3.2-3B"]
n_layer, n_head, n_kv_head, n_embd, mlp_hidden = [student[k] for k in
                                                  ("n_layer", "n_head", "n_kv_head", "n_embd", "mlp_hidden")]
pos, norm, mlp, bias, tie_embeddings = [student[k] for k in ("pos", "norm", "mlp", "bias", "tie_embeddings")]
rope_theta, rope_scaling = student["rope_theta"], student["rope_scaling"]
del student  # every other name a config file leaves is a setting
block_size = 2048
batch_size, gradient_accumulation_steps = 1, 1024  # 1024 sequences per step, over all ranks
loss_chunk = 1024
learning_rate, min_lr, weight_decay = 1e-3, 1e-4, 0.1  # min_lr: the paper does not say
lr_schedule, warmup_iters, decay_frac = "wsd", 100, 0.2  # decay_frac: the paper does not say
max_iters = 9000
eval_interval, eval_iters, log_interval = 500, 20, 10
device, dtype, compile = "cuda", "bfloat16", True
fsdp, teacher_fsdp = True, True  # shard student and teacher over the ranks (FSDP2); --activation_checkpointing=True for a bigger batch_size
