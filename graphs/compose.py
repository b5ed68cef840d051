"""The report step: build the `Report` from state and check its grounding."""

from __future__ import annotations

import datetime
import re
from typing import Any

from graphs.areas import FocusArea
from graphs.context import Context
from graphs.report import (
    Analysis,
    EvidenceRef,
    Finding,
    Report,
    check_grounding,
    grounding_pool,
)

# A finding cited in a narrative: its id in brackets, e.g. [OPT-2].
CITE = re.compile(r"\[([A-Z]+-\d+)\]")


def build_report(
    area: FocusArea, state: dict[str, Any], ctx: Context
) -> tuple[dict[str, Any], str]:
    """Assemble the report; flag narrative numbers no evidence supports."""
    analysis_data = dict(state.get("analysis") or {})
    analysis = Analysis.model_validate(
        {k: analysis_data[k] for k in ("headline", "sections", "recommendations")}
    )
    findings = [Finding(**f) for f in state.get("findings", [])]
    evidence = state.get("evidence", [])
    texts = [analysis.headline]
    texts += [s.body for s in analysis.sections]
    texts += [f"{r.action} {r.rationale}" for r in analysis.recommendations]
    checked, ungrounded = check_grounding(texts, grounding_pool(evidence, findings))
    known = {f.id for f in findings}
    cited = {c for t in texts for c in CITE.findall(t)}
    cited |= {i for r in analysis.recommendations for i in r.finding_ids}
    report = Report(
        focus_area=area.slug,
        title=f"{area.name} — FinMatch analysis",
        scope=ctx.filters().describe(),
        model=analysis_data.get("model", ctx.model),
        model_label=analysis_data.get("label", ctx.model),
        generated_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        headline=analysis.headline,
        sections=analysis.sections,
        findings=findings,
        recommendations=analysis.recommendations,
        evidence=[
            EvidenceRef(
                **{
                    k: e[k]
                    for k in (
                        "id",
                        "metric_id",
                        "title",
                        "sql",
                        "parameters",
                        "row_count",
                        "truncated",
                    )
                }
            )
            for e in evidence
        ],
        numbers_checked=checked,
        ungrounded=ungrounded,
        unknown_finding_ids=sorted(cited - known),
        usage={
            k: int(analysis_data.get(k, 0))
            for k in (
                "model_calls",
                "tool_calls",
                "input_tokens",
                "output_tokens",
                "prompt_tokens_estimate",
            )
        },
    )
    detail = (
        f"{len(findings)} findings, {len(analysis.recommendations)} recommendations, "
        f"{checked} numbers checked, {len(ungrounded)} ungrounded"
    )
    return {"report": report.model_dump(mode="json")}, detail
