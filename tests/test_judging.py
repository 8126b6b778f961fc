from croco.judging import Battle, Verdict, judge_prompt, parse_verdict


def test_last_verdict_counts_and_order_maps_to_the_model():
    text = "Answer 1 looks better at first [[1]], but on reflection [[2]]"
    assert parse_verdict(text, "model_first", "stop", True).outcome == "loss"
    assert parse_verdict(text, "baseline_first", "stop", True).outcome == "win"


def test_ties_unparseable_and_cut_off_judgments():
    assert parse_verdict("equal [[ t ]]", "model_first", "stop", True).outcome == "tie"
    assert parse_verdict("equal [[T]]", "model_first", "stop", False) == Verdict(None, "tie_not_allowed", "equal [[T]]")
    assert parse_verdict("I think answer", "model_first", "length", True).unparseable == "length"
    assert parse_verdict("no idea", "model_first", "stop", True).unparseable == "no_verdict"


def test_prompt_shows_answers_in_the_battle_order_and_offers_ties_only_when_allowed():
    battle = Battle("Q?", "MODEL", "BASE", "baseline_first")
    text = judge_prompt(battle, allow_ties=False)[-1]["content"]
    assert text.index("BASE") < text.index("MODEL")
    assert "[[T]]" not in text
    assert "[[T]]" in judge_prompt(battle, allow_ties=True)[-1]["content"]
