"""Several processes through accelerate (DDP over gloo on this machine): the same run as one
process with the global batch, and the pieces that make it so (dpokit.accel)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpokit import accel
from dpokit.config import ConfigError, TrainConfig, validate_train_config
from dpokit.train.metrics import MetricSums

ROOT = Path(__file__).resolve().parents[1]
DDP_CONFIG = ROOT / "dpokit" / "configs" / "accelerate" / "multi_gpu.yaml"


# -- the pieces ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 1, 5, 8, 9])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_partition_the_items_in_order(n, world):
    items = list(range(n))
    shares = [accel.shard(items, accel.Placement(torch.device("cpu"), r, world)) for r in range(world)]
    assert sum(shares, []) == items  # disjoint, complete, in order: no pair computed twice or lost
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_bf16_autocast_is_the_gpu_default_and_fp32_the_cpu_one(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    cpu = torch.device("cpu")
    assert not accel.bf16_autocast_wanted("auto", cpu)
    assert accel.bf16_autocast_wanted("bf16", cpu)
    assert not accel.bf16_autocast_wanted("no", cpu)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")  # `accelerate launch --mixed_precision bf16`
    assert accel.bf16_autocast_wanted("auto", cpu)
    assert not accel.bf16_autocast_wanted("no", cpu)
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
        assert accel.bf16_autocast_wanted("auto", torch.device("cuda"))


def test_resolve_keeps_the_old_spelling_and_refuses_unknown_settings(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    place = accel.Placement(torch.device("cpu"))
    assert accel.resolve(TrainConfig(autocast_bf16=True), place).autocast_bf16
    assert accel.resolve(TrainConfig(mixed_precision="bf16"), place).autocast_bf16
    assert not accel.resolve(TrainConfig(), place).autocast_bf16
    with pytest.raises(ConfigError, match="mixed_precision"):
        validate_train_config(TrainConfig(mixed_precision="fp16"))


def test_call_runs_the_function_inside_the_wrappers_forward():
    model = torch.nn.Linear(3, 1)
    runner = accel.FunctionRunner(model)
    seen = []
    runner.register_forward_hook(lambda *a: seen.append(True))
    out = accel.call(runner, lambda m, x: m(x).sum(), torch.ones(2, 3))
    assert seen == [True]  # a DDP wrapper around `runner` would see this forward
    assert torch.equal(out, model(torch.ones(2, 3)).sum())
    assert torch.equal(accel.call(model, lambda m, x: m(x), torch.ones(1, 3)), model(torch.ones(1, 3)))


def test_metric_sums_in_one_process_are_left_alone():
    sums = MetricSums()
    sums.add_pairs(torch.tensor([1.0, 3.0]))
    assert sums.summed_across(accel.Placement(torch.device("cpu"))) is sums


def test_shipped_accelerate_configs_parse_and_say_what_they_are():
    from accelerate.commands.config.config_args import load_config_from_file

    folder = DDP_CONFIG.parent
    expected = {
        "single_gpu.yaml": "NO", "multi_gpu.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP",
        "deepspeed_zero2.yaml": "DEEPSPEED", "deepspeed_zero3_offload.yaml": "DEEPSPEED",
    }
    assert sorted(p.name for p in folder.glob("*.yaml")) == sorted(expected)
    for name, kind in expected.items():
        cfg = load_config_from_file(str(folder / name))
        assert cfg.distributed_type.name == kind, name
        assert cfg.mixed_precision == "bf16", name  # GPU configs: bf16 autocast, fp32 master weights
    z2 = load_config_from_file(str(folder / "deepspeed_zero2.yaml")).deepspeed_config
    z3 = load_config_from_file(str(folder / "deepspeed_zero3_offload.yaml")).deepspeed_config
    assert (z2["zero_stage"], z3["zero_stage"]) == (2, 3)
    assert z3["offload_optimizer_device"] == "cpu" and z3["offload_param_device"] == "cpu"
    fsdp = load_config_from_file(str(folder / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_reshard_after_forward"] is True  # FSDP2's full shard


# -- two processes against one ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_pairs):
    """(root, train, eval): the shared tiny LM and 9 train pairs (conftest.tiny_lm_pairs), 4 eval pairs."""
    return tiny_lm_pairs(4)


def _run(args: list[str], cwd: Path, processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if processes > 1:
        launcher = shutil.which("accelerate")
        assert launcher, "accelerate's launcher is a dependency of dpokit"
        cmd = [launcher, "launch", "--config_file", str(DDP_CONFIG), "--num_processes", str(processes),
               "--mixed_precision", "no", "-m", "dpokit", *args]
    else:
        cmd = [sys.executable, "-m", "dpokit", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _labelled(pairs_file: Path) -> str:
    """KTO's records from a pairs file: chosen desirable, rejected undesirable, alternately."""
    out = pairs_file.with_name(pairs_file.stem + "-kto.jsonl")
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    out.write_text("".join(json.dumps({"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}) + "\n"
                           for k, r in enumerate(rows) for side in (("chosen",) if k % 2 else ("rejected",))))
    return str(out)


def _train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def _relative_weight_diff(a: Path, b: Path, start: Path, weights: str = "model.safetensors") -> float:
    """‖w_a − w_b‖ / ‖w_a − w_0‖ over all saved tensors: the two runs' difference relative to
    how far training moved the weights (w_0: the starting model; zero for tensors it lacks).
    Not element-wise: AdamW turns a 1e-7 gradient difference into a full-size update of an
    element whose gradient is near 0 (update ±lr), which is noise, not a wrong engine."""
    wa, wb, w0 = load_file(a / "final" / weights), load_file(b / "final" / weights), load_file(start)
    assert wa.keys() == wb.keys() and wa
    diff = sum(float((wa[k] - wb[k]).double().square().sum()) for k in wa)
    moved = sum(float((wa[k] - w0.get(k, torch.zeros_like(wa[k]))).double().square().sum()) for k in wa)
    assert moved > 0
    return (diff / moved) ** 0.5


def test_two_processes_match_one_process_with_the_global_batch(tiny_lm, tmp_path):
    """2 ranks × batch 2 against 1 process × batch 4, DPO: losses,
    gradient norms (which would double if each rank's loss were not scaled by world/pairs) and
    final weights agree to float-summation noise. Tolerances: the runs differ only in the order
    of float32 sums (micro-batch composition, the all-reduce), ~1e-7 relative per step, so
    losses and norms agree to 1e-5 and the final weights to 1e-3 of the distance training moved
    them. A missing all-reduce makes each rank step on half the batch (a difference of the order
    of the update itself); a wrong loss scale doubles the gradient norm."""
    root, train, evals = tiny_lm
    common = [f"model={root / 'lm'}", f"data={train}", f"eval_data={evals}", "epochs=1", "lr=1e-3", "progress=false",
              "tune_malloc=false", "save_every=2", f"cache_dir={tmp_path / 'cache'}"]
    _run(["dpo", *common, f"output_dir={tmp_path / 'one'}", "batch_size=4"], tmp_path, 1)
    common[-1] = f"cache_dir={tmp_path / 'cache2'}"  # the reference cache computed sharded, afresh
    _run(["dpo", *common, f"output_dir={tmp_path / 'two'}", "batch_size=2"], tmp_path, 2)
    one, two = _train_records(tmp_path / "one"), _train_records(tmp_path / "two")
    assert [(r["step"], r["split"]) for r in one] == [(r["step"], r["split"]) for r in two] == [
        (1, "train"), (2, "train"), (3, "train"), (3, "eval")]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], rel=1e-4, abs=1e-5)
        if a["split"] == "train":
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
            assert b["pairs_per_s"] > 0
    start = root / "lm" / "model.safetensors"
    assert _relative_weight_diff(tmp_path / "one", tmp_path / "two", start) < 1e-3
    # The sharded reference cache holds every pair once, with the same values.
    for key_file in (tmp_path / "cache" / "reference").glob("*.safetensors"):
        a, b = load_file(key_file), load_file(tmp_path / "cache2" / "reference" / key_file.name)
        oa, ob = a["pair_index"].argsort(), b["pair_index"].argsort()
        assert torch.equal(a["pair_index"][oa], b["pair_index"][ob])
        assert torch.allclose(a["chosen"][oa], b["chosen"][ob], rtol=1e-5, atol=1e-3)  # sums of ~200 log-probs
    assert not list((tmp_path / "cache2" / "reference").glob("*part*"))  # the shares were merged and removed

    # Resume the 2-process checkpoint (step 2) in one process with batch 2 × accumulation 2.
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "final")
    (resumed / "train_summary.json").unlink()
    _run(["dpo", *common, f"output_dir={resumed}", "batch_size=2", "grad_accum=2", "--resume"], tmp_path, 1)
    assert _relative_weight_diff(tmp_path / "one", resumed, start) < 1e-3


@pytest.mark.parametrize("command, options, weights", [
    ("dpo", ["lora.r=4", "reference=adapter"], "adapter_model.safetensors"),  # LoRA: only the adapter trains
    ("rm", ["head_lr=1e-2"], "model.safetensors"),  # the Bradley–Terry reward model, head in its own group
    ("kto", [], "model.safetensors"),
])
def test_lora_reward_model_and_kto_under_ddp_match_one_process(tiny_lm, tmp_path, command, options, weights):
    """Same comparison as above for LoRA (frozen base, adapter reference), the reward model and
    KTO (whose reference point z0 is one number over both ranks' examples); final weights within
    the same tolerance."""
    root, train, evals = tiny_lm
    if command == "kto":
        train, evals = (_labelled(Path(f)) for f in (train, evals))
    common = [f"model={root / 'lm'}", f"data={train}", f"eval_data={evals}", "epochs=1", "lr=1e-3", "progress=false",
              "tune_malloc=false", f"cache_dir={tmp_path / 'cache'}", *options]
    _run([command, *common, f"output_dir={tmp_path / 'one'}", "batch_size=4"], tmp_path, 1)
    _run([command, *common, f"output_dir={tmp_path / 'two'}", "batch_size=2"], tmp_path, 2)
    for a, b in zip(_train_records(tmp_path / "one"), _train_records(tmp_path / "two")):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    assert _relative_weight_diff(tmp_path / "one", tmp_path / "two", root / "lm" / "model.safetensors", weights) < 1e-3


@pytest.mark.parametrize("argv", [["ppo"], ["rloo"], ["run", "sentiment", "--quick"], ["demo"],
                                  ["score", "--model", "m", "--ref", "r", "--data", "d", "--out", "o"]])
def test_commands_that_run_in_one_process_refuse_a_multi_process_launch(argv, monkeypatch, capsys):
    from dpokit.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs in one process; it was launched as 2 processes" in err


def test_what_the_trainer_refuses_under_several_processes():
    from dpokit.train.parallel_checks import check_data_parallel

    cpu = torch.device("cpu")
    check_data_parallel(TrainConfig(optimizer_in_backward=True), accel.Placement(cpu))  # one process: fine
    check_data_parallel(TrainConfig(), accel.Placement(cpu, 0, 2, "MULTI_CPU"))
    with pytest.raises(ConfigError, match="optimizer_in_backward"):
        check_data_parallel(TrainConfig(optimizer_in_backward=True), accel.Placement(cpu, 1, 2, "MULTI_CPU"))
    # DeepSpeed: refused in one line saying why (FSDP is accepted: tests/test_fsdp.py).
    with pytest.raises(ConfigError, match="DEEPSPEED engine: (the deepspeed package is not installed|dpokit does not drive it); launch with the fsdp config"):
        check_data_parallel(TrainConfig(), accel.Placement(cpu, 0, 8, "DEEPSPEED"))
    with pytest.raises(ConfigError, match="XLA engine: not supported"):
        check_data_parallel(TrainConfig(), accel.Placement(cpu, 0, 8, "XLA"))
