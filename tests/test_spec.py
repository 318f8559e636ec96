import pytest

from reprolib import reference, spec
from reprolib.counting import count
from reprolib.models import create

# The 55-entry reading of the HRank study's Table 1 (printed strings have 53 entries; the Conclusion's
# row-7 string ends with the two extra terms): exact HRank-convention counts of each row.
TABLE1_COUNTS = {1: (489_359, 62_715_530), 2: (489_305, 62_660_234), 3: (489_386, 62_743_178),
                 4: (506_207, 69_019_274), 5: (469_919, 53_757_578), 6: (510_095, 64_042_634),
                 7: (468_623, 61_388_426)}


def test_parse_expands_terms_in_order():
    assert spec.parse("[0.1]+[0.6]*3+[0.0]*2+[0.4]") == [0.1, 0.6, 0.6, 0.6, 0.0, 0.0, 0.4]
    assert spec.parse(" $[0.1] + [0.60] * 2$ ") == [0.1, 0.6, 0.6]  # as printed in the document, with spaces


def test_format_round_trips():
    rates = [0.1] + [0.6] * 35 + [0.0] * 2 + [0.7] * 6 + [0.4] * 3 + [0.1, 0.4] * 4
    s = spec.format(rates)
    assert spec.parse(s, 55) == rates
    assert s.startswith("[0.1]+[0.6]*35+[0.0]*2+[0.7]*6+[0.4]*3+[0.1]+[0.4]")


@pytest.mark.parametrize("bad,match", [
    ("[0.1]+0.6*35", r"malformed term 2 '0.6\*35'"),
    ("[0.1]+[0.6]*x", r"term 2 '\[0.6\]\*x': count 'x' is not a positive integer"),
    ("[0.1]+[0.6]*0", r"count '0' is not a positive integer"),
    ("[0.1]+[abc]", r"term 2 '\[abc\]': rate 'abc' is not a number"),
    ("[0.1]+[1.0]*2", r"term 2 '\[1.0\]\*2': rate 1.0 is outside \[0, 1\)"),
    ("[-0.1]", r"rate -0.1 is outside"),
    ("", "empty compress-rate spec"),
    ("[0.1]++[0.2]", r"malformed term 2 ''"),
])
def test_bad_specs_name_the_term(bad, match):
    with pytest.raises(ValueError, match=match):
        spec.parse(bad)


def test_wrong_length_names_expected_and_given():
    printed = "[0.1]+[0.60]*35+[0.0]*2+[0.6]*6+[0.4]*3+[0.1]+[0.4]+[0.1]+[0.4]+[0.1]+[0.4]"
    with pytest.raises(ValueError, match="expected 55, given 53"):
        spec.parse(printed, n_layers=55)
    assert len(spec.parse(printed + "+[0.1]+[0.4]", n_layers=55)) == 55


def _table1():
    ref = reference.load("hrank_table1")
    for row, full in spec.table1().items():
        assert full.startswith(ref[ref["row"] == str(row)]["note"].iloc[0].split(": ")[-1])
        yield row, full, ref[ref["row"] == str(row)].set_index("metric")["value"]


@pytest.mark.parametrize("row,full,paper", list(_table1()), ids=[f"row{i}" for i in range(1, 8)])
def test_table1_counts_under_the_hrank_convention(row, full, paper):
    c = count(create("resnet56"), (1, 3, 32, 32), convention="hrank", rates=spec.parse(full, 55))
    assert (c["params"], c["flops"]) == TABLE1_COUNTS[row]
    if row != 5:  # the document is self-consistent on rows 1-4, 6, 7: equal to two decimals in millions
        assert round(c["params"] / 1e6, 2) == paper["params_M"]
        assert round(c["flops"] / 1e6, 2) == paper["flops_M"]
    else:  # row 5 prints 0.49M params and 53.75M FLOPs; the rule gives 0.47M and 53.76M
        assert round(c["params"] / 1e6, 2) == 0.47 != paper["params_M"]
        assert abs(c["flops"] / 1e6 - paper["flops_M"]) < 0.01
