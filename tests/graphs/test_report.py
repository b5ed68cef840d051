"""Grounding: every number a narrative states must come from the evidence."""

from __future__ import annotations

from typing import Any

from graphs.areas import OPTIMIZATION
from graphs.compose import build_report
from graphs.context import Context
from graphs.report import Finding, Report, check_grounding, grounding_pool, narrative_numbers


def state(headline: str, body: str) -> dict[str, Any]:
    finding = Finding(
        id="OPT-1",
        kind="cell",
        title="Small Business customers offered Personal Loan rarely accept",
        claim="Only 15.1% of 364 recommendations are accepted.",
        numbers={"rate": 0.1510989, "records": 364},
        evidence_ids=["E1"],
        effect_size=21.0,
        effect_unit="pp",
        sample_size=364,
        strength="strong",
    )
    evidence = {
        "id": "E1",
        "metric_id": "acceptance_rates",
        "title": "Acceptance rates",
        "sql": "SELECT 1",
        "parameters": {},
        "rows": [{"segment": "Small Business", "acceptance_rate": 0.1510989, "records": 364}],
        "row_count": 1,
        "truncated": False,
        "elapsed_ms": 1.0,
    }
    sections = [{"title": t, "body": body} for t in OPTIMIZATION.titles]
    return {
        "findings": [finding.model_dump()],
        "evidence": [evidence],
        "analysis": {"headline": headline, "sections": sections, "recommendations": []},
    }


def test_numbers_are_read_as_written_and_ids_and_years_are_not_numbers() -> None:
    text = "In 2025 only 15.1% of 1,433 leads [OPT-2] (E4) were worth $58.5M, 21.0 pp less, 2.5x."
    assert narrative_numbers(text) == ["15.1%", "1,433", "$58.5M", "21.0 pp", "2.5x"]


def test_rounded_numbers_match_and_others_do_not() -> None:
    pool = [0.1510989, 364.0, 58_543_730.99]
    checked, bad = check_grounding(["15.1% of 364, $58.5M, $58,543,731; 15%"], pool)
    assert checked == 5 and bad == []
    checked, bad = check_grounding(["15.3% of 365 and $61M"], pool)
    assert bad == ["15.3%", "365", "$61M"]


def test_the_report_flags_a_planted_wrong_number() -> None:
    update, detail = build_report(
        OPTIMIZATION,
        state("Only 15.1% accept [OPT-1].", "364 offers, but acceptance fell to 9.7% [OPT-9]."),
        Context(),
    )
    report = Report(**update["report"])
    assert report.ungrounded == ["9.7%"]
    assert report.unknown_finding_ids == ["OPT-9"]
    assert "1 ungrounded" in detail
    md = report.markdown()
    assert "match no evidence: 9.7%" in md.replace("**", "")


def test_a_grounded_report_has_nothing_flagged() -> None:
    update, _ = build_report(
        OPTIMIZATION, state("Only 15.1% accept [OPT-1].", "364 offers [OPT-1]."), Context()
    )
    report = Report(**update["report"])
    assert report.ungrounded == [] and report.unknown_finding_ids == []
    assert report.numbers_checked == len(OPTIMIZATION.titles) + 1
    assert "Grounding check" not in report.markdown()


def test_labels_in_evidence_ground_their_numbers() -> None:
    pool = grounding_pool(
        [{"rows": [{"band": "Very high (>=0.75)", "records": 10}], "row_count": 1}], []
    )
    assert check_grounding(["the band above 0.75"], pool) == (1, [])


def test_dates_in_a_narrative_are_not_numbers_to_check() -> None:
    from graphs.report import check_grounding, narrative_numbers

    text = "Recommendations from 2025-07-01 to 2025-07-31, in 9999-12-31 and 2024-03, rose 12%."
    assert narrative_numbers(text) == ["12%"]
    assert check_grounding([text], [0.12]) == (1, [])
    assert narrative_numbers("17, 19, and 21 records") == ["17", "19", "21"]
    # was ["-30"]: a date that ends a sentence
    assert narrative_numbers("The data holds 7 records, 2024-01-01 to 2025-06-30.") == ["7"]
