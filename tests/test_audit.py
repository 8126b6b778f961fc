"""The reward transfer audit: its figures on hand-made scores, the pair files it accepts, and the flow end to end."""

import json
import math

import pytest

from conftest import REPO, make_config, prompt_record, save_config, write_jsonl
from croco.audit import PAIR_FIELDS, accuracy, language_rows, ranks, read_pairs, spearman, wrong_language_rate
from croco.config import DataSource
from croco.errors import CrocoError
from croco.records import AUDIT_PAIR, AUDIT_SCORE
from croco.storage import Storage


def test_accuracy_counts_chosen_strictly_above_rejected():
    assert accuracy([2.0, 1.0, 0.5, -1.0], [1.0, 1.0, 0.7, -3.0]) == 0.5  # the tie (1.0, 1.0) is not a win
    assert accuracy([], []) is None


def test_wrong_language_rate_counts_english_strictly_above_the_translation():
    assert wrong_language_rate([3.0, 1.0, 0.0, 2.0, 5.0], [1.0, 1.0, 0.5, 2.5, 4.0]) == 0.4  # pairs 1 and 5
    assert wrong_language_rate([], []) is None


def test_spearman_on_hand_made_margins_with_ties():
    assert ranks([10.0, 30.0, 20.0, 20.0]) == [1.0, 4.0, 2.5, 2.5]
    assert spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == pytest.approx(1.0)
    assert spearman([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # ranks x: 1 2 3 4; y: 1 2.5 2.5 4; Pearson of those: 4.5 / sqrt(5 * 4.5)
    assert spearman([1.0, 2.0, 3.0, 4.0], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(4.5 / math.sqrt(5 * 4.5))
    assert spearman([1.0, 2.0], [3.0, 3.0]) is None  # a constant side has no rank correlation
    assert spearman([1.0], [2.0]) is None


def test_spearman_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = [0.3, -1.2, 2.5, 2.5, 0.0, 7.1, -3.3, 0.3]
    y = [1.0, 0.2, 0.2, 3.1, -0.5, 2.2, -1.0, 0.9]
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)


def score(pair_id, language, chosen, rejected, english_chosen=None):
    return {
        "pair_id": pair_id,
        "language": language,
        "chosen_reward": chosen,
        "rejected_reward": rejected,
        "english_chosen_reward": english_chosen,
        "reward_model": "rm",
    }


def test_language_rows_on_hand_made_scores():
    scores = {
        "da": [
            score("a", "da", 1.0, 0.0, english_chosen=2.0),  # margin 1, English outscores the translation
            score("b", "da", 0.0, 1.0, english_chosen=-1.0),  # margin -1, a wrong order
            score("c", "da", 3.0, 0.0, english_chosen=3.0),  # margin 3; a tie with English is not a win for it
        ],
        "en": [
            score("a", "en", 2.0, 0.0),
            score("b", "en", 1.0, 0.0),
            score("c", "en", 5.0, 0.0),
            score("d", "en", 1.0, 2.0),
        ],
    }
    en, da = language_rows(scores, {"en": 1.0, "da": 0.5})
    assert en == {
        "language": "en",
        "pairs": 4,
        "accuracy": 0.75,
        "mean_margin": 1.75,
        "margin_spearman": None,
        "wrong_language_rate": None,
        "translation_on_target": 1.0,
    }
    # da's margins 1, -1, 3 against English's 2, 1, 5 on the shared pairs a, b, c: the same order.
    assert da["pairs"] == 3 and da["accuracy"] == pytest.approx(2 / 3) and da["mean_margin"] == 1.0
    assert da["margin_spearman"] == pytest.approx(1.0)
    assert da["wrong_language_rate"] == pytest.approx(1 / 3)
    assert da["translation_on_target"] == 0.5


def pair(pair_id="p1", **fields):
    return {"pair_id": pair_id, "prompt": "Q?", "chosen": "Good.", "rejected": "Bad.", **fields}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"pair_id": "p2", "prompt": "Q?", "chosen": "Good."}, "line 2: `rejected` must be a non-empty string"),
        (pair("p2", chosen="  "), "line 2: `chosen` must be a non-empty string"),
        (pair("p2", prompt=["Q?"]), "line 2: `prompt` must be a non-empty string"),
        (pair("p2", rejected="Good."), "line 2: `chosen` and `rejected` are the same text"),
        (pair("p1"), "line 2: pair_id 'p1' was already used at"),
        ('{"pair_id": "p2",', "line 2: not valid JSON"),
        (["not", "a", "record"], "line 2: not a record"),
    ],
)
def test_a_bad_pair_record_is_named_with_its_line(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "pairs.jsonl", [pair("p1"), bad, pair("p3")])
    with pytest.raises(CrocoError, match=f"{path} {message}".replace("?", r"\?").replace("(", r"\(")):
        read_pairs(DataSource(path=str(path)))


def test_the_shipped_pairs_are_valid_and_limit_keeps_the_first(tmp_path):
    shipped = read_pairs(DataSource(path="embedded:audit-pairs"))
    assert len(shipped) == 40 and len({p.pair_id for p in shipped}) == 40
    assert [p.pair_id for p in read_pairs(DataSource(path="embedded:audit-pairs"), limit=3)] == [
        p.pair_id for p in shipped[:3]
    ]
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(CrocoError, match="holds no preference pairs"):
        read_pairs(DataSource(path=str(empty)))


def test_a_dataset_folder_in_the_pair_shape_is_read(tmp_path):
    import datasets

    rows = [pair(f"p{i}", chosen=f"Good {i}.") for i in range(3)]
    (tmp_path / "pairs").mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs" / "train.parquet"))
    found = read_pairs(DataSource(path=str(tmp_path / "pairs")))
    assert [(p.pair_id, p.chosen) for p in found] == [(r["pair_id"], r["chosen"]) for r in rows]
    assert list(PAIR_FIELDS) == ["pair_id", "prompt", "chosen", "rejected"]


def test_the_audit_runs_only_when_asked_for_and_always_with_english(tmp_path, tiny_models, prompts_file):
    from croco.plan import build_plan

    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], languages=["da", "ga"])
    assert not [u.id for u in build_plan(cfg).units if u.stage.startswith("audit")]
    audit = build_plan(cfg, ["audit_score"])
    assert [u.id for u in audit.units] == [
        f"{stage}/{code}" for stage in ("audit_translate", "audit_score") for code in ("en", "da", "ga")
    ]
    # Another reward model keeps the translations' keys; another translator keeps the English copy's.
    other = make_config(
        tmp_path / "store",
        {**tiny_models, "reward": tiny_models["policy"]},
        [{"path": str(prompts_file)}],
        languages=["da"],
    )
    assert build_plan(other, ["audit_score"]).by_id["audit_translate/da"].key == audit.by_id["audit_translate/da"].key
    assert build_plan(other, ["audit_score"]).by_id["audit_score/da"].key != audit.by_id["audit_score/da"].key
    translator = make_config(
        tmp_path / "store",
        {**tiny_models, "policy": tiny_models["reward"]},
        [{"path": str(prompts_file)}],
        languages=["da"],
    )
    assert (
        build_plan(translator, ["audit_score"]).by_id["audit_translate/en"].key == audit.by_id["audit_translate/en"].key
    )
    assert (
        build_plan(translator, ["audit_score"]).by_id["audit_translate/da"].key != audit.by_id["audit_translate/da"].key
    )
    # Other pairs change every key; the same pairs elsewhere change none.
    shipped = (REPO / "src" / "croco" / "data" / "demo" / "audit_pairs.jsonl").read_text()
    for name, text, same in (
        ("copy.jsonl", shipped, True),
        ("edited.jsonl", shipped.replace("Canberra", "Canbera"), False),
    ):
        (tmp_path / name).write_text(text)
        moved = make_config(
            tmp_path / "store",
            tiny_models,
            [{"path": str(prompts_file)}],
            languages=["da", "ga"],
            audit={"pairs": str(tmp_path / name)},
        )
        keys = build_plan(moved, ["audit_score"]).by_id
        assert all((keys[u.id].key == u.key) == same for u in audit.units), name


def version(cfg, unit_id: str):
    """The version of one audit unit of this config."""
    from croco.plan import build_plan

    return Storage(cfg.storage.root).version_at(build_plan(cfg, ["audit_score"]).by_id[unit_id].version_path)


def test_audit_end_to_end_on_tiny_models_and_another_reward_model_reuses_the_translations(tmp_path, tiny_models):
    from croco.cli import main
    from croco.flows.audit import audit_reward

    prompts = write_jsonl(
        tmp_path / "prompts.jsonl", [prompt_record("x", "en")]
    )  # the pipeline's; the audit never reads it
    cfg = make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(prompts)}],
        languages=["da", "ga"],
        audit={"limit": 4},
        translate={"max_new_tokens": 6},
    )
    config = save_config(cfg, tmp_path / "audit.yaml")
    first = audit_reward(config=str(config))

    assert sorted(first["versions"]) == [
        f"{stage}/{code}" for stage in ("audit_score", "audit_translate") for code in ("da", "en", "ga")
    ]
    english = version(cfg, "audit_translate/en").read(AUDIT_PAIR).to_pylist()
    shipped = read_pairs(DataSource(path="embedded:audit-pairs"), limit=4)
    assert [(r["pair_id"], r["prompt"], r["chosen"], r["rejected"]) for r in english] == [
        (p.pair_id, p.prompt, p.chosen, p.rejected) for p in shipped
    ]
    danish = version(cfg, "audit_translate/da").read(AUDIT_PAIR).to_pylist()
    assert [r["chosen_en"] for r in danish] == [p.chosen for p in shipped]
    assert all(r["chosen"] != r["chosen_en"] for r in danish)  # translated (badly: a random model), never copied
    scores = {code: version(cfg, f"audit_score/{code}").read(AUDIT_SCORE).to_pylist() for code in ("en", "da", "ga")}
    assert all(r["english_chosen_reward"] is None for r in scores["en"])
    assert all(math.isfinite(r["english_chosen_reward"]) for r in scores["da"] + scores["ga"])

    storage = Storage(cfg.storage.root)
    folder = first["report"].rsplit("/", 1)[0]
    rows = json.loads(storage.fs.cat_file(f"{folder}/reward_audit.json"))
    assert [r["language"] for r in rows] == ["en", "da", "ga"] and all(r["pairs"] == 4 for r in rows)
    margins = {code: [r["chosen_reward"] - r["rejected_reward"] for r in found] for code, found in scores.items()}
    for row in rows:
        mine = scores[row["language"]]
        assert row["accuracy"] == sum(r["chosen_reward"] > r["rejected_reward"] for r in mine) / 4
        if row["language"] != "en":
            assert row["margin_spearman"] == spearman(margins[row["language"]], margins["en"])
            assert row["wrong_language_rate"] == sum(r["english_chosen_reward"] > r["chosen_reward"] for r in mine) / 4
    assert rows[0]["margin_spearman"] is None and rows[0]["wrong_language_rate"] is None
    assert storage.fs.cat_file(f"{folder}/reward_audit.png")[:8] == b"\x89PNG\r\n\x1a\n"
    report = storage.fs.cat_file(f"{folder}/report.md").decode()
    assert (
        "## Reward transfer audit" in report
        and "| da | 4 |" in report
        and "![Reward transfer audit](reward_audit.png)" in report
    )

    # Another reward model: the translations are cache hits, only the scoring runs.
    other = ["models.reward.path=embedded:croco-demo-reward"]  # built once per machine, in the croco cache
    second = audit_reward(config=str(config), overrides=other)
    assert second["cached"] == {unit_id: unit_id.startswith("audit_translate/") for unit_id in first["versions"]}
    assert all(
        second["versions"][f"audit_translate/{code}"] == first["versions"][f"audit_translate/{code}"]
        for code in ("en", "da", "ga")
    )
    assert all(
        second["versions"][f"audit_score/{code}"] != first["versions"][f"audit_score/{code}"]
        for code in ("en", "da", "ga")
    )
    # From the command line, now all cached.
    assert main(["audit-reward", str(config), *other]) == 0
