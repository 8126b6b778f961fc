"""Loading models and tokenizers the same safe way everywhere.

Weights load from safetensors only (never pickles), remote code runs only where the
config turns it on, and embedded models resolve to their cache folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from croco.config import ModelConfig
from croco.embedded import is_embedded, resolve_model
from croco.errors import CrocoError
from croco.fileio import folder_sha256
from croco.sources import hub_commit


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def load_tokenizer(model: ModelConfig, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        resolve_model(model.path), revision=revision_to_load(model), trust_remote_code=model.trust_remote_code
    )
    if not tokenizer.chat_template:
        raise _no_chat_template(model)
    tokenizer.padding_side = padding_side
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# transformers builds a model on the meta device by patching torch process-wide while it loads: two loads in two
# threads (units running side by side) break each other ("Cannot copy out of meta tensor"). Loads take turns; the
# loaded models then run at the same time.
_LOADING = threading.Lock()


def load_model(model: ModelConfig, auto_class: Any, device: torch.device, **kwargs: Any) -> torch.nn.Module:
    with _LOADING:
        loaded = auto_class.from_pretrained(
            resolve_model(model.path),
            revision=revision_to_load(model),
            trust_remote_code=model.trust_remote_code,
            use_safetensors=True,
            dtype=pick_dtype(model.dtype, device),
            **kwargs,
        )
        if model.adapter:
            from peft import PeftModel

            loaded = PeftModel.from_pretrained(loaded, model.adapter)
        return loaded.to(device).eval()


def load_reward_model(model: ModelConfig, device: torch.device) -> torch.nn.Module:
    """A one-logit sequence classifier whose score head runs in float32 whatever the backbone's dtype.

    A bfloat16 logit keeps 8 significant bits: rewards of magnitude 16 or more would round to steps
    of 0.125 and tie samples the head tells apart, and the pairing step would read those ties.
    """
    from transformers import AutoModelForSequenceClassification

    loaded = load_model(model, AutoModelForSequenceClassification, device)
    classifier = loaded.get_base_model() if hasattr(loaded, "get_base_model") else loaded  # under a PEFT adapter
    head = next(
        (
            getattr(classifier, name)
            for name in ("score", "classifier")
            if isinstance(getattr(classifier, name, None), torch.nn.Module)
        ),
        None,
    )
    if head is None:
        raise CrocoError(
            f"reward model {model.path} has no `score` or `classifier` head; croco runs a sequence classifier's head in float32"
        )
    head.float()
    head.register_forward_pre_hook(
        lambda _, inputs: tuple(x.float() if torch.is_tensor(x) and x.is_floating_point() else x for x in inputs)
    )
    return loaded


def encode_chat(
    tokenizer, messages: list[dict[str, str]], generation_prompt: bool, template_kwargs: dict[str, Any] | None = None
) -> list[int]:
    """Token ids of a conversation rendered with the model's chat template.

    Rendered and tokenized in one step: the template already writes the BOS token, and
    tokenizing the rendered text again would add a second one.
    """
    encoded = tokenizer.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=True, **(template_kwargs or {})
    )
    return list(encoded["input_ids"])


@functools.lru_cache(maxsize=None)
def _context_length(path: str, revision: str | None, trust_remote_code: bool) -> int | None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_model(path), revision=revision, trust_remote_code=trust_remote_code)
    return getattr(config.get_text_config(decoder=True), "max_position_embeddings", None)


def context_length(model: ModelConfig) -> int | None:
    """The tokens, prompt and answer together, that the model's config.json says it attends over (`max_position_embeddings`,
    of the text decoder in a multimodal config); None where it names none. Read once per process, without the weights."""
    return _context_length(model.path, revision_to_load(model), model.trust_remote_code)


def is_hub_model(model: ModelConfig) -> bool:
    return not is_embedded(model.path) and not Path(model.path).is_dir()


def revision_to_load(model: ModelConfig) -> str | None:
    """What to load of a hub model: the commit its key recorded (`hub_commit` is asked once per process, so a branch
    that moves between planning and loading does not change what loads), or the revision as given where neither the
    hub nor the cache knows a commit."""
    if not is_hub_model(model):
        return model.revision
    return hub_commit(model.path, model.revision, "model") or model.revision


def chat_template(model: ModelConfig) -> str:
    """The model's chat template as transformers reads it (`chat_template.jinja`, else the `chat_template` entry of
    `tokenizer_config.json`), read from those files alone: a key needs it, and planning loads no tokenizer."""
    jinja = _model_file(model, "chat_template.jinja")
    if jinja is not None:
        return jinja.read_text(encoding="utf-8")
    config = _model_file(model, "tokenizer_config.json")
    template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config else None
    if isinstance(template, list):  # named templates: transformers renders with the one named `default`
        template = {entry["name"]: entry["template"] for entry in template}.get("default")
    if not template:
        raise _no_chat_template(model)
    return template


def _no_chat_template(model: ModelConfig) -> CrocoError:
    return CrocoError(
        f"model {model.path} has no chat template; croco renders every prompt with the model's own template"
    )


def _model_file(model: ModelConfig, name: str) -> Path | None:
    """A file of the model's folder, or of its hub repository at the commit its key records (from the Hugging Face cache,
    else downloaded: a few kilobytes); None where the model has no such file."""
    if not is_hub_model(model):
        found = Path(resolve_model(model.path)) / name
        return found if found.is_file() else None
    from huggingface_hub import _CACHED_NO_EXIST, hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import RemoteEntryNotFoundError

    revision = revision_to_load(model)
    cached = try_to_load_from_cache(model.path, name, revision=revision)
    if cached is _CACHED_NO_EXIST:
        return None
    if cached is not None:
        return Path(cached)
    try:
        return Path(hf_hub_download(model.path, name, revision=revision))
    except RemoteEntryNotFoundError:
        return None
    except Exception as exc:  # offline and not cached, no such repository, no access
        raise CrocoError(
            f"cannot read {name} of model {model.path} (its chat template is in every key that uses the model): "
            f"{str(exc).splitlines()[0]}; run `croco prefetch` where the hub is reachable, or point models at a local folder"
        ) from None


def model_identity(model: ModelConfig) -> dict[str, Any]:
    """What identifies a model's behaviour in a stage key: a hub model's id and the commit its revision stands
    for, or the content of a local weight folder (retraining into the same folder must not be a cache hit);
    its chat template, dtype and the content of its adapter. Local folders are named under `location`, which
    the manifest shows and the key leaves out: the same weights copied elsewhere keep their key."""
    found: dict[str, Any] = {
        "dtype": model.dtype,
        "chat_template_sha256": hashlib.sha256(chat_template(model).encode()).hexdigest()[:16],
    }
    if model.chat_template_kwargs:
        found["chat_template_kwargs"] = model.chat_template_kwargs
    local = Path(resolve_model(model.path))
    if is_embedded(model.path):  # embedded models are named by croco's version
        found["path"] = model.path
    elif local.is_dir():
        found |= {"weights_sha256": folder_sha256(local), "location": {"path": model.path}}
    else:
        found |= {
            "path": model.path,
            "revision": model.revision,
            "commit": hub_commit(model.path, model.revision, "model"),
        }
    if model.adapter:
        found["adapter_sha256"] = folder_sha256(Path(model.adapter))
        found.setdefault("location", {})["adapter"] = model.adapter
    return found


# Where `auto` runs while a plan is built: a cluster job's device class (its GPUs), not the planning machine's.
_PLANNED_DEVICE: ContextVar[str | None] = ContextVar("croco_planned_device", default=None)


@contextmanager
def planned_device(kind: str | None):
    """`auto` resolves to `kind` ("cuda", "cpu") inside; None: to this machine's device."""
    token = _PLANNED_DEVICE.set(kind)
    try:
        yield
    finally:
        _PLANNED_DEVICE.reset(token)


def precision(model: ModelConfig, device: str) -> dict[str, str]:
    """The device class and weight dtype a model runs in, `auto` resolved where the unit runs (this machine, or a
    job's node as `planned_device` says): float32 on a CPU and bfloat16 on a GPU give other outputs, so both belong
    in the key of what the model makes there."""
    planned = _PLANNED_DEVICE.get()
    where = torch.device(planned) if device == "auto" and planned else pick_device(device)
    return {"device": where.type, "dtype": str(pick_dtype(model.dtype, where)).removeprefix("torch.")}
