"""reprolib.summary: verdicts, and the rows every study writes from committed results only."""
import pytest

from reprolib import runs, summary


def test_judge_uses_the_tolerance_and_knows_missing_numbers():
    assert summary.judge(0.49, 0.49, 0.005) == "reproduced"
    assert summary.judge(0.49, 0.495, 0.005) == "reproduced"
    assert summary.judge(0.49, 0.47, 0.005) == "not reproduced"
    assert summary.judge(0.49, None, 0.005) == "not run yet"
    assert summary.judge(0.49, float("nan"), 0.005) == "not run yet"


def test_a_row_refuses_an_unknown_verdict_and_computes_its_difference():
    with pytest.raises(ValueError, match="verdict must be one of"):
        summary.Row("c", "w", 1.0, 2.0, "p", "fine")
    assert summary.Row("c", "w", 1.0, 2.5, "p", "not comparable").difference == 1.5
    assert summary.Row("c", "w", "4 of 4", "3 of 4", "p", "not reproduced").difference is None


def test_rows_train_nothing_and_count_hrank_table1_under_its_rule():
    rows = summary.rows("smoke")  # an empty results folder (conftest): every trained number is missing
    assert not list(runs.results_dir().glob("*/*.json"))
    assert rows and all(r.verdict in summary.VERDICTS for r in rows)
    counts = {r.what: r.verdict for r in rows if r.chapter == "hrank-resnet56" and "counting rule" in r.what}
    # Table 1 prints counts its rule gives on every row but row 5's params (0.49M printed, 0.47M by the rule)
    assert counts["Table 1 row 5: params (M), the study's counting rule"] == "not reproduced"
    assert sum(v == "reproduced" for v in counts.values()) == 12
    trained = [r for r in rows if "accuracy" in r.what and r.chapter == "hrank-resnet56"]
    assert trained and all(r.verdict == "not run yet" and r.ours is None for r in trained)
    box = summary.box("hrank-resnet56", "smoke")
    assert box.startswith("```{admonition}") and "12 reproduced" in box


def test_a_box_prints_ours_at_the_papers_decimals_not_at_six_digits():
    from reprolib.summary import fmt
    assert fmt(70.51333333, like=92.57) == "70.51"
    assert fmt(0.4865, like=0.49) == "0.49"
    assert fmt(0.0104, like=0.005) == "0.010"
    assert fmt(0.005, like=0.05) == "0.005" and fmt(0.01, like=0.05) == "0.01"  # a rate of ours is not rounded away
    assert fmt(125.4912, like=125.44) == "125.49"
    assert fmt(None, like=1.0) == "-" and fmt(float("nan")) == "-"
    assert fmt(92.0, like=92) == "92.00"       # an integer paper number: two decimals
    assert fmt(5.6499999999999995, like=71.05 - 68.97) == "5.65"  # a difference of printed numbers: their decimals


def test_readable_prints_ours_and_the_difference_at_the_papers_decimals():
    from reprolib.summary import Row, frame, readable
    t = readable(frame([Row("c", "accuracy", 92.57, 70.51333, "budget", "not comparable", "why"),
                        Row("c", "count", 0.49, None, "-", "not run yet", "")]))
    assert list(t["paper"]) == ["92.57", "0.49"]
    assert list(t["ours"]) == ["70.51", "-"]
    assert list(t["difference"]) == ["-22.06", "-"]
