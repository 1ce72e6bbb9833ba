"""Number normalisation (posttrain.rewards.math.normalize): one canonical string per value,
and the strings that are not plain numbers. Numeric equality is tested through
answers_match in test_math.py."""

import math

import pytest

import posttrain.rewards.math.normalize as mn
from posttrain.rewards.math import normalize_number


def test_module_name_does_not_shadow_stdlib_math():
    assert mn.gcd is math.gcd


@pytest.mark.parametrize("raw, canon", [
    ("1,234", "1234"), ("1,450,000", "1450000"), ("$18.50.", "18.5"), ("\\$5", "5"),
    ("-$5", "-5"), ("50%", "50"), ("50\\%", "50"), ("12 cm", "12"), ("18 dollars", "18"),
    ("18\\text{ dollars}", "18"), ("30^{\\circ}", "30"), ("10 square feet", "10"),
    ("5 km/h", "5"), ("-0.0", "0"), ("\u22127", "-7"), (".5", "0.5"), ("5.", "5"),
    ("1{,}000", "1000"), ("1\\,000", "1000"), ("{{{1}}}", "1"), ("(-5)", "-5"),
    ("\\frac{3}{4}", "0.75"), ("\\dfrac12", "0.5"), ("-\\frac{1}{2}", "-0.5"),
    ("\\frac{-1}{-2}", "0.5"), ("6/8", "0.75"), ("2/6", "1/3"), ("-4/2", "-2"),
    ("1e999999", "1e999999"), ("1" + "0" * 40, "1e40"), ("1.5e-40", "15e-41"),
    ("0.000001", "0.000001"),
])
def test_normalize_number(raw, canon):
    assert normalize_number(raw) == canon


@pytest.mark.parametrize("raw", ["", "  ", "1,2", "1,2345", "2x", "x", "m", "%", "$", "3/0",
                                 "1.2.3", "\\frac{x}{2}", "five", "1e99999999999", None, 18,
                                 "\\frac{" + "1" * 5000 + "}{3}", "1" * 5000 + "/3"])
def test_normalize_number_rejects(raw):
    assert normalize_number(raw) is None
