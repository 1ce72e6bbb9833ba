"""docs/rewards.md lists every registered reward, as the registry describes it."""
from posttrain.rewards import REWARDS
from posttrain.rewards.docs import BEGIN, DOCS_PATH, END, render, rewards_markdown


def test_committed_docs_match_the_registry():
    text = DOCS_PATH.read_text()
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert section.strip("\n") == rewards_markdown(), (
        "docs/rewards.md is stale: run `python -m posttrain.rewards.docs`")
    assert render(text) == text


def test_every_public_reward_has_a_row_with_what_it_checks():
    md = rewards_markdown()
    for name, spec in REWARDS.items():
        if name.startswith("_"):
            assert f"`{name}`" not in md
            continue
        row = next(line for line in md.splitlines() if line.startswith(f"| `{name}` |"))
        assert spec.checks and spec.checks.replace("|", "\\|") in row
