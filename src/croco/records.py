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

# The language an answer is written in (croco.langid): a code of croco.langid.LANGID_LANGUAGES or "unknown", that
# language's probability, and the share of its lines of five words or more in the prompt's language (null: no such line).
DETECTED = [
    ("detected_language", pa.string()),
    ("detected_confidence", pa.float64()),
    ("line_pass_rate", pa.float64()),
]

# A translated conversation (the translate stage): a PROMPT record, which generate reads as it reads loaded prompts,
# plus the English beside it and what language identification says of each translated message. The stage's skipped
# records are in this schema too: conversations not translated (prompt_too_long, `messages` empty) or dropped.
TRANSLATION = pa.schema(
    [
        *PROMPT,
        ("english", MESSAGES),  # the source conversation, message for message
        (
            "checks",  # one per message (croco.fidelity.translation_check)
            pa.list_(
                pa.struct(
                    [
                        ("detected_language", pa.string()),
                        ("detected_confidence", pa.float64()),
                        ("length_ratio", pa.float64()),  # characters of the translation per character of the English
                        ("problem", pa.string()),  # copy, off_target, length_ratio; null when none
                        ("finish_reason", pa.string()),  # as in SAMPLE: "length" is a translation cut off
                        ("completion_tokens", pa.int32()),
                    ]
                )
            ),
        ),
        ("flag", pa.string()),  # the conversation's first problem (or why it was skipped); null when none
        ("detail", pa.string()),  # for prompt_too_long: how long the longest prompt was
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
        # "stop" (end-of-turn token), "length" (hit max_new_tokens), another reason a server gave
        # ("content_filter", "abort", ...), or "unknown" when it gave none
        ("finish_reason", pa.string()),
        # null where the engine does not know a sample's own count (an OpenAI-compatible server asked for
        # several samples at once reports one total for all of them)
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("policy", pa.string()),
        *DETECTED,
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

# Evaluation: one answer per (model, language, question), and one judgment per battle and order.
ARENA_ANSWER = pa.schema(
    [
        ("model", pa.string()),  # the evaluated model's name (policy, sft, dpo or a name from evaluate.models)
        ("language", pa.string()),
        ("question_id", pa.string()),
        ("category", pa.string()),
        ("subcategory", pa.string()),
        ("prompt", pa.string()),
        ("output", pa.string()),  # the answer, without any reasoning trace
        ("reasoning", pa.string()),  # a <think> trace or the server's reasoning field, kept apart
        ("finish_reason", pa.string()),  # as in SAMPLE
        ("prompt_tokens", pa.int32()),  # as in SAMPLE: null where unknown
        ("completion_tokens", pa.int32()),
        ("generator", pa.string()),  # model path, plus the adapter if any
        *DETECTED,  # of the output
    ]
)

JUDGMENT = pa.schema(
    [
        ("model", pa.string()),
        ("baseline", pa.string()),
        ("language", pa.string()),
        ("question_id", pa.string()),
        ("subcategory", pa.string()),
        ("order", pa.string()),  # "model_first", "baseline_first", or "none" for the reward judge
        ("outcome", pa.string()),  # the model's result: "win", "loss", "tie"; null when unparseable
        (
            "unparseable",
            pa.string(),
        ),  # why there is no outcome: "no_verdict", "length" (cut off), "tie_not_allowed", "too_long"
        ("judgment", pa.string()),  # the judge's text, or the two rewards for the reward judge
        ("model_length", pa.int32()),  # answer lengths in characters
        ("baseline_length", pa.int32()),
    ]
)

# An arena answer the judge could not pit against the baseline (e.g. the baseline has no answer to that question).
BATTLE_SKIPPED = pa.schema(
    [
        ("model", pa.string()),
        ("baseline", pa.string()),
        ("language", pa.string()),
        ("question_id", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)

EUROEVAL_SCORE = pa.schema(
    [
        ("model", pa.string()),  # croco's name for the model
        ("language", pa.string()),
        ("dataset", pa.string()),
        ("metric", pa.string()),
        ("score", pa.float64()),  # percent, as EuroEval reports it
        ("ci95", pa.float64()),  # EuroEval's 95% interval half-width; null with a single iteration
    ]
)

# The reward transfer audit (croco.audit): an English preference pair in one language, the English beside it.
AUDIT_PAIR = pa.schema(
    [
        ("pair_id", pa.string()),
        ("language", pa.string()),
        ("prompt", pa.string()),  # translated (the English itself for en)
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("prompt_en", pa.string()),
        ("chosen_en", pa.string()),
        ("rejected_en", pa.string()),
        ("cut_off", pa.bool_()),  # some translation of the pair hit the token limit
    ]
)

# Rewards of one audit pair, all under the translated prompt; english_chosen_reward: the untranslated English chosen
# answer (null for en).
AUDIT_SCORE = pa.schema(
    [
        ("pair_id", pa.string()),
        ("language", pa.string()),
        ("chosen_reward", pa.float64()),
        ("rejected_reward", pa.float64()),
        ("english_chosen_reward", pa.float64()),
        ("reward_model", pa.string()),
    ]
)

AUDIT_SKIPPED = pa.schema(
    [("pair_id", pa.string()), ("language", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
