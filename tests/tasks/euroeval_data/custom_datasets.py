"""A tiny Danish sentiment dataset on local CSV files, for driving real EuroEval offline in tests.

EuroEval reads DatasetConfig objects from this file (`--custom-datasets-file`); 16.x spells
some arguments with a leading underscore.
"""

from pathlib import Path

from euroeval import TEXT_CLASSIFICATION, DatasetConfig
from euroeval.languages import DANISH

HERE = Path(__file__).resolve().parent / "data"

CROCO_TINY_SENTIMENT_DA = DatasetConfig(
    name="croco-tiny-sentiment-da",
    pretty_name="croco's tiny Danish sentiment test set",
    source={split: str(HERE / f"{split}.csv") for split in ("train", "val", "test")},
    task=TEXT_CLASSIFICATION,
    languages=[DANISH],
    _labels=["positiv", "negativ"],
    _num_few_shot_examples=2,
)
