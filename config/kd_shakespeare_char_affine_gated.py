# The KD student of kd_shakespeare_char_softmax.py with attn="affine_gated": the same settings, data and teacher.
# python train.py config/kd_shakespeare_char_affine_gated.py  (from the repo's root)
exec(open("config/kd_shakespeare_char_softmax.py").read())
attn, out_dir = "affine_gated", "out-kd-shakespeare-char-affine_gated"
