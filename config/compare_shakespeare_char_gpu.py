# The variant comparison on one GPU, in bf16: nanoGPT's 10.7M-parameter shakespeare_char model (6 layers x 384
# dims, block 256, 5000 iters, compiled) as the teacher, then KD students of 4 layers x 256 dims at block 256
# (3.2M parameters), 3000 iters each, with the ablations N = prefix (Eq. 8) and phi = sigmoid (Table 3), for 3
# seeds. python compare.py config/compare_shakespeare_char_gpu.py
out_dir = "out-compare-gpu"
teacher_config = "config/train_shakespeare_char.py"
student_config = ("config/kd_shakespeare_char_softmax.py --device=cuda --dtype=bfloat16 --n_layer=4 --n_head=4 "
                  "--n_embd=256 --block_size=256 --batch_size=64 --max_iters=3000 --lr_decay_iters=3000 "
                  "--eval_interval=500 --eval_iters=100")
variants = "softmax,sink,gated,affine,affine_gated,affine:affine_n=prefix,affine:phi=sigmoid"
seeds = "1,2,3"
early_steps = 500
