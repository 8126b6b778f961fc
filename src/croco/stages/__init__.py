"""The pipeline's stages, one module each, in the order they run (see croco.pipeline)."""


def throughput(samples: int, tokens: int, seconds: float) -> dict[str, float]:
    """Rates over the work this invocation did (shards resumed from disk are not counted)."""
    if not samples or seconds <= 0:
        return {}
    return {"samples_per_s": round(samples / seconds, 3), "tokens_per_s": round(tokens / seconds, 2), "seconds": round(seconds, 2)}
