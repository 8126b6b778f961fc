import json

import datasets
import pytest

from croco.errors import CrocoError
from croco.records import PROMPT
from croco.stages import prompts
from croco.store import StageStore

from conftest import make_config, prompt_record, write_jsonl

MODELS = {"policy": "unused", "reward": "unused"}


def load(tmp_path, sources, **sections):
    cfg = make_config(tmp_path / "run", MODELS, sources, **sections)
    store = StageStore(cfg.run_dir, "prompts")
    store.open("k", {})
    report = prompts.run(cfg, store, None)
    return report, store.read(PROMPT).to_pylist(), store


def test_one_file_with_a_language_column(tmp_path, prompts_file):
    report, records, _ = load(tmp_path, [{"path": str(prompts_file)}])
    assert report["records_out"] == 6 and report["per_language"] == {"en": 3, "da": 3}
    assert [(r["language"], r["prompt_id"]) for r in records][:2] == [("en", "p0"), ("en", "p1")]
    assert records[0]["source"].endswith("prompts.jsonl line 1")


def test_one_file_per_language(tmp_path):
    en = write_jsonl(tmp_path / "en.jsonl", [{"prompt_id": "a", "messages": [{"role": "user", "content": "Hi"}]}])
    da = tmp_path / "da.json"
    da.write_text(json.dumps([{"prompt_id": "a", "messages": [{"role": "user", "content": "Hej"}]}]))
    _, records, _ = load(tmp_path, [{"path": str(en), "language": "en"}, {"path": str(da), "language": "da"}])
    assert {(r["prompt_id"], r["language"]) for r in records} == {("a", "en"), ("a", "da")}


def test_dataset_folder_through_datasets(tmp_path):
    folder = tmp_path / "hub_like"
    datasets.Dataset.from_list([prompt_record("x1", "da"), prompt_record("x2", "en")]).to_parquet(str(folder / "train.parquet"))
    _, records, _ = load(tmp_path, [{"path": str(folder)}])
    assert {r["prompt_id"] for r in records} == {"x1", "x2"}
    assert records[0]["source"].startswith(f"dataset {folder} row")


def test_languages_not_selected_are_counted_not_kept(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "en"), prompt_record("a", "de")])
    report, records, _ = load(tmp_path, [{"path": str(path)}])
    assert len(records) == 1 and report["skipped"] == {"language_not_selected": 1}


def test_subsample_keeps_every_language_of_a_chosen_prompt(tmp_path):
    rows = [prompt_record(f"p{i}", lang) for lang in ("en", "da") for i in range(10)]
    report, records, _ = load(tmp_path, [{"path": str(write_jsonl(tmp_path / "p.jsonl", rows))}], data={"subsample": 4})
    ids = {r["prompt_id"] for r in records}
    assert len(ids) == 4 and len(records) == 8 and report["skipped"] == {"not_in_subsample": 12}
    _, again, _ = load(tmp_path, [{"path": str(tmp_path / "p.jsonl")}], data={"subsample": 4})
    assert {r["prompt_id"] for r in again} == ids


BAD = [
    ("{not json", "line 2: not valid JSON"),
    (json.dumps({"language": "en", "messages": [{"role": "user", "content": "x"}]}), "line 2: missing or empty prompt id field 'prompt_id'"),
    (json.dumps({"prompt_id": "b", "language": "en"}), "line 2: missing or empty 'messages' list"),
    (json.dumps({"prompt_id": "b", "language": "en", "messages": [{"role": "assistant", "content": "x"}]}), "line 2: no user message"),
    (json.dumps({"prompt_id": "b", "language": "en", "messages": [{"role": "user", "content": "  "}]}), "line 2: message 0 has empty or non-string content"),
    (json.dumps({"prompt_id": "b", "language": "en", "messages": [{"role": "user", "content": 7}]}), "line 2: message 0 has empty or non-string content"),
    (json.dumps({"prompt_id": "b", "language": "en", "messages": [{"role": "robot", "content": "x"}]}), "line 2: message 0 needs a role"),
    (json.dumps({"prompt_id": "b", "language": "xx", "messages": [{"role": "user", "content": "x"}]}), "line 2: unknown language code 'xx'"),
    (json.dumps(prompt_record("a", "en")), "line 2: duplicate prompt id 'a' in language 'en'"),
    ("[1, 2]", "line 2: a record must be a JSON object"),
]


@pytest.mark.parametrize(("line", "message"), BAD, ids=[m.split(": ", 1)[1][:30] for _, m in BAD])
def test_bad_record_stops_the_run_naming_file_and_line(tmp_path, line, message):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "en"), line])
    with pytest.raises(CrocoError) as error:
        load(tmp_path, [{"path": str(path)}])
    assert f"{path} {message}" in str(error.value) and "data.on_invalid: reject" in str(error.value)


@pytest.mark.parametrize(("line", "message"), BAD, ids=[m.split(": ", 1)[1][:30] for _, m in BAD])
def test_bad_record_is_rejected_with_its_reason_when_asked(tmp_path, line, message):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "en"), line, prompt_record("c", "da")])
    report, records, store = load(tmp_path, [{"path": str(path)}], data={"on_invalid": "reject"})
    assert report["skipped"] == {"invalid_record": 1} and len(records) == 2
    rejects = [json.loads(line) for line in (store.path / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and f"{rejects[0]['location']}: {rejects[0]['reason']}".startswith(f"{path} {message}")


def test_missing_file_and_wrong_format(tmp_path):
    with pytest.raises(CrocoError, match="data file .*nope.jsonl does not exist"):
        load(tmp_path, [{"path": str(tmp_path / "nope.jsonl")}])
    csv = tmp_path / "p.csv"
    csv.write_text("a,b\n")
    with pytest.raises(CrocoError, match="neither .json nor .jsonl"):
        load(tmp_path, [{"path": str(csv)}])


def test_nothing_left_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "de")])
    with pytest.raises(CrocoError, match="no prompts left"):
        load(tmp_path, [{"path": str(path)}])


def test_embedded_demo_prompts_are_parallel(tmp_path):
    _, records, _ = load(tmp_path, [{"path": "embedded:demo-prompts"}], languages=["en", "da", "de", "ga"])
    by_language = {}
    for r in records:
        by_language.setdefault(r["language"], set()).add(r["prompt_id"])
    assert len(by_language) == 4 and len({frozenset(ids) for ids in by_language.values()}) == 1
    assert len(by_language["en"]) >= 8


def test_a_selected_language_without_prompts_is_reported(tmp_path, caplog):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "en")])
    report, _, _ = load(tmp_path, [{"path": str(path)}])
    assert report["languages_without_prompts"] == ["da"]
    assert "no prompts for da" in caplog.text
