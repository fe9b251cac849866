"""The tests never need the network: the Hugging Face libraries run offline for the whole suite. They read
HF_HUB_OFFLINE once, when imported, so it is set here, before any test module imports them; a test's own
monkeypatch.setenv would come too late, and the libraries would retry an unreachable hub for half a minute."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# the tests' models are tiny: one thread each is as fast, and far faster on a busy machine (read by torch when
# it is imported, and by the scripts the tests run)
os.environ.setdefault("OMP_NUM_THREADS", "1")
