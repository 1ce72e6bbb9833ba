"""The block drafter: attention pattern, context injection, sharing, cache, checkpoint."""
import torch

from posttrain.spec.block import (BlockDraftConfig, attach, block_attention_mask,
                                  evenly_spaced_layers, load_drafter)

B = 4


def _drafter(target, layers=2, seed=0):
    torch.manual_seed(seed)
    return attach(BlockDraftConfig(hidden_size=128, num_layers=layers, block_size=B,
                                   target_layers=(1, 3)), target).eval()


def _feats(T, seed=0):
    return torch.randn(1, T, 256, generator=torch.Generator().manual_seed(seed))


def test_evenly_spaced_layers():
    assert evenly_spaced_layers(4, 2) == (1, 3)
    assert evenly_spaced_layers(4, 3) == (1, 2, 3)
    assert evenly_spaced_layers(36, 5) == (1, 10, 18, 26, 35)


def test_attention_inside_a_block_is_not_causal(chaotic_target):
    d = _drafter(chaotic_target)
    layer = d.layers[0]
    x = torch.randn(1, B, 128)
    ck, cv = layer.kv(torch.randn(1, 3, 128), torch.arange(3)[None])
    pos = torch.arange(3, 3 + B)[None]
    y = layer(x, pos, ck, cv, None)
    x2 = x.clone()
    x2[0, B - 1] += 1.0  # change the LAST slot
    y2 = layer(x2, pos, ck, cv, None)
    assert not torch.allclose(y[0, 0], y2[0, 0])  # the first slot sees it


def test_context_features_condition_the_draft(chaotic_target):
    d = _drafter(chaotic_target)
    f = _feats(6)
    pos = torch.arange(6)[None]
    first, anchor = torch.tensor([[7]]), torch.tensor([[6]])
    a = d(f, pos, first, anchor)
    f2 = f.clone()
    f2[0, 2] += 1.0
    assert a.shape == (1, 1, B - 1, chaotic_target.config.vocab_size)
    assert not torch.allclose(a, d(f2, pos, first, anchor))


def test_packed_blocks_equal_separate_forwards(chaotic_target):
    """Two blocks in one forward with the packing mask = each block alone on its prefix."""
    d = _drafter(chaotic_target)
    T = 10
    f, pos = _feats(T, 1), torch.arange(T)[None]
    anchors, first = torch.tensor([[3, 8]]), torch.tensor([[11, 12]])
    mask = block_attention_mask(anchors, torch.ones(1, T, dtype=torch.bool), B)
    packed = d(f, pos, first, anchors, mask)  # (1, 2, B-1, V)
    for j in range(2):
        a = int(anchors[0, j])
        alone = d(f[:, :a], pos[:, :a], first[:, j:j + 1], anchors[:, j:j + 1])
        torch.testing.assert_close(packed[:, j], alone[:, 0], atol=1e-5, rtol=1e-5)
    # what lies at or after an anchor is invisible to that block
    f2 = f.clone()
    f2[0, 3:] += 5.0
    torch.testing.assert_close(d(f2, pos, first, anchors, mask)[:, 0], packed[:, 0])


def test_target_embedding_and_head_are_shared_frozen_and_not_saved(chaotic_target, tmp_path):
    d = _drafter(chaotic_target)
    assert d._shared[1] is chaotic_target.get_output_embeddings()
    assert not any(p.requires_grad for p in chaotic_target.parameters())
    V = chaotic_target.config.vocab_size
    assert not any(v.shape[0] == V for v in d.state_dict().values())  # no (V, H) matrix stored
    target_ids = {id(p) for p in chaotic_target.parameters()}
    assert not any(id(p) in target_ids for p in d.parameters())
    logits = d(_feats(5), torch.arange(5)[None], torch.tensor([[3]]), torch.tensor([[5]]))
    logits.sum().backward()
    assert all(p.grad is not None for p in d.parameters())
    assert all(p.grad is None for p in chaotic_target.parameters())


def test_cached_inference_matches_the_full_forward(chaotic_target):
    d = _drafter(chaotic_target)
    f = _feats(9, 2)
    cache = d.new_cache()
    cache.extend(list(range(5)), f[0, :5])  # committed in two pieces, as cycles do
    cache.extend(list(range(4)), f[0, 5:])
    drafts = cache.propose(42, B - 1)
    full = d(f, torch.arange(9)[None], torch.tensor([[42]]), torch.tensor([[9]]))
    assert drafts == full[0, 0].argmax(-1).tolist()


def test_checkpoint_round_trip(chaotic_target, tmp_path):
    d = _drafter(chaotic_target, seed=3)
    d.save(tmp_path / "draft")
    e = load_drafter(tmp_path / "draft", chaotic_target)
    assert e.cfg == d.cfg
    args = (_feats(5), torch.arange(5)[None], torch.tensor([[3]]), torch.tensor([[5]]))
    assert torch.equal(d(*args), e(*args))
    fresh = _drafter(chaotic_target, seed=4)
    assert not torch.equal(fresh(*args), d(*args))
