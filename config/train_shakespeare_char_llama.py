# The CPU main job (train_shakespeare_char_cpu.py) with the paper's student block instead of GPT-2's: rotary
# positions, RMSNorm, a SwiGLU MLP of about the same parameters as GPT-2's 4x GELU one, and grouped-query
# attention (2 key/value heads for 4 query heads), as in LLaMA-3.2. Compare the two with the same --attn:
# python train.py config/train_shakespeare_char_llama.py --attn=affine
exec(open("config/train_shakespeare_char_cpu.py").read())
out_dir = "out-shakespeare-char-llama"
pos, norm, mlp, n_kv_head = "rope", "rmsnorm", "swiglu", 2
mlp_hidden = 352  # SwiGLU has three matrices where GELU has two: about 8/3 * n_embd keeps the size
