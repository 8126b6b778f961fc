"""Units that do not read each other run at the same time; in-process model-loading units only up to
`execution.local_parallel`; a failed unit stops only the units that read it."""

import threading
import time

import pytest

import croco.execution
import croco.flows.execute
from conftest import make_config, prompt_record, run, write_jsonl
from croco.plan import build_plan
from croco.storage import storage_of

NO_TRAINING = {"sft": {"enabled": False}, "dpo": {"enabled": False}}
LANGUAGES = ["en", "da", "ga"]


@pytest.fixture
def three_languages(tmp_path):
    rows = [prompt_record(f"p{i}", lang, f"Question {i} in {lang}?") for lang in LANGUAGES for i in range(2)]
    return [{"path": str(write_jsonl(tmp_path / "prompts.jsonl", rows))}]


class Watch:
    """Wraps the in-process unit runner: records how many model-loading units are inside at once, and holds each
    generate unit until all three languages' are inside (a barrier that breaks if they never meet)."""

    def __init__(self, monkeypatch, meet: int | None, counted: tuple[str, ...] = ("generate", "score")):
        self.inside, self.most, self.lock = 0, 0, threading.Lock()
        self.barrier = threading.Barrier(meet, timeout=60) if meet else None
        real = croco.execution.run_here

        def watched(cfg, unit, work):
            if unit.stage not in counted:
                return real(cfg, unit, work)
            with self.lock:
                self.inside += 1
                self.most = max(self.most, self.inside)
            try:
                if self.barrier and unit.stage == "generate":
                    self.barrier.wait()
                time.sleep(0.2)  # long enough for a second unit to start if nothing holds it back
                return real(cfg, unit, work)
            finally:
                with self.lock:
                    self.inside -= 1

        monkeypatch.setattr(croco.execution, "run_here", watched)


def test_three_languages_generate_at_once_when_local_parallel_allows(
    tmp_path, tiny_models, three_languages, monkeypatch
):
    watch = Watch(monkeypatch, meet=3)
    cfg = make_config(
        tmp_path / "store",
        tiny_models,
        three_languages,
        languages=LANGUAGES,
        execution={"local_parallel": 3},
        **NO_TRAINING,
    )
    result = run(cfg)
    assert watch.most == 3 and not watch.barrier.broken
    assert not any(result["cached"].values())


def test_model_loading_units_run_one_at_a_time_by_default(tmp_path, tiny_models, three_languages, monkeypatch):
    watch = Watch(monkeypatch, meet=None)
    run(make_config(tmp_path / "store", tiny_models, three_languages, languages=LANGUAGES, **NO_TRAINING))
    assert watch.most == 1


def test_a_failed_unit_stops_what_reads_it_and_the_other_languages_finish(
    tmp_path, tiny_models, three_languages, monkeypatch
):
    real = croco.execution.run_here

    def fail_for_danish(cfg, unit, work):
        if unit.id == "score/da":
            raise RuntimeError("the reward model ran out of memory on da")
        return real(cfg, unit, work)

    monkeypatch.setattr(croco.execution, "run_here", fail_for_danish)
    cfg = make_config(
        tmp_path / "store",
        tiny_models,
        three_languages,
        languages=LANGUAGES,
        retries={"default": {"attempts": 0}},
        **NO_TRAINING,
    )
    with pytest.raises(RuntimeError, match="out of memory on da"):
        run(cfg)
    storage = storage_of(cfg)
    committed = {u.id for u in build_plan(cfg).units if not storage.version_at(u.version_path).problems()}
    assert {"score/en", "score/ga", "generate/da"} <= committed and "pair/all" not in committed


def test_in_a_run_with_cluster_stages_in_process_model_units_take_turns_by_tag(
    tmp_path, tiny_models, three_languages, monkeypatch
):
    # score "runs on the cluster" (it still runs here: only the plan's view changes), so the pool is wide and only
    # Prefect's tag concurrency limit keeps the three in-process generate units apart.
    monkeypatch.setattr(croco.flows.execute, "runs_here", lambda cfg, stage: stage != "score")
    watch = Watch(monkeypatch, meet=None, counted=("generate",))
    run(make_config(tmp_path / "store", tiny_models, three_languages, languages=LANGUAGES, **NO_TRAINING))
    assert watch.most == 1
