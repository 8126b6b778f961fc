import json

import pytest

from croco.config import EngineConfig, ModelConfig
from croco.demo_reward import WRONG_LANGUAGE, load_pairs, repetitive, split_pairs, truncated
from croco.embedded import PREFIX, REWARD, resolve_model
from croco.engines.transformers_engine import TransformersScorer


def test_degradations_are_worse_versions_of_the_reference():
    answer = "Drink water through the day. Keep a bottle on your desk so you remember it."
    assert answer.startswith(truncated(answer)) and len(truncated(answer)) < len(answer) / 2
    assert not truncated(answer).endswith(".")
    assert repetitive(answer).count("Drink water through the day.") == 6


def test_every_reference_is_paired_against_three_degradations():
    pairs = load_pairs()
    assert {p.kind for p in pairs} == {"truncated", "repetitive", "wrong_language"}
    assert {p.language for p in pairs} == set(WRONG_LANGUAGE)
    assert all(p.chosen != p.rejected for p in pairs)


def test_held_out_items_are_disjoint_from_training_items():
    train, held_out = split_pairs(load_pairs())
    assert not {p.item_id for p in train} & {p.item_id for p in held_out}
    assert 0.2 < len(held_out) / (len(train) + len(held_out)) < 0.3


@pytest.mark.slow
def test_saved_demo_reward_model_ranks_held_out_pairs_well(demo_reward):
    """The model loaded from disk and scored the way the pipeline scores, not the builder's report on itself."""
    path, report = demo_reward
    scorer = TransformersScorer(EngineConfig(device="cpu", batch_size=16), ModelConfig(path=path))
    _, held_out = split_pairs(load_pairs())

    def rewards(answer_of) -> list[float]:
        conversations = [
            [{"role": "user", "content": p.prompt}, {"role": "assistant", "content": answer_of(p)}] for p in held_out
        ]
        return [score.reward for score in scorer.score(conversations, max_len=4096)]

    wins = [c > r for c, r in zip(rewards(lambda p: p.chosen), rewards(lambda p: p.rejected))]
    print(json.dumps({**report, "held_out_accuracy_scored_from_disk": sum(wins) / len(wins)}, indent=2))
    assert len(wins) >= 100 and sum(wins) / len(wins) >= 0.8


def test_embedded_reward_resolves_to_the_cache_once_built(tmp_path, monkeypatch):
    monkeypatch.setenv("CROCO_CACHE", str(tmp_path))
    (tmp_path / "smollm2-135m-instruct").mkdir()
    (tmp_path / "smollm2-135m-instruct" / "config.json").write_text("{}")
    (tmp_path / REWARD).mkdir()
    (tmp_path / REWARD / "config.json").write_text("{}")
    assert resolve_model(PREFIX + REWARD) == str(tmp_path / REWARD)
