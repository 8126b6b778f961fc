from croco.records import SAMPLE
from croco.tasks.generate import prompt_to_send, shard_seed

from conftest import make_config, read, run


def test_language_instruction_is_appended_only_when_asked():
    assert prompt_to_send("Hvad er 2+2?", "da", False) == "Hvad er 2+2?"
    assert prompt_to_send("Hvad er 2+2?", "da", True) == "Hvad er 2+2?\n\nPlease respond in Danish and nothing else."


def test_each_shard_has_its_own_seed():
    assert shard_seed(42, "en", 0) != shard_seed(42, "en", 1)
    assert shard_seed(42, "en", 3) == shard_seed(42, "en", 3)
    assert shard_seed(42, "en", 3) != shard_seed(42, "da", 3)  # each language draws its own


def test_one_record_per_sample_with_original_and_sent_prompt(tmp_path, tiny_models, prompts_file):
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], generate={"respond_in_language": True})
    result = run(cfg, stages=["generate"])
    assert set(result["versions"]) == {"prompts/en", "prompts/da", "generate/en", "generate/da"}
    assert not any(result["cached"].values())  # a fresh storage root: every unit ran
    samples = read(cfg, "generate", SAMPLE).to_pylist()
    keys = {(s["prompt_id"], s["language"], s["sample_index"]) for s in samples}
    assert len(samples) == len(keys) == 6 * 2
    assert keys == {(f"p{i}", lang, k) for i in range(3) for lang in ("en", "da") for k in range(2)}
    danish = next(s for s in samples if s["language"] == "da")
    assert danish["prompt"] == f"Question {danish['prompt_id'][1]} in da?"
    assert danish["prompt_sent"] == danish["prompt"] + "\n\nPlease respond in Danish and nothing else."
    assert all(s["policy"] == tiny_models["policy"] and s["completion_tokens"] >= 1 for s in samples)
