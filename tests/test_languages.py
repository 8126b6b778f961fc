import pytest

from croco.languages import LANGUAGES, get_language

PAPER_TRANSLATION_TARGETS = "da fr de it es nl ga cy mt gl".split()
PAPER_EUROEVAL = "da en nl fr de it es no sv pt fi".split()
PAPER_ARENA = "en it es fr de nl da gl cy mt ga".split()


def test_registry_covers_every_language_the_paper_uses():
    for code in PAPER_TRANSLATION_TARGETS:
        assert LANGUAGES[code].translation_code is not None
    for code in PAPER_EUROEVAL:
        assert LANGUAGES[code].euroeval_code is not None
    for code in PAPER_ARENA:
        assert LANGUAGES[code].arena_code is not None


def test_translategemma_uses_european_portuguese():
    assert LANGUAGES["pt"].translation_code == "pt-PT"


def test_low_resource_set():
    assert {c for c, lang in LANGUAGES.items() if lang.low_resource} == {"gl", "ga", "mt", "cy"}


def test_unknown_code_lists_the_known_ones():
    with pytest.raises(KeyError, match="unknown language code 'xx'; known codes: .*cy"):
        get_language("xx")
