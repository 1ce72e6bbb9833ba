"""The RL batch is laid out as the loss and the shared-prompt forward expect."""

import pytest
import torch

from posttrain.data.chat import IGNORE
from posttrain.train.rl_batch import build_batch, rows_of


def test_build_batch_aligns_labels_engine_logprobs_and_mask():
    b = build_batch([[5, 6, 7], [8]], [[1, 2], [3, 4, 9]], [[-0.1, -0.2], [-0.3, -0.4, -0.5]],
                    torch.tensor([1.0, -1.0]), [True, False], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 1, 2], [8, 3, 4, 9, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    # position t predicts token t + 1: completion tokens are the targets of positions P-1 ..
    assert b["labels"].tolist() == [[IGNORE, IGNORE, 1, 2, IGNORE], [3, 4, 9, IGNORE, IGNORE]]
    assert b["rollout_logp"][0].tolist() == pytest.approx([0, 0, -0.1, -0.2, 0])
    assert b["rollout_logp"][1].tolist() == pytest.approx([-0.3, -0.4, -0.5, 0, 0])
    assert b["mask"].tolist() == [[False, False, True, True, False], [False] * 5]  # row 1 masked out
    assert b["prompt_len"].tolist() == [3, 1]


def test_rows_of_trims_to_the_longest_selected_row():
    b = build_batch([[5, 6, 7], [8]], [[1, 2], [3]], [[-0.1, -0.2], [-0.3]], torch.tensor([1.0, -1.0]),
                    [True, True], pad_id=0)
    sub = rows_of(b, torch.tensor([1]), "cpu")
    assert sub["input_ids"].tolist() == [[8, 3]] and sub["prompt_len"].tolist() == [1]
