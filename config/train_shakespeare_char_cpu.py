# The README's main run: nanoGPT's CPU example (a 0.8M-parameter character model, 2000 iters) on the
# embedded Shakespeare corpus (data/shakespeare/input.txt), under two minutes on 2 CPU cores.
# python train.py config/train_shakespeare_char_cpu.py
out_dir = "out-shakespeare-char-cpu"
dataset = "shakespeare_char"
attn = "softmax"
device, compile = "cpu", False
eval_interval, eval_iters, log_interval = 250, 20, 10
always_save_checkpoint = False  # keep the best-val checkpoint (and the last one, written at the end)
n_layer, n_head, n_embd, block_size, dropout = 4, 4, 128, 64, 0.0
batch_size = 12
learning_rate, min_lr, beta2 = 1e-3, 1e-4, 0.99
max_iters = lr_decay_iters = 2000
warmup_iters = 100
