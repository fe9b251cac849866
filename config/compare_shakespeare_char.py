# The variant comparison on 2 CPU cores in about 20 minutes: a 1000-iter softmax teacher (6 layers x 192 dims,
# about 2.5 minutes), then KD students of all five attentions (the kd_shakespeare_char_*.py students, 4 layers
# x 128 dims, 800 iters, about 1.4 minutes each) for 2 seeds. python compare.py config/compare_shakespeare_char.py
out_dir = "out-compare"
teacher_config = "config/teacher_shakespeare_char.py"
student_config = "config/kd_shakespeare_char_softmax.py"
variants = "softmax,sink,gated,affine,affine_gated"
seeds = "1,2"
teacher_iters, student_iters, early_steps = 1000, 800, 500
