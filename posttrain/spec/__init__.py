"""Speculative decoding: draft models (DFlash-style block drafter, autoregressive
baseline), the greedy verify loop and its acceptance-length bookkeeping."""
