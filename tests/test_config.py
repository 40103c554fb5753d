import dataclasses
import os
import re
import shutil
import subprocess
import sys
import typing
import zipfile
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.config import ConfigError, LoraConfig, Range, TrainConfig, load_config, parse_overrides, recipe, recipes
from dpokit.tasks.sentiment_config import SentimentConfig


def test_overrides_parse_types_and_nesting():
    assert parse_overrides(["beta=0.1", "lora.r=8", "packing=false", "ref_model=null"]) == {
        "beta": 0.1, "lora": {"r": 8}, "packing": False, "ref_model": None}


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("beta: 0.3\nlora: {r: 4}\n")
    cfg = load_config(TrainConfig, path, ["lora.alpha=8", "lr=1e-4"])  # YAML reads 1e-4 as a string
    assert (cfg.beta, cfg.lora.r, cfg.lora.alpha, cfg.lr) == (0.3, 4, 8, 1e-4)


@pytest.mark.parametrize("override, message", [
    ("bta=1", "unknown config key(s): bta; valid keys: autocast_bf16"),
    ("lora.rank=1", "unknown config key(s) in 'lora': rank; valid keys: alpha, dropout, layers, r, target_modules"),
    ("beta=high", "beta: expected float"),
    ("packing=3", "packing: expected true/false"),
    ("optimizer=sgd", "optimizer: 'sgd' is not one of adamw, adamw8bit, rmsprop"),
    ("reference=adapter", "reference=adapter needs LoRA"),
    ("max_prompt_length=600", "max_prompt_length must be < max_length"),
])
def test_bad_configs_are_rejected(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, [override])
    assert message in str(err.value)


def test_every_shipped_config_loads():
    load_config(TrainConfig, recipe("dpo"))
    assert load_config(TrainConfig, recipe("sft")).objective == "sft"
    for name in ("sentiment", "sentiment_quick"):
        cfg = load_config(SentimentConfig, recipe(name), ["pairs.per_prompt=6", "beta=0.5"])
        assert cfg.pairs.per_prompt == 6 and cfg.beta == 0.5
    with pytest.raises(ConfigError, match="pairs.samples_per_prompt"):
        load_config(SentimentConfig, recipe("sentiment"), ["pairs.samples_per_prompt=1"])


# --- valid ranges, declared beside each field ---------------------------------------------------



def _numeric_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_fields(tp, f"{prefix}{f.name}.")
        elif tp in (int, float):
            yield prefix + f.name, f


def test_every_numeric_key_states_its_range():
    """One table: a numeric key added without a Range would accept NaN or a negative count."""
    for key, f in _numeric_fields(SentimentConfig):
        assert isinstance(f.metadata.get("range"), Range), f"{key} declares no valid range"


@pytest.mark.parametrize("bounds, is_float, text", [
    ({"gt": 0}, True, "> 0 and finite"),
    ({"ge": 0}, False, "≥ 0"),
    ({"ge": 0, "lt": 1}, True, "in [0, 1)"),
    ({"gt": 0, "lt": 0.5}, True, "in (0, 0.5)"),
    ({}, True, "finite"),
    ({"ge": 0, "note": "0 = off"}, False, "≥ 0 (0 = off)"),
])
def test_range_says_its_bounds(bounds, is_float, text):
    assert Range(**bounds).describe(is_float) == text


@pytest.mark.parametrize("override, message", [
    ("lr=.nan", "lr must be > 0 and finite, got nan"),
    ("lr=-1e-5", "lr must be > 0 and finite, got -1e-05"),
    ("beta=.nan", "beta must be > 0 and finite, got nan"),
    ("eval_fraction=-0.1", "eval_fraction must be in [0, 1), got -0.1"),
    ("eval_fraction=.nan", "eval_fraction must be in [0, 1), got nan"),
    ("label_smoothing=0.5", "label_smoothing must be in [0, 0.5), got 0.5"),
    ("chunk_size=-1", "chunk_size must be ≥ 1, got -1"),
    ("max_prompt_length=0", "max_prompt_length must be ≥ 1, got 0"),
    ("epochs=-1", "epochs must be ≥ 0 and finite, got -1.0"),
    ("max_steps=-5", "max_steps must be ≥ 0 (0 = run `epochs`), got -5"),
    ("eval_every=-1", "eval_every must be ≥ 0 (0 = only at the end), got -1"),
    ("log_every=-1", "log_every must be ≥ 0 (0 = no metrics lines), got -1"),
    ("keep_checkpoints=-1", "keep_checkpoints must be ≥ 0 (0 = keep all), got -1"),
    ("lora.r=-1", "lora.r must be ≥ 0 (0 trains the full model), got -1"),
    ("lora.dropout=.nan", "lora.dropout must be in [0, 1), got nan"),
    ("max_grad_norm=-1", "max_grad_norm must be ≥ 0 and finite (0 disables clipping), got -1.0"),
    ("weight_decay=.inf", "weight_decay must be ≥ 0 and finite, got inf"),
    ("rpo_alpha=.nan", "rpo_alpha must be ≥ 0 and finite, got nan"),
    ("seed=4294967296", "seed must be in [0, 4294967296) (numpy takes 32-bit seeds), got 4294967296"),
    ("batch_size=0", "batch_size must be ≥ 1, got 0"),
    ("grad_accum=0", "grad_accum must be ≥ 1, got 0"),
    ("microbatch_tokens=-1", "microbatch_tokens must be ≥ 0"),
    ("epochs=0", "epochs must be > 0 when max_steps is 0, got 0"),
    ("data=' '", "data must not be empty"),
    ("output_dir=''", "output_dir must not be empty"),
])
def test_out_of_range_values_name_key_and_range(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, [override])
    assert message in str(err.value)


def test_boundary_values_are_valid():
    cfg = load_config(TrainConfig, None, ["eval_fraction=0", "label_smoothing=0.499", "max_steps=3", "epochs=0",
                                          "max_grad_norm=0", "seed=4294967295", "lora.r=0", "max_length=2",
                                          "max_prompt_length=1"])
    assert (cfg.eval_fraction, cfg.label_smoothing, cfg.epochs, cfg.seed) == (0.0, 0.499, 0.0, 2**32 - 1)


def test_sentiment_rejects_the_keys_it_sets_even_at_their_default():
    """Rejected because the user named them, not because of their value: a value equal to the
    default would be overwritten just the same."""
    with pytest.raises(ConfigError, match=r"^eval_fraction: set by the sentiment study itself"):
        load_config(SentimentConfig, recipe("sentiment"), [f"eval_fraction={TrainConfig().eval_fraction}"])
    with pytest.raises(ConfigError, match=r"^data: set by the sentiment study"):
        load_config(SentimentConfig, None, ["data=examples/pairs.jsonl", "objective=dpo"])
    # The frontier decides each run's objective: there `objective` is one of the keys it sets.
    from dpokit.tasks.frontier_config import FrontierConfig

    with pytest.raises(ConfigError, match=r"^objective: set by the sentiment study"):
        load_config(FrontierConfig, recipe("frontier_quick"), ["objective=dpo"])


def test_sentiment_trains_dpo_kto_or_rrhf_only():
    for objective in ("dpo", "kto", "rrhf"):
        assert load_config(SentimentConfig, recipe("sentiment_quick"), [f"objective={objective}"]).objective == objective
    with pytest.raises(ConfigError, match=r"^objective: the sentiment study trains one of dpo, kto, rrhf, got 'sft'"):
        load_config(SentimentConfig, recipe("sentiment_quick"), ["objective=sft"])
    assert load_config(SentimentConfig, recipe("sentiment")).eval_fraction == TrainConfig().eval_fraction


def test_sentiment_sft_with_lora_is_refused_up_front():
    with pytest.raises(ConfigError, match=r"sft.enabled=true with LoRA \(lora.r > 0\) is not supported"):
        load_config(SentimentConfig, recipe("sentiment_quick"), ["sft.enabled=true", "lora.r=8"])
    load_config(SentimentConfig, recipe("sentiment_quick"), ["sft.enabled=true"])
    load_config(SentimentConfig, recipe("sentiment_quick"), ["lora.r=8"])


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, message", [
    (b"beta: 0.1\nlr: [1\n", "c.yaml:3:1: YAML error: while parsing a flow sequence"),
    (b"- 1\n", "c.yaml: expected a mapping of keys at the top level, got list"),
    (b"beta: 0.\xff\n", "c.yaml: not UTF-8 text (byte 0xff at offset 8)"),
    (b"beta: " + b"[" * 600 + b"]" * 600, "c.yaml: YAML nested too deeply"),
    (b"max_steps: 1" + b"0" * 400, "max_steps: 1000000000000...00000000000000 is too large (at most 2**63 - 1)"),
    (b"lr: 1.0e+400", "lr must be > 0 and finite, got inf"),
])
def test_file_defects_are_config_errors(tmp_path, content, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, path)
    assert message in str(err.value)


def test_empty_file_means_all_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    assert load_config(TrainConfig, tmp_path / "empty.yaml") == TrainConfig()


@pytest.mark.parametrize("overrides, message", [
    (["=1"], "override '=1' is not key=value"),
    (["lora.=1"], "override 'lora.=1' is not key=value"),
    (["beta"], "override 'beta' is not key=value"),
    (["beta={"], "override 'beta={': the value is not valid YAML"),
    (["lora=1", "lora.r=2"], "override 'lora.r=2': lora was given a value, not a section"),
])
def test_malformed_overrides(overrides, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        parse_overrides(overrides)


# --- packaged recipes ---------------------------------------------------------------------------


def test_recipes_are_package_data():
    from importlib import resources

    from dpokit.tasks.registry import _default_config

    names = sorted(p.name for p in resources.files("dpokit.configs").iterdir() if p.name.endswith(".yaml"))
    from dpokit.studies import STUDIES, recipe_name, study_module

    studies = sorted(recipe_name(s, quick) for s in STUDIES for quick in (False, True))
    expected = sorted(["dpo", "frontier", "frontier_quick", "instructions", "instructions_quick", "kto", "ppo_sentiment",
                       "rloo_sentiment", "rm", "sentiment", "sentiment_quick", "sft", *studies])
    assert names == [f"{n}.yaml" for n in expected] and recipes() == expected
    for study in STUDIES:  # every study's recipes load and validate with its own config
        for quick in (False, True):
            load_config(study_module(study).CONFIG, recipe(recipe_name(study, quick)))
    assert _default_config("sentiment", quick=True).name == "sentiment_quick.yaml"
    assert load_config(SentimentConfig, _default_config("sentiment", quick=False)).prompts.n_train == 240
    assert not Path("configs").exists()  # one copy only: dpokit/configs
    from dpokit.config import config_source
    from dpokit.rlhf.ppo_config import PPOConfig
    from dpokit.rlhf.rloo_config import RLOOConfig
    from dpokit.tasks.frontier_config import FrontierConfig
    from dpokit.tasks.instructions_config import InstructionsConfig

    for name, cls in (("dpo", TrainConfig), ("rm", TrainConfig), ("sft", TrainConfig),
                      ("ppo_sentiment", PPOConfig), ("rloo_sentiment", RLOOConfig),
                      ("frontier", FrontierConfig), ("frontier_quick", FrontierConfig),
                      ("instructions", InstructionsConfig), ("instructions_quick", InstructionsConfig)):
        load_config(cls, config_source(name))  # every recipe loads and validates


def test_missing_recipe_is_an_error_not_defaults(tmp_path, monkeypatch, capsys):
    import dpokit.config
    import dpokit.tasks.sentiment

    def reached(cfg, log=print):
        raise AssertionError(f"ran the study on a config from nowhere: {cfg.output_dir}")

    monkeypatch.setattr(dpokit.tasks.sentiment, "run_sentiment", reached)
    monkeypatch.setattr(dpokit.config.resources, "files", lambda package: tmp_path)  # an install without them
    assert main(["run", "sentiment", "--quick"]) == 2
    assert "no packaged recipe 'sentiment_quick'" in capsys.readouterr().err


def test_an_installed_wheel_finds_its_recipes(tmp_path):
    """Build the wheel from a copy of the source (pip writes build/ beside the sources), unpack
    it, and run the recipe lookup from outside the source tree."""
    root = Path(__file__).resolve().parents[1]
    src = tmp_path / "src"
    shutil.copytree(root / "dpokit", src / "dpokit", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src),
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheel").glob("dpokit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "site")
    code = ("import dpokit, dpokit.tasks.registry as r; from dpokit.config import load_config; "
            "from dpokit.tasks.sentiment_config import SentimentConfig as S; "
            "print(dpokit.__file__); print(load_config(S, r._default_config('sentiment', False)).prompts.n_train)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, check=True).stdout.split()
    assert out == [str(tmp_path / "site" / "dpokit" / "__init__.py"), "240"]
    shipped = tmp_path / "site" / "dpokit" / "configs" / "accelerate"
    assert {p.name for p in shipped.glob("*.yaml")} >= {"multi_gpu.yaml", "fsdp.yaml", "deepspeed_zero3_offload.yaml"}


# --- one LoRA settings type -----------------------------------------------------------------------


def test_lora_section_is_what_load_model_takes(tmp_path):
    from dpokit import models
    from dpokit.testing import tiny_model, tiny_tokenizer

    assert models.LoraSettings is LoraConfig
    models.save_model(tiny_model(), tiny_tokenizer(), tmp_path / "tiny")
    cfg = load_config(TrainConfig, None, ["lora.r=2", "lora.alpha=6", "lora.target_modules=q_proj,v_proj"])
    model, _ = models.load_model(tmp_path / "tiny", lora=cfg.lora)
    peft_cfg = model.peft_config["default"]
    assert (peft_cfg.r, peft_cfg.lora_alpha, sorted(peft_cfg.target_modules)) == (2, 6, ["q_proj", "v_proj"])


def test_an_unquoted_yaml_no_is_the_word_for_a_text_setting(tmp_path):
    # YAML 1.1 reads `no` as False: `mixed_precision: no` (file or override) must mean "no", not
    # "expected str, got False"; a bool-meaning word still meets the field's own check
    assert load_config(TrainConfig, None, ["mixed_precision=no"]).mixed_precision == "no"
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\n")
    assert load_config(TrainConfig, path).mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(TrainConfig, None, ["mixed_precision=yes"]).validate()
