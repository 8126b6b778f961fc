import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from croco.config import EngineConfig, ModelConfig
from croco.engines import SamplingParams
from croco.engines.transformers_engine import (
    TransformersGenerator,
    TransformersScorer,
    _length_sorted_batches,
    sampling_arguments,
)
from croco.models import encode_chat

PROMPTS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Tell me a long story about a dragon who learns to bake bread."}],
    [{"role": "user", "content": "Hej, hvordan har du det?"}],
]


def params(seed=1, n=3, tokens=5):
    return SamplingParams(num_samples=n, max_new_tokens=tokens, temperature=1.0, top_p=1.0, seed=seed)


@pytest.fixture(scope="module")
def generator(tiny_models):
    return TransformersGenerator(EngineConfig(batch_size=4, device="cpu"), ModelConfig(path=tiny_models["policy"]))


@pytest.fixture(scope="module")
def scorer(tiny_models):
    return TransformersScorer(EngineConfig(batch_size=2, device="cpu"), ModelConfig(path=tiny_models["reward"]))


def test_length_sorted_batches_cover_every_row_once():
    batches = _length_sorted_batches([5, 1, 9, 1, 3], 2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_generate_returns_n_completions_per_prompt_in_order(generator):
    seen = []
    results = generator.generate(PROMPTS, params(), progress=seen.append)
    assert [len(r) for r in results] == [3, 3, 3] and sum(seen) == 9
    lengths = [len(encode_chat(generator.tokenizer, p, generation_prompt=True)) for p in PROMPTS]
    for prompt_length, completions in zip(lengths, results):
        for c in completions:
            assert c.prompt_tokens == prompt_length and 1 <= c.completion_tokens <= 5
            assert c.finish_reason in {"stop", "length"}


def test_a_seeded_prompt_samples_the_same_wherever_it_falls(tiny_models):
    one_at_a_time = TransformersGenerator(
        EngineConfig(batch_size=1, device="cpu"), ModelConfig(path=tiny_models["policy"])
    )
    together = one_at_a_time.generate(PROMPTS, params(n=2, tokens=8), seeds=[11, 22, 33])
    # The longest prompt is sampled last among three, then alone (as in another shard, or a resumed run).
    assert one_at_a_time.generate(PROMPTS[1:2], params(n=2, tokens=8), seeds=[22]) == together[1:2]
    assert together[1][0] != together[1][1]  # a prompt's samples still differ from each other


def test_same_seed_same_samples_other_seed_other_samples(generator):
    first = generator.generate(PROMPTS, params(seed=7, tokens=8))
    assert generator.generate(PROMPTS, params(seed=7, tokens=8)) == first
    assert generator.generate(PROMPTS, params(seed=8, tokens=8)) != first


def test_completion_stops_at_end_of_turn(generator):
    eos = generator.tokenizer.eos_token_id
    word = generator.tokenizer.encode("hello", add_special_tokens=False)
    stopped = generator._completion(word + [eos, 5, 6], prompt_tokens=4)
    assert (stopped.text, stopped.finish_reason, stopped.completion_tokens) == ("hello", "stop", len(word) + 1)
    cut = generator._completion(word, prompt_tokens=4)
    assert cut.finish_reason == "length" and cut.completion_tokens == len(word)


def test_greedy_is_deterministic(generator):
    greedy = SamplingParams(num_samples=2, max_new_tokens=6, temperature=0.0, top_p=1.0, seed=0)
    a, b = generator.generate(PROMPTS[:1], greedy)[0]
    assert a == b


def test_chat_is_tokenized_once_without_a_second_bos(tiny_models):
    # A Llama-style tokenizer: the chat template writes the BOS and tokenizing adds one of its own
    # (SmolLM2's adds none, so it cannot tell a second BOS apart).
    from tokenizers.processors import TemplateProcessing

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["reward"])
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    tokenizer.chat_template = "{{ bos_token }}" + tokenizer.chat_template
    assert tokenizer("Hi")["input_ids"][0] == bos
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    ids = encode_chat(tokenizer, conversation, generation_prompt=False)
    assert ids[0] == bos and ids.count(bos) == 1
    assert (
        ids
        == tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False), add_special_tokens=False)["input_ids"]
    )


def test_scores_are_the_raw_logit_of_the_classifier(scorer, tiny_models):
    conversations = [[*p, {"role": "assistant", "content": f"answer {i}"}] for i, p in enumerate(PROMPTS)]
    scores = scorer.score(conversations, max_len=4096)
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["reward"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["reward"]).eval()
    for conversation, score in zip(conversations, scores):
        ids = torch.tensor([encode_chat(tokenizer, conversation, generation_prompt=False)])
        with torch.no_grad():
            expected = model(input_ids=ids).logits[0, 0].item()  # alone, unpadded: no sigmoid, no batching effects
        assert score.reward == pytest.approx(expected, abs=1e-4)
        assert score.num_tokens == ids.shape[1] and score.skip_reason is None


def test_a_bfloat16_reward_model_scores_with_a_float32_head(tiny_models, tmp_path):
    """bfloat16 rounds a logit of magnitude 16 or more to steps of 0.125 (and ties samples): the reward must equal the
    head applied in float32 to the bfloat16 backbone's hidden state."""
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["reward"])
    with torch.no_grad():
        model.score.weight.mul_(1000)  # rewards in the hundreds, where bfloat16 steps are 1 or 2
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_models["reward"]).save_pretrained(tmp_path)
    bf16_scorer = TransformersScorer(
        EngineConfig(batch_size=1, device="cpu"), ModelConfig(path=str(tmp_path), dtype="bfloat16")
    )
    conversations = [[*p, {"role": "assistant", "content": f"answer {i}"}] for i, p in enumerate(PROMPTS)]
    rewards = [s.reward for s in bf16_scorer.score(conversations, max_len=4096)]

    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    pad = bf16_scorer.tokenizer.pad_token_id
    for conversation, reward in zip(conversations, rewards):
        ids = encode_chat(bf16_scorer.tokenizer, conversation, generation_prompt=False)
        last = max(i for i, token in enumerate(ids) if token != pad)  # where the classifier pools
        with torch.no_grad():
            hidden = reference.model(input_ids=torch.tensor([ids])).last_hidden_state[0, last]
        assert hidden.dtype == torch.bfloat16
        expected = (hidden.float() @ reference.score.weight.float().T).item()
        assert abs(expected) > 16 and reward == pytest.approx(expected, rel=1e-5)


def test_too_long_conversations_are_skipped_never_scored(scorer):
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    long = [{"role": "user", "content": "Hi " * 300}, {"role": "assistant", "content": "Yo"}]
    progress = []
    scores = scorer.score([short, long], max_len=100, progress=progress.append)
    assert scores[0].reward is not None
    assert scores[1].reward is None and scores[1].skip_reason == "too_long" and scores[1].num_tokens > 100
    assert sum(progress) == 2


def test_sampling_adds_no_top_k_of_its_own():
    import torch

    generator = torch.Generator()
    processors = sampling_arguments(SamplingParams(1, 5, 0.7, 0.9, 0), generator)["logits_processor"]
    assert [type(p).__name__ for p in processors] == ["TemperatureLogitsWarper", "TopPLogitsWarper", "SampleWith"]
    assert [type(p).__name__ for p in sampling_arguments(params(), generator)["logits_processor"]] == ["SampleWith"]
    assert sampling_arguments(SamplingParams(1, 5, 0.0, 1.0, 0), generator) == {"do_sample": False}


def test_a_model_without_chat_template_is_refused_by_name(tiny_models, tmp_path):
    import shutil

    from croco.errors import CrocoError
    from croco.models import load_tokenizer

    bare = tmp_path / "bare"
    shutil.copytree(tiny_models["policy"], bare)
    (bare / "chat_template.jinja").unlink()
    with pytest.raises(CrocoError, match=f"model {bare} has no chat template"):
        load_tokenizer(ModelConfig(path=str(bare)))
