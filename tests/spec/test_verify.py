"""The speculative loop: token identity with plain greedy, acceptance bookkeeping."""
import pytest
import torch

from posttrain.spec.ar import ARDrafter
from posttrain.spec.block import BlockDraftConfig, attach
from posttrain.spec.verify import (OracleDrafter, cache_kwarg, crop_cache, greedy_decode, pooled_tau,
                                   speculative_decode)


class RandomDrafter:
    """Uniformly random drafts: almost never accepted, so every cycle exercises rejection."""
    feature_layers = ()

    def __init__(self, vocab, seed=0):
        self.g = torch.Generator().manual_seed(seed)
        self.vocab = vocab

    def reset(self):
        pass

    def extend(self, ids, feats):
        pass

    def propose(self, last, n):
        return torch.randint(self.vocab, (n,), generator=self.g).tolist()


def test_plain_greedy_varies_on_the_test_target(chaotic_target, prompts, stops):
    outs = [greedy_decode(chaotic_target, p, 24, stops).tokens for p in prompts[:4]]
    assert len({tuple(o) for o in outs}) > 1 and len(set(outs[0])) > 3


@pytest.mark.parametrize("block_size", [2, 4, 7])
def test_lossless_with_random_ar_and_block_drafters(chaotic_target, prompts, stops, block_size):
    torch.manual_seed(0)
    block = attach(BlockDraftConfig(hidden_size=128, block_size=block_size, target_layers=(1, 3)),
                   chaotic_target).eval()
    drafters = [RandomDrafter(chaotic_target.config.vocab_size), block.new_cache()]
    for p in prompts:
        ref = greedy_decode(chaotic_target, p, 30, stops)
        for d in drafters:
            out = speculative_decode(chaotic_target, d, p, block_size, 30, stops)
            assert out.tokens == ref.tokens and out.finish_reason == ref.finish_reason
            assert 1 + sum(out.cycle_taus) == len(out.tokens)
            assert all(1 <= t <= block_size for t in out.cycle_taus)


def test_oracle_and_self_draft_reach_the_ceiling(chaotic_target, prompts, stops):
    B, cap = 5, 33  # 1 prefill token + 6 full cycles of 5 + a last cycle of 2
    checked = 0
    for p in prompts[:6]:
        ref = greedy_decode(chaotic_target, p, cap, stops)
        if ref.finish_reason != "length":
            continue
        for d in (OracleDrafter(p, ref.tokens), ARDrafter(chaotic_target)):
            out = speculative_decode(chaotic_target, d, p, B, cap, stops)
            assert out.tokens == ref.tokens
            assert out.cycle_taus == [5] * 6 + [2]
            assert out.target_forwards == 1 + 7 and ref.target_forwards == cap
        checked += 1
    assert checked >= 2


def test_scripted_acceptances_give_hand_computed_tau(chaotic_target, prompts, stops):
    p = prompts[0]
    ref = greedy_decode(chaotic_target, p, 40, stops)
    assert ref.finish_reason == "length"
    # cycle c accepts wrong_after[c] drafts, then the bonus token: tau = accepted + 1
    script = [0, 3, 1, 3, 2, 0]
    out = speculative_decode(chaotic_target, OracleDrafter(p, ref.tokens, script, 1088), p, 4, 14, stops)
    assert out.tokens == ref.tokens[:14]
    # 1 + (1 + 4 + 2 + 4) = 12 tokens after four cycles; the fifth is capped at 2 of its 3
    assert out.cycle_taus == [1, 4, 2, 4, 2]
    tau, cycles = pooled_tau([out.cycle_taus, [3, 1]])
    assert cycles == 7 and tau == pytest.approx((13 + 4) / 7)


def test_stop_token_inside_an_accepted_block(chaotic_target, prompts):
    p = prompts[1]
    ref = greedy_decode(chaotic_target, p, 20, [])
    stop = ref.tokens[6]  # make the 7th greedy token a stop token
    first = ref.tokens.index(stop)
    ref_stop = greedy_decode(chaotic_target, p, 20, [stop])
    assert ref_stop.tokens == ref.tokens[:first + 1] and ref_stop.finish_reason == "stop"
    out = speculative_decode(chaotic_target, OracleDrafter(p, ref.tokens), p, 8, 20, [stop])
    assert out.tokens == ref_stop.tokens and out.finish_reason == "stop"


def test_crop_cache_keeps_a_prefix(chaotic_target):
    from transformers import DynamicCache
    cache = DynamicCache()
    chaotic_target(input_ids=torch.tensor([[5, 6, 7, 8, 9]]), use_cache=True,
                   **{cache_kwarg(chaotic_target): cache})
    k = cache.layers[0].keys.clone()
    crop_cache(cache, 3)
    assert cache.get_seq_length() == 3
    assert torch.equal(cache.layers[0].keys, k[..., :3, :])
