"""One config object per run: dataclasses filled from YAML, then `key=value` overrides.

Unknown keys are rejected with the list of valid ones; values are checked against the field
types and every numeric field against its `Range` (declared beside the field with `ranged`);
the resolved config is written beside the run's checkpoints (`config.yaml`). Every defect of a
config file or an override is a ConfigError: one line naming the file (and YAML line) or the
key and its valid range, which the command line prints as is (exit 2).

An empty YAML file is a valid config: all defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
import reprlib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


# ------------------------------------------------------------------------------------------
# Valid ranges, declared per field


@dataclass(frozen=True)
class Range:
    """The valid values of one numeric key: optional bounds (gt / ge / lt), and, for a float
    key, finite (NaN and ±inf are never a setting). `note` says what a boundary value means."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    note: str = ""

    def describe(self, is_float: bool) -> str:
        lo = self.gt if self.gt is not None else self.ge
        if lo is not None and self.lt is not None:
            text = f"in {'(' if self.gt is not None else '['}{_num(lo)}, {_num(self.lt)})"
        else:
            bound = (f"> {_num(self.gt)}" if self.gt is not None else f"≥ {_num(self.ge)}" if self.ge is not None
                     else f"< {_num(self.lt)}" if self.lt is not None else "")
            text = " and ".join(part for part in (bound, "finite" if is_float else "") if part)
        return f"{text} ({self.note})" if self.note else text

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        return ((self.gt is None or value > self.gt) and (self.ge is None or value >= self.ge)
                and (self.lt is None or value < self.lt))

    def check(self, key: str, value: float) -> None:
        if not self.admits(value):
            raise ConfigError(f"{key} must be {self.describe(isinstance(value, float))}, got {short(value)}")


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def ranged(default, **bounds):
    """A dataclass field with the valid range `Range(**bounds)` (checked by `check_ranges`)."""
    return field(default=default, metadata={"range": Range(**bounds)})


SEED_RANGE = {"ge": 0, "lt": 2**32, "note": "numpy takes 32-bit seeds"}


def check_ranges(cfg, prefix: str = "") -> None:
    """Check every field that declares a Range, in nested sections too."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, f"{prefix}{f.name}.")
        elif "range" in f.metadata:
            f.metadata["range"].check(prefix + f.name, value)


_short = reprlib.Repr()
_short.maxstring = _short.maxother = 60
_short.maxlong = 30


def short(value: Any) -> str:
    """repr of a user value, bounded: a one-line message must stay one short line."""
    return _short.repr(value)


# ------------------------------------------------------------------------------------------
# The settings


@dataclass
class LoraConfig:
    """LoRA through peft, as the config file states it and as `models.load_model` takes it."""

    r: int = ranged(0, ge=0, note="0 trains the full model")  # LoRA rank
    alpha: int = ranged(16, gt=0)  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = ranged(0.0, ge=0, lt=1)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # decoder layer indices (0-based) whose target modules get LoRA (peft's layers_to_transform);
    # [] = every layer. Indices beyond the model's depth are refused when the model is loaded.
    layers: list[int] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.r > 0


@dataclass
class TrainConfig:
    # --- what to train -------------------------------------------------------------
    # dpo (any pairwise loss below) | sft (NLL on the chosen completion) | rm (Bradley–Terry reward
    # model) | kto (unpaired desirable/undesirable completions, dpokit.data.unpaired) | rrhf (K
    # scored responses per prompt, dpokit.data.ranked; no reference)
    objective: str = "dpo"
    model: str = "smollm2-135m-instruct"  # local dir, locally cached hub id, or the bundled alias
    ref_model: str | None = None  # reference policy; None = the starting model
    dtype: str = "float32"  # float32 | bfloat16 (weights)
    # bf16 autocast for the matmuls (weights and log-softmax stay fp32): auto = on CUDA, off on
    # CPU (dpokit.accel); autocast_bf16: true is the older spelling of mixed_precision: bf16
    mixed_precision: str = "auto"  # auto | no | bf16
    autocast_bf16: bool = False
    lora: LoraConfig = field(default_factory=LoraConfig)
    # --- data ------------------------------------------------------------------------
    data: str = "examples/pairs.jsonl"  # JSONL / JSON / Parquet / datasets dir
    split: str | None = None  # split of a datasets dir (default train)
    eval_data: str | None = None  # held-out file; None = carve eval_fraction out of `data`
    eval_fraction: float = ranged(0.1, ge=0, lt=1)
    on_malformed: str = "raise"  # raise | skip (counted)
    max_length: int = ranged(512, ge=2)  # prompt + completion tokens
    max_prompt_length: int = ranged(256, ge=1)  # longer prompts keep their end
    prompt_overflow: str = "truncate"  # truncate | skip
    # --- loss ------------------------------------------------------------------------
    loss: str = "dpo"  # dpo | cdpo | robust | ipo | hinge | soft | simpo | orpo (last two: no reference)
    beta: float = ranged(0.1, gt=0)
    # ε of cdpo / robust: the assumed fraction of flipped labels (robust divides by 1 − 2ε)
    label_smoothing: float = ranged(0.0, ge=0, lt=0.5)
    average_logps: bool | None = None  # per-token mean log-probs in h; None = the loss's default
    rpo_alpha: float = ranged(0.0, ge=0)  # weight of NLL(chosen)/|chosen| added to the pairwise loss (RPO)
    simpo_gamma: float = ranged(0.5)  # SimPO target margin γ in −log σ(βℓc − βℓr − γ); paper: β≈2–2.5, γ/β≈0.5
    orpo_lambda: float = ranged(0.1, ge=0)  # ORPO weight λ of the odds-ratio term beside NLL(chosen)/|chosen| (0.1–0.25)
    # KTO's λ_D / λ_U (eq. 8 asks 1 ≤ λ_D·n_D / (λ_U·n_U) ≤ 4/3; checked and reported at start)
    kto_desirable_weight: float = ranged(1.0, gt=0)
    kto_undesirable_weight: float = ranged(1.0, gt=0)
    rrhf_rank_weight: float = ranged(100.0, ge=0)  # RRHF: weight of the ranking hinge beside the per-token NLL of the best (the authors' code: 100)
    reference: str = "cached"  # cached (on disk) | copy (frozen copy) | adapter (LoRA disabled)
    # --- optimisation ----------------------------------------------------------------
    optimizer: str = "adamw"  # adamw | adamw8bit (moments in 8 bits, torchao; no checkpoints yet) | rmsprop
    lr: float = ranged(5e-6, gt=0)
    head_lr: float = ranged(0.0, ge=0, note="objective=rm: the scalar head's learning rate; 0 = lr")
    weight_decay: float = ranged(0.0, ge=0)
    schedule: str = "linear"  # constant | linear | cosine (after warmup)
    warmup_steps: int = ranged(0, ge=0)
    max_steps: int = ranged(0, ge=0, note="0 = run `epochs`")  # optimizer steps
    epochs: float = ranged(1.0, ge=0)  # > 0 unless max_steps is set (validate_train_config)
    batch_size: int = ranged(4, ge=1)  # pairs per micro-batch
    grad_accum: int = ranged(1, ge=1)  # micro-batches per optimizer step
    # > 0: split each step's pairs into micro-batches of ≤ this many packed tokens
    microbatch_tokens: int = ranged(0, ge=0, note="0 = micro-batches of batch_size pairs")
    max_grad_norm: float = ranged(1.0, ge=0, note="0 disables clipping")
    max_consecutive_skips: int = ranged(5, ge=1)  # stop the run after this many non-finite steps in a row
    seed: int = ranged(0, **SEED_RANGE)
    # --- engine ----------------------------------------------------------------------
    packing: bool = True  # prompt encoded once per pair ([prompt|chosen|rejected], block mask)
    pack_tokens: int = ranged(1024, ge=1)  # most tokens in one packed row; within it the cheapest layout (packing.plan_rows)
    chunk_size: int = ranged(2048, ge=1)  # tokens per output-head chunk
    gradient_checkpointing: bool = False
    tune_malloc: bool = True  # True: keep freed memory in the process (glibc), +25% steps/s on CPU; False: hand it back (lower peak RSS)
    optimizer_in_backward: bool = False  # update each parameter in backward, free its gradient (needs max_grad_norm 0, grad_accum 1)
    # --- evaluation, logging, checkpoints --------------------------------------------
    eval_every: int = ranged(0, ge=0, note="0 = only at the end")  # steps between held-out evaluations
    log_every: int = ranged(1, ge=0, note="0 = no metrics lines")  # steps between metrics lines
    save_every: int = ranged(0, ge=0, note="0 = only the final model")  # steps between checkpoints
    keep_checkpoints: int = ranged(2, ge=0, note="0 = keep all")
    output_dir: str = "runs/dpo"
    cache_dir: str | None = None  # default $DPOKIT_CACHE or ~/.cache/dpokit
    progress: bool = True


# ------------------------------------------------------------------------------------------
# Building a config from dicts

_INT_LIMIT = 2**63  # every count and seed ends in a 64-bit integer (torch, numpy)


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in (a for a in args if a is not type(None)):
        try:
            return _coerce(value, arg, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0])


def _coerce_number(value: Any, tp: Any, key: str) -> Any:
    """int / float fields: exact ints that fit in 64 bits; floats from numbers or strings."""
    if isinstance(value, bool):
        return None
    if tp is int and isinstance(value, int):
        if abs(value) >= _INT_LIMIT:
            raise ConfigError(f"{key}: {short(value)} is too large (at most 2**63 - 1)")
        return value
    if tp is float and isinstance(value, (int, float, str)):
        try:
            # YAML 1.1 reads "3e-5" (no dot) as a string; accept what float() accepts.
            return float(value)
        except OverflowError:  # an int beyond a float's range
            raise ConfigError(f"{key}: {short(value)} is too large for a float") from None
        except ValueError:
            return None
    return None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check / convert `value` to the annotated type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {short(value)}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, key) for v in value]
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {short(value)}")
    if tp in (int, float):
        number = _coerce_number(value, tp, key)
        if number is not None:
            return number
    if tp is str and isinstance(value, bool):
        # YAML 1.1 reads an unquoted no / off / false as False (yes / on / true as True):
        # `mixed_precision: no` means the word; the field's own check then judges it
        return "yes" if value else "no"
    if tp is str and isinstance(value, (str, int, float)):
        return str(value)
    raise ConfigError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {short(value)}")


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a nested dict; unknown keys raise with the valid list."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {short(data)}")
    hints = {f.name: _field_types(cls)[f.name] for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - set(hints)))  # YAML keys may be numbers or null
    if unknown:
        where = f" in '{prefix.rstrip('.')}'" if prefix else ""
        raise ConfigError(f"unknown config key(s){where}: {', '.join(unknown)}; valid keys: {', '.join(sorted(hints))}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if _is_dataclass_type(tp):
            kwargs[name] = from_dict(tp, {} if value is None else value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _override_value(item: str, raw: str) -> Any:
    if raw == "":
        return None
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError) as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem})") from None


def parse_overrides(pairs: list[str]) -> dict:
    """`["beta=0.1", "lora.r=8"]` → `{"beta": 0.1, "lora": {"r": 8}}` (values parsed as YAML)."""
    out: dict = {}
    for item in pairs:
        key, eq, raw = item.partition("=")
        parts = key.strip().split(".")
        if not eq or not all(p.strip() for p in parts):
            raise ConfigError(f"override {item!r} is not key=value (nested keys: section.key=value)")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part.strip(), {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part.strip()} was given a value, not a section")
        node[parts[-1].strip()] = _override_value(item, raw)
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ------------------------------------------------------------------------------------------
# Files: user YAML and the recipes shipped in the package (dpokit/configs)


def recipes() -> list[str]:
    """Names of the packaged recipes (`dpokit --config NAME`)."""
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("dpokit.configs").iterdir()
                  if p.name.endswith(".yaml"))


def recipe(name: str):
    """The packaged recipe `name` (e.g. "dpo", "sentiment_quick"); ConfigError if there is none."""
    path = resources.files("dpokit.configs") / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"no packaged recipe {name!r}; packaged: {', '.join(recipes()) or 'none'} (is dpokit installed whole?)")
    return path


def config_source(arg: str | os.PathLike):
    """`--config ARG`: an existing file, else a packaged recipe name without a path (`dpo`)."""
    path = Path(arg)
    if path.exists() or str(arg).endswith((".yaml", ".yml")) or len(path.parts) != 1:
        return path
    if str(arg) not in recipes():
        raise ConfigError(f"--config {arg}: no such file, and no packaged recipe of that name "
                          f"(packaged: {', '.join(recipes())})")
    return recipe(str(arg))


def read_yaml(path) -> dict:
    """The mapping in YAML file `path` (a Path or a packaged Traversable); {} for an empty file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start})") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML error: {', '.join(filter(None, (e.context, e.problem)))}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML error: {str(e).splitlines()[0]}") from None
    except ValueError:  # Python refuses to read an integer of more than 4300 digits
        raise ConfigError(f"{path}: YAML error: a number too long to read (over 4300 digits)") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(loaded).__name__}")
    return loaded


def load_config(cls, path=None, overrides: list[str] | None = None, base: dict | None = None):
    """Defaults ← `base` ← YAML file ← CLI overrides, validated into `cls`.

    A `validate(given)` method of `cls` receives the keys the file and the overrides name
    (some keys are the caller's to set, not the user's)."""
    given = read_yaml(Path(path) if isinstance(path, str) else path) if path is not None else {}
    given = deep_merge(given, parse_overrides(overrides or []))
    try:
        cfg = from_dict(cls, deep_merge(dict(base or {}), given))
    except RecursionError:
        raise ConfigError(f"{path or 'overrides'}: nested too deeply") from None
    validate = getattr(cfg, "validate", None)
    if validate is None and isinstance(cfg, TrainConfig):
        validate_train_config(cfg)
    elif validate is not None:
        validate(set(given))
    return cfg


# Keys of nested sections added after runs were stored, at the value that reproduces those runs.
# Run keys (tasks.frontier_runs.settings_of) and resume checks (train.rundir.run_identity) leave
# them out while at that value, so gaining an option does not make every earlier run look changed.
LATER_NESTED_DEFAULTS = {"lora": {"layers": []}}


def without_later_defaults(settings: dict) -> dict:
    """`settings` (a config as a dict) less the LATER_NESTED_DEFAULTS keys at their defaults."""
    out = dict(settings)
    for section, defaults in LATER_NESTED_DEFAULTS.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if not (k in defaults and v == defaults[k])}
    return out


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ------------------------------------------------------------------------------------------
# Rules across keys

_CHOICES = {
    "objective": ("dpo", "sft", "rm", "kto", "rrhf"),
    "dtype": ("float32", "bfloat16"),
    "mixed_precision": ("auto", "no", "bf16"),
    "on_malformed": ("raise", "skip"),
    "prompt_overflow": ("truncate", "skip"),
    "reference": ("cached", "copy", "adapter"),
    "optimizer": ("adamw", "adamw8bit", "rmsprop"),
    "schedule": ("constant", "linear", "cosine"),
}
_NOT_EMPTY = ("model", "data", "output_dir")


def validate_train_config(cfg: TrainConfig) -> None:
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key}: {short(getattr(cfg, key))} is not one of {', '.join(choices)}")
    for key in _NOT_EMPTY:
        if not getattr(cfg, key).strip():
            raise ConfigError(f"{key} must not be empty")
    from dpokit.losses import get_loss

    try:
        get_loss(cfg.loss)
    except ValueError as e:
        raise ConfigError(f"loss: {e}") from None
    check_ranges(cfg)
    _check_combinations(cfg)


def _check_combinations(cfg: TrainConfig) -> None:
    """Rules that involve more than one key (each key's own range is checked before)."""
    if cfg.max_steps == 0 and cfg.epochs <= 0:
        raise ConfigError(f"epochs must be > 0 when max_steps is 0, got {cfg.epochs:g}")
    if cfg.loss == "orpo" and cfg.average_logps is False:
        # Its odds and its NLL/|chosen| are defined on per-token mean log-probs (Hong et al. 2024).
        raise ConfigError("loss=orpo needs per-token mean log-probs: leave average_logps unset (or true)")
    if cfg.max_prompt_length >= cfg.max_length:
        raise ConfigError(f"max_prompt_length must be < max_length ({cfg.max_length}), got {cfg.max_prompt_length}")
    if cfg.optimizer_in_backward and (cfg.max_grad_norm > 0 or cfg.grad_accum > 1 or cfg.microbatch_tokens > 0):
        raise ConfigError(
            "optimizer_in_backward updates each parameter during the backward pass: it cannot clip by "
            "the global gradient norm or accumulate micro-batches; set max_grad_norm=0, grad_accum=1 "
            "and microbatch_tokens=0"
        )
    if cfg.head_lr > 0 and cfg.objective != "rm":
        raise ConfigError(f"head_lr applies to objective=rm (the reward model's scalar head), not objective={cfg.objective}")
    if cfg.optimizer == "adamw8bit" and cfg.save_every > 0:
        raise ConfigError("optimizer=adamw8bit: checkpoints of 8-bit optimizer state are not supported yet; set save_every=0")
    if cfg.head_lr > 0 and cfg.optimizer_in_backward:
        raise ConfigError("head_lr needs a second parameter group: not with optimizer_in_backward")
    if cfg.objective in ("kto", "rrhf") and cfg.loss != "dpo":
        raise ConfigError(f"objective={cfg.objective} has its own loss; loss={cfg.loss} applies to objective=dpo")
    if cfg.objective == "rrhf" and cfg.microbatch_tokens > 0:
        raise ConfigError("objective=rrhf batches whole records (all K responses of a prompt): set microbatch_tokens=0")
    if cfg.objective == "rm" and cfg.lora.r > 0:
        raise ConfigError("objective=rm trains the full reward model: LoRA (lora.r > 0) is not supported for it yet")
    if cfg.reference == "adapter" and cfg.lora.r <= 0:
        raise ConfigError("reference=adapter needs LoRA (lora.r > 0)")
    if cfg.lora.r > 0 and not cfg.lora.target_modules:
        raise ConfigError("lora.target_modules must name at least one module when lora.r > 0")
    check_lora_layers(cfg.lora.layers)


def check_lora_layers(layers: list[int], n_layers: int | None = None) -> None:
    """lora.layers: distinct indices ≥ 0, and < n_layers once the model's depth is known."""
    if any(i < 0 for i in layers) or len(set(layers)) != len(layers):
        raise ConfigError(f"lora.layers must hold distinct decoder layer indices ≥ 0 ([] = all layers), got {short(layers)}")
    if n_layers is not None and any(i >= n_layers for i in layers):
        raise ConfigError(f"lora.layers must lie in [0, {n_layers}) for this model ({n_layers} decoder layers), "
                          f"got {short(layers)}")
