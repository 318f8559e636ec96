"""The coverage registry cannot claim a method that the code or the book does not have."""
import pytest

from reprolib import coverage


@pytest.mark.parametrize("m", [m for m in coverage.METHODS if m.status == "measured"], ids=lambda m: m.method)
def test_a_measured_method_exists_in_code_and_in_a_chapter(m):
    assert m.chapter and coverage.notebook(m.chapter).exists()
    assert m.implemented_by
    for name in m.implemented_by:
        assert callable(coverage.resolve(name))


def test_every_other_row_says_why_and_a_planned_one_names_only_code_that_exists():
    for m in coverage.METHODS:
        assert m.status in coverage.STATUSES
        if m.status != "measured":
            assert m.note
        if m.status == "not measured":
            assert not m.implemented_by
        for name in m.implemented_by:  # planned: implemented, its runs not computed yet
            assert callable(coverage.resolve(name))


def test_resolve_refuses_what_does_not_exist():
    with pytest.raises(ValueError, match="unknown criterion"):
        coverage.resolve("no_such_criterion")
    with pytest.raises(AttributeError):
        coverage.resolve("reprolib.slimming:no_such_function")


def test_every_section_of_the_summary_has_a_row():
    sections = {m.section for m in coverage.METHODS if m.document == coverage.SUMMARY}
    assert {"1.1", "1.2", "2.1", "2.2", "3.1", "3.2", "4.1", "4.2", "4.3", "4.4", "4.5", "4.6", "4.7", "4.8",
            "4.9", "5.1", "6.1", "7.1", "7.2"} <= sections


def test_a_planned_method_turns_measured_only_when_all_its_runs_are_committed(monkeypatch):
    state = {"survey_dynamic": (12, 12), "survey_structured": (3, 40)}
    monkeypatch.setattr(coverage, "runs_state", lambda study, profile: state.get(study, (0, 5)))
    rows = {r["method"]: r for r in coverage.table("budget")}
    amc, kse = rows["ADC / AMC (reinforcement learning)"], rows["kernel sparsity and entropy, KSE"]
    assert amc["status"] == "measured" and not amc["note"].startswith("12 of")
    assert kse["status"] == "planned" and kse["note"].startswith("3 of 40 runs of survey_structured committed (budget)")
    assert rows["squeeze-and-excitation networks"]["status"] == "not measured"   # no study: unchanged
    assert {r["status"] for r in coverage.table()} == {m.status for m in coverage.METHODS}  # no profile: the registry


def test_runs_state_counts_the_committed_runs_of_a_study_without_computing_any(tmp_path, monkeypatch):
    from reprolib import plan, runs
    from reprolib.experiments import survey_regularisers
    monkeypatch.setenv("REPROLIB_RESULTS", str(tmp_path))
    # the chapter shows 2 regularised trainings, 3 pruning points x 1 seed fine-tuned, and their 3 random controls
    assert coverage.runs_state("survey_regularisers", "smoke") == (0, 8)
    assert not any(tmp_path.iterdir())  # nothing computed
    one = plan.committed(survey_regularisers.all_runs, "smoke")["regularise"]["ssl"]
    runs.write_json_atomic({"experiment": one["experiment"], "hash": one["hash"], "config": one["config"],
                            "metrics": {}}, runs.paths(one["experiment"], one["config"])["json"])
    assert coverage.runs_state("survey_regularisers", "smoke") == (1, 8)
