# The KD student of kd_shakespeare_char_softmax.py with attn="sink": the same settings, data and teacher.
# python train.py config/kd_shakespeare_char_sink.py  (from the repo's root)
exec(open("config/kd_shakespeare_char_softmax.py").read())
attn, out_dir = "sink", "out-kd-shakespeare-char-sink"
