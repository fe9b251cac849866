# A softmax student of the CPU main job's size, distilled the paper's way (section 5.1, appendix B) from
# config/teacher_shakespeare_char.py (train it first): the LLaMA block of the paper's students (RoPE, RMSNorm,
# SwiGLU, grouped-query attention), pure KD (the paper's loss, kd_alpha = 1), a WSD schedule with 100 warmup
# steps. The other kd_shakespeare_char_*.py configs take these settings and change only attn.
# python train.py config/kd_shakespeare_char_softmax.py
out_dir = "out-kd-shakespeare-char-softmax"
dataset = "shakespeare_char"
attn = "softmax"
loss, teacher = "kd", "out-teacher-shakespeare-char"
kd_alpha, kd_temperature = 1.0, 1.0
device, compile = "cpu", False
eval_interval, eval_iters, log_interval = 250, 20, 10
always_save_checkpoint = False
n_layer, n_head, n_embd, block_size, dropout = 4, 4, 128, 64, 0.0
pos, norm, mlp, n_kv_head, mlp_hidden = "rope", "rmsnorm", "swiglu", 2, 352
batch_size = 12
learning_rate, min_lr, beta2 = 1e-3, 1e-4, 0.99
lr_schedule, warmup_iters, decay_frac = "wsd", 100, 0.2
max_iters = 2000
