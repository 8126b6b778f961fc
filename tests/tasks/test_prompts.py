import json
from pathlib import Path

import datasets
import pytest

from conftest import make_config, prompt_record, run, version, write_jsonl
from croco.errors import CrocoError
from croco.records import PROMPT
from croco.storage import Storage, Version
from croco.tasks.prompts import REJECTS_FILE


def load(root, tiny_models, sources, **sections):
    """Run the prompts stage; (manifest per language, every unit's records in language order, versions by language).
    The versions come from the run's result: planning again would load every model's tokenizer again."""
    cfg = make_config(root, tiny_models, sources, **sections)
    result = run(cfg, stages=["prompts"])
    storage = Storage(cfg.storage.root)
    versions = {code: Version(storage, result["versions"][f"prompts/{code}"]) for code in cfg.languages}
    records = [r for code in cfg.languages for r in versions[code].read(PROMPT).to_pylist()]
    return {code: v.manifest() for code, v in versions.items()}, records, versions


def test_one_file_with_a_language_column(tmp_path, tiny_models, prompts_file):
    manifests, records, _ = load(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}])
    assert {code: m["records_out"] for code, m in manifests.items()} == {"en": 3, "da": 3}
    assert all(m["records_in"] == 6 and m["skipped"] == {"other_language": 3} for m in manifests.values())
    assert [(r["language"], r["prompt_id"]) for r in records][:2] == [("en", "p0"), ("en", "p1")]
    assert records[0]["source"].endswith("prompts.jsonl line 1")


def test_one_file_per_language(tmp_path, tiny_models):
    en = write_jsonl(tmp_path / "en.jsonl", [{"prompt_id": "a", "messages": [{"role": "user", "content": "Hi"}]}])
    da = tmp_path / "da.json"
    da.write_text(json.dumps([{"prompt_id": "a", "messages": [{"role": "user", "content": "Hej"}]}]))
    manifests, records, _ = load(
        tmp_path / "store", tiny_models, [{"path": str(en), "language": "en"}, {"path": str(da), "language": "da"}]
    )
    assert {(r["prompt_id"], r["language"]) for r in records} == {("a", "en"), ("a", "da")}
    assert {r["language"]: r["messages"][0]["content"] for r in records} == {"en": "Hi", "da": "Hej"}
    # A unit reads only the sources that can hold its language.
    assert all(m["records_in"] == 1 and m["skipped"] == {} for m in manifests.values())


def test_dataset_folder_through_datasets(tmp_path, tiny_models):
    folder = tmp_path / "hub_like"
    datasets.Dataset.from_list([prompt_record("x1", "da"), prompt_record("x2", "en")]).to_parquet(
        str(folder / "train.parquet")
    )
    _, records, _ = load(tmp_path / "store", tiny_models, [{"path": str(folder)}])
    assert {r["prompt_id"] for r in records} == {"x1", "x2"}
    assert records[0]["source"].startswith(f"dataset {folder} row")


def test_languages_not_selected_are_counted_not_kept(tmp_path, tiny_models):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "en"), prompt_record("a", "de")])
    manifests, records, _ = load(tmp_path / "store", tiny_models, [{"path": str(path)}], languages=["en"])
    assert [(r["prompt_id"], r["language"]) for r in records] == [("a", "en")]
    assert manifests["en"]["records_in"] == 2 and manifests["en"]["skipped"] == {"other_language": 1}


def test_subsample_keeps_every_language_of_a_chosen_prompt(tmp_path, tiny_models):
    rows = [prompt_record(f"p{i}", lang) for lang in ("en", "da") for i in range(10)]
    sources = [{"path": str(write_jsonl(tmp_path / "p.jsonl", rows))}]
    manifests, records, _ = load(tmp_path / "store", tiny_models, sources, data={"subsample": 4})
    ids = {lang: {r["prompt_id"] for r in records if r["language"] == lang} for lang in ("en", "da")}
    assert len(ids["en"]) == 4 and ids["en"] == ids["da"] and len(records) == 8
    assert all(m["skipped"] == {"not_in_subsample": 6, "other_language": 10} for m in manifests.values())
    # A fresh storage root draws the same ids, and so does a run with fewer languages.
    _, again, _ = load(tmp_path / "again", tiny_models, sources, data={"subsample": 4})
    assert {r["prompt_id"] for r in again} == ids["en"]
    _, english, _ = load(tmp_path / "english", tiny_models, sources, data={"subsample": 4}, languages=["en"])
    assert {r["prompt_id"] for r in english} == ids["en"]


BAD = [
    ("{not json", "line 2: not valid JSON"),
    (
        json.dumps({"language": "en", "messages": [{"role": "user", "content": "x"}]}),
        "line 2: missing or empty prompt id field 'prompt_id'",
    ),
    (json.dumps({"prompt_id": "b", "language": "en"}), "line 2: missing or empty 'messages' list"),
    (
        json.dumps({"prompt_id": "b", "language": "en", "messages": "Hi"}),
        "line 2: 'messages' must be a list of {role, content} objects, got str",
    ),
    (
        json.dumps({"prompt_id": "b", "language": "en", "messages": [{"role": "assistant", "content": "x"}]}),
        "line 2: no user message",
    ),
    (
        json.dumps({"prompt_id": "b", "language": "en", "messages": [{"role": "user", "content": "  "}]}),
        "line 2: message 0 has empty or non-string content",
    ),
    (
        json.dumps({"prompt_id": "b", "language": "en", "messages": [{"role": "user", "content": 7}]}),
        "line 2: message 0 has empty or non-string content",
    ),
    (
        json.dumps({"prompt_id": "b", "language": "en", "messages": [{"role": "robot", "content": "x"}]}),
        "line 2: message 0 needs a role",
    ),
    (
        json.dumps({"prompt_id": "b", "language": "xx", "messages": [{"role": "user", "content": "x"}]}),
        "line 2: unknown language code 'xx'",
    ),
    (json.dumps(prompt_record("a", "en")), "line 2: duplicate prompt id 'a' in language 'en'"),
    ("[1, 2]", "line 2: a record must be a JSON object"),
]


@pytest.mark.parametrize(("line", "message"), BAD, ids=[m.split(": ", 1)[1][:30] for _, m in BAD])
def test_bad_record_stops_the_run_naming_file_and_line(tmp_path, tiny_models, line, message):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "en"), line])
    with pytest.raises(CrocoError) as error:
        load(tmp_path / "store", tiny_models, [{"path": str(path)}], languages=["en"])
    assert f"{path} {message}" in str(error.value) and "data.on_invalid: reject" in str(error.value)


@pytest.mark.parametrize(("line", "message"), BAD, ids=[m.split(": ", 1)[1][:30] for _, m in BAD])
def test_bad_record_is_rejected_with_its_reason_when_asked(tmp_path, tiny_models, line, message):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "en"), line, prompt_record("c", "da")])
    manifests, records, versions = load(
        tmp_path / "store", tiny_models, [{"path": str(path)}], data={"on_invalid": "reject"}
    )
    assert manifests["en"]["skipped"]["invalid_record"] == 1 and manifests["en"]["records_out"] == 1
    assert sorted((r["prompt_id"], r["language"]) for r in records) == [("a", "en"), ("c", "da")]
    rejects_file = Path(versions["en"].path) / "files" / REJECTS_FILE
    rejects = [json.loads(line) for line in rejects_file.read_text().splitlines()]
    assert len(rejects) == 1 and f"{rejects[0]['location']}: {rejects[0]['reason']}".startswith(f"{path} {message}")


def test_when_every_record_is_rejected_the_error_counts_them_and_the_reasons_are_kept(tmp_path, tiny_models):
    lines = [
        json.dumps({"prompt_id": "a", "language": "en", "messages": "Hi"}),
        json.dumps({"prompt_id": "b", "language": "en", "messages": {"role": "user"}}),
    ]
    path = write_jsonl(tmp_path / "p.jsonl", lines)
    cfg = make_config(
        tmp_path / "store", tiny_models, [{"path": str(path)}], languages=["en"], data={"on_invalid": "reject"}
    )
    rejects_file = Path(version(cfg, "prompts/en").path) / "files" / REJECTS_FILE
    with pytest.raises(CrocoError) as error:
        run(cfg, stages=["prompts"])
    assert str(error.value).startswith(
        f"no valid prompts in language 'en' in {path}: 2 rejected, the first at {path} line 1: 'messages' must be a list"
    )
    assert str(rejects_file) in str(error.value)
    rejects = [json.loads(line) for line in rejects_file.read_text().splitlines()]
    assert [r["location"] for r in rejects] == [f"{path} line 1", f"{path} line 2"] and all(
        "got" in r["reason"] for r in rejects
    )


def test_missing_file_and_wrong_format(tmp_path, tiny_models):
    with pytest.raises(CrocoError, match="data file .*nope.jsonl does not exist"):
        load(tmp_path / "store", tiny_models, [{"path": str(tmp_path / "nope.jsonl")}])
    csv = tmp_path / "p.csv"
    csv.write_text("a,b\n")
    with pytest.raises(CrocoError, match="neither .json nor .jsonl"):
        load(tmp_path / "store", tiny_models, [{"path": str(csv)}])


def test_nothing_left_is_an_error(tmp_path, tiny_models):
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "de")])
    with pytest.raises(CrocoError, match="no prompts in language 'en'"):
        load(tmp_path / "store", tiny_models, [{"path": str(path)}], languages=["en"])


def test_embedded_demo_prompts_are_parallel(tmp_path, tiny_models):
    _, records, _ = load(
        tmp_path / "store", tiny_models, [{"path": "embedded:demo-prompts"}], languages=["en", "da", "de", "ga"]
    )
    by_language = {}
    for r in records:
        by_language.setdefault(r["language"], set()).add(r["prompt_id"])
    assert len(by_language) == 4 and len({frozenset(ids) for ids in by_language.values()}) == 1
    assert len(by_language["en"]) >= 8


def test_a_selected_language_without_prompts_is_named(tmp_path, tiny_models):
    # A selected language with no prompts is no longer a warning: its unit stops the run, naming it.
    path = write_jsonl(tmp_path / "p.jsonl", [prompt_record("a", "en")])
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(path)}])
    with pytest.raises(CrocoError, match=r"no prompts in language 'da' in .*p\.jsonl"):
        run(cfg, stages=["prompts"])
    assert version(cfg, "prompts/en").committed() and not version(cfg, "prompts/da").committed()


def test_a_windows_saved_file_with_bom_and_crlf_reads_every_record(tmp_path, tiny_models):
    path = tmp_path / "p.jsonl"
    path.write_bytes(
        b"\xef\xbb\xbf"
        + b"".join(json.dumps(prompt_record(i, "en"), ensure_ascii=False).encode() + b"\r\n" for i in ("a", "b"))
    )
    manifests, records, _ = load(tmp_path / "store", tiny_models, [{"path": str(path)}], languages=["en"])
    assert [r["prompt_id"] for r in records] == ["a", "b"] and manifests["en"]["skipped"] == {}


def test_a_file_that_is_not_utf8_names_file_line_and_byte(tmp_path, tiny_models):
    path = tmp_path / "p.jsonl"
    first = json.dumps(prompt_record("a", "en")).encode() + b"\n"
    second = (
        json.dumps(prompt_record("b", "en", "Sig h\u00e6j"), ensure_ascii=False).encode("latin-1") + b"\n"
    )  # as a Latin-1 editor saves it
    path.write_bytes(first + second)
    byte = len(first) + second.index(b"\xe6")
    with pytest.raises(
        CrocoError, match=rf"^{path} line 2 is not UTF-8 \(byte offset {byte}\); save the file as UTF-8$"
    ):
        load(tmp_path / "store", tiny_models, [{"path": str(path)}], languages=["en"])
