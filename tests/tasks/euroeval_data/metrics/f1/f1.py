"""Offline stand-in for the `evaluate` hub metric of the same name (EuroEval loads metrics by name)."""

import datasets
import evaluate
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        features = datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")})
        return evaluate.MetricInfo(
            description="F1 (scikit-learn)", citation="", inputs_description="label ids", features=features
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        return {
            "f1": float(
                f1_score(
                    references,
                    predictions,
                    labels=labels,
                    pos_label=pos_label,
                    average=average,
                    sample_weight=sample_weight,
                )
            )
        }
