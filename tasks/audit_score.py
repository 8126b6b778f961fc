"""Reward audit, step 2: the run's reward model scores both answers of every translated pair, and the English chosen
answer under the translated prompt (croco.audit defines the figures made from them).

Conversations are rendered as in the score stage, [user: prompt, assistant: answer], with `score.engine` and
`score.max_len`. A pair with any conversation that cannot be scored is skipped whole, with its reason. `results`
turns every language's scores into the audit's table and plot.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tqdm.auto import tqdm

from croco.audit import language_rows, markdown_table, plot
from croco.caching import stage_task
from croco.config import CrocoConfig
from croco.engines import load_scorer
from croco.plan import Unit
from croco.records import AUDIT_PAIR, AUDIT_SCORE, AUDIT_SKIPPED
from croco.storage import Version
from croco.tasks import always, score, throughput, with_english

NAME = "audit_score"
CODE_VERSION = "1"
LOADS_MODEL = True

enabled = always
units = with_english
settings = score.settings  # the score stage's: the same reward model, engine and max_len shape the same rewards


def inputs(cfg: CrocoConfig, language: str, model: None) -> list[str]:
    return [f"audit_translate/{language}"]


@stage_task
def audit_score(cfg: CrocoConfig, unit: Unit, out: Version, inputs: dict[str, Version]) -> dict[str, Any]:
    upstream = inputs[f"audit_translate/{unit.language}"]
    finished = out.finished_shards()
    todo = [name for name in upstream.shard_names() if name not in finished]

    work_s, new_texts, new_tokens = 0.0, 0, 0
    if todo:
        scorer = load_scorer(cfg.score.engine, cfg.models.reward)
        with tqdm(unit="conversation", desc=f"audit score {unit.language}", dynamic_ncols=True) as bar:
            for name in todo:
                pairs = upstream.read_shard(name, AUDIT_PAIR).to_pylist()
                started = time.perf_counter()
                conversations = [c for pair in pairs for c in _conversations(pair)]
                scores = scorer.score(conversations, cfg.score.max_len, bar.update)
                work_s += time.perf_counter() - started
                scored, skipped = _split(pairs, scores, cfg.models.reward.path)
                out.write_shard(name, scored, AUDIT_SCORE, skipped, AUDIT_SKIPPED)
                new_texts += len(conversations)
                new_tokens += sum(s.num_tokens for s in scores if s.reward is not None)

    skipped_reasons = Counter(out.read(AUDIT_SKIPPED, columns=["reason"], skipped=True)["reason"].to_pylist())
    scored_total = out.read(AUDIT_SCORE, columns=["pair_id"]).num_rows
    return {
        "records_in": scored_total + sum(skipped_reasons.values()),
        "records_out": scored_total,
        "skipped": dict(skipped_reasons),
        "throughput": throughput(new_texts, new_tokens, work_s),
    }


def _conversations(pair: dict) -> list[list[dict[str, str]]]:
    """Chosen, rejected and (outside English) the untranslated English chosen answer, all under the pair's prompt."""
    answers = [pair["chosen"], pair["rejected"]] + ([pair["chosen_en"]] if pair["language"] != "en" else [])
    return [[{"role": "user", "content": pair["prompt"]}, {"role": "assistant", "content": a}] for a in answers]


def _split(pairs: list[dict], scores, reward_model: str) -> tuple[list[dict], list[dict]]:
    scored, skipped = [], []
    remaining = iter(scores)
    for pair in pairs:
        mine = [next(remaining) for _ in _conversations(pair)]
        key = {"pair_id": pair["pair_id"], "language": pair["language"]}
        unscored = next((s for s in mine if s.reward is None), None)
        if unscored is not None:
            skipped.append({**key, "reason": unscored.skip_reason, "detail": f"{unscored.num_tokens} tokens"})
            continue
        scored.append(
            {
                **key,
                "chosen_reward": mine[0].reward,
                "rejected_reward": mine[1].reward,
                "english_chosen_reward": mine[2].reward if len(mine) == 3 else None,
                "reward_model": reward_model,
            }
        )
    return scored, skipped


def results(cfg: CrocoConfig, scored: dict[str, Version], translated: dict[str, Version]) -> dict[str, Any]:
    """Over every language (version by language): the rows of figures, the Markdown table and the plot (PNG bytes)."""
    scores = {language: version.read(AUDIT_SCORE).to_pylist() for language, version in scored.items()}
    on_target = {language: version.manifest()["fidelity"]["on_target"] for language, version in translated.items()}
    rows = language_rows(scores, on_target)
    return {"rows": rows, "markdown": markdown_table(rows, cfg.models.reward.path), "plot": plot(rows)}
