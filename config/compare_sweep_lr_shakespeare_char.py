# The learning-rate sweep beside the variant comparison: the students of config/compare_shakespeare_char.py
# (same out_dir, teacher and settings, so its teacher and its seed-1 students at lr 1e-3 are reused) at peak
# learning rates 1e-3, 3e-3, 1e-2 and 3e-2, for softmax, sink, gated and affine, one seed. The paper swept
# 5e-4..5e-3 for its 0.5-3B students and chose 1e-3 (section 5.1), as our students use; models of 0.75M
# parameters bear larger rates, so the sweep goes from 1e-3 to 30x above it, where the variants' stability
# should show as where each one degrades or diverges.
# Writes out-compare/sweep_lr.md, .json and .png (final val CE against learning rate).
# python compare.py config/compare_sweep_lr_shakespeare_char.py
exec(open("config/compare_shakespeare_char.py").read())
variants = ",".join(attn + lr for attn in ("softmax", "sink", "gated", "affine")
                    for lr in ("", ":learning_rate=3e-3", ":learning_rate=1e-2", ":learning_rate=3e-2"))
seeds = "1"
results = "sweep_lr"
