# The KD student of kd_shakespeare_char_softmax.py with attn="gated": the same settings, data and teacher.
# python train.py config/kd_shakespeare_char_gated.py  (from the repo's root)
exec(open("config/kd_shakespeare_char_softmax.py").read())
attn, out_dir = "gated", "out-kd-shakespeare-char-gated"
