from conftest import scripted_choice, scripted_openai_server
from croco.config import parse_config
from croco.judging import Battle, LLMJudge, Verdict, judge_prompt, parse_verdict


def test_last_verdict_counts_and_order_maps_to_the_model():
    text = "Answer 1 looks better at first [[1]], but on reflection [[2]]"
    assert parse_verdict(text, "model_first", "stop", True).outcome == "loss"
    assert parse_verdict(text, "baseline_first", "stop", True).outcome == "win"


def test_ties_unparseable_and_cut_off_judgments():
    assert parse_verdict("equal [[ t ]]", "model_first", "stop", True).outcome == "tie"
    assert parse_verdict("equal [[T]]", "model_first", "stop", False) == Verdict(None, "tie_not_allowed", "equal [[T]]")
    assert parse_verdict("I think answer", "model_first", "length", True).unparseable == "length"
    assert parse_verdict("no idea", "model_first", "stop", True).unparseable == "no_verdict"


def test_prompt_shows_answers_in_the_battle_order_and_offers_ties_only_when_allowed():
    battle = Battle("Q?", "MODEL", "BASE", "baseline_first", ("dpo", "policy", "en", "q1", "baseline_first"))
    text = judge_prompt(battle, allow_ties=False)[-1]["content"]
    assert text.index("BASE") < text.index("MODEL")
    assert "[[T]]" not in text
    assert "[[T]]" in judge_prompt(battle, allow_ties=True)[-1]["content"]


def battle(question_id: str, order: str = "model_first") -> Battle:
    return Battle(f"Question {question_id}?", "MODEL", "BASE", order, ("dpo", "policy", "en", question_id, order))


def test_a_battle_is_judged_with_the_same_seed_wherever_it_falls():
    def reply(request):
        return {
            "choices": [scripted_choice(0, "[[1]]")],
            "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14},
        }

    with scripted_openai_server(reply) as (url, received):
        raw = {
            "languages": ["en"],
            "models": {"policy": {"path": "a"}, "reward": {"path": "b"}},
            "data": {"sources": [{"path": "p.jsonl"}]},
            "judge": {"model": {"path": "judge"}, "engine": {"name": "openai", "base_url": url}},
        }
        judge = LLMJudge(parse_config(raw))
        # One shard as a first run cut it, then another composition (a resumed run, another shard size).
        judge.judge([battle("q1"), battle("q2"), battle("q2", "baseline_first"), battle("q3")], lambda n: None)
        judge.judge([battle("q3"), battle("q2")], lambda n: None)

    seeds: dict[str, set[int]] = {}
    for request in received:
        seeds.setdefault(request["messages"][-1]["content"], set()).add(request["seed"])
    assert [len(found) for found in seeds.values()] == [1, 1, 1, 1]  # each battle had one seed, wherever it stood
    assert len(set.union(*seeds.values())) == 4  # and no two battles shared one


def test_a_local_judge_retrained_in_place_gets_a_new_identity(tiny_models, tmp_path):
    import shutil

    from croco.judging import RewardJudge

    judge = shutil.copytree(tiny_models["policy"], tmp_path / "judge")
    reward = shutil.copytree(tiny_models["reward"], tmp_path / "reward-judge")
    raw = {
        "languages": ["en"],
        "models": {"policy": {"path": tiny_models["policy"]}, "reward": {"path": tiny_models["reward"]}},
        "data": {"sources": [{"path": "prompts.jsonl"}]},
    }

    def identities() -> tuple[dict, dict]:
        llm = parse_config({**raw, "judge": {"kind": "llm", "model": {"path": str(judge)}}})
        by_reward = parse_config({**raw, "judge": {"kind": "reward", "model": {"path": str(reward)}}})
        return LLMJudge(llm).identity(), RewardJudge(by_reward).identity()

    before = identities()
    for folder in (judge, reward):  # retrained into the same folders: other weights, same config
        (folder / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes()[:-8] + b"retrain!")
    after = identities()
    assert before[0] != after[0] and before[1] != after[1]
