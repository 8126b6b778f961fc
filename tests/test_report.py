import pyarrow as pa
import pyarrow.parquet as pq

from croco.plan import build_plan
from croco.report import _sample_table, write_report
from croco.storage import Storage

from conftest import make_config, run


def test_sample_table_counts_a_servers_other_finish_reasons_and_no_unknown_token_count():
    samples = pa.table(
        {
            "prompt_id": ["p1", "p1", "p1", "p2"],
            "language": ["da", "da", "da", "en"],
            "sample_index": [0, 1, 2, 0],
            "finish_reason": ["stop", "content_filter", "unknown", "length"],
            "completion_tokens": pa.array([None, None, None, 12], pa.int32()),  # several samples per response: counts unknown
        }
    )
    assert _sample_table(samples)[2:] == ["| da | 3 | 1 | 1 | 0 | 2 | – |", "| en | 1 | 1 | 0 | 1 | 0 | 12.0 |"]


def test_report_reads_no_column_it_does_not_show_and_texts_only_of_the_samples_it_quotes(tmp_path, tiny_models, prompts_file, monkeypatch):
    # Three prompts per language, two samples each, two prompts to a shard: the first shard also holds a prompt the
    # report does not quote.
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}])
    run(cfg, stages=["score"])
    storage = Storage(cfg.storage.root)
    plan = build_plan(cfg, ["score"])
    manifests = {u.id: storage.version_at(u.version_path).manifest() for u in plan.units}

    reads = []
    read_table = pq.read_table

    def spy(source, columns=None, **kwargs):
        table = read_table(source, columns=columns, **kwargs)
        reads.append((set(columns or table.column_names), columns is None, table.num_rows))
        return table

    monkeypatch.setattr(pq, "read_table", spy)
    _, report = write_report(cfg, plan, storage, manifests, {})

    assert reads and not any(every_column for _, every_column, _ in reads)
    assert not any(columns & {"prompt_sent", "policy", "reward_model", "scored_tokens", "prompt_tokens"} for columns, _, _ in reads)
    quoted = [rows for columns, _, rows in reads if columns & {"prompt", "response"}]
    assert quoted == [2, 2]  # per language, the two samples of its first prompt
    assert "**en / p0**" in report and "**da / p0**" in report
