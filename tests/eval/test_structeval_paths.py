"""StructEval-T key paths (posttrain.eval.structeval.paths): tokens, and the lookup rules
of the default mode. The corrected XML rule and malformed paths are tested through the
scores in test_structeval.py (Q3, Q7, Q10)."""

from posttrain.eval.structeval.paths import path_found, tokenize


def test_path_tokens():
    assert tokenize("a[0].b.*") == (("key", "a"), ("index", 0), ("key", "b"), ("any", None))
    assert tokenize("a..b.`c.d`") == (("key", "a"), ("key", "b"), ("key", "c.d"))
    assert tokenize("csv::habitat.region") == (("csv", "habitat.region"),)
    assert tokenize("a[*]") == (("key", "a"), ("any", None))
    found = path_found
    doc = {"a": [{"b": 1}, {"c": None}], "d": {"0": 1}, "e": [1]}
    assert found(doc, tokenize("a.*.c")) and found(doc, tokenize("a[1].c")) and found(doc, tokenize("d.0"))
    assert not found(doc, tokenize("a[2]")) and not found(doc, tokenize("a[-1]"))
    assert not found(doc, tokenize("e.0"))  # `.0` is a key, not an index
    assert not found(doc, tokenize("d.*")) and not found(doc, tokenize("a.b"))  # `*` on a dict; key on list
    assert not found(doc, tokenize("a[0].b.c"))  # a token on a scalar
    assert found(doc, tokenize("e.*")) and not found({"e": []}, tokenize("e.*"))
