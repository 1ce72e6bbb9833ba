"""Rollout engines: prompts in, completions with the engine's per-token log-probs out."""

from posttrain.rollout.base import ENGINES, FINISH_REASONS, Engine, Rollout, SamplingParams
from posttrain.rollout.hf import HFEngine, RolloutWeights, filter_logits, sample_next
from posttrain.rollout.fast import FastEngine

__all__ = ["ENGINES", "FINISH_REASONS", "Engine", "FastEngine", "HFEngine", "Rollout", "RolloutWeights",
           "SamplingParams", "filter_logits", "sample_next"]
