"""What the RL trainer measures about its own validity: MoE routing (capture, replay,
divergence) and the step-level stability diagnostics of docs/stability.md.

The token-level surrogate is a good first-order approximation of the sequence-level
objective only while the training-inference discrepancy (pi_old vs the engine's
pi_rollout) and the policy staleness (pi_theta vs pi_old) are small (Zheng et al. 2025,
arXiv:2512.01374). So every step logs both, per token, and for MoE models how often the
expert routing differs between the engine, pi_old and the update passes.

Routing (`rl.routing_replay`; the pass each one replays):

    mode   engine       pi_old pass          update passes        extra pass
    none   captured     natural, captured    natural              -
    r2     captured     natural, captured    pi_old's routes      -
    r3     captured     engine's routes      engine's routes      one no-grad natural pass

On-policy (epochs x mini_batches = 1) there is no pi_old pass: r2 is then a no-op (the
update's own forward is pi_old) and r3 replays the engine's routes in the update.

Divergence is counted on the loss tokens (completion tokens of trained rows): a token
diverges when, in at least one layer, its set of k experts differs. The route compared is
the one at the position whose output predicts the token (the last prompt position for the
first completion token), i.e. the routing that produced that token's log-prob.

    routing/divergence            engine vs the trainer without replay, before any update
                                  (pi_old pass; the r3 extra pass; on-policy none: the update)
    routing/divergence_layer      the same per (token, layer) pair
    routing/divergence_replayed   engine vs the update passes (the forward of the gradient);
                                  exactly 0 under r3
    routing/divergence_vs_old     pi_old pass vs the update passes; exactly 0 under r2 and r3
    routing/memory_bytes          the step's stored routes (int8 when E <= 128, else int16)
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from torch import Tensor

from ..config import ConfigError
from ..models.routing import MoERouting, expert_sets_differ, is_moe
from ..objectives.masks import entropy_threshold

IS_BAND = (0.5, 2.0)
"""IS weights w = pi_old / pi_rollout outside this band count in mismatch/is_out_of_range_frac."""


def setup_routing(mode: str, policy, rollout_model, engine) -> MoERouting | None:
    """The policy's routing hooks (None for a dense model), and the engine's capture.

    A dense model with mode != none is a ConfigError; so is r3 with an engine that cannot
    capture routes."""
    if not is_moe(policy):
        if mode != "none":
            MoERouting(policy)  # raises the ConfigError that names the model
        return None
    routing = MoERouting(policy)
    if not hasattr(engine, "routing"):
        if mode == "r3":
            raise ConfigError(f"rl.routing_replay=r3: the rollout engine {type(engine).__name__} does not "
                              "capture MoE routes; use rollout.engine=hf")
        return routing
    engine.routing = routing if rollout_model is policy else MoERouting(rollout_model)
    return routing


def pack_routes(rows: list[Tensor | None], T: int, routing: MoERouting) -> Tensor | None:
    """(N, T, L, k) routes from per-row (n_i, L, k) tensors (positions 0..n_i-1), -1 after;
    None when any row has none."""
    if any(r is None for r in rows):
        return None
    out = routing.empty(len(rows), T)
    for i, r in enumerate(rows):
        out[i, :r.shape[0]] = r
    return out


def replay_key(mode: str, has_old_pass: bool) -> str | None:
    """The batch key of the routes the update passes replay."""
    if mode == "r3":
        return "routes"
    if mode == "r2" and has_old_pass:
        return "old_routes"
    return None


class StepStats:
    """Token-level sums over a step's micro-batches, reduced to metrics at the end."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)
        self.maxes: dict[str, float] = {}
        self.entropies: list[Tensor] = []

    def mean(self, name: str, total: float, count: float) -> None:
        self.sums[name] += total
        self.counts[name] += count

    def max(self, name: str, value: float) -> None:
        self.maxes[name] = max(self.maxes.get(name, -math.inf), value)

    def divergence(self, name: str, used: Tensor, ref: Tensor | None, valid: Tensor) -> None:
        """used, ref (B, T, L, k) routes; valid (B, T) loss tokens. Tokens where `ref` has no
        route (-1) are skipped."""
        if ref is None:
            return
        ok = valid & (ref >= 0).all(dim=-1).all(dim=-1)  # (B, T)
        differ = expert_sets_differ(used, ref)[ok]  # (n, L)
        self.mean(name, float(differ.any(dim=-1).sum()), float(ok.sum()))
        if name == "routing/divergence":
            self.mean("routing/divergence_layer", float(differ.sum()), float(differ.numel()))

    def mismatch(self, old: Tensor, rollout: Tensor, valid: Tensor, prefix: str = "mismatch/",
                 update: int | None = None) -> None:
        """|log pi_old - log pi_rollout| mean and max, k3 of KL(pi_rollout || pi_old) and the
        fraction of IS weights outside IS_BAND, over valid tokens. With `update` (the update
        passes' log-probs in place of pi_old's) also the mean per update index."""
        d = (old.detach().float() - rollout.float())[valid]  # log w
        if d.numel() == 0:
            return
        n = float(d.numel())
        self.mean(prefix + "abs_logp_diff_mean", float(d.abs().sum()), n)
        self.max(prefix + "abs_logp_diff_max", float(d.abs().max()))
        if update is not None:
            self.mean(f"{prefix}abs_logp_diff_mb{update}", float(d.abs().sum()), n)
        if prefix == "mismatch/":
            self.mean("mismatch/k3", float((d.exp() - 1 - d).sum()), n)
            out = (d < math.log(IS_BAND[0])) | (d > math.log(IS_BAND[1]))
            self.mean("mismatch/is_out_of_range_frac", float(out.sum()), n)

    def entropy(self, entropy: Tensor, valid: Tensor) -> None:
        self.entropies.append(entropy.detach().float()[valid].cpu())

    def metrics(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k] > 0}
        out.update(self.maxes)
        if self.entropies:
            h = torch.cat(self.entropies)
            if h.numel():
                thr = entropy_threshold(h, torch.ones_like(h, dtype=torch.bool), 0.2)
                top = h >= thr
                out["entropy/top20_mean"] = float(h[top].mean())
                out["entropy/rest_mean"] = float(h[~top].mean()) if (~top).any() else float("nan")
        return out


def route_metrics(batch: dict, natural: Tensor | None, stats: StepStats) -> dict[str, float]:
    """routing/divergence from the step's natural pass, and routing/memory_bytes."""
    if "routes" not in batch:
        return {}
    if natural is not None:
        stats.divergence("routing/divergence", natural, batch["routes"], batch["mask"])
    held = [batch[k] for k in ("routes", "old_routes", "probe_routes") if k in batch]
    return {"routing/memory_bytes": float(sum(t.numel() * t.element_size() for t in held))}
