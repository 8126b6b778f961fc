"""The OpenAI-compatible engine against a real local server (`transformers serve`), and against a scripted one
where a real server cannot be made to answer as the test needs (a content filter, several samples in one response)."""

import pytest

from conftest import make_config, read, run, scripted_choice, scripted_openai_server, write_jsonl
from croco.config import EngineConfig, ModelConfig
from croco.engines import SamplingParams, load_generator
from croco.errors import CrocoError
from croco.records import ARENA_ANSWER, JUDGMENT


def arena_question(qid: str, language: str) -> dict:
    return {
        "question_id": qid,
        "prompt": f"Question {qid} in {language}?",
        "category": "hard_prompt",
        "subcategory": "coding",
        "language": language,
    }


PROMPTS = [[{"role": "user", "content": "Name a colour."}], [{"role": "user", "content": "What is two plus two?"}]]


def test_samples_match_the_transformers_engine_and_missing_choices_are_asked_for_again(openai_server, smollm_dir):
    model = ModelConfig(path=str(smollm_dir), dtype="float32")
    served = load_generator(EngineConfig(name="openai", base_url=openai_server, concurrency=2), model)
    params = SamplingParams(num_samples=2, max_new_tokens=8, temperature=0.0, top_p=1.0, seed=1)
    done = []
    remote = served.generate(PROMPTS, params, done.append)
    # transformers serve ignores `n`: each prompt needed a second request, and progress saw every sample.
    assert [len(samples) for samples in remote] == [2, 2] and sum(done) == 4
    assert all(
        c.finish_reason in {"stop", "length"} and 0 < c.completion_tokens <= 8 and c.prompt_tokens > 0
        for s in remote
        for c in s
    )
    local = load_generator(EngineConfig(device="cpu"), model).generate(PROMPTS, params)
    assert [s[0].text for s in remote] == [s[0].text for s in local]


def test_each_sample_keeps_the_finish_reason_and_token_count_the_server_gave_it():
    reasons = ["stop", "length", "content_filter", "abort", None]

    def reply(request):
        if request["n"] == 1:
            return {
                "choices": [scripted_choice(0, "alone", "content_filter")],
                "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
            }
        choices = [scripted_choice(i, f"answer {i}", reason) for i, reason in enumerate(reasons)]
        return {"choices": choices, "usage": {"prompt_tokens": 7, "completion_tokens": 50, "total_tokens": 57}}

    with scripted_openai_server(reply) as (url, _):
        generator = load_generator(EngineConfig(name="openai", base_url=url), ModelConfig(path="scripted"))
        (samples,) = generator.generate(PROMPTS[:1], SamplingParams(len(reasons), 8, 1.0, 1.0, 0))
        ((alone,),) = generator.generate(PROMPTS[:1], SamplingParams(1, 8, 1.0, 1.0, 0))
    assert [s.finish_reason for s in samples] == ["stop", "length", "content_filter", "abort", "unknown"]
    # One usage for five samples says nothing of any one of them: no count, rather than the average.
    assert [(s.prompt_tokens, s.completion_tokens) for s in samples] == [(7, None)] * len(reasons)
    assert (alone.finish_reason, alone.prompt_tokens, alone.completion_tokens) == ("content_filter", 7, 3)


def test_an_unset_key_variable_is_named(smollm_dir):
    with pytest.raises(CrocoError, match="CROCO_TEST_MISSING_KEY"):
        load_generator(
            EngineConfig(name="openai", base_url="http://127.0.0.1:9/v1", api_key_env="CROCO_TEST_MISSING_KEY"),
            ModelConfig(path=str(smollm_dir)),
        )


def test_an_unreachable_server_is_one_clear_error(smollm_dir):
    engine = EngineConfig(name="openai", base_url="http://127.0.0.1:9/v1", max_retries=1, timeout_s=2)
    with pytest.raises(CrocoError, match=r"request to http://127.0.0.1:9/v1 .* failed"):
        load_generator(engine, ModelConfig(path=str(smollm_dir))).generate(
            PROMPTS[:1], SamplingParams(1, 4, 0.0, 1.0, 0)
        )


def test_arena_and_llm_judge_through_the_server_keep_the_key_out_of_every_file(
    openai_server, smollm_dir, tiny_models, prompts_file, tmp_path, monkeypatch
):
    monkeypatch.setenv("CROCO_TEST_KEY", "sk-secret-value-123")
    engine = {"name": "openai", "base_url": openai_server, "api_key_env": "CROCO_TEST_KEY", "concurrency": 4}
    questions = write_jsonl(tmp_path / "arena.jsonl", [arena_question(f"q{i}", "en") for i in range(2)])
    cfg = make_config(
        tmp_path / "store",
        {**tiny_models, "policy": str(smollm_dir)},
        [{"path": str(prompts_file)}],
        languages=["en"],
        evaluate={"run_adapters": [], "models": {"again": {"path": str(smollm_dir)}}},
        arena={"prompts": {"path": str(questions)}, "max_new_tokens": 16, "engine": engine},
        judge={
            "kind": "llm",
            "model": {"path": str(smollm_dir)},
            "engine": engine,
            "max_new_tokens": 24,
            "allow_ties": True,
        },
    )
    result = run(cfg, stages=["judge"])
    assert set(result["versions"]) == {"arena/en/policy", "arena/en/again", "judge/en/again"}
    # The key is in no file: the versions, the cache records, the run records, the report and the saved config.
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "manifest.json" for path in written) and any("_prefect" in path.parts for path in written)
    for path in written:
        assert b"sk-secret-value-123" not in path.read_bytes(), path
    answers = read(cfg, "arena", ARENA_ANSWER).to_pylist()
    assert len(answers) == 4 and all(a["output"] for a in answers)
    # "again" is the same model as the policy under another name: a unit of its own, its answers under its name.
    assert sorted(a["model"] for a in answers) == ["again", "again", "policy", "policy"]
    judgments = read(cfg, "judge", JUDGMENT).to_pylist()
    assert len(judgments) == 4  # 2 questions x 2 orders
    assert all(j["outcome"] is not None or j["unparseable"] in {"no_verdict", "length"} for j in judgments)
