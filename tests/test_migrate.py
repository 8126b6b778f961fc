"""`croco pair --scored ... --originals ...`: the original research code's files, paired by croco's rules."""

import json

import pytest

from conftest import write_jsonl
from croco.cli import main
from croco.errors import CrocoError
from croco.migrate import language_of, migrate
from croco.pairing import PRODUCTS


def scored_line(prompt, response, reward):
    return {
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        "reward_score": reward,
    }


def original_line(prompt):
    return {"messages": [{"role": "user", "content": prompt}]}


@pytest.fixture
def original_layout(tmp_path):
    """Two languages, two prompts each; rewards chosen so every selection can be worked out by hand."""
    write_jsonl(tmp_path / "train_en.jsonl", [original_line("Name a fruit."), original_line("Name a colour.")])
    write_jsonl(tmp_path / "train_da.jsonl", [original_line("Nævn en frugt."), original_line("Nævn en farve.")])
    en = [
        scored_line("Name a fruit.", "Apple.", 1.0),
        scored_line(
            "Name a colour.", "Blue.", 0.5
        ),  # lines of two prompts interleave: matched by prompt, not by position
        scored_line("Name a fruit.", "Banana!", 5.0),
        scored_line("Name a fruit.", "fruit fruit", 0.0),
        scored_line("Name a fruit.", "Pear.", 3.0),
        scored_line("Name a colour.", "Red.", 0.5),
    ]
    da = [
        # the original's language instruction is recognised and the prompt still found
        scored_line("Nævn en frugt.\n\nPlease respond in Danish and nothing else.", "Æble.", 6.0),
        scored_line("Nævn en frugt.\n\nPlease respond in Danish and nothing else.", "Pære.", 2.0),
        scored_line("Nævn en farve.", "Rød.", -999.0),  # the original's failed-score marker: never a reward
        scored_line("Nævn en farve.", "Blå.", 1.5),
        scored_line("Unknown prompt", "?", 1.0),
    ]
    return [write_jsonl(tmp_path / "scored_en.jsonl", en), write_jsonl(tmp_path / "scored_da.jsonl", da)], [
        tmp_path / "train_en.jsonl",
        tmp_path / "train_da.jsonl",
    ]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_selections_match_the_hand_worked_case(tmp_path, original_layout):
    scored, originals = original_layout
    out = tmp_path / "pairs"
    assert main(["pair", "--scored", *map(str, scored), "--originals", *map(str, originals), "--out", str(out)]) == 0
    dpo = {(r["prompt_id"], r["language"]): r for r in read(out / "dpo_in_language.jsonl")}
    # en prompt 0: rewards [1, 5, 0, 3]: mean 2.25, std 1.92, target -1.59 -> chosen Banana (5), rejected "fruit fruit" (0)
    fruit = dpo["0", "en"]
    assert fruit["chosen"] == [{"role": "assistant", "content": "Banana!"}] and fruit["chosen_reward"] == 5.0
    assert fruit["rejected"] == [{"role": "assistant", "content": "fruit fruit"}] and fruit["rejected_reward"] == 0.0
    assert fruit["prompt"] == [{"role": "user", "content": "Name a fruit."}]
    # en prompt 1: both 0.5 -> no pair; da prompt 1: one real score left -> pool too small
    assert ("1", "en") not in dpo and ("1", "da") not in dpo
    assert (dpo["0", "da"]["chosen_reward"], dpo["0", "da"]["rejected_reward"]) == (6.0, 2.0)

    sft = {(r["prompt_id"], r["language"]): r for r in read(out / "sft_in_language.jsonl")}
    assert set(sft) == {("0", "en"), ("1", "en"), ("0", "da")}
    assert sft["1", "en"]["messages"][1]["content"] == "Blue."  # tie: the earlier line

    # all languages, prompt 0: [1, 5, 0, 3] + [6, 2]: chosen da Æble (6); mean 2.83, std 2.19, target -1.55 -> en "fruit fruit"
    everything = {r["prompt_id"]: r for r in read(out / "dpo_all_languages.jsonl")}
    assert (everything["0"]["chosen_language"], everything["0"]["rejected_language"], everything["0"]["language"]) == (
        "da",
        "en",
        "da",
    )
    assert everything["0"]["rejected"][0]["content"] == "fruit fruit"
    # prompt 1: en [0.5, 0.5] + da [1.5]: chosen da Blå, rejected the earlier en 0.5 (Blue.)
    assert (everything["1"]["chosen"][0]["content"], everything["1"]["rejected"][0]["content"]) == ("Blå.", "Blue.")
    assert {r["prompt_id"]: r["language"] for r in read(out / "sft_all_languages.jsonl")} == {"0": "da", "1": "da"}

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rejected_samples"] == {
        "scored_da.jsonl/failed_score_marker": 1,
        "scored_da.jsonl/prompt_not_in_originals": 1,
    }
    assert manifest["skipped"]["dpo_in_language/no_sample_below_chosen"] == 1
    assert manifest["skipped"]["dpo_in_language/pool_too_small"] == 1
    # one-word answers are too short to name a language: no chosen answer counts as in its language
    assert {code: rates["chosen_on_target"] for code, rates in manifest["fidelity"]["in_language"].items()} == {
        "en": 0.0,
        "da": 0.0,
    }


def test_prompt_source_and_target_options(tmp_path, original_layout):
    scored, originals = original_layout
    report = migrate(scored, originals, tmp_path / "o", target="min", k=0.0, prompt_source="rejected", seed=1)
    everything = {r["prompt_id"]: r for r in read(tmp_path / "o" / "dpo_all_languages.jsonl")}
    assert everything["0"]["language"] == "en" and everything["0"]["prompt"][0]["content"] == "Name a fruit."
    assert report["products"]["dpo_all_languages"] == 2


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{broken", "line 2: expected"),
        (json.dumps({"reward_score": 1.0}), "line 2: expected"),
    ],
)
def test_malformed_scored_lines_name_file_and_line(tmp_path, original_layout, line, message):
    scored, originals = original_layout
    bad = write_jsonl(tmp_path / "scored_en.jsonl", [scored_line("Name a fruit.", "ok", 1.0), line])
    with pytest.raises(CrocoError, match=f"{bad} {message}"):
        migrate([bad], originals, tmp_path / "o", "mean_minus_2sigma", -2.0, "chosen", 42)


def test_non_finite_rewards_are_counted_not_paired(tmp_path, original_layout):
    _, originals = original_layout
    lines = [
        scored_line("Name a fruit.", "a", 1.0),
        scored_line("Name a fruit.", "b", float("nan")),
        scored_line("Name a fruit.", "c", float("inf")),
        scored_line("Name a fruit.", "d", 0.0),
    ]
    scored = write_jsonl(tmp_path / "scored_en.jsonl", lines)
    report = migrate([scored], originals, tmp_path / "o", "mean_minus_2sigma", -2.0, "chosen", 42)
    assert report["rejected_samples"] == {"scored_en.jsonl/non_finite_reward": 2}
    assert [r["rejected"][0]["content"] for r in read(tmp_path / "o" / "dpo_in_language.jsonl")] == ["d"]


def test_missing_and_non_numeric_rewards_are_counted_by_reason_like_nan(tmp_path, original_layout, caplog):
    _, originals = original_layout
    no_reward = {"messages": scored_line("Name a fruit.", "e", 0)["messages"]}
    lines = [
        scored_line("Name a fruit.", "a", 1.0),
        scored_line("Name a fruit.", "b", "high"),
        no_reward,
        scored_line("Name a fruit.", "c", None),
        scored_line("Name a fruit.", "d", True),
        scored_line("Name a fruit.", "f", float("nan")),
        scored_line("Name a fruit.", "g", 0.0),
    ]
    scored = write_jsonl(tmp_path / "scored_en.jsonl", lines)
    caplog.set_level("INFO", logger="croco")
    assert (
        main(["pair", "--scored", str(scored), "--originals", *map(str, originals), "--out", str(tmp_path / "o")]) == 0
    )
    report = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert report["rejected_samples"] == {
        "scored_en.jsonl/reward_not_a_number": 2,
        "scored_en.jsonl/reward_missing": 2,
        "scored_en.jsonl/non_finite_reward": 1,
    }
    assert report["records_in"] == 7 and "not used: scored_en.jsonl/reward_missing: 2" in caplog.text
    # sample indices follow file order, counted lines included
    assert [
        (r["chosen_sample_index"], r["rejected_sample_index"]) for r in read(tmp_path / "o" / "dpo_in_language.jsonl")
    ] == [(0, 6)]


def test_language_comes_from_the_file_name(tmp_path):
    assert language_of(tmp_path / "scored_da.jsonl") == "da"
    assert language_of(tmp_path / "ga-responses.jsonl") == "ga"
    # The original code's names: the last '_' word once `_scored` is removed, a code or a language name.
    assert language_of(tmp_path / "eurollm-9b_danish_scored.jsonl") == "da"
    assert language_of(tmp_path / "danish.jsonl") == "da"
    assert language_of(tmp_path / "no_suffix_German_scored.jsonl") == "de"  # the last word wins over "no" (Norwegian)
    with pytest.raises(
        CrocoError,
        match=r"^cannot tell the language of .*scored\.jsonl from its name; end it with a language code or name",
    ):
        language_of(tmp_path / "scored.jsonl")


def test_the_original_codes_file_names_pair_as_codes_do(tmp_path, original_layout):
    scored, originals = original_layout
    migrate(scored, originals, tmp_path / "by-code", "mean_minus_2sigma", -2.0, "chosen", 42)
    names = ["eurollm_english_scored.jsonl", "eurollm_danish_scored.jsonl", "english.jsonl", "danish.jsonl"]
    renamed = [path.rename(tmp_path / name) for path, name in zip([*scored, *originals], names)]
    report = migrate(renamed[:2], renamed[2:], tmp_path / "by-name", "mean_minus_2sigma", -2.0, "chosen", 42)
    assert report["settings"]["languages"] == ["en", "da"]
    for product in PRODUCTS:
        assert (tmp_path / "by-name" / f"{product}.jsonl").read_text() == (
            tmp_path / "by-code" / f"{product}.jsonl"
        ).read_text()


def test_windows_saved_inputs_read_and_bytes_that_are_not_utf8_are_named(tmp_path, original_layout):
    scored, originals = original_layout
    for path in (*scored, *originals):  # a BOM and CRLF line ends, as Windows editors save files
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes().replace(b"\n", b"\r\n"))
    report = migrate(scored, originals, tmp_path / "o", "mean_minus_2sigma", -2.0, "chosen", 42)
    assert (
        report["products"]["dpo_in_language"] == 2
        and "scored_en.jsonl/prompt_not_in_originals" not in report["rejected_samples"]
    )
    assert read(tmp_path / "o" / "dpo_in_language.jsonl")[0]["chosen"] == [{"role": "assistant", "content": "Banana!"}]

    first = scored[0].read_bytes().splitlines(keepends=True)[0]
    latin1 = json.dumps(scored_line("Name a fruit.", "Kæmpe", 1.0), ensure_ascii=False).encode("latin-1") + b"\n"
    scored[0].write_bytes(first + latin1)
    byte = len(first) + latin1.index(b"\xe6")
    with pytest.raises(
        CrocoError, match=rf"^{scored[0]} line 2 is not UTF-8 \(byte offset {byte}\); save the file as UTF-8$"
    ):
        migrate(scored, originals, tmp_path / "o", "mean_minus_2sigma", -2.0, "chosen", 42)
    latin1 = json.dumps(original_line("Nævn en frugt."), ensure_ascii=False).encode("latin-1") + b"\n"
    originals[1].write_bytes(latin1)
    byte = latin1.index(b"\xe6")
    with pytest.raises(CrocoError, match=rf"^{originals[1]} line 1 is not UTF-8 \(byte offset {byte}\)"):
        migrate(scored[1:], originals[1:], tmp_path / "o", "mean_minus_2sigma", -2.0, "chosen", 42)


def test_a_scored_language_needs_its_originals(tmp_path, original_layout):
    scored, originals = original_layout
    with pytest.raises(CrocoError, match="no --originals file for the language of .*scored_da.jsonl"):
        migrate(scored, originals[:1], tmp_path / "o", "mean_minus_2sigma", -2.0, "chosen", 42)
