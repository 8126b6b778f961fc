from croco.fidelity import detected, fidelity

DANISH = "Himlen er blå, fordi luften spreder det blå lys mere end det røde lys.\nDet er derfor, at vi kan se en blå himmel om dagen, når solen skinner."
MIXED = "Himlen er blå, fordi luften spreder det blå lys mere end det røde lys.\nThe sky is blue because air scatters blue light."


def test_an_answer_records_its_language_confidence_and_line_pass_rate():
    danish = detected(DANISH, "da")
    assert danish["detected_language"] == "da" and danish["detected_confidence"] >= 0.5
    assert danish["line_pass_rate"] == 1.0
    assert detected(MIXED, "da")["line_pass_rate"] == 0.5  # one Danish line, one English
    assert detected("Ja tak.", "da")["line_pass_rate"] is None  # no line of five words


def test_fidelity_counts_unknown_as_off_target_and_averages_line_rates_over_answers_with_long_lines():
    assert fidelity("da", ["da", "en", "unknown", "da"], [1.0, None, 0.5, None]) == {
        "answers": 4,
        "on_target": 0.5,
        "line_pass_rate": 0.75,
        "with_long_lines": 2,
    }
    assert fidelity("nb", ["no"], [None]) == {
        "answers": 1,
        "on_target": 1.0,
        "line_pass_rate": None,
        "with_long_lines": 0,
    }
