"""The styles benchmark's report: targets, the arguments-vs-globals verdict and refusals in the
table (on made-up rows: the measuring itself runs in ``python -m benchmarks.styles``)."""

from __future__ import annotations

from benchmarks.styles import markdown, summarize


def _row(name, kind, speedup=None, accepted=True, exact=True, error=None):
    row = {
        "name": name,
        "style": f"style of {name}",
        "kind": kind,
        "accepted": accepted,
        "stage": "done" if accepted else "decorate",
        "target": 5.0 if kind == "text" else 2.0,
    }
    if accepted:
        row.update(plan="no cascade: x", agreement=1.0, exact=exact, speedup=speedup)
        row["meets_target"] = exact and speedup >= row["target"]
    else:
        row.update(error=error, meets_target=False)
    return row


def test_summary_counts_targets_and_compares_arguments_with_globals():
    rows = [
        _row("willump_toxic", "text", 9.0),
        _row("willump_toxic_globals", "text", 10.0),
        _row("credit", "tabular", 1.5),
        _row("music", "tabular", accepted=False, error="UnsupportedPipelineError: f.py:3: loops | here"),
    ]
    summary = summarize(rows)
    assert summary["accepted"] == "3 of 4"
    assert summary["text pipelines >= 5x"] == "2 of 2"
    assert summary["tabular pipelines >= 2x"] == "0 of 2"
    assert "ratio 0.90 (within 20%)" in summary["Willump toxic, arguments vs globals"]
    rows[0]["speedup"] = 7.0
    assert "NOT within 20%" in summarize(rows)["Willump toxic, arguments vs globals"]
    table = markdown(rows, summary, "header")
    assert "| music |" in table and "no (decorate): UnsupportedPipelineError: f.py:3: loops \\| here" in table
    assert (
        "| credit | style of credit | tabular | yes | no cascade: x | 1.0000 (equal) | 1.50x | missed (>= 2x) |"
        in table
    )


def test_unmeasured_globals_version_is_reported_as_such():
    rows = [
        _row("willump_toxic", "text", 9.0),
        _row("willump_toxic_globals", "text", accepted=False, error="E"),
    ]
    assert "not measurable" in summarize(rows)["Willump toxic, arguments vs globals"]
