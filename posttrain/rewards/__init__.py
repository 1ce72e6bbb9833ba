"""Verifiable rewards: `(completion, example) -> float`, safe against any model output.

    from posttrain.rewards import get_reward, REWARDS, RewardSet
    score = get_reward("json_schema")(completion, {"required": ["name", "tags[0]"]})

Every reward is registered in `REWARDS` (see docs/rewards.md, generated from it) and
`get_reward` returns the safe wrapper: exceptions, timeouts and size breaches score the
reward's floor and are counted by reason. `RewardSet` scores a batch on K named
components into the (N, K) matrix the advantage estimators take.
"""

from posttrain.rewards.base import (REASONS, REWARDS, RewardBatch, RewardResult, RewardSet,
                                    RewardSpec, SafeReward, get_reward, register_reward)
from posttrain.rewards import structured, math, code, shaping  # noqa: F401,E402  (registers)

__all__ = ["REASONS", "REWARDS", "RewardBatch", "RewardResult", "RewardSet", "RewardSpec",
           "SafeReward", "get_reward", "register_reward"]
