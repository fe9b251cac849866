# The learning-rate sweep beside the variant comparison: the students of config/compare_shakespeare_char.py
# (same out_dir, teacher and settings, so its teacher and its seed-1 students at lr 1e-3 are reused) at peak
# learning rates 1e-3, 3e-3, 1e-2 and 3e-2, for softmax, sink, gated and affine, one seed. The paper swept
# 5e-4..5e-3 for its 0.5-3B students and chose 1e-3 (section 5.1), as our students use; models of 0.75M
# parameters bear larger rates, so the sweep goes from 1e-3 to 30x above it, where the variants' stability
# should show as where each one degrades or diverges.
# Writes out-compare/sweep_lr.md, .json and .png (final val CE against learning rate).
# python compare.py config/compare_sweep_lr_shakespeare_char.py

# as in config/compare_shakespeare_char.py: the same runs, so they are reused
out_dir = "out-compare"
teacher_config = "config/teacher_shakespeare_char.py"
student_config = "config/kd_shakespeare_char_softmax.py --stats_interval=25"
teacher_iters, student_iters, early_steps = 1000, 800, 800

# each variant at the students' own learning rate (1e-3, from student_config) and at 3e-3, 1e-2 and 3e-2
variants = ("softmax,softmax:learning_rate=3e-3,softmax:learning_rate=1e-2,softmax:learning_rate=3e-2,"
            "sink,sink:learning_rate=3e-3,sink:learning_rate=1e-2,sink:learning_rate=3e-2,"
            "gated,gated:learning_rate=3e-3,gated:learning_rate=1e-2,gated:learning_rate=3e-2,"
            "affine,affine:learning_rate=3e-3,affine:learning_rate=1e-2,affine:learning_rate=3e-2")
seeds = "1"
results = "sweep_lr"  # out-compare/sweep_lr.md beside the comparison's results.md
