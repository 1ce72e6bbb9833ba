"""posttrain: post-training for language models (SFT, preference optimisation, RLVR)."""

__version__ = "0.1.0"
