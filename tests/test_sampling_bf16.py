"""Sampling under bf16 autocast (opt-in, decided by dpokit.accel from mixed_precision): the
generate calls run under it only when asked, the default is fp32 and keys stay as they were,
and the instructions study asks for it in every sampling it does when its precision is bf16."""

import dataclasses
import inspect

import pytest
import torch
from transformers import GenerationMixin

from dpokit import accel
from dpokit.config import load_config
from dpokit.generate import sample_completions
from dpokit.testing import tiny_model, tiny_tokenizer

PROMPTS = ["I watched this thriller about", "a", "hello there, friend"]


def _spy_generate(monkeypatch):
    """Every model.generate call's (autocast on?, autocast dtype, calling dpokit functions)."""
    calls, real = [], GenerationMixin.generate

    def spy(self, *args, **kwargs):
        callers = {f.function for f in inspect.stack(0)[1:] if "/dpokit/" in f.filename}
        calls.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), callers))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(GenerationMixin, "generate", spy)
    return calls


def _ids(rows):
    return [[c.token_ids for c in row] for row in rows]


# -- dpokit.generate ------------------------------------------------------------------------------
def test_generate_runs_under_bf16_autocast_only_when_asked(monkeypatch):
    model, tok = tiny_model(), tiny_tokenizer()
    calls = _spy_generate(monkeypatch)
    kw = dict(n_per_prompt=2, max_new_tokens=6, progress=False, seed=3, batch_size=4)
    default = sample_completions(model, tok, PROMPTS, **kw)
    off = sample_completions(model, tok, PROMPTS, autocast_bf16=False, **kw)
    assert [c[0] for c in calls] == [False] * 4  # two batches each, fp32
    calls.clear()
    sample_completions(model, tok, PROMPTS, autocast_bf16=True, **kw)
    assert [(c[0], c[1]) for c in calls] == [(True, torch.bfloat16)] * 2
    assert not torch.is_autocast_enabled("cpu")  # left as it was
    assert _ids(default) == _ids(off)


def test_config_wants_bf16_follows_mixed_precision(monkeypatch):
    from dpokit.config import TrainConfig

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    cpu = torch.device("cpu")
    assert accel.config_wants_bf16(TrainConfig(mixed_precision="bf16"), cpu) is True
    assert accel.config_wants_bf16(TrainConfig(mixed_precision="no"), cpu) is False
    assert accel.config_wants_bf16(TrainConfig(), cpu) is False  # auto: fp32 on the CPU
    assert accel.config_wants_bf16(TrainConfig(autocast_bf16=True), cpu) is True  # the older spelling
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert accel.config_wants_bf16(TrainConfig(), cpu) is True  # auto under `accelerate launch --mixed_precision bf16`


# -- the instructions study's keys ------------------------------------------------------------------
def _cfg(*overrides):
    from dpokit.tasks.instructions_config import InstructionsConfig

    return load_config(InstructionsConfig, None, list(overrides))


def test_evaluation_settings_are_the_old_ones_when_off_and_change_when_on():
    from dpokit.tasks import instructions as inst

    cfg = _cfg()
    e, p = cfg.eval, cfg.pairs
    old = {"n": e.samples_per_prompt, "max_new_tokens": p.max_new_tokens, "temperature": e.temperature or p.temperature,
           "batch_size": p.batch_size, "seed": e.seed}  # the formula before the option existed
    off = inst.Evaluator(cfg, "ref", "tok", [], [], [], [], print)
    on = inst.Evaluator(cfg, "ref", "tok", [], [], [], [], print, bf16=True)
    assert off.settings() == old
    assert on.settings() == {**old, "autocast_bf16": True}
    assert off.settings(ifbench=True) == {**old, "max_new_tokens": e.ifbench_max_new_tokens}
    assert on.settings(ifbench=True)["autocast_bf16"] is True


@pytest.mark.parametrize("precision, expected", [("auto", False), ("no", False), ("bf16", True)])
def test_train_samples_key_and_sampling_follow_the_precision(monkeypatch, tmp_path, precision, expected):
    from dpokit.tasks import instructions as inst

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    cfg = _cfg(f"mixed_precision='{precision}'")  # quoted: YAML reads a bare no as false
    seen = []
    monkeypatch.setattr(inst.idata, "cached_prompt_samples", lambda *a: seen.append(a[7]))
    inst.train_samples(cfg, print, tiny_model(), "tok", "fp", [], {}, tmp_path)
    p = cfg.pairs
    old = {"n": p.samples_per_prompt, "max_new_tokens": p.max_new_tokens, "temperature": p.temperature,
           "batch_size": p.batch_size, "seed": p.seed}
    assert seen == [{**old, "autocast_bf16": True} if expected else old]


def test_rloo_rollout_bf16_stays_out_of_keys_and_identity_at_its_default():
    from dpokit.rlhf.online_checkpoint import identity
    from dpokit.rlhf.rloo_config import RLOOConfig
    from dpokit.tasks.frontier_runs import key_of, settings_of

    cfg = RLOOConfig(reward="sentiment")
    before = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "rollout_bf16"}  # as keyed before it existed
    before["lora"].pop("layers")  # a later nested key (dpokit.config.LATER_NESTED_DEFAULTS)
    assert key_of(settings_of(cfg)) == key_of(before)
    on = dataclasses.replace(cfg, rollout_bf16=True)
    assert settings_of(on)["rollout_bf16"] is True and key_of(settings_of(on)) != key_of(before)
    assert "rollout_bf16" not in identity(cfg, ["p"])["config"]  # an older checkpoint still resumes
    assert identity(on, ["p"])["config"]["rollout_bf16"] is True


@pytest.mark.parametrize("flag", [False, True])
def test_rloo_rollout_samples_under_autocast_only_with_the_flag(monkeypatch, tmp_path, flag):
    from dpokit.rlhf.rloo import RLOOTrainer
    from dpokit.rlhf.rloo_config import RLOOConfig

    cfg = RLOOConfig(reward="sentiment", rollout_prompts=2, k=2, max_new_tokens=4, output_dir=str(tmp_path), progress=False,
                     rollout_bf16=flag)
    trainer = RLOOTrainer(cfg, policy=tiny_model(), tokenizer=tiny_tokenizer(), prompts=["q0:", "q1:"],
                          reward_fn=lambda texts: [0.0] * len(texts), log=lambda *a: None)
    calls = _spy_generate(monkeypatch)
    trainer.rollout(0)
    assert [c[0] for c in calls] == [flag]


# -- the study end to end: every sampling follows the precision -------------------------------------
@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    tiny_model().save_pretrained(root / "lm")
    tiny_tokenizer().save_pretrained(root / "lm")
    return root


# who samples: the train prompts, the reference's held-out and IFBench samples, each method's
# evaluation, Best-of-N, the RLOO rollouts, the online rounds' draws and their evaluation
SITES = {"train_samples", "cached_prompt_samples", "sample", "_bon_samples", "rollout", "_sample_draw", "_evaluate"}


def test_every_sampling_of_the_study_follows_mixed_precision(tiny_lm, monkeypatch):
    from dpokit.cli import main

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    calls = _spy_generate(monkeypatch)
    out = tiny_lm / "out"
    assert main(["run", "instructions", "--quick", f"model={tiny_lm / 'lm'}", f"output_dir={out}", "progress=false",
                 f"cache_dir={tiny_lm / 'cache'}", "max_steps=2", "online.rounds=2", "online.prompts_per_draw=4",
                 "pairs.samples_per_prompt=3", "mixed_precision=bf16"]) == 0
    assert calls and all(on for on, _, _ in calls)
    assert SITES <= set().union(*(callers for _, _, callers in calls))


def _weight_casts(monkeypatch, grad_mode):
    """(samples, aten::copy_ calls) of one bf16 sample_completions call with `grad_mode` as the
    generate module's torch.no_grad."""
    from torch.profiler import ProfilerActivity, profile

    import dpokit.generate as gen

    monkeypatch.setattr(gen.torch, "no_grad", grad_mode)
    model, tok = tiny_model(), tiny_tokenizer()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = sample_completions(model, tok, PROMPTS, n_per_prompt=2, max_new_tokens=8, progress=False, seed=5,
                                 batch_size=8, autocast_bf16=True)
    monkeypatch.undo()
    return _ids(out), sum(e.count for e in prof.key_averages() if e.key == "aten::copy_")


def test_bf16_sampling_casts_each_weight_once_and_samples_as_inference_mode_did(monkeypatch):
    real_no_grad = torch.no_grad
    fast, fast_copies = _weight_casts(monkeypatch, real_no_grad)
    plain, plain_copies = _weight_casts(monkeypatch, torch.inference_mode)  # the earlier path
    assert fast == plain  # the casts are exact: the same tokens
    # up to 8 decode steps: inference_mode re-cast every linear layer's weight at every step, no_grad
    # once per generate call (measured on the tiny model: 531 vs 426 copies = 15 linears x 7 steps)
    n_linears = sum(isinstance(m, torch.nn.Linear) for m in tiny_model().modules())
    assert plain_copies - fast_copies >= 3 * n_linears
