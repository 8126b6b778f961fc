"""The run config: one YAML file, validated strictly before any work starts.

Every field is documented here and nowhere else (the README's config reference is
generated from these descriptions). Defaults are the paper's settings (docs: METHOD.md).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from croco.embedded import POLICY, PREFIX, REWARD, is_embedded
from croco.errors import CrocoError
from croco.fileio import read_text
from croco.languages import LANGUAGES

STAGE_NAMES = [
    "prompts",
    "translate",
    "generate",
    "score",
    "pair",
    "sft",
    "dpo",
    "arena",
    "judge",
    "euroeval",
    "audit_translate",
    "audit_score",
]


class _Section(BaseModel):
    # strict: "8" is not silently read as 8; extra="forbid": a misspelt key is an error, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelConfig(_Section):
    path: str = Field(
        description="Hugging Face model id, local folder, or `embedded:NAME` for a model croco builds offline "
        "(`embedded:smollm2-135m-instruct`, `embedded:croco-demo-reward`)."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) to pin.")
    trust_remote_code: bool = Field(
        False, description="Run the model repository's own Python code; off unless you trust it."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight dtype; `auto` is bfloat16 on a GPU and float32 on a CPU."
    )
    adapter: str | None = Field(None, description="A PEFT LoRA adapter folder applied on top of the model.")
    chat_template_kwargs: dict[str, Any] = Field(
        {},
        description="Extra chat-template arguments, e.g. `{enable_thinking: false}` to turn a hybrid model's thinking off.",
    )

    @field_validator("path", "adapter")
    @classmethod
    def _names_a_model(cls, path: str | None) -> str | None:
        # Checked here: a path that is none of these fails only inside transformers, once per load attempt.
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        if path is None or Path(path).expanduser().is_dir():
            return path
        if is_embedded(path):
            if path[len(PREFIX) :] not in (POLICY, REWARD):
                raise ValueError(f"unknown embedded model; use {PREFIX}{POLICY} or {PREFIX}{REWARD}")
            return path
        try:
            validate_repo_id(path)
        except HFValidationError:
            raise ValueError("names neither a folder that exists here nor a Hugging Face id such as org/name") from None
        return path


class ModelsConfig(_Section):
    policy: ModelConfig = Field(description="The model that answers the prompts and is later tuned.")
    reward: ModelConfig = Field(description="Sequence-classification reward model with one logit.")
    base: ModelConfig | None = Field(
        None,
        description="Model that SFT and DPO tune; defaults to the policy. Another model makes the pairs off-policy (flagged in the manifest).",
    )


class DataSource(_Section):
    path: str = Field(
        description="A local JSON/JSONL file, a dataset folder or Hugging Face dataset id (read with `datasets`), or `embedded:demo-prompts`."
    )
    language: str | None = Field(
        None, description="Language of every record in this source; else each record's language field."
    )
    split: str = Field("train", description="Dataset split (Hugging Face datasets only).")
    name: str | None = Field(None, description="Dataset configuration name (Hugging Face datasets only).")
    revision: str | None = Field(None, description="Dataset revision (Hugging Face datasets only).")
    translate: bool = Field(
        False,
        description="English conversations to translate (`translate`): the run's other languages get their prompts from "
        "these, translated, instead of from sources of their own. Its records are English (others are counted, not kept).",
    )

    @model_validator(mode="after")
    def _translates_english(self):
        if self.translate and self.language not in (None, "en"):
            raise ValueError(f"a source to translate holds English conversations, not language {self.language!r}")
        return self


class DataConfig(_Section):
    sources: list[DataSource] = Field(
        min_length=1,
        description="Where the prompts come from: one source per language, or sources with a language field.",
    )
    id_field: str = Field(
        "prompt_id", description="Record field holding the stable prompt id shared by all translations."
    )
    language_field: str = Field(
        "language", description="Record field holding the language code, for sources without `language`."
    )
    subsample: int | None = Field(
        None,
        gt=0,
        description="Keep this many prompt ids, drawn at random with the run seed (all their languages kept).",
    )
    on_invalid: Literal["error", "reject"] = Field(
        "error",
        description="`error` stops at the first invalid record; `reject` writes it to rejects.jsonl with its reason and counts it.",
    )


class EngineConfig(_Section):
    name: Literal["transformers", "vllm", "openai"] = Field(
        "transformers",
        description="Inference engine: `transformers` or `vllm` in this process, or `openai` for any OpenAI-compatible server.",
    )
    device: str = Field("auto", description="`auto`, `cpu`, `cuda` or `cuda:N` (transformers).")
    batch_size: int = Field(16, gt=0, description="Sequences per forward pass (transformers).")
    base_url: str | None = Field(
        None,
        description="Server URL such as `http://localhost:8000/v1` (openai; vLLM, SGLang, `transformers serve`, a hosted API).",
    )
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key (openai); the key itself never appears in files.",
    )
    served_model: str | None = Field(
        None,
        description="Model name the server expects (openai); defaults to the model's path. It names one model: in the arena, "
        "each evaluated model is asked for by its own name (`evaluate.served_models`).",
    )
    concurrency: int = Field(8, gt=0, description="Requests in flight at once (openai).")
    max_retries: int = Field(5, ge=0, description="Retries with exponential backoff for failed requests (openai).")
    timeout_s: float = Field(600.0, gt=0, description="Seconds before one request is abandoned and retried (openai).")
    tensor_parallel_size: int = Field(1, gt=0, description="GPUs one model is split across (vllm).")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="Share of each GPU's memory vLLM takes for weights and KV cache (vllm)."
    )
    kv_cache_gib: float | None = Field(
        None,
        gt=0,
        description="KV cache size in GiB, instead of what gpu_memory_utilization leaves (vllm). On a CPU build, which "
        "would otherwise reserve that share of the machine's memory, 1 suits the embedded models.",
    )
    enforce_eager: bool = Field(
        False,
        description="Skip torch.compile and CUDA graphs (vllm): the engine starts in seconds instead of minutes and "
        "generates somewhat slower; for tests, the demo and short runs.",
    )

    @model_validator(mode="after")
    def _server_named(self):
        if self.name == "openai" and not self.base_url:
            raise ValueError("the openai engine needs base_url, e.g. http://localhost:8000/v1")
        return self


class GenerateConfig(_Section):
    engine: EngineConfig = Field(EngineConfig(), description="Engine that samples the answers.")
    num_samples: int = Field(64, gt=0, description="Answers sampled per prompt.")
    max_new_tokens: int = Field(4096, gt=0, description="Longest answer, in tokens.")
    max_prompt_tokens: int | None = Field(
        None,
        gt=0,
        description="Longest prompt sent, in tokens as the policy's chat template renders it; longer prompts are skipped and "
        "counted (`prompt_too_long`), never generated. Default: the policy's context (`max_position_embeddings`) minus `max_new_tokens`.",
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")
    respond_in_language: bool = Field(
        False,
        description='Append "Please respond in {Language} and nothing else." to each prompt (stored beside the original).',
    )
    prompts_per_shard: int = Field(
        64, gt=0, description="Prompts per output shard; a crash loses at most one shard of work."
    )


class TranslateConfig(_Section):
    model: ModelConfig | None = Field(
        None,
        description="The translator (required when a data source is marked `translate`), e.g. "
        "`Infomaniak-AI/vllm-translategemma-27b-it` (the paper's).",
    )
    engine: EngineConfig = Field(EngineConfig(), description="Engine that runs the translator.")
    languages: list[str] | None = Field(
        None,
        description="Which of the run's languages are translated from the English source; default: every one but English. "
        "The others read their own sources, as without translation.",
    )
    prompt_format: Literal["auto", "translategemma", "instruction"] = Field(
        "auto",
        description="`translategemma`: `<<<source>>>en<<<target>>>{code}<<<text>>>{text}` as one user turn; `instruction`: "
        '"Translate this English text into {Language}." then the text; `auto`: translategemma for a model whose path '
        "names TranslateGemma, else instruction.",
    )
    max_new_tokens: int = Field(8192, gt=0, description="Longest translation of one message, in tokens (greedy).")
    max_prompt_tokens: int = Field(
        8192,
        gt=0,
        description="A conversation with any message whose translation prompt (in the translator's chat template) is longer "
        "is dropped whole, counted and reported (`prompt_too_long`).",
    )
    on_bad: Literal["flag", "drop"] = Field(
        "flag",
        description="A conversation with a bad translation (a `copy` of the English, `off_target`: detected in another "
        "language, `length_ratio`: extreme length against the English) is kept with its `flag` (`flag`), or dropped and "
        "counted by reason (`drop`).",
    )
    min_length_ratio: float = Field(
        0.33,
        gt=0,
        description="Translations shorter than this share of the English, in characters, are `length_ratio`.",
    )
    max_length_ratio: float = Field(
        3.0,
        gt=0,
        description="Translations longer than this multiple of the English, in characters, are `length_ratio`.",
    )
    conversations_per_shard: int = Field(
        64, gt=0, description="Conversations per output shard; a crash loses at most one shard of work."
    )

    @field_validator("languages")
    @classmethod
    def _not_english(cls, codes: list[str] | None) -> list[str] | None:
        for code in codes or []:
            if code not in LANGUAGES or code == "en":
                raise ValueError(f"{code!r} cannot be translated into from English; name croco languages other than en")
        return codes


class ScoreConfig(_Section):
    engine: EngineConfig = Field(EngineConfig(batch_size=8), description="Engine that runs the reward model.")
    max_len: int = Field(
        32768, gt=0, description="Conversations longer than this many tokens are skipped and counted, never scored."
    )


class PairConfig(_Section):
    target: Literal["mean_minus_2sigma", "mean_plus_k_std", "q1", "min"] = Field(
        "mean_minus_2sigma",
        description="Reward the rejected sample should be nearest: mean - 2 std, mean + k std, the 25th percentile, or the minimum.",
    )
    k: float = Field(-2.0, description="The k of `mean_plus_k_std`.")
    prompt_source: Literal["chosen", "rejected", "random"] = Field(
        "chosen", description="All-language DPO: whose language the prompt is in (`random` is seeded)."
    )
    prompt_text: Literal["sent", "original"] = Field(
        "sent",
        description="Train on the prompt as the policy saw it (`sent`, with any language instruction) or as loaded (`original`).",
    )
    require_language: Literal["none", "chosen", "both"] = Field(
        "none",
        description="Keep a pool only when its chosen answer (`chosen`), or its chosen and rejected answers (`both`), are "
        "detected in the language of the prompt they answered; removed pools are counted per language. `none`: the paper's pairing.",
    )


class LoraConfig(_Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA alpha.")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout.")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules that get adapters.",
    )


class TrainingConfig(_Section):
    enabled: bool = Field(True, description="Run this training stage.")
    pairs: Literal["in_language", "all_languages"] = Field("in_language", description="Which pair product to train on.")
    learning_rate: float = Field(gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field("cosine", description="transformers scheduler name.")
    max_length: int = Field(
        4096,
        gt=0,
        description="Longest training sequence in tokens (prompt + answer); longer ones are truncated by TRL.",
    )
    max_prompt_length: int = Field(
        2048, gt=0, description="Examples whose prompt is longer are dropped before training, counted and reported."
    )
    batch_size: int = Field(1, gt=0, description="Micro batch per device.")
    gradient_accumulation: int = Field(8, gt=0, description="Micro batches per optimizer step.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data.")
    eval_fraction: float = Field(
        0.01,
        ge=0,
        lt=1,
        description="Share of examples held out for evaluation (at least one when there are two or more).",
    )
    save_steps: int = Field(
        50, gt=0, description="Optimizer steps between checkpoints; a killed run resumes from the last one."
    )
    lora: LoraConfig = Field(LoraConfig(), description="Adapter settings.")
    distributed: Literal["ddp", "zero2", "zero3"] = Field(
        "ddp",
        description="How a job on several devices shares the training (a shipped accelerate config): `ddp` (a replica per "
        "device), DeepSpeed `zero2` or `zero3` (weights sharded too). Not part of the key: the effective batch stays "
        "batch_size x gradient_accumulation on any number of devices (each accumulates gradient_accumulation / devices).",
    )

    @model_validator(mode="after")
    def _prompt_fits(self):
        if self.max_prompt_length >= self.max_length:
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be below max_length ({self.max_length}) to leave room for the answer"
            )
        return self


class SFTConfig(TrainingConfig):
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")


class DPOConfig(TrainingConfig):
    learning_rate: float = Field(5e-6, gt=0, description="Peak learning rate.")
    beta: float = Field(0.1, gt=0, description="DPO beta (TRL's default).")
    online: bool = Field(
        False,
        description="Online DPO (TRL's experimental OnlineDPOTrainer): the adapter samples two answers per pair prompt while "
        "training, with `generate`'s max_new_tokens and temperature, and the run's reward model judges them.",
    )


def _usable_model_name(name: str) -> str:
    # An evaluated model's name is a folder name in storage and part of a Prefect artifact key.
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise ValueError("a model name may hold only letters, digits, '_', '.' and '-'")
    return name


class EvaluateConfig(_Section):
    run_adapters: list[Literal["sft", "dpo"]] | None = Field(
        None, description="Adapters of this run to evaluate against the policy; default: every enabled training stage."
    )
    models: dict[Annotated[str, AfterValidator(_usable_model_name)], ModelConfig] = Field(
        {}, description="More models to evaluate, by name (a merged folder, another adapter, a hub id)."
    )
    baseline: str = Field("policy", description="The model every other one is compared with.")
    served_models: dict[str, str] = Field(
        {},
        description="With an openai arena engine: the name the server knows each evaluated model by (`policy`, `sft`, `dpo` or a key "
        "of `evaluate.models`), e.g. an adapter's vLLM `--lora-modules` name; default: `arena.engine.served_model`, else the "
        "model's path. A name that would stand for two different models is refused.",
    )


class ArenaConfig(_Section):
    enabled: bool = Field(True, description="Answer the arena prompts with every evaluated model.")
    prompts: DataSource = Field(
        DataSource(path="CohereLabs/m-ArenaHard-v2.1", split="test"),
        description="m-ArenaHard prompts (question_id, prompt, category, subcategory, language): a hub id, loaded one language "
        "configuration at a time, or a local JSON/JSONL file in that schema (`embedded:demo-arena` for the demo's).",
    )
    per_language: int | None = Field(
        None,
        gt=0,
        description="Keep this many questions per language (the same question ids in every language, seeded).",
    )
    engine: EngineConfig = Field(EngineConfig(), description="Engine that writes the answers.")
    max_new_tokens: int = Field(8192, gt=0, description="Longest answer, in tokens.")
    temperature: float = Field(0.0, ge=0, description="Sampling temperature; the paper answers greedily.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold.")


class JudgeConfig(_Section):
    enabled: bool = Field(True, description="Judge every evaluated model's arena answers against the baseline's.")
    kind: Literal["llm", "reward"] = Field(
        "llm",
        description="`llm`: a pairwise LLM judge; `reward`: the higher reward-model score wins (a cheap proxy, only when asked for; "
        "with the training reward model it is circular, and the results say so).",
    )
    model: ModelConfig | None = Field(
        None,
        description="The judge model: the chat model for `llm` (required when the judge runs); for `reward`, a reward model, "
        "by default models.reward (the one the training pairs were chosen with).",
    )
    engine: EngineConfig = Field(EngineConfig(), description="Engine that runs the judge.")
    orders: Literal["both", "coin"] = Field(
        "both",
        description="`both` judges each pair in both orders (arena-hard-auto, MT-Bench); `coin`: one order by a seeded coin flip (the paper).",
    )
    allow_ties: bool = Field(True, description="Let the judge answer [[T]].")
    ties: Literal["half", "win", "loss"] = Field("half", description="A tie counts as half a win, a win or a loss.")
    temperature: float = Field(0.7, ge=0, description="Judge sampling temperature (the paper's 0.7).")
    max_new_tokens: int = Field(
        4096, gt=0, description="Longest judgment, in tokens; a cut-off judgment without a verdict is counted."
    )
    max_len: int = Field(
        32768, gt=0, description="Reward judge: conversations longer than this many tokens are not scored and counted."
    )
    bootstrap_rounds: int = Field(
        1000, ge=1000, description="Bootstrap resamples (by question) for the confidence intervals."
    )


class EuroEvalConfig(_Section):
    enabled: bool = Field(
        False, description="Benchmark every evaluated model with EuroEval (in its own process and Python environment)."
    )
    python: str = Field(
        "python3.12",
        description="Interpreter of the environment where EuroEval is installed; croco runs it, so a config is code: run only configs you trust.",
    )
    version: str | None = Field(
        None,
        description="The EuroEval version the units' keys name, for a planning machine that cannot run `python` (a login "
        "node, EuroEval inside the jobs' image); each unit checks its interpreter has it. Default: asked of `python`.",
    )
    datasets: dict[str, list[str]] | None = Field(
        None,
        description="Datasets per language code; default: croco's table (`croco euroeval-datasets`), checked against the installed EuroEval.",
    )
    few_shot: bool = Field(
        True, description="Few-shot prompts (EuroEval's default for generative models); false for zero-shot."
    )
    iterations: int = Field(
        3, gt=0, description="Bootstrap iterations per dataset (the paper's 3; EuroEval's default is 10)."
    )
    split: Literal["test", "val"] = Field("test", description="Split to evaluate on.")
    device: str = Field("auto", description="Device EuroEval uses (`auto`, `cpu`, `cuda`).")
    api_key_env: str | None = Field(
        None,
        description="Name of the environment variable holding the API key EuroEval sends to an API model; passed to EuroEval's process in its environment, never on its command line or in any file.",
    )
    extra_args: list[str] = Field(
        [],
        description="More `euroeval` command-line arguments, passed as they are; an API key here (`--api-key`) is moved to the environment and masked, but belongs in `api_key_env`.",
    )

    @field_validator("datasets")
    @classmethod
    def _euroeval_languages(cls, table: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for code in table or {}:
            if code not in LANGUAGES or LANGUAGES[code].euroeval_code is None:
                known = ", ".join(c for c, lang in LANGUAGES.items() if lang.euroeval_code)
                raise ValueError(f"{code!r} is not a language EuroEval has datasets for; use one of {known}")
        return table


class AuditConfig(_Section):
    pairs: str = Field(
        "embedded:audit-pairs",
        description="English preference pairs for `croco audit-reward`: a JSON/JSONL file, a dataset folder or Hugging Face "
        "dataset id whose records have `pair_id`, `prompt`, `chosen` and `rejected`; default: the 40 pairs that ship with croco.",
    )
    split: str = Field("train", description="Dataset split of `pairs` (datasets only).")
    revision: str | None = Field(None, description="Dataset revision of `pairs` (Hugging Face datasets only).")
    limit: int | None = Field(None, gt=0, description="Audit only the first N pairs.")

    @property
    def source(self) -> DataSource:
        return DataSource(path=self.pairs, split=self.split, revision=self.revision)


class StorageConfig(_Section):
    root: str = Field(
        "runs/store",
        description="Where every stage version is kept: a local folder (relative to the working directory) or `s3://bucket/prefix` "
        "(endpoint and credentials from the environment: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE).",
    )
    credentials_block: str | None = Field(
        None,
        description="For an `s3://` root: the name of a saved Prefect AwsCredentials block (prefect-aws) to take the key, secret, "
        "session token, profile, region and endpoint from instead of the environment. The block lives on the Prefect server.",
    )
    verify: Literal["size", "checksum"] = Field(
        "checksum",
        description="What the cache check of every run and `croco plan` compares with a version's manifest: `size` (one listing; "
        "catches a missing or truncated file) or `checksum` (reads every file; also catches a changed byte of the same size).",
    )


class RetryConfig(_Section):
    attempts: int = Field(0, ge=0, description="Retries after a failure (a config or input error is never retried).")
    delay_s: float = Field(
        10.0, gt=0, description="Seconds before the first retry; each later retry waits twice as long."
    )


SHELL_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
ONE_LINE = r"^[^\n\r]*$"  # a value rendered into a job script line must not start another line
SBATCH_VALUE = r"^[^\s'\"]+$"  # written unquoted after an #SBATCH option, which sbatch reads up to a space


class SlurmConfig(_Section):
    partition: str | None = Field(None, pattern=SBATCH_VALUE, description="`--partition`, e.g. `standard-g`.")
    account: str | None = Field(None, pattern=SBATCH_VALUE, description="`--account` (the project billed).")
    qos: str | None = Field(None, pattern=SBATCH_VALUE, description="`--qos`.")
    nodes: int = Field(1, gt=0, description="`--nodes`.")
    gpus_per_node: int = Field(0, ge=0, description="`--gpus-per-node`; 0 asks for none.")
    cpus_per_task: int | None = Field(None, gt=0, description="`--cpus-per-task`.")
    mem: str | None = Field(
        None, pattern=r"^[0-9]+[KMGT]?$", description="`--mem` per node, e.g. `480G`; default: the partition's."
    )
    time: str = Field(
        "01:00:00",
        pattern=r"^([0-9]+-)?[0-9]+(:[0-9]{2}){0,2}$",
        description="`--time`, the job's wall-clock limit (`HH:MM:SS` or `D-HH:MM:SS`); a job past it ends as TIMEOUT "
        "and is retried (see `retries`), resuming from its finished shards.",
    )
    sbatch: list[str] = Field(
        [],
        description="More `#SBATCH` lines, each one option as sbatch takes it, e.g. `--exclusive` or `--constraint=mi250`.",
    )
    env: dict[str, str] = Field(
        {},
        description="Variables the job gets, as literal values (no `$` expansion), e.g. HF_HOME, TORCH_HOME and "
        "TRITON_CACHE_DIR on scratch, VLLM_USE_TRITON_FLASH_ATTN: '0'. Besides these the job gets only PATH, HOME, "
        "USER, LANG and, for an s3:// root, the AWS_* variables of the flow's environment: never Prefect's settings.",
    )
    rename_env: dict[str, str] = Field(
        {},
        description="Variables moved to another name inside the job, e.g. `{ROCR_VISIBLE_DEVICES: HIP_VISIBLE_DEVICES}`: "
        "SLURM sets the first on AMD nodes, software in the container reads the second (the first is unset).",
    )
    modules: list[str] = Field(
        [], description="`module load` these before croco starts (the job is a login shell then)."
    )
    container: list[str] = Field(
        [],
        description="The argv prefix croco runs under in the job, e.g. `[singularity, exec, -B, /scratch/project_x, "
        "/scratch/project_x/croco-rocm.sif]`; empty runs croco on the node directly.",
    )
    croco: list[str] = Field(
        ["croco"],
        description="How the job starts croco (inside the container, if any), e.g. `[python, -m, croco.cli]`.",
    )
    job_folder: str | None = Field(
        None,
        description="A folder the login node and the compute nodes both see, for each job's script, log and the config "
        "it reads (no credentials are in it); default: `_jobs` in storage.root, which an s3:// root cannot be: name "
        "one on the shared scratch.",
    )
    array_tasks: int = Field(
        1,
        gt=0,
        description="Above 1, a generate, score or arena unit is one job array of up to this many tasks (each with "
        "the resources above: one GPU or one tensor-parallel group), task i doing the shards at positions p with "
        "p % tasks == i; the flow commits the version once every shard is done, and a retry resubmits only the "
        "tasks whose shards are missing. Other stages ignore it.",
    )
    array_throttle: int | None = Field(
        None, gt=0, description="At most this many tasks of one job array run at once (`--array=...%N`)."
    )
    poll_min_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between two looks at the queue (one `squeue`, then one `sacct`, for all of the flow's jobs) "
        "after a change; the interval doubles while nothing changes. One watcher serves a flow process: the section's "
        "own value counts, not a stage's.",
    )
    poll_max_s: float = Field(30.0, gt=0, description="The longest interval between two looks at the queue.")
    unknown_job_s: float = Field(
        60.0,
        gt=0,
        description="A job that neither `squeue` nor `sacct` has shown this many seconds after croco began waiting on it "
        "(purged from the accounting database, or of another cluster) fails its unit.",
    )

    @field_validator("sbatch", "modules", "container", "croco")
    @classmethod
    def _one_line_each(cls, values: list[str]) -> list[str]:
        for value in values:
            if re.search(r"[\n\r]", value):
                raise ValueError(f"{value!r} spans lines; give one item per line")
        return values

    @field_validator("env", "rename_env")
    @classmethod
    def _variable_names(cls, env: dict[str, str], info) -> dict[str, str]:
        for name in [*env, *(env.values() if info.field_name == "rename_env" else [])]:
            if not re.match(SHELL_NAME, name):
                raise ValueError(f"{name!r} is not a variable name (letters, digits and _, not starting with a digit)")
        return env


class ExecutionSettings(_Section):
    kind: Literal["local", "slurm"] = Field(
        "local",
        description="`local`: the unit's work runs in the flow's own process; `slurm`: each unit is a SLURM job that "
        "croco submits and waits on, while the flow stays where it was started (a login node, a Prefect worker).",
    )
    slurm: SlurmConfig = Field(SlurmConfig(), description="The job a unit becomes, with `kind: slurm`.")


class ExecutionConfig(ExecutionSettings):
    local_parallel: int = Field(
        1,
        gt=0,
        description="Units that run in this process at once (pool threads); on one machine two models at once only slow "
        "each other down. Where some stages run as cluster jobs, a Prefect tag concurrency limit per host holds the "
        "in-process units that load a model to it.",
    )
    cluster: str | None = Field(
        None,
        description="A cluster profile holding the site's part of this section (partition, account, container, "
        "caches): a name, read from `configs/clusters/NAME.yaml` in the working directory, or a path to a YAML file. "
        "What this config's own `execution` says is merged over it.",
    )
    stages: dict[Literal[*STAGE_NAMES], ExecutionSettings] = Field(
        {},
        description="Per stage (`generate`, `sft`, ...), settings merged over the rest of this section, e.g. "
        "`{sft: {slurm: {gpus_per_node: 8, time: '12:00:00'}}}`.",
    )

    @model_validator(mode="before")
    @classmethod
    def _profile_and_stages(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        if raw.get("cluster"):
            raw = _merged(_cluster_profile(raw["cluster"]), raw)
        default = {name: value for name, value in raw.items() if name not in ("cluster", "stages", "local_parallel")}
        stages = raw.get("stages") or {}
        if not isinstance(stages, dict):
            return raw
        return {**raw, "stages": {stage: _merged(default, over or {}) for stage, over in stages.items()}}

    def for_stage(self, stage: str) -> ExecutionSettings:
        return self.stages.get(stage, self)

    def device_class(self, stage: str) -> str | None:
        """Where `auto` puts a model in `stage`'s units: for a job, a GPU when it asks for GPUs (ROCm's torch calls
        it cuda too); None for units in this process (this machine decides)."""
        settings = self.for_stage(stage)
        if settings.kind == "local":
            return None
        return "cuda" if settings.slurm.gpus_per_node > 0 else "cpu"


def _cluster_profile(name: str) -> dict[str, Any]:
    path = Path(name) if name.endswith((".yaml", ".yml")) or "/" in name else Path("configs/clusters") / f"{name}.yaml"
    try:
        profile = read_yaml(read_text(path))
    except FileNotFoundError:
        raise ValueError(
            f"the cluster profile {path.resolve()} does not exist; name a file in configs/clusters/ or give a path"
        ) from None
    if not isinstance(profile, dict):
        raise ValueError(f"the cluster profile {path} must hold a mapping, the keys of `execution`")
    return profile


def _merged(under: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `under`, section by section (a list or a value replaces)."""
    result = copy.deepcopy(under)
    _merge(result, copy.deepcopy(over))
    return result


class CrocoConfig(_Section):
    name: str = Field(
        "croco",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Run name: each run's report goes to `<storage.root>/reports/<name>/<run_id>/` (report.md and the self-contained report.html), the newest completed one's also to `reports/<name>/`; `croco gc`, `croco runs`, `croco report` and `croco compare` go by it.",
    )
    storage: StorageConfig = StorageConfig()
    execution: ExecutionConfig = ExecutionConfig()
    retries: dict[str, RetryConfig] = Field(
        {"default": RetryConfig(attempts=1)},
        description="Retries per stage (`generate`, `score`, ...), with `default` for the others; they never change a cache key.",
    )
    seed: int = Field(42, description="Seed for subsampling, sampling and training.")
    languages: list[str] = Field(
        min_length=1, description="Languages to run, as croco language codes (see `croco languages`)."
    )
    models: ModelsConfig
    data: DataConfig
    translate: TranslateConfig = TranslateConfig()
    generate: GenerateConfig = GenerateConfig()
    score: ScoreConfig = ScoreConfig()
    pair: PairConfig = PairConfig()
    sft: SFTConfig = SFTConfig()
    dpo: DPOConfig = DPOConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    arena: ArenaConfig = ArenaConfig()
    judge: JudgeConfig = JudgeConfig()
    euroeval: EuroEvalConfig = EuroEvalConfig()
    audit: AuditConfig = Field(
        AuditConfig(), description="The reward transfer audit (`croco audit-reward`); no other command reads it."
    )
    execution: ExecutionConfig = Field(
        ExecutionConfig(),
        description="Where each unit's work runs; never part of a unit's key, so moving a stage to the cluster redoes nothing.",
    )

    @field_validator("retries")
    @classmethod
    def _known_stages(cls, retries: dict[str, RetryConfig]) -> dict[str, RetryConfig]:
        known = ["default", *STAGE_NAMES]
        for name in retries:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=1)
                raise ValueError(
                    f"unknown stage {name!r}"
                    + (f"; did you mean {close[0]!r}?" if close else f"; use one of {', '.join(known)}")
                )
        return {"default": RetryConfig(attempts=1), **retries}  # naming one stage keeps the default for the others

    @model_validator(mode="after")
    def _translator_named(self):
        if any(source.translate for source in self.data.sources) and self.translate.model is None:
            raise ValueError(
                "a data source is marked translate, which needs translate.model, the model that translates it"
            )
        return self

    @model_validator(mode="after")
    def _judge_named(self):
        # Checked here, not in JudgeConfig: a judge that never runs (no arena) needs no model.
        if self.arena.enabled and self.judge.enabled and self.judge.kind == "llm" and self.judge.model is None:
            raise ValueError(
                "judge.kind is llm (the default), which needs judge.model, the chat model that judges; or set judge.kind: reward "
                "to judge with a reward model, or judge.enabled: false"
            )
        return self

    @field_validator("languages")
    @classmethod
    def _known_languages(cls, codes: list[str]) -> list[str]:
        unknown = [c for c in codes if c not in LANGUAGES]
        if unknown:
            raise ValueError(f"unknown language code {unknown[0]!r}; use one of {', '.join(sorted(LANGUAGES))}")
        if len(set(codes)) != len(codes):
            raise ValueError("lists a language twice")
        return codes


class _Loader(yaml.SafeLoader):
    """YAML as PyYAML reads it, except that `1e-4` is a number: YAML 1.1 wants a dot (`1.0e-4`), no user does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def load_config(
    path: str | Path, overrides: list[str] = (), raw: Any = None, updates: dict[str, Any] | None = None
) -> CrocoConfig:
    """Read a YAML config (or take its parsed `raw` content), apply `key.path=value` overrides, then `updates`
    (values merged into the sections they name), and validate it all."""
    if raw is None:
        path = Path(path)
        try:
            raw = read_yaml(read_text(path))
        except FileNotFoundError:
            raise CrocoError(f"config file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise CrocoError(f"config file {path} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise CrocoError(f"config file {path} must hold a mapping of keys to values")
    for override in overrides:
        _apply_override(raw, override)
    _merge(raw, updates or {})
    return parse_config(raw, source=str(path))


def _merge(raw: dict[str, Any], updates: dict[str, Any]) -> None:
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            _merge(raw[key], value)
        else:
            raw[key] = value


def parse_config(raw: dict[str, Any], source: str = "config") -> CrocoConfig:
    try:
        return CrocoConfig.model_validate(raw)
    except ValidationError as exc:
        raise CrocoError(f"{source}: {_explain(exc.errors()[0])}") from None


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise CrocoError(f"override {override!r} must look like key.path=value, for example generate.num_samples=8")
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CrocoError(f"override {override!r}: {part} is not a section")
    try:
        node[leaf] = read_yaml(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise CrocoError(
            f"override {override!r} is not valid YAML ({problem}); write the value as in a config file, e.g. languages=[en,da]"
        ) from None


def _explain(error: dict[str, Any]) -> str:
    """One sentence naming the key and the fix, from pydantic's error record."""
    loc = [str(p) for p in error["loc"] if p != "[key]"]  # a mapping's key is named by the key itself
    key = ".".join(loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"did you mean {'.'.join(loc[:-1] + close)}?" if close else f"known keys here: {', '.join(known)}"
        return f"unknown key {key}; {hint}"
    if kind == "missing":
        return f"missing required key {key}"
    message = error["msg"].removeprefix("Value error, ")
    if not loc:  # a check across sections names its keys itself, and its input would be the whole config
        return message
    return f"key {key}: {message[0].lower()}{message[1:]} (got {error.get('input')!r})"


def _known_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = CrocoConfig
    for part in loc:
        if part not in getattr(model, "model_fields", {}):
            continue  # a list index or a key of a mapping such as evaluate.models
        annotation = model.model_fields[part].annotation
        args = [
            a for a in getattr(annotation, "__args__", [annotation]) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        model = args[0] if args else annotation
    return list(getattr(model, "model_fields", {}))


def config_reference() -> str:
    """Markdown table of every key, its default and its description, for the README."""
    rows = ["| key | default | meaning |", "|---|---|---|"]

    def walk(model: type[BaseModel], defaults: BaseModel | None, prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            inner = getattr(annotation, "__args__", [annotation])[0]
            key = f"{prefix}{name}"
            default = getattr(defaults, name) if defaults is not None else field.default
            if isinstance(inner, type) and issubclass(inner, _Section):
                in_list = getattr(annotation, "__origin__", None) is list
                walk(inner, None if in_list or field.is_required() else default, key + ("[]." if in_list else "."))
                continue
            shown = (
                "required"
                if field.is_required()
                else f"`{json.dumps(default, default=lambda section: section.model_dump())}`"
            )
            rows.append(f"| `{key}` | {shown} | {field.description or ''} |")

    walk(CrocoConfig, None, "")
    return "\n".join(rows)
