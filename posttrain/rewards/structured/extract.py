"""Extraction: a completion -> the payload text that the structured rewards score.

  1. `<think>...</think>` blocks are removed. An unclosed `<think>` ends the answer:
     nothing after it is scored. A `</think>` with no `<think>` before it (the chat
     template opened the block) drops everything up to and including it.
  2. Code fences (``` or ~~~, any indent, with or without a language tag; an
     unterminated fence runs to the end of the text, cut at a stray ``` if any; a
     one-line ```json {...}``` counts). Preference: the last non-empty fence tagged
     with the declared format (json/jsonc/json5, yaml/yml, toml, csv, xml), else the
     last untagged fence, else the last fence with some other tag that is not one of
     the five formats. Fences tagged with another of the five formats are never used.
     The last, not the first: a model that revises its answer puts the final one last.
  3. No usable fence: the whole text, stripped.
  4. If that fails to parse: for JSON the first balanced {...} / [...] span (quotes
     inside a span are string-aware) that parses (up to 8 tried); for XML the text from
     the first tag to the last ">"; for CSV the first blank-line-separated paragraph of
     two or more lines that parses (prose around the table). Never for a payload
     rejected as unsafe. YAML and TOML get no such rescue.

This module holds the text-level steps (`strip_think`, `find_fences`, `json_spans` and
the fallback candidates); `load_payload` in .parse runs them and parses the result.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from posttrain.rewards.structured.limits import MAX_DEPTH, MAX_SPAN_TRIES

_FORMAT_TAGS = {"json": {"json", "jsonc", "json5"}, "yaml": {"yaml", "yml"}, "toml": {"toml"},
                "csv": {"csv"}, "xml": {"xml"}}
_ALL_TAGS = set().union(*_FORMAT_TAGS.values())
_FENCE_LINE = re.compile(r"[ \t]*(`{3,}|~{3,})(.*)")
_LANG_TAG = re.compile(r"[A-Za-z0-9_+.#-]+")


def strip_think(text: str) -> str:
    """The text with `<think>...</think>` blocks removed (rules in the module docstring)."""
    close, open_ = text.find("</think>"), text.find("<think>")
    if close != -1 and (open_ == -1 or close < open_):
        text = text[close + len("</think>"):]
    parts = []
    while True:
        i = text.find("<think>")
        if i == -1:
            parts.append(text)
            break
        parts.append(text[:i])
        j = text.find("</think>", i)
        if j == -1:  # unclosed: the rest is reasoning
            break
        text = text[j + len("</think>"):]
    return "".join(parts)


@dataclass(frozen=True)
class Fence:
    tag: str
    """Lower-cased language tag, "" when there is none."""
    body: str


def find_fences(text: str) -> list[Fence]:
    """Every code fence in `text`, in order; an unterminated one runs to the end."""
    if "```" not in text and "~~~" not in text:
        return []
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        m = _FENCE_LINE.fullmatch(lines[i])
        i += 1
        if m is None:
            continue
        mark, info = m.group(1), m.group(2).strip()
        words = info.split(None, 1)
        tag = words[0] if words and _LANG_TAG.fullmatch(words[0]) else ""
        rest = (words[1] if len(words) > 1 else "") if tag else info
        if mark[:3] in rest:  # one-line fence: ```json {"a": 1}```
            out.append(Fence(tag.lower(), rest[:rest.index(mark[:3])]))
            continue
        body, closed = [], False
        while i < len(lines):
            c = _FENCE_LINE.fullmatch(lines[i])
            i += 1
            if (c and c.group(1)[0] == mark[0] and len(c.group(1)) >= len(mark)
                    and not c.group(2).strip()):
                closed = True
                break
            body.append(lines[i - 1])
        content = "\n".join(body)
        if not closed and mark[:3] in content:  # '}```' closing on a content line
            content = content[:content.index(mark[:3])]
        out.append(Fence(tag.lower(), textwrap.dedent(content)))
    return out


def _pick_fence(fences: list[Fence], fmt: str) -> str | None:
    own = _FORMAT_TAGS[fmt]
    tiers = ([f for f in fences if f.tag in own], [f for f in fences if not f.tag],
             [f for f in fences if f.tag and f.tag not in _ALL_TAGS])
    for tier in tiers:
        bodies = [f.body for f in tier if f.body.strip()]
        if bodies:
            return bodies[-1]
    return None


_JSON_SPECIAL = re.compile(r'[\[\]{}"]')
_JSON_STRING_REST = re.compile(r'[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # after the opening quote
_CLOSER = {"[": "]", "{": "}"}


def json_spans(text: str) -> list[tuple[int, int]]:
    """Start/end of the outermost balanced {...} / [...] spans, in order. One linear pass;
    quotes count as strings only inside a span; a mismatched closer abandons what is
    open, and so does a span deeper than MAX_DEPTH (up to where its depth returns to 0)."""
    spans: list[tuple[int, int]] = []
    stack: list[tuple[str, int]] = []
    overflow, pos = 0, 0  # overflow: depth inside an abandoned too-deep span
    while True:
        m = _JSON_SPECIAL.search(text, pos)
        if m is None:
            break
        c, pos = m.group(), m.end()
        if c == '"':
            if stack or overflow:
                s = _JSON_STRING_REST.match(text, pos)
                if s is None:  # unterminated string: nothing after it can close
                    break
                pos = s.end()
        elif overflow:
            overflow += 1 if c in "[{" else -1
        elif c in "[{":
            stack.append((c, m.start()))
            if len(stack) > MAX_DEPTH:
                overflow = len(stack)
                stack.clear()
        elif stack and _CLOSER[stack[-1][0]] == c:
            _, start = stack.pop()
            spans.append((start, pos))
        else:
            stack.clear()
    spans.sort()
    outer, end = [], -1
    for start, stop in spans:
        if start >= end:
            outer.append((start, stop))
            end = stop
    return outer


_XML_START = re.compile(r"<[A-Za-z_?]")


def _fallbacks(payload: str, fmt: str):
    """Smaller candidates inside a payload that did not parse (JSON spans, an XML slice)."""
    if fmt == "json":
        for start, stop in json_spans(payload)[:MAX_SPAN_TRIES]:
            yield payload[start:stop]
    elif fmt == "xml":
        m, end = _XML_START.search(payload), payload.rfind(">")
        if m is not None and end > m.start() and (m.start() > 0 or end < len(payload) - 1):
            yield payload[m.start():end + 1]
    elif fmt == "csv":  # prose paragraphs around the table
        blocks = [b.strip() for b in re.split(r"\n[ \t]*\n", payload)]
        yield from [b for b in blocks if "\n" in b][:MAX_SPAN_TRIES]
