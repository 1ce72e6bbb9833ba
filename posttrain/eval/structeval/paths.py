"""Key paths of StructEval-T: `tokenize` (raises `MalformedPath` on an unclosed `[`) and
`path_found`, which walks the tokens through a parsed payload, the reference's rule or the
corrected XML one. The path rules are listed in posttrain.eval.structeval (key val., Q7,
Q10), after the benchmark's as shared/data/structeval_t/README.md describes them.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

from posttrain.eval.structeval.parse import CsvHeader


class MalformedPath(ValueError):
    """A path the reference scorer cannot tokenise (an unclosed `[`)."""


@lru_cache(maxsize=8192)
def tokenize(path: str) -> tuple[tuple[str, Any], ...]:
    """`a.b[0].*` -> (("key", "a"), ("key", "b"), ("index", 0), ("any", None)). `csv::X` is
    one ("csv", "X") token; a non-integer index is ("bad_index", text). Raises MalformedPath."""
    if path.startswith("csv::"):
        return (("csv", path[len("csv::"):]),)
    tokens: list[tuple[str, Any]] = []
    seg: list[str] = []

    def flush():
        if seg:
            s = "".join(seg)
            tokens.append(("any", None) if s == "*" else ("key", s))
            seg.clear()

    i, n = 0, len(path)
    while i < n:
        c = path[i]
        if c == "`":  # quoted segment; an unclosed backtick quotes the rest
            j = path.find("`", i + 1)
            j = n if j == -1 else j
            seg.append(path[i + 1:j])
            i = j + 1
        elif c == ".":
            flush()
            i += 1
        elif c == "[":
            flush()
            j = path.find("]", i)
            if j == -1:
                raise MalformedPath(f"unclosed '[' in path {path!r}")
            inner = path[i + 1:j]
            if inner.strip() == "*":
                tokens.append(("any", None))
            else:
                try:
                    tokens.append(("index", int(inner)))
                except ValueError:
                    tokens.append(("bad_index", inner))
            i = j + 1
        else:
            seg.append(c)
            i += 1
    flush()
    return tuple(tokens)


def path_found(node: Any, tokens: Sequence[tuple[str, Any]], xml_lenient: bool = False, i: int = 0) -> bool:
    """Whether `tokens[i:]` reach something from `node` (rules in the docstring of
    posttrain.eval.structeval); `xml_lenient` is the corrected XML rule (Q7, Q10). Recursion
    only at `*` and lenient keys, so its depth is bounded by the path's length."""
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "csv":
            return isinstance(node, CsvHeader) and val in node.cells
        if kind == "any":
            if isinstance(node, list):
                return any(path_found(el, tokens, xml_lenient, i + 1) for el in node)
            if not (xml_lenient and isinstance(node, dict)):
                return False
        elif kind == "index":
            if isinstance(node, list) and 0 <= val < len(node):
                node = node[val]
            elif not (xml_lenient and isinstance(node, dict) and val == 0):
                return False
        elif kind == "key" and isinstance(node, dict):
            if val in node:
                node = node[val]
            elif val.startswith("@") and val[1:] in node:
                node = node[val[1:]]
            elif xml_lenient and f"@{val}" in node:  # Q10
                node = node[f"@{val}"]
            else:
                return False
        elif kind == "key" and xml_lenient and isinstance(node, list):
            return any(path_found(el, tokens, xml_lenient, i) for el in node if isinstance(el, dict))
        else:  # a key on a list or scalar, any token on a scalar, a bad index
            return False
        i += 1
    return True


def _found(value: Any, tokens, xml_lenient: bool = False) -> bool:
    try:
        return path_found(value, tokens, xml_lenient)
    except RecursionError:  # a path of thousands of '*'
        return False
