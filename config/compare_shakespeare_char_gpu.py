# The variant comparison on one GPU: the full 2000-iter teacher and students of the train configs, 3 seeds.
# python compare.py config/compare_shakespeare_char_gpu.py
out_dir = "out-compare-gpu"
teacher_config = "config/teacher_shakespeare_char.py"
student_config = "config/kd_shakespeare_char_softmax.py"
seeds = "1,2,3"
device = "cuda"
