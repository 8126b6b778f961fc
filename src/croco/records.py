"""The records that flow between stages, as Arrow schemas.

Every record after the prompt stage carries (prompt_id, language, sample_index); stages
join on those keys and never on text (the original code matched by prompt text, and the
respond-in-language suffix silently broke the match).
"""

from __future__ import annotations

import pyarrow as pa

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))

SAMPLE_KEY = ("prompt_id", "language", "sample_index")

PROMPT = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("language", pa.string()),
        ("messages", MESSAGES),  # the whole conversation as loaded; generate uses its first user turn
        ("source", pa.string()),  # file or dataset it came from, for error messages and audits
    ]
)

SAMPLE = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("language", pa.string()),
        ("sample_index", pa.int32()),
        ("prompt", pa.string()),  # the first user message as loaded
        ("prompt_sent", pa.string()),  # what the policy saw (prompt plus the optional language instruction)
        ("response", pa.string()),
        ("finish_reason", pa.string()),  # "stop" (end-of-turn token) or "length" (hit max_new_tokens)
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("policy", pa.string()),
    ]
)

SCORE = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("language", pa.string()),
        ("sample_index", pa.int32()),
        ("reward", pa.float64()),  # the classifier's raw logit, no sigmoid
        ("scored_tokens", pa.int32()),
        ("reward_model", pa.string()),
    ]
)

# A sample a stage could not process, with the reason; counted in the manifest, never given a made-up value.
SKIPPED = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("language", pa.string()),
        ("sample_index", pa.int32()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

# Training data, in TRL's conversational format plus the metadata that explains each choice.
SFT = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("language", pa.string()),
        ("messages", MESSAGES),  # [user, assistant]: the prompt and the chosen answer
        ("reward", pa.float64()),
        ("sample_index", pa.int32()),
        ("pool_size", pa.int32()),
    ]
)

DPO = pa.schema(
    [
        ("prompt_id", pa.string()),
        ("language", pa.string()),  # the prompt's language
        ("chosen_language", pa.string()),
        ("rejected_language", pa.string()),
        ("prompt", MESSAGES),  # [user]
        ("chosen", MESSAGES),  # [assistant]
        ("rejected", MESSAGES),  # [assistant]
        ("chosen_reward", pa.float64()),
        ("rejected_reward", pa.float64()),
        ("margin", pa.float64()),
        ("chosen_sample_index", pa.int32()),
        ("rejected_sample_index", pa.int32()),
        ("pool_size", pa.int32()),
    ]
)
