# The variant comparison on 2 CPU cores: a 1000-iter softmax teacher (config/teacher_shakespeare_char.py), then
# KD students of all five attentions and the ablations of Eq. 8 (N = prefix) and Table 3 (phi = sigmoid)
# (config/kd_shakespeare_char_*.py: the LLaMA block, 4 layers x 128 dims, pure KD, WSD, 800 iters each, like the
# main job) for 3 seeds; Tables 4-5 over all 800 steps; Fig. 2's statistic logged every 25 steps (32 points).
# About 40 minutes on an idle CPU core: the teacher 3-4, each of the 21 students 1.7 (103 s of CPU time measured).
# python compare.py config/compare_shakespeare_char.py
# config/compare_sweep_lr_shakespeare_char.py repeats out_dir and the teacher and student settings: change both.
out_dir = "out-compare"
teacher_config = "config/teacher_shakespeare_char.py"
student_config = "config/kd_shakespeare_char_softmax.py --stats_interval=25"
variants = "softmax,sink,gated,affine,affine_gated,affine:affine_n=prefix,affine:phi=sigmoid"
seeds = "1,2,3"
teacher_iters, student_iters, early_steps = 1000, 800, 800
