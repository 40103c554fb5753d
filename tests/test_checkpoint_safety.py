"""Checkpoints and the run directory under abuse, through the command a user runs: a diverging
run stops cleanly, tampered checkpoints are refused without running anything, a resume on other
data or config is refused, a previous run is never silently overwritten, and what a kill leaves
behind is cleaned up."""

import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dpokit.cli import main
from dpokit.testing import tiny_model, tiny_tokenizer
from dpokit.train import checkpoint as ckpt
from dpokit.train import rundir
from dpokit.train.metrics import MetricsWriter, read_metrics
from tests.test_cli_score import PAIRS  # the same six pairs


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny model directory, a pairs file, a shared reference cache, and one finished run
    (`base`: 4 steps, checkpoint-000002, final/) that tests copy before changing."""
    root = tmp_path_factory.mktemp("inputs")
    tiny_model().save_pretrained(root / "tiny")
    tiny_tokenizer().save_pretrained(root / "tiny")
    (root / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    assert main(args(root, root / "base", "max_steps=4", "save_every=2")) == 0
    return root


def args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "dpo", f"model={root / 'tiny'}", f"data={root / 'pairs.jsonl'}", f"output_dir={out}", f"cache_dir={root / 'cache'}",
        "progress=false", "eval_fraction=0", "batch_size=2", "lr=1e-3", *extra,
    ]


def copy_base(inputs: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(inputs / "base", tmp_path / "run"))


def one_line_error(capsys) -> str:
    """The one `dpokit:` line on stderr (transformers' own progress bars may precede it)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    mine = [line for line in err.splitlines() if line.startswith("dpokit")]
    assert len(mine) == 1 and err.endswith(mine[0]), err
    return mine[0]


# -- divergence -------------------------------------------------------------------------------
def test_diverging_run_stops_cleanly_and_keeps_the_last_good_checkpoint(inputs, tmp_path, capsys):
    """lr=1e10: step 1 applies (finite, huge weights), every later loss is NaN."""
    out = tmp_path / "run"
    code = main(args(inputs, out, "lr=1e10", "max_steps=10", "save_every=1", "keep_checkpoints=0", "max_consecutive_skips=3"))
    assert code == 1
    err = one_line_error(capsys)
    assert "diverged" in err and "steps 2-4" in err and "checkpoint-000001" in err
    records = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["skipped"] for r in records] == [False, True, True, True]
    assert all(r["loss"] is None for r in records[1:])  # NaN written as null, as documented
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["skipped_steps"] == 3 and "diverged" in summary["stopped"]
    assert not (out / "final").exists()
    kept = ckpt.list_checkpoints(out)
    assert [p.name for p in kept] == ["checkpoint-000001"]  # none inside the streak of skips
    for name, tensor in load_file(str(kept[0] / "model" / "model.safetensors")).items():
        assert torch.isfinite(tensor).all(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# -- tampered checkpoints ------------------------------------------------------------------------
class PlantedPayload:
    """Unpickling this creates a directory: proof that a pickle was (not) loaded."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _edit_json(name, change):
    def edit(ck: Path) -> None:
        data = json.loads((ck / name).read_text())
        change(data)
        (ck / name).write_text(json.dumps(data))

    return edit


def _edit_tensors(name, change):
    def edit(ck: Path) -> None:
        tensors = load_file(str(ck / name))
        change(tensors)
        save_file(tensors, str(ck / name))

    return edit


def _truncate(name):
    def edit(ck: Path) -> None:
        blob = (ck / name).read_bytes()
        (ck / name).write_bytes(blob[: len(blob) // 2])

    return edit


def _plant_pickle(ck: Path) -> None:
    (ck / "optimizer.pt").write_bytes(pickle.dumps(PlantedPayload(ck.parent / "PWNED")))


TAMPERING = {
    "state.json not JSON": (lambda ck: (ck / "state.json").write_text("{'step': 2"), "state.json"),
    "state.json without step": (_edit_json("state.json", lambda d: d.pop("step")), "state.json"),
    "state.json step as text": (_edit_json("state.json", lambda d: d.update(step="2")), "state.json"),
    "old pickle format": (_edit_json("state.json", lambda d: d.update(format=1)), "state.json"),
    "optimizer.json without betas": (_edit_json("optimizer.json", lambda d: d["param_groups"][0].pop("betas")), "optimizer.json"),
    "optimizer.json other params": (_edit_json("optimizer.json", lambda d: d["param_groups"][0]["params"].pop()), "optimizer.json"),
    "scheduler.json edited": (_edit_json("scheduler.json", lambda d: d.update(last_epoch="two")), "scheduler.json"),
    "scheduler.json missing": (lambda ck: (ck / "scheduler.json").unlink(), "scheduler.json"),
    "python RNG state cut": (_edit_json("rng.json", lambda d: d["python"][1].pop()), "rng.json"),
    "numpy RNG state cut": (_edit_json("rng.json", lambda d: d["numpy"].update(keys=d["numpy"]["keys"][:10])), "rng.json"),
    "optimizer tensors truncated": (_truncate("optimizer.safetensors"), "optimizer.safetensors"),
    "rng tensors truncated": (_truncate("rng.safetensors"), "rng.safetensors"),
    "weights truncated": (_truncate("model/model.safetensors"), "model.safetensors"),
    "optimizer tensor missing": (_edit_tensors("optimizer.safetensors", lambda t: t.pop("0.exp_avg")), "optimizer.safetensors"),
    "optimizer tensor wrong shape": (_edit_tensors("optimizer.safetensors", lambda t: t.update({"0.exp_avg": torch.zeros(3)})), "optimizer.safetensors"),
    "torch RNG state wrong size": (_edit_tensors("rng.safetensors", lambda t: t.update(torch=t["torch"][:100].clone())), "rng.safetensors"),
    "weight wrong shape": (_edit_tensors("model/model.safetensors", lambda t: t.update({"model.norm.weight": torch.ones(3)})), "model"),
    "planted optimizer.pt pickle": (_plant_pickle, "optimizer.pt"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampered_checkpoint_is_refused_naming_the_file(inputs, tmp_path, capsys, case):
    tamper, named = TAMPERING[case]
    run = copy_base(inputs, tmp_path)
    tamper(run / "checkpoint-000002")
    capsys.readouterr()
    assert main(args(inputs, run, "max_steps=4", "save_every=2", "--resume")) == 2
    err = one_line_error(capsys)
    assert err.startswith("dpokit: checkpoint error:") and named in err and "checkpoint-000002" in err
    assert not (run / "PWNED").exists()  # nothing was unpickled


# -- resume and fresh starts ---------------------------------------------------------------------
def test_resume_without_checkpoint_is_one_line(inputs, tmp_path, capsys):
    assert main(args(inputs, tmp_path / "new", "max_steps=2", "--resume")) == 2
    assert "no checkpoint" in one_line_error(capsys)


def test_resume_on_changed_config_or_data_is_refused_unless_forced(inputs, tmp_path, capsys):
    run = copy_base(inputs, tmp_path)
    capsys.readouterr()
    assert main(args(inputs, run, "max_steps=4", "save_every=2", "lr=2e-3", "--resume")) == 2
    assert "lr 0.001 -> 0.002" in one_line_error(capsys)
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**p, "chosen": p["chosen"] + "!"}) + "\n" for p in PAIRS))
    changed_data = [a if not a.startswith("data=") else f"data={other}" for a in args(inputs, run, "max_steps=4", "save_every=2")]
    assert main([*changed_data, "--resume"]) == 2
    assert "training data" in one_line_error(capsys)
    assert main([*changed_data, "--resume", "--force"]) == 0
    assert "despite training data" in capsys.readouterr().out


def test_fresh_start_never_overwrites_a_previous_run(inputs, tmp_path, capsys):
    run = copy_base(inputs, tmp_path)
    before = (run / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(args(inputs, run, "max_steps=3")) == 2
    err = one_line_error(capsys)
    assert f"{run} already holds a run" in err and "metrics.jsonl" in err and "--resume" in err
    assert (run / "metrics.jsonl").read_bytes() == before
    # --force replaces it, old checkpoints included: a later --resume cannot pick them up.
    assert main(args(inputs, run, "max_steps=3", "--force")) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    assert ckpt.list_checkpoints(run) == []


def test_own_input_model_inside_the_run_is_refused_even_forced(inputs, tmp_path, capsys):
    run = copy_base(inputs, tmp_path)
    weights = (run / "final" / "model.safetensors").read_bytes()
    argv = [a if not a.startswith("model=") else f"model={run / 'final'}" for a in args(inputs, run, "max_steps=2", "--force")]
    capsys.readouterr()
    assert main(argv) == 2
    assert f"{run / 'final'}" in one_line_error(capsys)
    assert (run / "final" / "model.safetensors").read_bytes() == weights


def test_start_that_logged_nothing_can_be_repeated(inputs, tmp_path):
    """What every start rewrites is not a run (module docstring of dpokit.train.rundir)."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "data_report.json"):
        (run / name).write_text("x")
    (run / "metrics.jsonl").write_text("")
    assert main(args(inputs, run, "max_steps=2")) == 0


# -- leftovers of a kill -------------------------------------------------------------------------
def test_temp_dirs_are_cleaned_and_an_interrupted_replacement_completed(tmp_path):
    for name in (".checkpoint-000004.tmp-77", ".final.tmp-78", ".checkpoint-000002.del-79", ".checkpoint-000006.old-80"):
        (tmp_path / name).mkdir()
    (tmp_path / "checkpoint-000006").mkdir()  # replaced already: the .old copy is debris
    # Killed between the two renames of final/: the new version is complete and goes in place.
    (tmp_path / ".final.old-81").mkdir()
    (tmp_path / ".final.tmp-81").mkdir()
    (tmp_path / ".final.tmp-81" / "new").write_text("")
    keep = tmp_path / ".cache"
    keep.mkdir()
    removed = rundir.clean_temp_dirs(tmp_path, log=lambda *a: None)
    assert len(removed) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache", "checkpoint-000006", "final"]
    assert (tmp_path / "final" / "new").exists()


def test_prune_killed_mid_delete_leaves_only_debris_the_next_start_removes(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        (tmp_path / f"checkpoint-00000{step}" / "model").mkdir(parents=True)
        (tmp_path / f"checkpoint-00000{step}" / "state.json").write_text("{}")

    def killed_mid_delete(path, *a, **kw):  # state.json went first, then the kill
        (Path(path) / "state.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(tmp_path, keep=2)
    monkeypatch.undo()
    visible = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert visible == ["checkpoint-000002", "checkpoint-000003"]  # no half checkpoint in sight
    rundir.clean_temp_dirs(tmp_path, log=lambda *a: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == visible


def test_metrics_writer_keeps_earlier_runs_and_drops_a_torn_line(tmp_path):
    lines = [json.dumps({"step": s, "split": "train", "loss": 0.5}) for s in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "spl')  # killed mid-line
    with pytest.raises(FileExistsError):
        MetricsWriter(tmp_path, tensorboard=False)  # a fresh start: never truncates a run's metrics
    MetricsWriter(tmp_path, resume_step=2, tensorboard=False).close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]
    MetricsWriter(tmp_path, resume_step=5, tensorboard=False).close()  # nothing torn left to trip on
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2]


def test_checkpoint_files_reach_the_disk_before_the_rename(tmp_path, monkeypatch):
    """fsync of every file and directory, then rename, then fsync of the run directory: else a
    power cut can leave a renamed checkpoint whose files are empty."""
    events = []
    monkeypatch.setattr(ckpt, "_fsync", lambda p: events.append(("fsync", Path(p))))
    real_rename = Path.rename
    monkeypatch.setattr(Path, "rename", lambda self, target: events.append(("rename", Path(target))) or real_rename(self, target))

    def write(tmp: Path) -> None:
        (tmp / "sub").mkdir()
        (tmp / "a.json").write_text("{}")
        (tmp / "sub" / "b.safetensors").write_text("x")

    final = ckpt.atomic_directory(tmp_path / "checkpoint-000001", write)
    renamed = events.index(("rename", final))
    synced = {p.relative_to(tmp_path).as_posix() for _, p in events[:renamed]}
    tmp = f".checkpoint-000001.tmp-{os.getpid()}"
    assert {tmp, f"{tmp}/a.json", f"{tmp}/sub", f"{tmp}/sub/b.safetensors"} <= synced
    assert events[renamed + 1] == ("fsync", tmp_path)


def _hidden(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if p.name.startswith("."))


def _kill_during_a_checkpoint_write(argv, run: Path, nth: int, env) -> list[str]:
    """Start the run; SIGKILL it the moment its `nth` checkpoint temp dir appears (polled every
    0.2 ms; a write takes several ms). Returns the hidden entries it left behind."""
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    seen, deadline = set(), time.monotonic() + 120
    try:
        while len(seen) < nth:
            assert child.poll() is None and time.monotonic() < deadline, f"run ended before write {nth} ({seen})"
            seen.update(n for n in (os.listdir(run) if run.exists() else []) if n.startswith(".checkpoint-") and ".tmp-" in n)
            time.sleep(0.0002)
    finally:
        child.kill()
        child.wait()
    return _hidden(run)


def _kill_after_resume(argv, delay: float, env) -> str:
    """Resume; SIGKILL it `delay` s after it says it resumed (any moment of the rest of the run)."""
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    lines = []
    for line in child.stdout:
        lines.append(line)
        if line.startswith("resumed from"):
            break
    time.sleep(delay)
    child.kill()
    child.wait()
    child.stdout.close()
    return "".join(lines)


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(inputs, tmp_path):
    """A real process killed with SIGKILL mid-checkpoint-write, resumed and killed again at a
    random moment, then resumed to the end: no temp dirs survive the next start, and the final
    weights and per-step losses are bit-identical to an uninterrupted run."""
    settings = ("max_steps=12", "save_every=1", "keep_checkpoints=2")
    assert main(args(inputs, tmp_path / "whole", *settings)) == 0
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    run = tmp_path / "killed"
    argv = [sys.executable, "-m", "dpokit", *args(inputs, run, *settings)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}

    left = _kill_during_a_checkpoint_write(argv, run, rng.randint(2, 6), env)
    assert any(".tmp-" in name for name in left), f"seed {seed}: kill missed the write ({left})"
    said = _kill_after_resume(argv + ["--resume"], rng.uniform(0.0, 0.8), env)
    assert "unfinished write" in said, f"seed {seed}: {said}"
    done = subprocess.run(argv + ["--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"seed {seed}: {done.stderr[-2000:]}"

    assert _hidden(run) == [], f"seed {seed}"
    whole = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    resumed = load_file(str(run / "final" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), f"seed {seed}: {name}"
    train_losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if r["split"] == "train"]
    assert train_losses(run) == train_losses(tmp_path / "whole"), f"seed {seed}"
