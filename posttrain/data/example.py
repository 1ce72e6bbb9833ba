"""The one example format every stage reads.

An example is a chat conversation plus what a reward or an evaluation needs to judge it:

    {"id": "structured-train-00012",
     "messages": [{"role": "system", "content": "..."},
                  {"role": "user", "content": "Convert these fields to JSON ..."},
                  {"role": "assistant", "content": "{\"name\": ...}"}],
     "answer": "{\"name\": ...}",          # reference answer (a number, a payload), may be None
     "meta": {"task": "structured", "format": "json", "required": [...], "types": {...}}}

`messages` ends with the reference assistant turn when the example is supervised (SFT);
`prompt_messages` drops it, which is what a rollout engine or an evaluation is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Example:
    messages: list[dict[str, str]]
    """Chat turns, each {"role": ..., "content": ...}; a trailing assistant turn is the target."""
    answer: str | None = None
    """Reference answer for rewards and evaluation (a number, or the expected payload)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Task metadata: task name, declared format, required paths, field types, expected values."""
    id: str = ""

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation without its final assistant turn (what a model is asked)."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[:-1]
        return self.messages

    @property
    def completion(self) -> str | None:
        """The reference assistant reply, if the example has one."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]["content"]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "messages": self.messages, "answer": self.answer, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        return cls(messages=d["messages"], answer=d.get("answer"), meta=d.get("meta") or {},
                   id=d.get("id") or "")


def validate_messages(messages: Any) -> str | None:
    """Return None when `messages` is a well-formed chat, else a short reason."""
    if not isinstance(messages, list) or not messages:
        return "expected a non-empty list of {role, content} messages"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"message {i} is {type(m).__name__}, expected an object with role and content"
        if m.get("role") not in ROLES:
            return f"message {i} has role {m.get('role')!r}, expected one of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"message {i} has no string 'content'"
    return None
