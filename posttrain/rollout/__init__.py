"""Rollout engines: prompts in, completions with the engine's per-token log-probs out."""

from posttrain.rollout.base import ENGINES, FINISH_REASONS, Engine, Rollout, SamplingParams, make_engine
from posttrain.rollout.hf import HFEngine, RolloutWeights, filter_logits, sample_next
from posttrain.rollout.fast import FastEngine

__all__ = ["ENGINES", "FINISH_REASONS", "Engine", "FastEngine", "HFEngine", "Rollout", "RolloutWeights",
           "SamplingParams", "filter_logits", "make_engine", "sample_next"]
