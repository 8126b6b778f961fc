"""Pairwise judges (docs: METHOD.md, stage 7).

A battle is one question answered by the evaluated model and by the baseline. An LLM judge
sees the question and both answers in a given order and ends with [[1]], [[2]] or [[T]];
the last verdict in its text counts; its sampling seed comes from the battle itself, so a
resumed run, another shard size or another concurrency asks for the same judgment. The reward
judge scores both answers with a reward model and the higher reward wins; only a reward model
other than the one the training pairs were chosen with is a fair judge.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Callable

from croco.config import CrocoConfig, ModelConfig
from croco.engines import SamplingParams, engine_identity, load_generator, load_scorer
from croco.fileio import stable_hash
from croco.models import model_identity

SYSTEM_PROMPT = "You are a careful, impartial judge of answers written by AI assistants."
JUDGE_PROMPT = """Compare two answers to the user's request below. The request and the answers may be in any language; judge them in the language of the request. Weigh helpfulness, correctness, depth and clarity, and whether the answer is written in the language of the request. Do not let the length of the answers or the order they are shown in sway you.

[Request]
{question}

[Answer 1]
{answer_1}

[Answer 2]
{answer_2}

Explain your reasoning briefly. Then give your verdict on the last line: [[1]] if answer 1 is better, [[2]] if answer 2 is better{tie_option}."""
TIE_OPTION = ", or [[T]] if they are equally good"
VERDICT = re.compile(r"\[\[\s*(1|2|T)\s*\]\]", re.IGNORECASE)


@dataclass(frozen=True)
class Battle:
    question: str
    model_answer: str
    baseline_answer: str
    order: str  # "model_first", "baseline_first", or "none" when order does not matter (reward judge)
    key: tuple[str, ...]  # (model, baseline, language, question id, order): what the battle is, wherever it is judged


def battle_seed(run_seed: int, battle: Battle) -> int:
    return int(stable_hash([run_seed, *battle.key]), 16) % 2**31


@dataclass(frozen=True)
class Verdict:
    outcome: str | None  # the model's result: win, loss or tie; None when unparseable
    unparseable: str | None
    judgment: str


def parse_verdict(text: str, order: str, finish_reason: str, allow_ties: bool) -> Verdict:
    """The last [[1]]/[[2]]/[[T]] in the text, turned into the model's result."""
    found = VERDICT.findall(text)
    if not found:
        return Verdict(None, "length" if finish_reason == "length" else "no_verdict", text)
    last = found[-1].upper()
    if last == "T":
        return Verdict("tie", None, text) if allow_ties else Verdict(None, "tie_not_allowed", text)
    model_slot = "1" if order == "model_first" else "2"
    return Verdict("win" if last == model_slot else "loss", None, text)


def judge_prompt(battle: Battle, allow_ties: bool) -> list[dict[str, str]]:
    first, second = (
        (battle.model_answer, battle.baseline_answer)
        if battle.order == "model_first"
        else (battle.baseline_answer, battle.model_answer)
    )
    text = JUDGE_PROMPT.format(
        question=battle.question, answer_1=first, answer_2=second, tie_option=TIE_OPTION if allow_ties else ""
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]


class LLMJudge:
    """Any chat model on any engine, prompted with JUDGE_PROMPT."""

    def __init__(self, cfg: CrocoConfig):
        self.settings = cfg.judge
        self.seed = cfg.seed
        self._generator = None

    def identity(self) -> dict[str, Any]:
        template = hashlib.sha256((SYSTEM_PROMPT + JUDGE_PROMPT + TIE_OPTION).encode()).hexdigest()[:16]
        model: ModelConfig = self.settings.model  # type: ignore[assignment]
        engine = self.settings.engine
        # On a server the weights are the server's (a hosted judge has no files here): the served name names them.
        found = model_identity(model) if engine.name != "openai" else model.model_dump()
        sampling = [self.settings.temperature, self.settings.max_new_tokens, self.settings.allow_ties, self.seed]
        return {
            "kind": "llm",
            "model": found,
            "engine": engine_identity(engine, model),
            "template": template,
            "sampling": sampling,
        }

    def judge(self, battles: list[Battle], progress: Callable[[int], None]) -> list[Verdict]:
        if self._generator is None:
            self._generator = load_generator(self.settings.engine, self.settings.model)
        params = SamplingParams(1, self.settings.max_new_tokens, self.settings.temperature, 1.0, self.seed)
        prompts = [judge_prompt(b, self.settings.allow_ties) for b in battles]
        completions = self._generator.generate(
            prompts, params, progress, seeds=[battle_seed(self.seed, b) for b in battles]
        )
        return [
            parse_verdict(c.text, b.order, c.finish_reason, self.settings.allow_ties)
            for b, (c,) in zip(battles, completions)
        ]


def judges_with_training_reward(cfg: CrocoConfig) -> bool:
    """Whether the reward judge is the reward model the training pairs were chosen with: a circular judge,
    bound to favour the tuned models."""
    judge, trained_with = cfg.judge.model or cfg.models.reward, cfg.models.reward
    same_model = (judge.path, judge.revision, judge.adapter) == (
        trained_with.path,
        trained_with.revision,
        trained_with.adapter,
    )
    return cfg.judge.kind == "reward" and same_model


class RewardJudge:
    """The answer the reward model scores higher wins; equal rewards tie."""

    def __init__(self, cfg: CrocoConfig):
        self.model = cfg.judge.model or cfg.models.reward
        self.engine = cfg.judge.engine
        self.max_len = cfg.judge.max_len
        self._scorer = None

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "reward",
            "model": model_identity(self.model),
            "engine": engine_identity(self.engine, self.model),
            "max_len": self.max_len,
        }

    def judge(self, battles: list[Battle], progress: Callable[[int], None]) -> list[Verdict]:
        if self._scorer is None:
            self._scorer = load_scorer(self.engine, self.model)
        conversations = [
            [{"role": "user", "content": b.question}, {"role": "assistant", "content": answer}]
            for b in battles
            for answer in (b.model_answer, b.baseline_answer)
        ]
        scores = self._scorer.score(conversations, self.max_len)
        progress(len(battles))
        verdicts = []
        for model, baseline in zip(scores[::2], scores[1::2]):
            text = json.dumps({"model_reward": model.reward, "baseline_reward": baseline.reward})
            if model.reward is None or baseline.reward is None:
                verdicts.append(Verdict(None, model.skip_reason or baseline.skip_reason, text))
            else:
                outcome = (
                    "win" if model.reward > baseline.reward else "loss" if model.reward < baseline.reward else "tie"
                )
                verdicts.append(Verdict(outcome, None, text))
        return verdicts


def make_judge(cfg: CrocoConfig) -> LLMJudge | RewardJudge:
    return LLMJudge(cfg) if cfg.judge.kind == "llm" else RewardJudge(cfg)
