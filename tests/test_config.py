import pytest

from dpokit.config import ConfigError, TrainConfig, load_config, parse_overrides, recipe
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
    ("lora.rank=1", "unknown config key(s) in 'lora': rank; valid keys: alpha, dropout, r, target_modules"),
    ("beta=high", "beta: expected float"),
    ("packing=3", "packing: expected true/false"),
    ("optimizer=sgd", "optimizer: 'sgd' is not one of adamw, rmsprop"),
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
