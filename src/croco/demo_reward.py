"""The demonstration reward model: SmolLM2-135M-Instruct with a one-logit head fitted here.

This is a demonstration model, small enough to build offline in a minute on a CPU; it is
no substitute for a real reward model such as Skywork-Reward-V2. It exists so the whole
pipeline runs without a hub.

Preference set: `data/demo/reward_preferences.jsonl`, prompts with reference answers in
English, Danish, German and Irish, written for this project. Each reference answer is
preferred over three degraded versions of itself: cut off mid-way, stuck repeating its
opening words, and the same answer in another language. The backbone stays frozen; the
head is a Bradley-Terry logistic regression on the features the sequence classifier reads
(its last non-padding token), fitted on 75% of the items and measured on the rest.

    python -m croco.demo_reward     # refit and print train and held-out accuracy
"""

from __future__ import annotations

import json
import logging
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as transformers_logging

from croco.embedded import data_file
from croco.models import encode_chat

log = logging.getLogger("croco")

HELD_OUT_FRACTION = 0.25
SEED = 42
L2 = 1e-2
WRONG_LANGUAGE = {"en": "da", "da": "de", "de": "ga", "ga": "en"}


@dataclass(frozen=True)
class Pair:
    item_id: str
    language: str
    prompt: str
    chosen: str
    rejected: str
    kind: str


def truncated(answer: str) -> str:
    words = answer.split()
    return " ".join(words[: max(3, int(len(words) * 0.4))]).rstrip(".,;:!?")


def repetitive(answer: str) -> str:
    opening = " ".join(answer.split()[:5])
    return " ".join([opening] * 6)


def load_pairs() -> list[Pair]:
    items: dict[tuple[str, str], dict] = {}
    with open(data_file("reward_preferences.jsonl"), encoding="utf-8") as handle:
        for line in handle:
            item = json.loads(line)
            items[item["item_id"], item["language"]] = item
    pairs = []
    for (item_id, language), item in sorted(items.items()):
        other = items[item_id, WRONG_LANGUAGE[language]]["answer"]
        for kind, rejected in (
            ("truncated", truncated(item["answer"])),
            ("repetitive", repetitive(item["answer"])),
            ("wrong_language", other),
        ):
            pairs.append(Pair(item_id, language, item["prompt"], item["answer"], rejected, kind))
    return pairs


def split_pairs(pairs: list[Pair]) -> tuple[list[Pair], list[Pair]]:
    """Hold out whole items (all languages and degradations of a prompt), so no prompt is seen in both."""
    ids = sorted({p.item_id for p in pairs})
    held_out = set(random.Random(SEED).sample(ids, round(len(ids) * HELD_OUT_FRACTION)))
    return [p for p in pairs if p.item_id not in held_out], [p for p in pairs if p.item_id in held_out]


@torch.inference_mode()
def pooled_features(model, tokenizer, conversations: list[list[dict]], batch_size: int = 16) -> torch.Tensor:
    """The hidden state the classifier's head reads, found by running the classifier with an identity head."""
    encoded = [encode_chat(tokenizer, c, generation_prompt=False) for c in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # similar lengths per batch: little padding
    features = torch.empty(len(encoded), model.config.hidden_size)
    head, model.score = model.score, torch.nn.Identity()
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="demo reward features", unit="batch", leave=False):
            batch = order[start : start + batch_size]
            inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, return_tensors="pt")
            features[batch] = model(**inputs).logits.float()
    finally:
        model.score = head
    return features


def pair_features(model, tokenizer, pairs: list[Pair]) -> torch.Tensor:
    """chosen minus rejected features, one row per pair; each distinct answer is encoded once."""
    texts = sorted({(p.prompt, answer) for p in pairs for answer in (p.chosen, p.rejected)})
    row = {text: i for i, text in enumerate(texts)}
    features = pooled_features(
        model, tokenizer, [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in texts]
    )
    chosen = torch.tensor([row[p.prompt, p.chosen] for p in pairs])
    rejected = torch.tensor([row[p.prompt, p.rejected] for p in pairs])
    return features[chosen] - features[rejected]


def fit_head(differences: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry weights w maximising mean log sigmoid(w . (chosen - rejected)), with an L2 penalty."""
    scale = differences.std(dim=0).clamp_min(1e-6)
    x = differences / scale
    weights = torch.zeros(x.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=500, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = torch.nn.functional.softplus(-(x @ weights)).mean() + L2 * weights.square().sum()
        value.backward()
        return value

    optimizer.step(loss)
    return (weights / scale).detach()


def accuracy(weights: torch.Tensor, differences: torch.Tensor) -> float:
    return float(((differences @ weights) > 0).float().mean())


def build_reward_model(policy_dir: Path, out: Path) -> dict[str, float]:
    """Fit the head, save the full classifier to `out`, and return its accuracies."""
    log.info("building the demonstration reward model (once per machine; about 2-3 minutes on 2 CPU cores)")
    torch.manual_seed(SEED)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    tokenizer.padding_side = "left"
    # transformers warns that the head is newly initialised: it is, and fitted just below.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            policy_dir, num_labels=1, pad_token_id=tokenizer.pad_token_id, dtype=torch.float32, use_safetensors=True
        ).eval()
    finally:
        transformers_logging.set_verbosity(verbosity)
    train, held_out = split_pairs(load_pairs())
    train_x, held_x = pair_features(model, tokenizer, train), pair_features(model, tokenizer, held_out)
    weights = fit_head(train_x)
    model.score.weight.data.copy_(weights.unsqueeze(0))
    per_kind = {
        kind: accuracy(weights, held_x[[i for i, p in enumerate(held_out) if p.kind == kind]])
        for kind in sorted({p.kind for p in held_out})
    }
    report = {
        "train_accuracy": accuracy(weights, train_x),
        "held_out_accuracy": accuracy(weights, held_x),
        "held_out_accuracy_by_degradation": per_kind,
        "train_pairs": len(train),
        "held_out_pairs": len(held_out),
    }
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "croco_embedded.json").write_text(json.dumps({"built_from": str(policy_dir), **report}, indent=2))
    log.info("demonstration reward model: held-out pairwise accuracy %.3f", report["held_out_accuracy"])
    return report


def main() -> int:
    from croco.embedded import POLICY, PREFIX, resolve_model

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    policy = Path(resolve_model(PREFIX + POLICY))
    with tempfile.TemporaryDirectory() as out:
        report = build_reward_model(policy, Path(out))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
