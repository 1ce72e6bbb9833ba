"""StructEval-T payload extraction (posttrain.eval.structeval.parse): which part of a
generation is the payload. Cleaning and loading are tested through the scores in
test_structeval.py."""

from posttrain.eval.structeval.parse import extract_code


def test_extraction_rules():
    ex = extract_code
    assert ex("a\n```json\n{}\n```\nb\n```\n[1]\n```") == ("{}", "fence")  # the first fence
    assert ex("```yaml title\nk: v\n```") == ("k: v", "fence")             # any header line
    assert ex("intro\n```\nk: v") == ("k: v", "fence")                     # unclosed: to the end
    assert ex("```json {\"a\": 1}```") == ('```json {"a": 1}```', "whole")  # no newline: no fence
    assert ex("x <|begin_code|> a: 1 <|End_Code|> y") == ("a: 1", "markers")
    assert ex("x <|BEGIN_CODE|>\na: 1") == ("a: 1", "markers")            # end marker optional
    assert ex("  <code>{}</code>\n") == ("<code>{}</code>", "whole")       # <code> not recognised
