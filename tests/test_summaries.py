"""What a person reads about a unit: its log line and its artifact say the same."""

import re

from croco.plan import Unit
from croco.summaries import summary_line, summary_markdown

MANIFEST = {
    "uri": "/runs/generate/en/k",
    "version": "generate/en/k",
    "records_in": 2,
    "records_out": 4,
    "skipped": {},
    "wall_s": 14.23,  # the whole unit, the model's loading included
    "throughput": {"samples_per_s": 0.42, "tokens_per_s": 3.4, "seconds": 9.52},  # the generating only
}


def test_the_log_line_and_the_artifact_give_the_same_seconds():
    unit = Unit("generate", "en", "k")
    seconds = {
        text: re.findall(r"[\d.]+ s\b", text)
        for text in (summary_line(unit, MANIFEST), summary_markdown(unit, MANIFEST))
    }
    assert list(seconds.values()) == [["14.2 s", "9.5 s"], ["14.2 s", "9.5 s"]]
    assert "14.2 s (0.42 samples/s, 3.4 tokens/s over 9.5 s of model work)" in summary_markdown(unit, MANIFEST)


def test_a_reused_units_line_names_the_unit_and_its_version():
    line = summary_line(Unit("arena", "da", "k", model="dpo"), {**MANIFEST, "version": "arena/da/k"}, reused=True)
    assert line.startswith("arena/da/dpo: reused arena/da/k, 4 records out of 2 in")
