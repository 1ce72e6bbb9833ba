"""A target whose greedy outputs are varied (the untrained tiny model repeats one token),
built in memory in a second from the tiny config with a large init scale."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.models.tiny import tiny_config
from posttrain.rollout.base import SamplingParams
from posttrain.rollout.hf import stop_ids


@pytest.fixture(scope="session")
def tokenizer(tiny_path):
    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture(scope="session")
def chaotic_target(tokenizer):
    cfg = tiny_config(-(-len(tokenizer) // 64) * 64, tokenizer=tokenizer)
    cfg.initializer_range = 0.25  # large weights: greedy continuations wander over the vocabulary
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="session")
def stops(tokenizer):
    return stop_ids(tokenizer, SamplingParams())


@pytest.fixture(scope="session")
def prompts(tokenizer):
    from posttrain.data.chat import tokenize_prompt
    from posttrain.data.tasks import generate
    exs = generate("structured", "heldout", 6) + generate("arithmetic", "heldout", 6)
    return [tokenize_prompt(tokenizer, e.prompt_messages) for e in exs]
