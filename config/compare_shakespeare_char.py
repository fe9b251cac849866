# The variant comparison on 2 CPU cores: a 1000-iter softmax teacher (config/teacher_shakespeare_char.py), then
# KD students of all five attentions and the N = prefix ablation of Eq. 8 (config/kd_shakespeare_char_*.py: the
# LLaMA block, 4 layers x 128 dims, pure KD, WSD, 300 iters each) for 3 seeds; Tables 4-5 over steps 0-299.
# python compare.py config/compare_shakespeare_char.py
out_dir = "out-compare"
teacher_config = "config/teacher_shakespeare_char.py"
student_config = "config/kd_shakespeare_char_softmax.py"
variants = "softmax,sink,gated,affine,affine_gated,affine:affine_n=prefix"
seeds = "1,2,3"
teacher_iters, student_iters, early_steps = 1000, 300, 300
