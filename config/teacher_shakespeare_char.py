# The teacher the kd_shakespeare_char_*.py students distil from: a softmax model of the students' family (the
# LLaMA block) about three times their size (2.4M parameters), trained by cross-entropy on CPU in a few minutes.
out_dir = "out-teacher-shakespeare-char"
dataset = "shakespeare_char"
attn = "softmax"
device, compile = "cpu", False
eval_interval, eval_iters, log_interval = 250, 20, 10
always_save_checkpoint = False
n_layer, n_head, n_embd, block_size, dropout = 6, 6, 192, 64, 0.0
pos, norm, mlp, n_kv_head, mlp_hidden = "rope", "rmsnorm", "swiglu", 3, 512
batch_size = 12
learning_rate, min_lr, beta2 = 1e-3, 1e-4, 0.99
max_iters = 2000
warmup_iters = 100
