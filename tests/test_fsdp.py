"""FSDP (torch's FSDP2 `fully_shard`, driven as accelerate's FSDP plugin would, see dpokit.accel)
on 2 CPU processes over gloo: the same run as one process with the global batch, sharded
checkpoints that hold no pickle, resume on another number of processes, LoRA and KTO."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from dpokit import accel
from dpokit.config import ConfigError, LoraConfig, TrainConfig
from dpokit.train import checkpoint as ckpt
from test_data_parallel import ROOT, _labelled, _relative_weight_diff, _train_records

FSDP_CONFIG = ROOT / "dpokit" / "configs" / "accelerate" / "fsdp.yaml"


@pytest.fixture(scope="module")
def tiny_lm(tiny_lm_pairs):
    """(root, train, eval): the shared tiny LM and 9 train pairs (conftest.tiny_lm_pairs; in the
    last step rank 1 has no pair and runs a filler pass). 5 eval pairs at batch 2: rank 0 has 2
    micro-batches, rank 1 one (+ a filler)."""
    return tiny_lm_pairs(5)


def _run(args: list[str], cwd: Path, processes: int) -> None:
    """`processes` = 0: plain one process; otherwise `accelerate launch` with the FSDP config."""
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if processes:
        cmd = [shutil.which("accelerate"), "launch", "--config_file", str(FSDP_CONFIG), "--num_processes", str(processes),
               "--mixed_precision", "no", "-m", "dpokit", *args]
    else:
        cmd = [sys.executable, "-m", "dpokit", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _assert_sharded_and_pickle_free(checkpoint: Path, ranks: int) -> None:
    """Each rank's shard is a safetensors file (its header parsed, no code run to read it); the
    rest is JSON/YAML/text. torch.distributed.checkpoint's default files (.distcp written with
    torch.save, a pickled .metadata) must not appear."""
    for folder in (ckpt.SHARDED_MODEL, ckpt.SHARDED_OPTIMIZER):
        shards = sorted((checkpoint / folder).iterdir())
        assert len(shards) == ranks and all(p.suffix == ".safetensors" for p in shards), shards
        for shard in shards:
            with safe_open(str(shard), "pt") as f:
                assert f.keys() and "DCP_SHARDING_INFO" in f.metadata()  # offsets: JSON in the header
    assert not (checkpoint / "model" / "model.safetensors").exists()  # not the full weights (DDP's layout)
    for p in checkpoint.rglob("*"):
        assert p.is_dir() or p.suffix in {".safetensors", ".json", ".yaml", ".jinja", ".txt"}, p


def test_fsdp_two_processes_match_one_process_and_resume_elsewhere(tiny_lm, tmp_path):
    """DPO, 2 FSDP ranks × batch 2 against 1 plain process × batch 4. Tolerances as for DDP
    (tests/test_data_parallel.py): the runs differ only in the order of float32 sums (shards,
    the reduce-scatter, the all-gathered weights are exact copies), ~1e-7 relative per step, so
    losses and gradient norms agree to 1e-5 and the final weights to 1e-3 of the distance
    training moved them (measured: 3e-5). A gradient not reduced across ranks, or reduced
    twice, is off by the order of the update itself; a filler pass that counted would change
    step 3's loss. Then the 2-rank sharded checkpoint (step 2) resumes in 1 FSDP process with
    batch 2 × accumulation 2 (the shards re-read as one, no_sync accumulation) and ends on the
    same weights; a plain (non-FSDP) resume of it is refused in one line."""
    root, train, evals = tiny_lm
    common = [f"model={root / 'lm'}", f"data={train}", f"eval_data={evals}", "epochs=1", "lr=1e-3", "progress=false",
              "tune_malloc=false", "save_every=2", f"cache_dir={tmp_path / 'cache'}"]
    _run(["dpo", *common, f"output_dir={tmp_path / 'one'}", "batch_size=4"], tmp_path, 0)
    _run(["dpo", *common, f"output_dir={tmp_path / 'two'}", "batch_size=2"], tmp_path, 2)
    one, two = _train_records(tmp_path / "one"), _train_records(tmp_path / "two")
    assert [(r["step"], r["split"]) for r in one] == [(r["step"], r["split"]) for r in two] == [
        (1, "train"), (2, "train"), (3, "train"), (3, "eval")]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], rel=1e-4, abs=1e-5)
        if a["split"] == "train":
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
    start = root / "lm" / "model.safetensors"
    assert _relative_weight_diff(tmp_path / "one", tmp_path / "two", start) < 1e-3
    checkpoint = tmp_path / "two" / "checkpoint-000002"
    _assert_sharded_and_pickle_free(checkpoint, ranks=2)
    with pytest.raises(ckpt.CheckpointError, match="written by an FSDP run .sharded.; resume it with the FSDP launch config"):
        ckpt.read_checkpoint(checkpoint, optimizer=None, scheduler=None)

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two", resumed)
    shutil.rmtree(resumed / "final")
    (resumed / "train_summary.json").unlink()
    _run(["dpo", *common, f"output_dir={resumed}", "batch_size=2", "grad_accum=2", "--resume"], tmp_path, 1)
    assert _relative_weight_diff(tmp_path / "one", resumed, start) < 1e-3
    assert _train_records(resumed)[-1]["loss"] == pytest.approx(one[-1]["loss"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("command, options, weights", [
    ("dpo", ["lora.r=4"], "adapter_model.safetensors"),  # LoRA: frozen sharded base, the adapter trains
    ("kto", [], "model.safetensors"),  # z0 over both ranks' examples: gradient-free passes through the engine
])
def test_lora_and_kto_under_fsdp_match_one_process(tiny_lm, tmp_path, command, options, weights):
    """Same comparison for LoRA (the reference cached from the starting weights, which with
    LoRA's zero-initialised B are the base model's) and KTO; final weights within 1e-3 of the
    distance moved (the adapter's tensors are new: measured from zero)."""
    root, train, evals = tiny_lm
    if command == "kto":
        train, evals = (_labelled(Path(f)) for f in (train, evals))
    common = [f"model={root / 'lm'}", f"data={train}", f"eval_data={evals}", "epochs=1", "lr=1e-3", "progress=false",
              "tune_malloc=false", f"cache_dir={tmp_path / 'cache'}", *options]
    _run([command, *common, f"output_dir={tmp_path / 'one'}", "batch_size=4"], tmp_path, 0)
    _run([command, *common, f"output_dir={tmp_path / 'two'}", "batch_size=2"], tmp_path, 2)
    one, two = _train_records(tmp_path / "one"), _train_records(tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5, abs=1e-6)
    assert _relative_weight_diff(tmp_path / "one", tmp_path / "two", root / "lm" / "model.safetensors", weights) < 1e-3


# -- what is refused, in one line ---------------------------------------------------------------
def _fsdp_env(monkeypatch, **settings):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for name, value in {"FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "false", "FSDP_ACTIVATION_CHECKPOINTING": "false",
                        "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT", "FSDP_CPU_RAM_EFFICIENT_LOADING": "false", **settings}.items():
        monkeypatch.setenv(name, value)


def test_an_fsdp_or_deepspeed_launch_is_not_taken_for_ddp(monkeypatch):
    """On CPU processes accelerate reports MULTI_CPU for any launch config; dpokit reads what was
    asked, so an FSDP launch shards and a DeepSpeed one is refused, never silently DDP."""
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    assert accel.requested_engine() is None
    _fsdp_env(monkeypatch)
    assert accel.requested_engine() == "FSDP"
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "false")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert accel.requested_engine() == "DEEPSPEED"


def test_fsdp_settings_dpokit_does_not_honour_are_refused(monkeypatch):
    from dpokit.train.parallel_checks import check_data_parallel

    fsdp = accel.Placement(torch.device("cpu"), 0, 2, "FSDP")
    _fsdp_env(monkeypatch)
    check_data_parallel(TrainConfig(), fsdp)  # the shipped config's settings: accepted
    check_data_parallel(TrainConfig(lora=LoraConfig(r=4)), fsdp)
    for setting, value, message in [("FSDP_VERSION", "1", "fsdp_version 1 .*set fsdp_version: 2"),
                                    ("FSDP_OFFLOAD_PARAMS", "true", "fsdp_offload_params"),
                                    ("FSDP_ACTIVATION_CHECKPOINTING", "true", "gradient_checkpointing=true"),
                                    ("FSDP_STATE_DICT_TYPE", "FULL_STATE_DICT", "SHARDED_STATE_DICT"),
                                    ("FSDP_CPU_RAM_EFFICIENT_LOADING", "true", "fsdp_cpu_ram_efficient_loading")]:
        _fsdp_env(monkeypatch, **{setting: value})
        with pytest.raises(ConfigError, match=message):
            check_data_parallel(TrainConfig(), fsdp)
    _fsdp_env(monkeypatch)
    with pytest.raises(ConfigError, match="reference=adapter under FSDP"):
        check_data_parallel(TrainConfig(reference="adapter"), fsdp)
    with pytest.raises(ConfigError, match="optimizer_in_backward"):
        check_data_parallel(TrainConfig(optimizer_in_backward=True), fsdp)
