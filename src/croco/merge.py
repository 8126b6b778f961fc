"""`croco merge ADAPTER`: fold a LoRA adapter into its base and write a full model folder.

The folder (merged weights as safetensors, tokenizer with its chat template, generation
config) loads in transformers, vLLM and EuroEval like any other model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from croco.errors import CrocoError


def default_output(adapter: Path) -> Path:
    """`merged/` beside an adapter of one's own; for an adapter inside a committed croco version (immutable),
    `merged/<stage>-<key>` in the working directory."""
    version = adapter.resolve().parent.parent  # <version>/files/adapter
    if (version / "manifest.json").exists():
        return Path("merged") / f"{version.parent.parent.name}-{version.name}"
    return adapter.parent / "merged"


def merge_adapter(adapter: Path, out: Path | None = None, dtype: str = "auto") -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config_file = adapter / "adapter_config.json"
    if not config_file.exists():
        raise CrocoError(f"{adapter} is not a LoRA adapter folder (no adapter_config.json)")
    base = json.loads(config_file.read_text())["base_model_name_or_path"]
    out = out or default_output(adapter)
    weights = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=weights, use_safetensors=True)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tmp = out.with_name(out.name + ".tmp")
    merged.save_pretrained(tmp, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter).save_pretrained(tmp)
    (tmp / "croco_merge.json").write_text(json.dumps({"base": base, "adapter": str(adapter)}, indent=2))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out
