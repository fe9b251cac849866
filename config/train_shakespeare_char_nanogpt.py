# The nanoGPT-equivalent run, the baseline of `python bench.py --time_to_loss=True`: nanoGPT's CPU example
#   python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20
#     --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128
#     --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
# with its GPT-2 block, on the embedded Shakespeare corpus; logging every 10 iterations, as the main job.
# python train.py config/train_shakespeare_char_nanogpt.py
out_dir = "out-shakespeare-char-nanogpt"
dataset = "shakespeare_char"
attn = "softmax"
device, compile = "cpu", False
eval_interval, eval_iters, log_interval = 250, 20, 10
always_save_checkpoint = False
n_layer, n_head, n_embd, block_size, dropout = 4, 4, 128, 64, 0.0
pos, norm, mlp, bias = "learned", "layernorm", "gelu", False  # the GPT-2 block, as nanoGPT's model.py
batch_size = 12
learning_rate, min_lr, beta2 = 1e-3, 1e-4, 0.99
max_iters = 2000
warmup_iters = 100
