# nanoGPT's train_shakespeare_char.py: a 10.7M-parameter character model, a few minutes on one GPU.
out_dir = "out-shakespeare-char"
dataset = "shakespeare_char"
device, compile = "cuda", True
eval_interval, eval_iters, log_interval = 250, 200, 10
always_save_checkpoint = False  # it overfits: keep the best-val checkpoint (and the last one)
n_layer, n_head, n_embd, block_size, dropout = 6, 6, 384, 256, 0.2
batch_size = 64
learning_rate, min_lr, beta2 = 1e-3, 1e-4, 0.99
max_iters = 5000
warmup_iters = 100
