"""The translate stage: prompt formats, the length filter, bad translations, caching per language, configs."""

import pytest

from conftest import (
    DANISH_ANSWER,
    ENGLISH_ANSWER,
    REPO,
    make_config,
    read,
    run,
    scripted_choice,
    scripted_openai_server,
    version,
    write_jsonl,
)
from croco.config import TranslateConfig, load_config
from croco.errors import CrocoError
from croco.fidelity import translation_check
from croco.plan import build_plan
from croco.records import SAMPLE, TRANSLATION
from croco.summaries import summary_line
from croco.translation import translated_languages, translation_prompt

GEMMA = TranslateConfig(model={"path": "Infomaniak-AI/vllm-translategemma-27b-it"})
OTHER = TranslateConfig(model={"path": "HuggingFaceTB/SmolLM2-135M-Instruct"})
PAPER_TARGETS = ["da", "fr", "de", "it", "es", "nl", "ga", "cy", "mt", "gl"]


def test_translategemma_gets_its_own_format_and_codes():
    assert translation_prompt("Hello there.", "en", "pt", GEMMA) == [
        {"role": "user", "content": "<<<source>>>en<<<target>>>pt-PT<<<text>>>Hello there."}
    ]
    assert translation_prompt("Hi", "en", "ga", GEMMA)[0]["content"] == "<<<source>>>en<<<target>>>ga<<<text>>>Hi"


def test_any_other_model_gets_the_plain_instruction():
    assert translation_prompt("Hello there.", "en", "da", OTHER) == [
        {"role": "user", "content": "Translate this English text into Danish.\n\nHello there."}
    ]
    forced = TranslateConfig(model={"path": "google/translategemma-4b-it"}, prompt_format="instruction")
    assert translation_prompt("Hi", "en", "cy", forced)[0]["content"] == "Translate this English text into Welsh.\n\nHi"


def test_a_language_translategemma_has_no_code_for_is_refused_by_name():
    with pytest.raises(CrocoError, match=r"no language code for Swedish \(sv\).*translate.prompt_format: instruction"):
        translation_prompt("Hi", "en", "sv", GEMMA)


@pytest.mark.parametrize(
    "translation, problem",
    [
        ("Himlen er blå, fordi luften spreder det blå lys mere end det røde lys.", None),
        ("the sky is BLUE because the air scatters  blue light more than red light.", "copy"),
        ("Heaven looks blue since air scatters the blue part of sunlight more strongly.", "off_target"),
        (DANISH_ANSWER * 3, "length_ratio"),
        ("Blå.", "length_ratio"),
    ],
)
def test_a_translation_is_checked_for_copies_language_and_length(translation, problem):
    check = translation_check(ENGLISH_ANSWER, translation, "da", 0.33, 3.0)
    assert check["problem"] == problem


def test_a_short_source_has_no_length_ratio():
    assert translation_check("Hi!", "Hej med dig, hvordan går det?", "da", 0.33, 3.0)["length_ratio"] is None


def english_file(tmp_path, conversations):
    rows = [{"prompt_id": pid, "language": "en", "messages": messages} for pid, messages in conversations]
    return write_jsonl(tmp_path / "english.jsonl", rows)


def user(text):
    return {"role": "user", "content": text}


def translating_config(tmp_path, tiny_models, source, url=None, **translate):
    engine = {"name": "openai", "base_url": url} if url else {"batch_size": 4}
    settings = {"model": {"path": tiny_models["policy"]}, "engine": engine, "max_new_tokens": 6, **translate}
    return make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(source), "translate": True}],
        languages=["en", "da"],
        translate=settings,
    )


SKY = "The sky is blue because the air scatters blue light."
STORY = "Tell me a story about a brave knight and a dragon."
SHORT = "Why is the sky blue during the day?"
PLANTS = "Explain photosynthesis in simple words for children."
# What the scripted translator answers to each English message.
TRANSLATIONS = {
    SKY: "Himlen er blå, fordi luften spreder det blå lys mere end det røde lys.",
    STORY: ENGLISH_ANSWER,  # English again: off target
    SHORT: SHORT,  # a copy
    PLANTS: DANISH_ANSWER * 3,  # far longer than the English
}


def scripted_translator(request):
    text = request["messages"][0]["content"].removeprefix("Translate this English text into Danish.\n\n")
    return {"choices": [scripted_choice(0, TRANSLATIONS[text])], "usage": None}


@pytest.mark.parametrize("on_bad", ["flag", "drop"])
def test_bad_translations_are_flagged_or_dropped_and_counted_by_reason(tmp_path, tiny_models, on_bad):
    source = english_file(
        tmp_path,
        [
            ("good", [user(SKY)]),
            ("copied", [user(SKY), {"role": "assistant", "content": SKY}, user(SHORT)]),  # one bad message is enough
            ("english", [user(STORY)]),
            ("long", [user(PLANTS)]),
        ],
    )
    with scripted_openai_server(scripted_translator) as (url, received):
        cfg = translating_config(tmp_path, tiny_models, source, url, on_bad=on_bad)
        result = run(cfg, stages=["translate"])
    assert received[0]["messages"] == [
        {"role": "user", "content": f"Translate this English text into Danish.\n\n{SKY}"}
    ]
    assert received[0]["temperature"] == 0 and received[0]["max_tokens"] == 6
    manifest = version(cfg, "translate/da").manifest()
    flagged = {"copy": 1, "off_target": 1, "length_ratio": 1}
    assert manifest["fidelity"] == {
        "messages": 6,
        "on_target": 4 / 6,
        "copies": 1,
        "off_target": 1,
        "extreme_length_ratio": 1,
        "conversations": 4,
        "conversations_flagged": flagged,
    }
    kept = {r["prompt_id"]: r for r in read(cfg, "translate", TRANSLATION).to_pylist()}
    if on_bad == "flag":
        assert manifest["records_out"] == 4 and manifest["skipped"] == {}
        assert kept["copied"]["flag"] == "copy" and kept["good"]["flag"] is None
    else:
        assert manifest["records_out"] == 1 and manifest["skipped"] == flagged
        dropped = read(cfg, "translate", TRANSLATION, skipped=True).to_pylist()
        assert sorted((r["prompt_id"], r["flag"]) for r in dropped) == [
            ("copied", "copy"),
            ("english", "off_target"),
            ("long", "length_ratio"),
        ]
    good = kept["good"]
    assert good["language"] == "da" and good["english"] == [user(SKY)]
    assert good["messages"] == [user(TRANSLATIONS[SKY])] and good["checks"][0]["detected_language"] == "da"
    report = open(result["report"]).read()
    assert (
        "## Language fidelity" in report
        and "| da | 6 | 67% | 1 | 1 | 1 | copy 1, length_ratio 1, off_target 1 of 4 |" in report
    )
    assert "67% of 6 messages in da, 1 copies" in summary_line(build_plan(cfg).by_id["translate/da"], manifest)


def test_a_conversation_with_a_message_too_long_to_translate_is_dropped_whole_before_translation(tmp_path, tiny_models):
    long_message = " ".join(["word"] * 60)
    source = english_file(tmp_path, [("short", [user(SKY)]), ("long", [user(STORY), user(long_message)])])
    with scripted_openai_server(scripted_translator) as (url, received):
        cfg = translating_config(tmp_path, tiny_models, source, url, max_prompt_tokens=80)
        run(cfg, stages=["translate"])
    assert [r["messages"][0]["content"] for r in received] == [f"Translate this English text into Danish.\n\n{SKY}"]
    manifest = version(cfg, "translate/da").manifest()
    assert manifest["records_in"] == 2 and manifest["records_out"] == 1
    assert manifest["skipped"] == {"prompt_too_long": 1} and manifest["fidelity"]["messages"] == 1
    [skipped] = read(cfg, "translate", TRANSLATION, skipped=True).to_pylist()
    assert (
        skipped["prompt_id"] == "long"
        and skipped["messages"] == []
        and skipped["detail"] == "100 tokens; at most 80 fit"
    )


def test_adding_a_language_translates_only_it_and_generate_reads_the_translations(tmp_path, tiny_models):
    source = english_file(tmp_path, [(f"p{i}", [user(f"Question {i}?"), user("And why?")]) for i in range(3)])
    cfg = translating_config(tmp_path, tiny_models, source, conversations_per_shard=2)
    first = run(cfg, stages=["generate"])
    assert set(first["versions"]) == {"prompts/en", "translate/da", "generate/en", "generate/da"}
    translations = {r["prompt_id"]: r for r in read(cfg, "translate", TRANSLATION).to_pylist()}
    assert len(version(cfg, "translate/da").manifest()["shards"]) == 2
    assert translations["p0"]["english"] == [user("Question 0?"), user("And why?")]
    assert [m["role"] for m in translations["p0"]["messages"]] == ["user", "user"]
    samples = [s for s in read(cfg, "generate", SAMPLE).to_pylist() if s["language"] == "da"]
    assert {s["prompt"] for s in samples} == {t["messages"][0]["content"] for t in translations.values()}

    more = make_config(
        tmp_path / "store",
        tiny_models,
        cfg.data.model_dump()["sources"],
        languages=["en", "da", "de"],
        translate=cfg.translate.model_dump(),
    )
    second = run(more, stages=["translate"])
    assert second["cached"] == {"prompts/en": True, "translate/da": True, "translate/de": False}
    assert {r["language"] for r in read(more, "translate", TRANSLATION).to_pylist()} == {"da", "de"}


def test_a_run_without_a_source_to_translate_reads_its_own_files_as_before(tmp_path, tiny_models, prompts_file):
    plain = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}])
    plan = build_plan(plain)
    assert plan.stages()[:2] == ["prompts", "generate"] and not plan.of("translate")
    assert plan.by_id["generate/da"].inputs[0][0] == "prompts/da"
    # Danish from its own file, German translated: the Danish prompts keep their key and the run's other files.
    english = english_file(tmp_path, [("p0", [user("Question 0?")])])
    mixed = make_config(
        tmp_path / "store",
        tiny_models,
        [{"path": str(prompts_file)}, {"path": str(english), "translate": True}],
        languages=["en", "da", "de"],
        translate={"model": {"path": tiny_models["policy"]}, "languages": ["de"]},
    )
    mixed_plan = build_plan(mixed)
    assert [u.id for u in mixed_plan.of("prompts")] == ["prompts/en", "prompts/da"]
    assert [u.id for u in mixed_plan.of("translate")] == ["translate/de"]
    assert mixed_plan.by_id["prompts/da"].key == plan.by_id["prompts/da"].key
    assert mixed_plan.by_id["generate/da"].key == plan.by_id["generate/da"].key
    assert mixed_plan.by_id["generate/de"].inputs[0][0] == "translate/de"


def test_the_demo_translates_its_english_prompts_into_its_other_languages():
    cfg = load_config(REPO / "configs" / "demo.yaml")
    plan = build_plan(cfg)
    assert [u.id for u in plan.of("prompts")] == ["prompts/en"]
    assert [u.id for u in plan.of("translate")] == ["translate/da", "translate/de", "translate/ga"]
    assert all(plan.by_id[f"generate/{code}"].inputs[0][0] == f"translate/{code}" for code in ("da", "de", "ga"))
    assert plan.by_id["translate/ga"].settings["prompt_format"] == "instruction"


def test_the_paper_recipe_translates_into_its_ten_languages_with_translategemma():
    cfg = load_config(REPO / "configs" / "translategemma-27b.yaml")
    assert sorted(translated_languages(cfg)) == sorted(PAPER_TARGETS)
    assert cfg.translate.max_new_tokens == cfg.translate.max_prompt_tokens == 8192
    prompts = [translation_prompt("Hi", "en", code, cfg.translate)[0]["content"] for code in PAPER_TARGETS]
    assert all(p.startswith("<<<source>>>en<<<target>>>") for p in prompts)


def test_a_source_to_translate_needs_a_translator(tmp_path, tiny_models, prompts_file):
    with pytest.raises(CrocoError, match="marked translate, which needs translate.model"):
        make_config(tmp_path, tiny_models, [{"path": str(prompts_file), "translate": True}])


def test_a_source_to_translate_holds_english(tmp_path, tiny_models, prompts_file):
    translate = {"model": {"path": tiny_models["policy"]}}
    source = {"path": str(prompts_file), "translate": True, "language": "da"}
    with pytest.raises(CrocoError, match="a source to translate holds English conversations, not language 'da'"):
        make_config(tmp_path, tiny_models, [source], translate=translate)


def test_files_brought_translated_keep_the_keys_they_had_before_translation_existed(tmp_path, tiny_models, prompts_file):
    """The prompts key of prompts_file as croco computed it before the translate stage: finished work stays finished."""
    plan = build_plan(make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}]))
    assert (plan.by_id["prompts/da"].key, plan.by_id["prompts/en"].key) == ("33baeea6dbdc2bbd", "ca35f63f8d132e0d")
