"""`lora.layers`: LoRA on a subset of the decoder layers (peft's layers_to_transform)."""

import dataclasses

import pytest

from dpokit.config import ConfigError, LoraConfig, TrainConfig, load_config


def _adapted_layers(model) -> set[int]:
    from dpokit.shift.probe import adapted_modules

    return set(adapted_modules(model))


def test_layers_limit_where_the_adapter_goes():
    from dpokit.models import apply_lora
    from dpokit.testing import tiny_model

    model = apply_lora(tiny_model(layers=4), LoraConfig(r=2, target_modules=["q_proj", "down_proj"], layers=[3, 1]))
    assert _adapted_layers(model) == {1, 3}
    assert model.peft_config["default"].layers_to_transform == [1, 3]
    # [] (the default) = every layer, as before the setting existed.
    assert _adapted_layers(apply_lora(tiny_model(layers=4), LoraConfig(r=2))) == {0, 1, 2, 3}


@pytest.mark.parametrize("layers, message", [
    ("[-1]", "lora.layers must hold distinct decoder layer indices ≥ 0 ([] = all layers), got [-1]"),
    ("[1, 1]", "lora.layers must hold distinct decoder layer indices ≥ 0 ([] = all layers), got [1, 1]"),
    ("[x]", "lora.layers: expected int, got 'x'"),
])
def test_bad_layers_are_one_line_config_errors(layers, message):
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, None, ["lora.r=4", f"lora.layers={layers}"])
    assert str(err.value) == message


def test_layers_beyond_the_model_are_refused_when_it_loads():
    from dpokit.models import apply_lora
    from dpokit.testing import tiny_model

    with pytest.raises(ConfigError) as err:
        apply_lora(tiny_model(layers=2), LoraConfig(r=2, layers=[0, 2]))
    assert str(err.value) == "lora.layers must lie in [0, 2) for this model (2 decoder layers), got [0, 2]"


def test_cli_refuses_bad_layers_with_exit_2(capsys):
    from dpokit.cli import main

    assert main(["dpo", "lora.r=4", "lora.layers=[-2]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "dpokit: config error: lora.layers must hold distinct decoder layer indices ≥ 0 ([] = all layers), got [-2]"
    assert "\n" not in err


def test_a_bracketed_list_is_a_value_not_a_sweep():
    from dpokit.tasks.registry import split_sweep

    assert split_sweep(["lora.layers=[0, 2]", "beta=0.1,0.5"]) == (["lora.layers=[0, 2]"], "beta", ["0.1", "0.5"])
    cfg = load_config(TrainConfig, None, ["lora.r=4", "lora.layers=[0, 2]"])
    assert cfg.lora.layers == [0, 2]


def test_finished_runs_keep_their_keys_and_checkpoints_still_resume():
    """A run stored before lora.layers existed has no such key: at its default the setting is
    left out of frontier run keys and of the resume check, and any other value is part of them."""
    from dpokit.tasks.frontier_runs import key_of, settings_of
    from dpokit.train.rundir import run_identity

    cfg = TrainConfig(lr=3e-5)
    old = dataclasses.asdict(cfg)
    old["lora"].pop("layers")
    assert key_of(settings_of(cfg)) == key_of({k: v for k, v in old.items() if k in settings_of(cfg)})
    assert "layers" not in settings_of(cfg)["lora"]
    subset = dataclasses.replace(cfg, lora=LoraConfig(r=4, layers=[1]))
    assert settings_of(subset)["lora"]["layers"] == [1]

    class Data:  # what run_identity reads of the prepared data: no pairs
        train, train_votes, train_labels = [], {}, {}

    assert "layers" not in run_identity(cfg, Data())["config"]["lora"]
    assert run_identity(subset, Data())["config"]["lora"]["layers"] == [1]
