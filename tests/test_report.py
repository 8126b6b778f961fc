import re
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from conftest import make_config, run, run_answering_in_danish_and_english, version
from croco import runs
from croco.fidelity import percent
from croco.plan import build_plan
from croco.report import _sample_table, write_report
from croco.storage import Storage


def test_sample_table_counts_a_servers_other_finish_reasons_and_no_unknown_token_count():
    samples = pa.table(
        {
            "prompt_id": ["p1", "p1", "p1", "p2"],
            "language": ["da", "da", "da", "en"],
            "sample_index": [0, 1, 2, 0],
            "finish_reason": ["stop", "content_filter", "unknown", "length"],
            "completion_tokens": pa.array(
                [None, None, None, 12], pa.int32()
            ),  # several samples per response: counts unknown
        }
    )
    assert _sample_table(samples)[2:] == ["| da | 3 | 1 | 1 | 0 | 2 | – |", "| en | 1 | 1 | 0 | 1 | 0 | 12.0 |"]


def test_report_reads_no_column_it_does_not_show_and_texts_only_of_the_samples_it_quotes(
    tmp_path, tiny_models, prompts_file, monkeypatch
):
    # Three prompts per language, two samples each, two prompts to a shard: the first shard also holds a prompt the
    # report does not quote.
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}])
    run(cfg, stages=["score"])
    storage = Storage(cfg.storage.root)
    plan = build_plan(cfg, ["score"])

    reads = []
    read_table = pq.read_table

    def spy(source, columns=None, **kwargs):
        table = read_table(source, columns=columns, **kwargs)
        reads.append((set(columns or table.column_names), columns is None, table.num_rows))
        return table

    monkeypatch.setattr(pq, "read_table", spy)
    record = {"run_id": "r1", "started_at": "2026-01-01T00:00:00+00:00", "config": {}}
    _, _, report = write_report(cfg, storage, {**record, "versions": {u.id: u.version_path for u in plan.units}})

    assert reads and not any(every_column for _, every_column, _ in reads)
    assert not any(
        columns & {"prompt_sent", "policy", "reward_model", "scored_tokens", "prompt_tokens"} for columns, _, _ in reads
    )
    quoted = [rows for columns, _, rows in reads if columns & {"prompt", "response"}]
    assert quoted == [2, 2]  # per language, the two samples of its first prompt
    assert "**en / p0**" in report and "**da / p0**" in report


def test_every_run_has_its_own_report_naming_it_and_the_newest_is_also_where_a_person_looks_first(
    tmp_path, tiny_models, prompts_file
):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], generate={"num_samples": 3})
    first, second = run(cfg), run(cfg)  # the second one is all cache hits
    reports = {result["run_id"]: Path(result["report"]) for result in (first, second)}
    assert len(set(reports.values())) == 2
    for run_id, report in reports.items():
        text = report.read_text()
        assert report.parent.name == run_id and f"Run `{run_id}`, started 20" in text and "+00:00" in text
        assert (
            "Languages: en, da." in text
            and f"policy `{tiny_models['policy']}`" in text
            and "`generate.num_samples=3`" in text
        )
    front = Path(cfg.storage.root) / "reports" / cfg.name / "report.md"
    assert f"Run `{second['run_id']}`" in front.read_text()
    for report in (*reports.values(), front):
        links = re.findall(r"\]\(([^)]+)\)", report.read_text())
        assert any(link.startswith("../") for link in links) and any("rewards.png" in link for link in links)
        assert [link for link in links if not (report.parent / link).is_file()] == []

    storage = Storage(cfg.storage.root)  # a newer run of this config that finished first keeps its report in front
    runs.write(
        storage,
        {
            **runs.records(storage)[0],
            "run_id": "newer",
            "started_at": runs.timestamp(runs.utc_now() + timedelta(hours=1)),
        },
    )
    third = run(cfg)
    assert Path(third["report"]).is_file() and f"Run `{second['run_id']}`" in front.read_text()


def test_the_report_shows_how_many_chosen_and_rejected_answers_are_in_language_and_what_was_removed(
    tmp_path, tiny_models, prompts_file
):
    cfg, result = run_answering_in_danish_and_english(
        tmp_path, tiny_models, prompts_file, ["pair"], pair={"require_language": "chosen"}
    )
    manifest = version(cfg, "pair/all").manifest()
    text = Path(result["report"]).read_text()
    assert "(`pair.require_language` is `chosen`)" in text
    for language, rates in manifest["fidelity"]["in_language"].items():
        # three pools of two per language, one answer each in the prompt's language
        assert rates["chosen_on_target"] + rates["rejected_on_target"] == 1.0
        removed = round(3 * (1 - rates["chosen_on_target"]))
        products = ("sft_in_language", "dpo_in_language")
        assert rates["removed"] == ({f"{p}/chosen_not_in_language": removed for p in products} if removed else {})
        shown = ", ".join(f"{reason} {n}" for reason, n in rates["removed"].items()) or "none"
        chosen, rejected = percent(rates["chosen_on_target"]), percent(rates["rejected_on_target"])
        assert f"| in_language | {language} | {chosen} | {rejected} | {shown} |" in text
    assert sum(n for reason, n in manifest["skipped"].items() if "in_language/chosen_not" in reason) > 0
