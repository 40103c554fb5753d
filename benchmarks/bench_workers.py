"""One benchmark configuration, run in a process of its own (so its peak RSS is its own).

A worker gets a spec (a dict, see `dpo_throughput.py`), trains `warmup + steps` optimizer
steps and returns a result dict. Timing: wall clock between consecutive step ends (so data
loading, collation and the optimizer are all inside), the first `warmup` steps excluded.
The reference precompute (dpokit `cached`, TRL `precompute_ref_log_probs`) is timed apart.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def current_rss_mb() -> float:
    """Resident set size now, MB (Linux /proc)."""
    return _status_mb("VmRSS")


class RssPhases:
    """RSS now and the peak so far (VmHWM, the high-water mark ru_maxrss reports) at the end
    of each named phase. The peak only grows, so the phase whose mark first shows the final
    peak is the phase that set it: the table can say whether it was loading, the reference
    precompute or a training step."""

    def __init__(self):
        self.marks: list[dict] = []

    def mark(self, phase: str) -> None:
        self.marks.append({"phase": phase, "rss_mb": current_rss_mb(), "peak_mb": _status_mb("VmHWM")})

    def peak_phase(self) -> str | None:
        """The first phase whose mark reached the final peak (None without marks)."""
        if not self.marks:
            return None
        top = self.marks[-1]["peak_mb"]
        return next(m["phase"] for m in self.marks if m["peak_mb"] >= top)


def model_path(spec: dict) -> str:
    """Directory of the spec's model: the bundled SmolLM2 alias (or any path), or dpokit's
    tiny test llama + byte tokenizer saved under the work dir (`"model": "tiny"`, --quick),
    so that both engines load the same files by path."""
    if spec["model"] != "tiny":
        from dpokit.models import resolve_model_path

        return str(resolve_model_path(spec["model"]))
    from dpokit.testing import tiny_model, tiny_tokenizer

    path = Path(spec["work_dir"]) / "tiny-model"
    if not (path / "config.json").exists():
        tok = tiny_tokenizer()
        tiny_model(vocab_size=len(tok), seed=0).save_pretrained(path)
        tok.save_pretrained(path)
    return str(path)


def param_counts(model) -> dict:
    """All parameters (tied embedding once), those outside the input embedding, those trained."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_non_embedding": total - embed, "params_trainable": trainable}


def bench_records(spec: dict, tokenizer) -> list[dict]:
    from benchmarks.bench_data import LengthTargets, build_records

    return build_records(spec["pairs"], tokenizer, LengthTargets(*spec["lengths"]), seed=spec["seed"])


def _timed_steps(run_step, total: int, losses: list | None = None, phases: RssPhases | None = None) -> list[float]:
    """Wall time of each step; each step's training loss appended to `losses` when given,
    and an RSS mark per step to `phases` (reading /proc takes microseconds)."""
    times, last = [], time.perf_counter()
    for step in range(total):
        record = run_step(step)
        if losses is not None:
            losses.append(record["loss"])
        if phases is not None:
            phases.mark(f"step {step}")
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def step_batches(n_pairs: int, batch: int, seed: int, total_steps: int) -> list[list[int]]:
    """Pair indices of each optimizer step in dpokit's order (TrainConfig seed, no
    accumulation). The TRL worker feeds its data in this order with a sequential sampler, so
    both engines train on identical batches in identical order."""
    from dpokit.train.loop import StepOrder

    order = StepOrder(n_pairs, batch, seed)
    return [order.indices(s) for s in range(total_steps)]


def step_tokens(items, batches: list[list[int]]) -> list[int]:
    """Tokens per step, prompt + chosen + rejected once per pair (dpokit's tokenization)."""
    by_index = {p.index: p for p in items}
    size = lambda p: len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids)  # noqa: E731
    return [sum(size(by_index[i]) for i in b) for b in batches]


def summarise(times: list[float], warmup: int, batches: list[list[int]], tokens: list[int]) -> dict:
    timed = times[warmup:]
    seconds = sum(timed)
    pairs = sum(len(b) for b in batches[warmup:])
    return {
        "step_seconds": timed,
        "warmup_seconds": times[:warmup],
        "seconds_per_step": seconds / len(timed),
        "pairs_per_s": pairs / seconds,
        "tokens_per_s": sum(tokens[warmup:]) / seconds,
        "timed_pairs": pairs,
        "timed_tokens": sum(tokens[warmup:]),
    }


# -- dpokit ------------------------------------------------------------------------------
def run_dpokit(spec: dict) -> dict:
    import torch

    from benchmarks.bench_data import (
        length_stats,
        synthetic_token_pairs,
        tokenize_records,
    )
    from dpokit.config import TrainConfig
    from dpokit.data.collate import resolve_pad_id
    from dpokit.models import load_model
    from dpokit.runtime import configure_malloc
    from dpokit.train.loop import Trainer
    from dpokit.train.prepare import PreparedData, build_reference

    phases = RssPhases()
    phases.mark("start")
    torch.manual_seed(spec["seed"])
    model, tok = load_model(model_path(spec), dtype="float32")
    if spec.get("lora"):
        from dpokit.models import apply_lora

        model = apply_lora(model, _lora_settings(spec["lora"]))
    phases.mark("model load")
    pad_id = resolve_pad_id(tok)
    if spec.get("synthetic"):  # scaling mode: exact lengths, content irrelevant
        syn = spec["synthetic"]
        # Ids must exist in the model's vocabulary (the --quick tiny model has 260).
        high = min(20000, len(tok))
        items = synthetic_token_pairs(
            syn["n"], syn["prompt"], syn["chosen"], syn["rejected"], eos=tok.eos_token_id, low=min(1000, high // 2), high=high
        )
    else:
        items = tokenize_records(bench_records(spec, tok), tok)
    work = Path(spec["work_dir"])
    lora = {"lora": _lora_settings(spec["lora"])} if spec.get("lora") else {}
    cfg = TrainConfig(
        **lora,
        output_dir=str(work / f"run-{spec['name']}"), cache_dir=str(work / f"cache-{spec['name']}"),
        batch_size=spec["batch"], max_steps=spec["warmup"] + spec["steps"], progress=False, seed=spec["seed"],
        eval_fraction=0.0, max_length=4096, max_prompt_length=2048, lr=spec["lr"], **spec.get("options", {}),
    )
    data = PreparedData(items, [])
    phases.mark("data")
    quiet = lambda *a, **k: None  # noqa: E731
    # The run's malloc setting before the precompute, in the order Trainer applies it.
    configure_malloc(cfg.tune_malloc)
    start = time.perf_counter()
    build_reference(cfg, model, data, pad_id, quiet)  # fills the on-disk cache; Trainer reuses it
    precompute = time.perf_counter() - start
    phases.mark("reference precompute")
    compiled = _maybe_compile(model, spec)
    trainer = Trainer(cfg, model=model, tokenizer=tok, data=data, log=quiet)
    phases.mark("trainer setup")
    total = spec["warmup"] + spec["steps"]
    losses: list[float] = []
    times = _timed_steps(trainer.train_step, total, losses, phases)
    batches = [trainer.order.indices(s) for s in range(total)]
    out = summarise(times, spec["warmup"], batches, step_tokens(items, batches))
    stats = length_stats(items)
    out.update(reference_precompute_s=precompute, data=stats, compiled=compiled, peak_rss_mb=peak_rss_mb(), losses=losses)
    after = {m["phase"]: m for m in phases.marks}
    out.update(rss_after_model_load_mb=after["model load"]["rss_mb"], rss_after_steps_mb=current_rss_mb())
    out.update(rss_after_precompute_mb=after["reference precompute"]["rss_mb"],
               peak_rss_before_steps_mb=after["trainer setup"]["peak_mb"], peak_rss_phase=phases.peak_phase(),
               rss_phases=phases.marks)
    out.update(param_counts(model))
    return out


def _lora_settings(lora: dict):
    from dpokit.config import LoraConfig

    return LoraConfig(r=lora["r"], alpha=lora["alpha"], target_modules=lora["target_modules"])


def _maybe_compile(model, spec: dict) -> bool:
    """torch.compile on the decoder body (the part with the matmuls), when asked."""
    if not spec.get("compile"):
        return False
    import torch

    from dpokit.logprobs import model_body_and_head

    body, _ = model_body_and_head(model)
    body.forward = torch.compile(body.forward, dynamic=True)
    return True


# -- TRL -----------------------------------------------------------------------------------
def step_clock(stamps: list[float]):
    """A transformers TrainerCallback appending perf_counter() at train start and after every
    step to `stamps` (step times = consecutive differences)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    return StepClock()


def run_trl(spec: dict) -> dict:
    import os

    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from benchmarks.bench_data import length_stats, tokenize_records

    torch.manual_seed(spec["seed"])
    path = model_path(spec)
    tok = AutoTokenizer.from_pretrained(path)
    records = bench_records(spec, tok)
    items = tokenize_records(records, tok)
    total = spec["warmup"] + spec["steps"]
    batches = step_batches(len(records), spec["batch"], spec["seed"], total)
    if total * spec["batch"] > len(records):
        raise ValueError("warmup + steps must fit in one epoch of the data (raise --pairs)")
    first = [i for b in batches for i in b]  # dpokit's order, read sequentially; then the rest
    taken = set(first)
    records = [records[i] for i in first] + [r for i, r in enumerate(records) if i not in taken]
    stamps: list[float] = []

    args = DPOConfig(
        output_dir=str(Path(spec["work_dir"]) / f"trl-{spec['name']}"),
        per_device_train_batch_size=spec["batch"], max_steps=spec["warmup"] + spec["steps"],
        learning_rate=spec["lr"], seed=spec["seed"], report_to="none", save_strategy="no",
        disable_tqdm=True, use_cpu=True, dataloader_num_workers=0, train_sampling_strategy="sequential",
        bf16=False,  # TRL defaults to bf16 autocast; the comparison is fp32 for everyone
        **spec.get("options", {}),
    )
    precompute = _time_trl_precompute(DPOTrainer)
    start = time.perf_counter()
    # The model by path, as TRL's users do: TRL loads the policy (and, unless precomputing,
    # a second copy as the reference) in fp32, its default.
    peft_config = None
    if spec.get("lora"):
        from peft import LoraConfig

        lora = spec["lora"]
        peft_config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["target_modules"], lora_dropout=0.0, task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=path, args=args, train_dataset=Dataset.from_list(records), processing_class=tok,
                         callbacks=[step_clock(stamps)], peft_config=peft_config)
    setup = time.perf_counter() - start
    trainer.train()
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    out = summarise(times, spec["warmup"], batches, step_tokens(items, batches))
    stats = length_stats(items)
    out.update(reference_precompute_s=sum(precompute), trl_setup_s=setup, data=stats, compiled=False, peak_rss_mb=peak_rss_mb())
    out.update(param_counts(trainer.model))
    return out


def _time_trl_precompute(trainer_cls) -> list[float]:
    """Wrap DPOTrainer._precompute_ref_logps (on this process's class only) to time it."""
    spent: list[float] = []
    original = trainer_cls._precompute_ref_logps

    def timed(self, *a, **k):
        start = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            spent.append(time.perf_counter() - start)

    trainer_cls._precompute_ref_logps = timed
    return spent


# -- bf16 autocast: its effect on per-pair log-probs ---------------------------------------------
def run_logprob_check(spec: dict) -> dict:
    """Per-pair policy log-probs of the benchmark pairs in fp32 and under bf16 autocast
    (dpokit's packed path, no grad): max/mean abs difference, max relative difference, and
    the difference in the chosen-minus-rejected margin, which is what DPO's h sees at step 0
    when the cached reference was computed in fp32."""
    import torch

    from benchmarks.bench_data import tokenize_records
    from dpokit.config import TrainConfig
    from dpokit.data.collate import resolve_pad_id
    from dpokit.models import load_model
    from dpokit import accel
    from dpokit.train.step import policy_pair_logps

    model, tok = load_model(model_path(spec), dtype="float32")
    items = tokenize_records(bench_records(spec, tok), tok)
    pad_id = resolve_pad_id(tok)
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        cfg = TrainConfig(autocast_bf16=bf16)
        chosen, rejected = [], []
        start = time.perf_counter()
        with torch.no_grad(), accel.autocast(bf16):
            for i in range(0, len(items), spec["batch"]):
                pc, pr, _, _ = policy_pair_logps(model, items[i : i + spec["batch"]], pad_id, cfg)
                chosen.append(pc.float())
                rejected.append(pr.float())
        out[name] = (torch.cat(chosen), torch.cat(rejected), time.perf_counter() - start)
    (c32, r32, t32), (c16, r16, t16) = out["fp32"], out["bf16"]
    d = torch.cat([c16 - c32, r16 - r32]).abs()
    ref = torch.cat([c32, r32]).abs()
    margin = ((c16 - r16) - (c32 - r32)).abs()
    return {
        "pairs": len(items), "max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()),
        "max_rel_diff": float((d / ref).max()), "mean_abs_logp": float(ref.mean()),
        "max_margin_diff": float(margin.max()), "mean_margin_diff": float(margin.mean()),
        "forward_s_fp32": t32, "forward_s_bf16": t16, "peak_rss_mb": peak_rss_mb(),
    }


# -- entry point of the worker process ---------------------------------------------------------
def main(spec_path: str, result_path: str) -> None:
    import torch

    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory(prefix="dpokit-bench-") as tmp:
        spec.setdefault("work_dir", tmp)
        run = {"dpokit": run_dpokit, "trl": run_trl, "logprobs": run_logprob_check}[spec["engine"]]
        result = run(spec)
    result.update(name=spec["name"], engine=spec["engine"], options=spec.get("options", {}), batch=spec["batch"], steps=spec.get("steps"), lora=spec.get("lora"))
    Path(result_path).write_text(json.dumps(result))
