"""Offline stand-in for the `evaluate` hub metric of the same name (EuroEval loads metrics by name)."""

import datasets
import evaluate
from sklearn.metrics import matthews_corrcoef


class MatthewsCorrelation(evaluate.Metric):
    def _info(self):
        features = datasets.Features({"predictions": datasets.Value("int32"), "references": datasets.Value("int32")})
        return evaluate.MetricInfo(
            description="Matthews correlation (scikit-learn)",
            citation="",
            inputs_description="label ids",
            features=features,
        )

    def _compute(self, predictions, references, sample_weight=None):
        return {"matthews_correlation": float(matthews_corrcoef(references, predictions, sample_weight=sample_weight))}
