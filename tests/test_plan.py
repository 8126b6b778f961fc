"""Unit keys: what shapes a unit's output and nothing else."""

import json

from conftest import REPO, make_config, write_jsonl
from croco.plan import build_plan


def keys(cfg) -> dict[str, str]:
    return {unit.id: unit.key for unit in build_plan(cfg).units}


def test_a_language_keeps_its_keys_whichever_other_languages_run(tmp_path, tiny_models, prompts_file):
    two = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], languages=["en", "da"]))
    three = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], languages=["en", "da", "ga"]))
    for stage in ("prompts", "generate", "score"):
        assert two[f"{stage}/en"] == three[f"{stage}/en"] and two[f"{stage}/da"] == three[f"{stage}/da"]
        assert f"{stage}/ga" in three and f"{stage}/ga" not in two
    assert two["pair/all"] != three["pair/all"]  # pairing takes every language


def test_execution_settings_never_change_a_key(tmp_path, tiny_models, prompts_file):
    base = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}]))
    faster = make_config(
        tmp_path,
        tiny_models,
        [{"path": str(prompts_file)}],
        generate={"engine": {"batch_size": 1, "device": "cpu"}},
        score={"engine": {"batch_size": 2}},
        retries={"default": {"attempts": 5, "delay_s": 1}},
        sft={"save_steps": 7},
        name="another-name",
        # On the cluster, on CPUs: a job's GPUs decide what `auto` runs on, which is in the key (see
        # test_a_stage_run_as_gpu_jobs_is_keyed_for_the_gpu_not_for_the_planning_machine).
        execution={
            "cluster": str(REPO / "configs/clusters/lumi.yaml"),
            "slurm": {"gpus_per_node": 0},
            "stages": {"prompts": {"kind": "local"}},
        },
    )
    assert keys(faster) == base
    served = {"name": "openai", "base_url": "http://127.0.0.1:8000/v1", "served_model": "policy"}
    one = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], generate={"engine": served}))
    elsewhere = {
        **served,
        "base_url": "http://10.0.0.1:9000/v1",
        "concurrency": 64,
        "timeout_s": 5.0,
        "max_retries": 0,
        "api_key_env": "K",
    }
    assert (
        keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], generate={"engine": elsewhere})) == one
    )
    assert one["generate/en"] != base["generate/en"]  # another engine samples differently


def test_a_setting_changes_its_stage_and_every_stage_after_it(tmp_path, tiny_models, prompts_file):
    base = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}]))
    changed = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], generate={"max_new_tokens": 3}))
    assert {u for u in base if base[u] != changed[u]} == {
        "generate/en",
        "generate/da",
        "score/en",
        "score/da",
        "pair/all",
        "sft/all",
        "dpo/all",
    }
    rescored = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], score={"max_len": 99}))
    assert {u for u in base if base[u] != rescored[u]} == {"score/en", "score/da", "pair/all", "sft/all", "dpo/all"}
    sft_only = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], sft={"learning_rate": 1e-3}))
    assert {u for u in base if base[u] != sft_only[u]} == {"sft/all"}


def test_a_languages_records_in_a_shared_file_are_in_its_key_and_no_other(tmp_path, tiny_models, prompts_file):
    before = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}]))
    prompts_file.write_text(prompts_file.read_text().replace("Question 0 in en", "Question zero in en"))
    edited = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}]))
    assert {u for u in before if before[u] != edited[u]} == {
        "prompts/en",
        "generate/en",
        "score/en",
        "pair/all",
        "sft/all",
        "dpo/all",
    }
    with open(prompts_file, "a", encoding="utf-8") as handle:  # a new language's rows added to the same file
        handle.write('{"prompt_id": "p0", "language": "ga", "messages": [{"role": "user", "content": "Ceist?"}]}\n')
    with_ga = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], languages=["en", "da", "ga"]))
    assert all(with_ga[u] == edited[u] for u in edited if not u.endswith("/all"))
    prompts_file.write_text(prompts_file.read_text() + "not json\n")  # a record of no language concerns every language
    broken = keys(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}]))
    assert broken["prompts/en"] != edited["prompts/en"] and broken["prompts/da"] != edited["prompts/da"]


def test_a_disabled_stage_has_no_units_and_evaluation_reads_the_adapters(tmp_path, tiny_models, prompts_file):
    plan = build_plan(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], sft={"enabled": False}))
    assert plan.stages() == ["prompts", "generate", "score", "pair", "dpo"]
    judged = {"arena": {"prompts": {"path": "embedded:demo-arena"}}, "judge": {"kind": "reward"}}
    arena = build_plan(make_config(tmp_path, tiny_models, [{"path": str(prompts_file)}], **judged))
    assert dict(arena.by_id["arena/da/dpo"].inputs) == {"dpo/all": arena.by_id["dpo/all"].version_path}
    assert [u.id for u in arena.of("judge")] == [
        "judge/en/sft",
        "judge/en/dpo",
        "judge/da/sft",
        "judge/da/dpo",
    ]  # not the baseline
    assert dict(arena.by_id["judge/da/dpo"].inputs) == {
        name: arena.by_id[name].version_path for name in ("arena/da/dpo", "arena/da/policy")
    }


def test_local_weights_are_keyed_by_content(tmp_path, tiny_models, prompts_file):
    import shutil

    policy = shutil.copytree(tiny_models["policy"], tmp_path / "policy")
    models = {**tiny_models, "policy": str(policy)}
    before = keys(make_config(tmp_path, models, [{"path": str(prompts_file)}]))
    (policy / "generation_config.json").write_text(
        (policy / "generation_config.json").read_text().replace("}", ', "retrained": true}', 1)
    )
    after = keys(make_config(tmp_path, models, [{"path": str(prompts_file)}]))
    assert {u for u in before if before[u] != after[u]} == {u for u in before if not u.startswith("prompts/")}


def test_planning_loads_no_tokenizer_and_no_dataset_and_keys_the_files_behind_them(
    tmp_path, tiny_models, prompts_file, monkeypatch
):
    """A login node plans without the jobs' environment: the chat template and the arena questions are keyed by the
    files that hold them, never loaded (here: loading fails)."""
    import shutil

    import datasets
    from transformers import AutoTokenizer

    def refuse(*args, **kwargs):
        raise AssertionError("loaded while planning")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(datasets, "load_dataset", refuse)
    policy = shutil.copytree(tiny_models["policy"], tmp_path / "policy")
    arena = tmp_path / "m-arena"  # a dataset folder in m-ArenaHard's layout, read through `datasets`
    (arena / "data").mkdir(parents=True)
    for language in ("en", "da"):
        write_jsonl(
            arena / "data" / f"{language}.jsonl", [{"question_id": "q1", "prompt": "Hi?", "language": language}]
        )

    def plan():
        return build_plan(
            make_config(
                tmp_path,
                {**tiny_models, "policy": str(policy)},
                [{"path": str(prompts_file)}],
                arena={"prompts": {"path": str(arena), "split": "test"}},
                judge={"kind": "reward"},
            )
        )

    before = plan()
    assert {u.id for u in before.of("arena")} >= {"arena/en/policy", "arena/da/policy"}
    (policy / "chat_template.jinja").write_text((policy / "chat_template.jinja").read_text() + "{# changed #}")
    (arena / "data" / "da.jsonl").write_text('{"question_id": "q1", "prompt": "Hej?", "language": "da"}\n')
    after = plan()
    template = {p.by_id["generate/en"].settings["policy"]["chat_template_sha256"] for p in (before, after)}
    assert len(template) == 2 and before.by_id["generate/en"].key != after.by_id["generate/en"].key
    assert before.by_id["arena/en/policy"].key != after.by_id["arena/en/policy"].key  # the folder's content changed


def test_keys_do_not_depend_on_where_croco_is_installed():
    from croco.config import DataSource
    from croco.sources import fingerprint

    found = fingerprint(DataSource(path="embedded:demo-prompts"), "da", "language")
    assert (
        found["location"] == "embedded:demo-prompts"
        and "site-packages" not in str(found)
        and "/src/croco/" not in str(found)
    )


def test_a_url_password_is_in_no_key_and_no_manifest_setting(tmp_path, tiny_models, prompts_file):
    def plan_with(password: str):
        hub = {"path": f"https://reader:{password}@data.example.org/prompts", "language": "en"}
        return build_plan(
            make_config(tmp_path, tiny_models, [hub, {"path": str(prompts_file), "language": "da"}]), ["prompts"]
        )

    one, rotated = plan_with("first-secret"), plan_with("second-secret")
    assert {u.id: u.key for u in one.units} == {u.id: u.key for u in rotated.units}
    shown = json.dumps([u.settings for u in one.units])  # what each manifest records
    assert "first-secret" not in shown and "https://***@data.example.org/prompts" in shown


def test_hub_dataset_names_that_differ_only_in_a_token_like_part_have_their_own_keys(tmp_path, tiny_models):
    def plan_of(name: str):
        return build_plan(
            make_config(tmp_path, tiny_models, [{"path": name, "language": "en"}], languages=["en"]), ["prompts"]
        )

    one, two = plan_of("acme/sk-multilingual-prompts-v1"), plan_of("acme/sk-multilingual-prompts-v2")
    assert one.by_id["prompts/en"].key != two.by_id["prompts/en"].key  # both mask to acme/***: hashed unmasked
    assert "sk-multilingual" not in json.dumps(
        one.by_id["prompts/en"].settings
    )  # what the manifest stores stays masked


def test_a_hub_dataset_is_keyed_by_the_commit_its_revision_stands_for(tmp_path, tiny_models, monkeypatch):
    from huggingface_hub import constants

    from croco.config import DataSource
    from croco.sources import hub_commit, read_source

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # offline (conftest): the cache's refs answer
    ref = tmp_path / "hub" / "datasets--acme--prompts" / "refs" / "main"
    ref.parent.mkdir(parents=True)

    def unit_at(commit: str):
        ref.write_text(commit)
        hub_commit.cache_clear()
        return build_plan(
            make_config(tmp_path, tiny_models, [{"path": "acme/prompts", "language": "en"}], languages=["en"]),
            ["prompts"],
        ).by_id["prompts/en"]

    first, updated = unit_at("a" * 40), unit_at("b" * 40)
    assert first.key != updated.key and first.settings["inputs"][0]["commit"] == "a" * 40
    ref.write_text("c" * 40)  # the branch moves after the plan: the unit loads the commit its key holds
    loaded = []
    monkeypatch.setattr("datasets.load_dataset", lambda *args, **kwargs: loaded.append(kwargs["revision"]) or [])
    list(read_source(DataSource(path="acme/prompts", language="en")))
    assert loaded == ["b" * 40]
    hub_commit.cache_clear()


def test_the_same_model_and_data_moved_elsewhere_keep_their_keys(tmp_path, tiny_models, prompts_file):
    import shutil

    def plan_at(folder):
        policy = shutil.copytree(tiny_models["policy"], folder / "policy")
        data = shutil.copy(prompts_file, folder / "prompts.jsonl")
        dataset = shutil.copytree(
            prompts_file.parent,
            folder / "dataset",
            ignore=lambda _, names: [n for n in names if n != prompts_file.name],
        )
        sources = [
            {"path": str(data), "language": "en"},
            {"path": str(dataset), "language": "da"},
        ]  # a file, a dataset folder
        return build_plan(make_config(tmp_path, {**tiny_models, "policy": str(policy)}, sources))

    here, there = plan_at(tmp_path / "here"), plan_at(tmp_path / "there")
    assert {u.id: u.key for u in here.units} == {u.id: u.key for u in there.units}
    shown = here.by_id["generate/en"].settings["policy"]  # the manifest still says where the weights were
    assert shown["location"]["path"] == str(tmp_path / "here" / "policy") and "weights_sha256" in shown
    assert here.by_id["prompts/da"].settings["inputs"][0]["location"] == str(tmp_path / "here" / "dataset")


def test_the_device_class_and_resolved_dtype_are_in_the_keys_of_what_a_model_makes(tmp_path, tiny_models, prompts_file):
    from croco.config import ModelConfig
    from croco.models import precision

    auto = ModelConfig(path=tiny_models["policy"])
    assert precision(auto, "cpu") == {"device": "cpu", "dtype": "float32"}
    assert precision(auto, "cuda:1") == {"device": "cuda", "dtype": "bfloat16"}
    assert precision(auto.model_copy(update={"dtype": "float32"}), "cuda") == {"device": "cuda", "dtype": "float32"}
    on = {
        device: keys(
            make_config(
                tmp_path,
                tiny_models,
                [{"path": str(prompts_file)}],
                generate={"engine": {"device": device}},
                score={"engine": {"device": device}},
            )
        )
        for device in ("cpu", "cuda")
    }
    assert {u for u in on["cpu"] if on["cpu"][u] != on["cuda"][u]} == {
        u for u in on["cpu"] if not u.startswith("prompts/")
    }


def test_every_stage_module_defines_what_a_stage_must():
    import inspect

    from croco.plan import stage_modules
    from croco.tasks import Stage

    required = [name for name in Stage.__annotations__] + [
        name for name, member in vars(Stage).items() if inspect.isfunction(member)
    ]
    for module in stage_modules():
        assert [name for name in required if not hasattr(module, name)] == [], module.__name__
        assert hasattr(getattr(module, module.NAME), "work")  # the task croco unit runs in a job


def test_a_stage_run_as_gpu_jobs_is_keyed_for_the_gpu_not_for_the_planning_machine(
    tmp_path, tiny_models, prompts_file, capsys
):
    """A login node without a GPU plans units that run on GPU nodes: `auto` must mean their GPU (bfloat16)."""
    from conftest import save_config
    from croco.cli import main

    on_gpus = {"stages": {"generate": {"kind": "slurm", "slurm": {"gpus_per_node": 2}}}}
    here = build_plan(make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}]))
    cfg = make_config(tmp_path / "store", tiny_models, [{"path": str(prompts_file)}], execution=on_gpus)
    jobs = build_plan(cfg)
    generate, score = jobs.by_id["generate/en"], jobs.by_id["score/en"]
    assert generate.settings["engine"] == {"name": "transformers", "device": "cuda", "dtype": "bfloat16"}
    assert score.settings["engine"]["device"] == "cpu"  # still in this process
    assert generate.key != here.by_id["generate/en"].key and score.key != here.by_id["score/en"].key  # reads generate
    assert jobs.by_id["prompts/en"].key == here.by_id["prompts/en"].key

    # The job checks it has what it was keyed for (this machine has no GPU).
    path = save_config(cfg, tmp_path / "job.yaml")
    assert main(["unit", "generate", "en", generate.key, "--config", str(path)]) != 0
    assert (
        "generate/en was keyed for a GPU (execution asks for gpus_per_node) but this job on" in capsys.readouterr().err
    )
