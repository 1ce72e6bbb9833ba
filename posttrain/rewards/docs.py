"""Render the reward table of docs/rewards.md from the registry.

    python -m posttrain.rewards.docs          # rewrite the table in place
    python -m posttrain.rewards.docs --check  # exit 1 if the file is stale

Only the text between `<!-- rewards:begin -->` and `<!-- rewards:end -->` is generated;
the prose around it is written by hand. tests/rewards/test_docs.py fails when the table
differs from `rewards_markdown()`, so a reward cannot be added without being documented.
"""

from __future__ import annotations

import sys
from pathlib import Path

from posttrain.rewards import REWARDS
from posttrain.rewards.base import reward_params

DOCS_PATH = Path(__file__).resolve().parents[2] / "docs" / "rewards.md"
BEGIN, END = "<!-- rewards:begin -->", "<!-- rewards:end -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def rewards_markdown() -> str:
    """One row per registered reward (names starting with `_` are test fixtures: skipped)."""
    lines = ["| name | checks | limits | range | options | timeout |", "|" + " --- |" * 6]
    for name, spec in sorted(REWARDS.items()):
        if name.startswith("_"):
            continue
        opts = ", ".join(f"`{k}={v!r}`" for k, v in reward_params(spec).items()) or "-"
        lines.append(f"| `{name}` | {_cell(spec.checks)} | {_cell(spec.limits) or '-'} | "
                     f"[{spec.floor:g}, {spec.ceiling:g}] | {opts} | "
                     f"{spec.timeout_s:g} s{'' if spec.isolate else ' (in-process)'} |")
    return "\n".join(lines)


def render(text: str) -> str:
    head, sep, rest = text.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise ValueError(f"docs lack the {BEGIN} ... {END} markers; add them where the table goes")
    return f"{head}{BEGIN}\n{rewards_markdown()}\n{END}{tail}"


def main(argv: list[str]) -> int:
    text = DOCS_PATH.read_text()
    new = render(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOCS_PATH} is stale: run python -m posttrain.rewards.docs", file=sys.stderr)
            return 1
        return 0
    DOCS_PATH.write_text(new)
    print(f"wrote the reward table into {DOCS_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
