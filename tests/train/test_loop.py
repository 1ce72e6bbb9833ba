"""The shared loop on a small regression model: schedule, accumulation, resume, NaN, checkpoints."""
import json
import math

import pytest
import torch

from posttrain.config import TrainConfig
from posttrain.train.checkpoint import latest_checkpoint, list_checkpoints
from posttrain.train.loop import BatchStream, TrainingError, lr_factor, train_loop
from posttrain.train.metrics import read_metrics


class Net(torch.nn.Module):
    def __init__(self, dropout=0.0):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.drop = torch.nn.Dropout(dropout)

    def forward(self, x):
        return self.lin(self.drop(x)).squeeze(-1)


def data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1 * torch.randn(n, generator=g)
    return [(x[i], y[i]) for i in range(n)]


def collate(items):
    return {"x": torch.stack([a for a, _ in items]), "y": torch.stack([b for _, b in items])}


def sq_loss(model, batch, denom):
    err = model(batch["x"]) - batch["y"]
    return (err ** 2).sum() / denom, {"mse": float((err.detach() ** 2).mean())}


def count(batch):
    return float(len(batch["y"]))


def cfg(**kw):
    base = dict(lr=0.05, max_steps=6, batch_size=4, warmup_steps=2, progress=False, max_grad_norm=None)
    base.update(kw)
    return TrainConfig(**base)


def run(tmp_path, name, c, dropout=0.0, **kw):
    torch.manual_seed(0)
    model = Net(dropout)
    stream = BatchStream(data(), c.batch_size, collate, seed=c.seed)
    res = train_loop(model, stream, sq_loss, c, tmp_path / name, weight_fn=count, **kw)
    return model, res


def test_lr_schedule_hand_values():
    # warm-up 2 steps: 1/2, 2/2; then cosine over the remaining 8 steps down to 0.1
    assert lr_factor(0, 2, 10, 0.1) == pytest.approx(0.5)
    assert lr_factor(1, 2, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(2, 2, 10, 0.1) == pytest.approx(1.0)
    assert lr_factor(6, 2, 10, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)   # half way: cos(pi/2) = 0
    assert lr_factor(10, 2, 10, 0.1) == pytest.approx(0.1)


def test_batch_stream_covers_each_epoch_once_and_resumes_in_order():
    s = BatchStream(list(range(10)), 4, lambda b: b, seed=3)
    first = s.next() + s.next() + s.next()[:2]
    assert sorted(first) == list(range(10))
    state = s.state_dict()
    after = [s.next() for _ in range(3)]
    s2 = BatchStream(list(range(10)), 4, lambda b: b, seed=3)
    s2.load_state_dict(state)
    assert [s2.next() for _ in range(3)] == after


def test_accumulation_equals_one_big_batch(tmp_path):
    """batch 8 x accumulation 1 and batch 1 x accumulation 8 take identical steps."""
    m1, r1 = run(tmp_path, "big", cfg(batch_size=8, grad_accum=1, max_grad_norm=1.0))
    m2, r2 = run(tmp_path, "acc", cfg(batch_size=1, grad_accum=8, max_grad_norm=1.0))
    for p, q in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    assert [h["loss"] for h in r1.history] == pytest.approx([h["loss"] for h in r2.history], rel=1e-6)


def test_learning_happens_and_metrics_are_written(tmp_path):
    _, res = run(tmp_path, "m", cfg(max_steps=30, lr=0.3))
    rows = read_metrics(tmp_path / "m")
    assert [r["step"] for r in rows] == list(range(1, 31))
    assert all({"step", "loss", "lr", "grad_norm"} <= set(r) for r in rows)
    assert rows[-1]["loss"] < 0.1 * rows[0]["loss"]


def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_losses(tmp_path):
    c = cfg(max_steps=8, save_every=2, keep_checkpoints=10)
    _, full = run(tmp_path, "full", c, dropout=0.3)   # dropout: RNG state matters

    def kill_at_5(step, record):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut", c, dropout=0.3, on_step=kill_at_5)
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == "step-000004"
    torch.manual_seed(123)  # a different process state: the checkpoint must restore it
    model = Net(dropout=0.3)
    stream = BatchStream(data(), c.batch_size, collate, seed=c.seed)
    resumed = train_loop(model, stream, sq_loss, c, tmp_path / "cut", weight_fn=count, resume=True)
    assert [h["step"] for h in resumed.history] == [5, 6, 7, 8]
    full_tail = [h["loss"] for h in full.history[4:]]
    assert [h["loss"] for h in resumed.history] == pytest.approx(full_tail, abs=1e-6)
    steps = [r["step"] for r in read_metrics(tmp_path / "cut")]
    assert steps == list(range(1, 9))  # the lost step 5 is not logged twice


def test_non_finite_loss_skips_the_step_then_stops(tmp_path):
    calls = {"n": 0}

    def sometimes_nan(model, batch, denom):
        calls["n"] += 1
        loss, m = sq_loss(model, batch, denom)
        return (loss * math.nan if calls["n"] == 2 else loss), m

    torch.manual_seed(0)
    model = Net()
    stream = BatchStream(data(), 4, collate)
    res = train_loop(model, stream, sometimes_nan, cfg(max_steps=4), tmp_path / "nan1", weight_fn=count)
    assert res.step == 4 and calls["n"] == 5          # one batch skipped, four steps taken
    assert all(torch.isfinite(p).all() for p in model.parameters())

    def always_nan(model, batch, denom):
        loss, m = sq_loss(model, batch, denom)
        return loss * math.nan, m

    with pytest.raises(TrainingError, match="3 non-finite losses in a row"):
        train_loop(Net(), BatchStream(data(), 4, collate), always_nan, cfg(max_bad_steps=3),
                   tmp_path / "nan2", weight_fn=count)


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    c = cfg(max_steps=6, save_every=1, keep_checkpoints=2)
    run(tmp_path, "ck", c)
    root = tmp_path / "ck" / "checkpoints"
    assert [p.name for p in list_checkpoints(root)] == ["step-000005", "step-000006"]
    (root / ".tmp-step-000007-999").mkdir()  # a write killed half way is never picked up
    assert latest_checkpoint(root).name == "step-000006"
    state = json.loads((root / "step-000006" / "state.json").read_text())
    assert state["step"] == 6 and state["data"] == {"epoch": 0, "index": 24}
