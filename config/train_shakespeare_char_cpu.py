# The README's main run: a 0.8M-parameter character model on the embedded Shakespeare corpus
# (data/shakespeare/input.txt). nanoGPT's CPU example in shape and batch (4 layers, 4 heads, 128 wide,
# block 64, batch 12), with rotary positions and a ReLU^2 MLP: it needs 800 iterations, at 3x the learning
# rate, to pass the val loss that nanoGPT's GPT-2 block reaches in 2000 (config/train_shakespeare_char_nanogpt.py;
# `python bench.py --time_to_loss=True` measures both). Every attn variant trains with this recipe.
# python train.py config/train_shakespeare_char_cpu.py
out_dir = "out-shakespeare-char-cpu"
dataset = "shakespeare_char"
attn = "softmax"
device, compile = "cpu", False
eval_interval, eval_iters, log_interval = 100, 20, 10
always_save_checkpoint = False  # keep the best-val checkpoint (and the last one, written at the end)
n_layer, n_head, n_embd, block_size, dropout = 4, 4, 128, 64, 0.0
pos, mlp = "rope", "relu2"  # LayerNorm stays: RMSNorm was slower here, for no better loss
batch_size = 12
learning_rate, min_lr, beta2 = 3e-3, 1e-4, 0.99
max_iters = 800
warmup_iters = 100
