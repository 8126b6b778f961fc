from pathlib import Path

import datasets
import pytest

from conftest import make_config
from croco.errors import CrocoError
from croco.plan import Unit
from croco.records import SAMPLE, SCORE
from croco.storage import ALL_LANGUAGES, Storage
from croco.tasks.pair import pair, product_schema

# (prompt_id, language) -> rewards of samples 0, 1, 2, ...
REWARDS = {
    ("p1", "en"): [1.0, 5.0, 0.0, 3.0],  # mean 2.25, std 1.92: target -1.59 -> rejected = sample 2 (0.0)
    ("p1", "da"): [6.0, 2.0],  # global best of p1 is da/0
    ("p2", "en"): [2.0, 2.0, 2.0],  # all equal: SFT yes, DPO no
    ("p2", "da"): [4.0],  # pool of one: skipped everywhere in-language
}
# The language each answer was detected in where it is not its prompt's: p1's best Danish answer (also p1's best
# overall) is English, and p1's rejected English answer (in-language and all-language) is gibberish.
OFF_LANGUAGE = {("p1", "da", 0): "en", ("p1", "en", 2): "unknown"}


def write_run(storage: Storage, languages=("en", "da")) -> dict[str, str]:
    """Committed generate and score versions per language, each in two shards; (unit id, version path) of each."""
    inputs = {}
    for language in languages:
        samples, scores = [], []
        for (prompt_id, code), rewards in REWARDS.items():
            if code != language:
                continue
            for index, reward in enumerate(rewards):
                key = {"prompt_id": prompt_id, "language": language, "sample_index": index}
                samples.append(
                    {
                        **key,
                        "prompt": f"{prompt_id} in {language}?",
                        "prompt_sent": f"{prompt_id} in {language}? (sent)",
                        "response": f"answer {prompt_id}/{language}/{index}",
                        "finish_reason": "stop",
                        "prompt_tokens": 3,
                        "completion_tokens": 3,
                        "policy": "m",
                        "detected_language": OFF_LANGUAGE.get((prompt_id, language, index), language),
                    }
                )
                scores.append({**key, "reward": reward, "scored_tokens": 9, "reward_model": "r"})
        for stage, records, schema in (("generate", samples, SAMPLE), ("score", scores, SCORE)):
            version = storage.version(stage, language, f"test-{stage}-{language}")
            half = (len(records) + 1) // 2
            version.write_shard("00000", records[:half], schema)
            version.write_shard("00001", records[half:], schema)
            version.commit({"stage": stage, "language": language, "key": version.key})
            inputs[f"{stage}/{language}"] = version.relative
    return inputs


def pair_unit(inputs: dict[str, str]) -> Unit:
    return Unit("pair", ALL_LANGUAGES, "test-pair", inputs=tuple(inputs.items()))


def run_pair(tmp_path, **pair_settings):
    cfg = make_config(tmp_path / "store", {"policy": "x", "reward": "y"}, [{"path": "p.jsonl"}], pair=pair_settings)
    storage = Storage(cfg.storage.root)
    pair.fn(cfg, pair_unit(write_run(storage)))  # the task's body, without Prefect: writes and commits the version
    out = storage.version("pair", ALL_LANGUAGES, "test-pair")
    manifest = out.manifest()
    assert manifest is not None and manifest["products"] == {
        name: out.read_shard(name, product_schema(name)).num_rows for name in out.shard_names()
    }

    def load(name):
        # Each product is its own shard, in TRL's conversational format, loadable with datasets.
        return datasets.load_dataset(
            "parquet", data_files=str(Path(out.path) / "data" / f"part-{name}.parquet"), split="train"
        ).to_list()

    return manifest, load


def test_in_language_products(tmp_path):
    report, load = run_pair(tmp_path)
    dpo = {(r["prompt_id"], r["language"]): r for r in load("dpo_in_language")}
    assert set(dpo) == {("p1", "en"), ("p1", "da")}
    en = dpo["p1", "en"]
    assert (en["chosen_sample_index"], en["rejected_sample_index"]) == (1, 2)
    assert en["prompt"] == [{"role": "user", "content": "p1 in en? (sent)"}]
    assert en["chosen"] == [{"role": "assistant", "content": "answer p1/en/1"}]
    assert en["rejected"] == [{"role": "assistant", "content": "answer p1/en/2"}]
    assert (en["chosen_reward"], en["rejected_reward"], en["margin"], en["pool_size"]) == (5.0, 0.0, 5.0, 4)
    sft = {(r["prompt_id"], r["language"]): r for r in load("sft_in_language")}
    assert set(sft) == {("p1", "en"), ("p1", "da"), ("p2", "en")}
    assert sft["p2", "en"]["sample_index"] == 0  # equal rewards: the earliest sample
    assert sft["p1", "en"]["messages"][1] == {"role": "assistant", "content": "answer p1/en/1"}
    assert report["skipped"] == {
        "sft_in_language/pool_too_small": 1,
        "dpo_in_language/pool_too_small": 1,
        "dpo_in_language/no_sample_below_chosen": 1,
    }
    assert report["records_in"] == 10


def test_all_language_products(tmp_path):
    _, load = run_pair(tmp_path)
    sft = {r["prompt_id"]: r for r in load("sft_all_languages")}
    assert (sft["p1"]["language"], sft["p1"]["sample_index"]) == ("da", 0)
    assert sft["p1"]["messages"][0]["content"] == "p1 in da? (sent)"
    assert (sft["p2"]["language"], sft["p2"]["sample_index"]) == ("da", 0)
    dpo = {r["prompt_id"]: r for r in load("dpo_all_languages")}
    # p1 pool: [1, 5, 0, 3, 6, 2]: mean 2.83, std 2.19, target -1.55 -> en/2 (0.0)
    p1 = dpo["p1"]
    assert (p1["chosen_language"], p1["chosen_sample_index"], p1["rejected_language"], p1["rejected_sample_index"]) == (
        "da",
        0,
        "en",
        2,
    )
    assert p1["language"] == "da" and p1["prompt"][0]["content"] == "p1 in da? (sent)"
    # p2 pool: [2, 2, 2, 4]: chosen da/0; target 2.5 - 2 * 0.87 = 0.77 -> en/0 (earliest of the tied 2.0s)
    assert (dpo["p2"]["rejected_language"], dpo["p2"]["rejected_sample_index"]) == ("en", 0)


def test_prompt_source_rejected_and_original_text(tmp_path):
    _, load = run_pair(tmp_path, prompt_source="rejected", prompt_text="original")
    p1 = {r["prompt_id"]: r for r in load("dpo_all_languages")}["p1"]
    assert p1["language"] == "en" and p1["prompt"][0]["content"] == "p1 in en?"


def test_random_prompt_source_is_seeded(tmp_path):
    first = run_pair(tmp_path / "a", prompt_source="random")[1]("dpo_all_languages")
    again = run_pair(tmp_path / "b", prompt_source="random")[1]("dpo_all_languages")
    assert [r["language"] for r in first] == [r["language"] for r in again]
    assert all(r["language"] in (r["chosen_language"], r["rejected_language"]) for r in first)


def test_target_min(tmp_path):
    _, load = run_pair(tmp_path, target="min")
    assert {r["prompt_id"]: r["rejected_reward"] for r in load("dpo_all_languages")} == {"p1": 0.0, "p2": 2.0}


def add_scores(storage: Storage, inputs: dict[str, str], records: list[dict]) -> None:
    """Another shard in the English score version (the broken state a test needs)."""
    version = storage.version_at(inputs["score/en"])
    version.write_shard("00002", records, SCORE)
    version.commit({"stage": "score", "language": "en", "key": version.key})


def test_two_rewards_for_one_sample_stop_the_stage(tmp_path):
    cfg = make_config(tmp_path / "store", {"policy": "x", "reward": "y"}, [{"path": "p.jsonl"}])
    storage = Storage(cfg.storage.root)
    inputs = write_run(storage)
    duplicate = {
        "prompt_id": "p1",
        "language": "en",
        "sample_index": 0,
        "reward": 9.0,
        "scored_tokens": 9,
        "reward_model": "r",
    }
    add_scores(storage, inputs, [duplicate])
    with pytest.raises(CrocoError, match="two rewards for sample 0 of prompt 'p1' in en"):
        pair.fn(cfg, pair_unit(inputs))
    assert not storage.version("pair", ALL_LANGUAGES, "test-pair").committed()


def test_a_score_without_a_generated_answer_stops_the_stage(tmp_path):
    cfg = make_config(tmp_path / "store", {"policy": "x", "reward": "y"}, [{"path": "p.jsonl"}])
    storage = Storage(cfg.storage.root)
    inputs = write_run(storage)
    orphan = {
        "prompt_id": "p9",
        "language": "en",
        "sample_index": 0,
        "reward": 1.0,
        "scored_tokens": 9,
        "reward_model": "r",
    }
    add_scores(storage, inputs, [orphan, {**orphan, "sample_index": 1, "reward": 0.0}])
    with pytest.raises(CrocoError, match="sample 0 of prompt 'p9' in en has a score but no generated answer"):
        pair.fn(cfg, pair_unit(inputs))
    assert not storage.version("pair", ALL_LANGUAGES, "test-pair").committed()


def test_off_language_answers_are_kept_by_default_and_their_rates_reported(tmp_path):
    manifest, load = run_pair(tmp_path)
    assert {(r["prompt_id"], r["language"]) for r in load("sft_in_language")} == {
        ("p1", "en"),
        ("p1", "da"),
        ("p2", "en"),
    }
    assert not any("not_in_language" in reason for reason in manifest["skipped"])
    in_language = {
        "chosen_on_target": 1.0,
        "rejected_on_target": 0.0,
        "removed": {},
    }  # en: chosen p1/1, p2/0; rejected p1/2
    assert manifest["fidelity"]["in_language"] == {
        "en": in_language,
        "da": {"chosen_on_target": 0.0, "rejected_on_target": 1.0, "removed": {}},  # p2/da is a pool of one
    }
    # Across languages an answer is judged by its own prompt's language: p1 and p2 both chose a Danish answer (p1's is
    # English) and rejected an English one (p1's is gibberish).
    assert manifest["fidelity"]["all_languages"] == {
        "da": {"chosen_on_target": 0.5, "rejected_on_target": None, "removed": {}},
        "en": {"chosen_on_target": None, "rejected_on_target": 0.5, "removed": {}},
    }


def test_require_chosen_removes_a_danish_pool_whose_best_answer_is_english_and_counts_it(tmp_path):
    manifest, load = run_pair(tmp_path, require_language="chosen")
    assert {(r["prompt_id"], r["language"]) for r in load("sft_in_language")} == {("p1", "en"), ("p2", "en")}
    assert {(r["prompt_id"], r["language"]) for r in load("dpo_in_language")} == {("p1", "en")}  # rejected not checked
    assert [r["prompt_id"] for r in load("sft_all_languages")] == ["p2"]
    assert [r["prompt_id"] for r in load("dpo_all_languages")] == ["p2"]
    removed = {
        "sft_in_language/chosen_not_in_language": 1,
        "dpo_in_language/chosen_not_in_language": 1,
        "sft_all_languages/chosen_not_in_language": 1,
        "dpo_all_languages/chosen_not_in_language": 1,
    }
    assert {k: v for k, v in manifest["skipped"].items() if "not_in_language" in k} == removed
    fidelity = manifest["fidelity"]
    assert fidelity["in_language"]["da"]["removed"] == {k: v for k, v in removed.items() if "in_language/" in k}
    assert fidelity["in_language"]["en"]["removed"] == {}
    assert fidelity["all_languages"]["da"]["removed"] == {k: v for k, v in removed.items() if "all_languages/" in k}
    assert fidelity["in_language"]["da"]["chosen_on_target"] == 0.0  # the rates are of the answers before removal


def test_require_both_also_removes_a_pool_whose_rejected_answer_is_off_language(tmp_path):
    manifest, load = run_pair(tmp_path, require_language="both")
    assert {(r["prompt_id"], r["language"]) for r in load("sft_in_language")} == {("p1", "en"), ("p2", "en")}
    assert manifest["products"]["dpo_in_language"] == 0
    assert [r["prompt_id"] for r in load("dpo_all_languages")] == ["p2"]
    assert manifest["fidelity"]["in_language"]["en"]["removed"] == {"dpo_in_language/rejected_not_in_language": 1}
    assert manifest["skipped"]["dpo_in_language/rejected_not_in_language"] == 1
    assert manifest["skipped"]["dpo_in_language/chosen_not_in_language"] == 1  # da: removed for its chosen first
