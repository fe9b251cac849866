"""The tests never need the network: the Hugging Face libraries run offline for the whole suite. They read
HF_HUB_OFFLINE once, when imported, so it is set here, before any test module imports them; a test's own
monkeypatch.setenv would come too late, and the libraries would retry an unreachable hub for half a minute."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
