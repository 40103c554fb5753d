"""`dpokit run instructions`: case study 2, instruction following and harmlessness, judged by rules.

    prompts (wheels) → reference samples on the train prompts (chat template, cached)
    → pairs labelled by the checkers and principles (sampled + critique→revision) [+ pair files]
    → Preferred-FT, DPO, a robust variant (IPO / cDPO), a reward model → RLOO against it (the
      RLHF baseline), RLOO against the checker (oracle), Best-of-N (reward model / oracle)
    → every policy sampled on the SAME held-out prompts (new questions, the held-out wording,
      harmful and harmless prompts; IFBench out of distribution) and judged by the rules
    → the bundled model as a pairwise judge of the pairs, against the checkers
    → summary.json, report.md, plots.

The numbers are defined in dpokit.eval.instructions_eval; the runs are in instructions_methods
and are reused by `--resume` when their settings and inputs are unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dpokit import accel
from dpokit.config import ConfigError, save_config
from dpokit.eval import instructions_eval as ie
from dpokit.eval import policy_eval as pe
from dpokit.tasks import instructions_data as idata
from dpokit.tasks import instructions_methods as im
from dpokit.tasks.frontier_runs import FinishedRuns
from dpokit.tasks.sentiment import Stages


def digest(ids: list[str]) -> str:
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


class Evaluator:
    """Samples a policy on the held-out prompts (and the IFBench ones) with the study's settings,
    measures KL(π‖π_ref) from the policy's samples, and returns the policy's point: the headline
    rates at the top level, the full block under "metrics", the responses under "texts" (for
    win rates against other methods later). `bf16`: sample under bf16 autocast
    (`samples_in_bf16`); every sampling of the study follows `self.bf16`."""

    def __init__(self, cfg, ref_model, tokenizer, heldout, rendered, ifbench, ifbench_rendered, stage, bf16: bool = False):
        self.cfg, self.ref_model, self.tokenizer, self.stage, self.bf16 = cfg, ref_model, tokenizer, stage, bf16
        self.heldout, self.rendered = heldout, rendered
        self.ifbench, self.ifbench_rendered = ifbench, ifbench_rendered
        self.ids_digest = digest([p.id for p in heldout])

    @property
    def temperature(self) -> float:
        """The evaluation's sampling temperature: eval.temperature, 0 = pairs.temperature."""
        return self.cfg.eval.temperature or self.cfg.pairs.temperature

    def settings(self, ifbench: bool = False) -> dict:
        e, p = self.cfg.eval, self.cfg.pairs
        return with_precision({"n": e.samples_per_prompt, "max_new_tokens": e.ifbench_max_new_tokens if ifbench else p.max_new_tokens,
                               "temperature": self.temperature, "batch_size": p.batch_size, "seed": e.seed}, self.bf16)

    def on_ifbench(self, method: str) -> bool:
        """Whether `method`'s points are sampled on IFBench too: eval.ifbench_methods names them
        (empty = every method); the reference always is (when eval.ifbench is on)."""
        named = self.cfg.ifbench_methods()
        return bool(self.ifbench) and (not named or method in named)

    def sample(self, model, desc: str, ifbench: bool = True):
        """(held-out samples, IFBench samples or None) of `model`."""
        main = idata.sample_prompts(model, self.tokenizer, self.heldout, self.rendered, desc=desc, **self.settings())
        ifb = None
        if self.ifbench and ifbench:
            ifb = idata.sample_prompts(model, self.tokenizer, None, self.ifbench_rendered, desc=desc, **self.settings(ifbench=True))
        return main, ifb

    def point(self, method, setting, step, kl, samples, ifb, elapsed_s) -> dict:
        texts = _texts(samples)
        block = ie.evaluate(self.heldout, texts, [[len(c.token_ids) for c in row] for row in samples.completions])
        return {"method": method, "setting": setting, "step": int(step), "kl": float(kl), "elapsed_s": float(elapsed_s),
                "heldout_digest": self.ids_digest, "n_prompts": len(self.heldout),
                "pass_rate": block["pass_rate"], "harmful_refusal": block["refusal"]["harmful"],
                "harmless_refusal": block["refusal"]["harmless"], "acceptable_rate": block["acceptable_rate"],
                "metrics": block, "ifbench": ie.ifbench_eval(self.ifbench, _texts(ifb)) if ifb is not None else None,
                "texts": texts}

    def kl(self, policy, samples) -> float:
        """KL(π‖π_ref) from `samples` of the policy, or from the first eval.kl_samples_per_prompt
        of each prompt's samples (0 = all): the KL's two log-prob passes cost about as much as the
        held-out sampling, and the first k samples of each prompt are still samples of π."""
        k = self.cfg.eval.kl_samples_per_prompt
        return _kl(policy, self.ref_model, self.tokenizer, first_samples(samples, k) if k else samples, self.temperature)

    def __call__(self, policy, method: str, setting: str, step: int, elapsed_s: float) -> dict:
        samples, ifb = self.sample(policy, f"{method} samples", ifbench=self.on_ifbench(method))
        kl = self.kl(policy, samples)
        point = self.point(method, setting, step, kl, samples, ifb, elapsed_s)
        self.stage(f"  {method} {setting} step {step}: pass {point['pass_rate']['rate']:.3f}, harmful refusal "
                   f"{_fmt(point['harmful_refusal']['rate'])}, harmless refusal {_fmt(point['harmless_refusal']['rate'])}, KL {kl:.2f}")
        return point


def first_samples(samples, k: int):
    """The SampleSet with only the first `k` samples of each prompt."""
    from dpokit.eval.policy_eval import SampleSet

    return SampleSet(list(samples.prompts), [row[:k] for row in samples.completions], [row[:k] for row in samples.rewards])


def _texts(samples) -> list[list[str]]:
    return [[c.text for c in row] for row in samples.completions]


def _kl(policy, ref_model, tokenizer, samples, temperature: float = 1.0) -> float:
    """KL(π‖π_ref) ≈ mean over the policy's own samples of log π − log π_ref (dpokit.eval.stats).
    Samples drawn at temperature T ≠ 1 come from the tempered π_T: the KL is then KL(π_T‖π_ref,T)
    between the two distributions as sampled, with log-probs of softmax(logits / T)."""
    from dpokit.eval.stats import sequence_kl

    return sequence_kl(pe.completion_logps(policy, tokenizer, samples, temperature=temperature),
                       pe.completion_logps(ref_model, tokenizer, samples, temperature=temperature))


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


# -- the study ------------------------------------------------------------------------------------
def samples_in_bf16(cfg, model) -> bool:
    """Whether the study samples under bf16 autocast: when its mixed_precision (or the older
    autocast_bf16) asks training for bf16 on the device the model sits on (dpokit.accel decides,
    as for training). Log-probs (the KL, the trainers) stay fp32 either way."""
    return accel.config_wants_bf16(cfg, next(model.parameters()).device)


def with_precision(settings: dict, bf16: bool) -> dict:
    """Sampling settings with `autocast_bf16: True` joined when on. Left out when off, so fp32
    sampling keeps the sample-cache and run keys it had before the option existed; when on,
    every key that holds the settings (sample caches, st.base: every run) changes."""
    return {**settings, "autocast_bf16": True} if bf16 else settings


def train_samples(cfg, st_log, model, tokenizer, fp, train, rendered_of, cache_dir: Path):
    """The reference's samples of the train prompts (the sample cache: sampled once)."""
    p = cfg.pairs
    settings = with_precision({"n": p.samples_per_prompt, "max_new_tokens": p.max_new_tokens, "temperature": p.temperature,
                               "batch_size": p.batch_size, "seed": p.seed}, samples_in_bf16(cfg, model))
    return idata.cached_prompt_samples(cache_dir, "instructions-train", fp, model, tokenizer, train,
                                       [rendered_of[x.id] for x in train], settings, st_log)


def make_pairs(cfg, st_log, model, tokenizer, fp, train, rendered_of, run_dir: Path, cache_dir: Path,
               files: tuple[list[dict], dict] | None) -> tuple[list[dict], dict]:
    """pairs.jsonl: the rule-labelled pairs of the train prompts' reference samples, then the
    records of the pair files (`files`, read before the model is loaded); returns (records,
    pair counts)."""
    records, rule_report, file_report = [], None, None
    if cfg.pairs.rules:
        p = cfg.pairs
        st_log(f"sampling {p.samples_per_prompt} reference responses for each of {len(train)} train prompts")
        samples = train_samples(cfg, st_log, model, tokenizer, fp, train, rendered_of, cache_dir)
        rule_records, rule_report = idata.rule_pairs(train, samples, seed=p.seed, max_pairs_per_prompt=p.max_pairs_per_prompt,
                                                     revise=p.revise, revisions=p.revisions_per_prompt,
                                                     contrast_harmless=p.harmless_contrast)
        records += rule_records
    if files is not None:
        records += files[0]
        file_report = files[1]
    counts = idata.pair_counts(rule_report, file_report)
    if not records:
        raise ConfigError("the study made no pairs (see pair counts); sample more per prompt (pairs.samples_per_prompt) "
                          "or add pairs.files")
    (run_dir / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    contrast = f", {counts['contrast']} contrast" if counts.get("contrast") else ""
    st_log(f"pairs: {counts['total']} ({counts['sampled']} sampled, {counts['revised']} revised{contrast}, {counts['file']} from files)"
           f" → {run_dir / 'pairs.jsonl'}")
    return records, counts


def heldout_pairs(cfg, heldout, ref_samples, run_dir: Path) -> bool:
    """heldout_pairs.jsonl: sampled pairs (no revisions) of the reference's held-out responses,
    one per prompt: the trainers' held-out pair accuracy. Returns whether there is any."""
    records, _ = idata.rule_pairs(heldout, ref_samples, seed=cfg.eval.seed, max_pairs_per_prompt=1, revise=False)
    (run_dir / "heldout_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return bool(records)


def run_instructions(cfg, log=print, resume: bool = False) -> dict:
    """Run the study (module docstring); returns summary.json's content."""
    from dpokit.models import default_cache_dir, load_model, model_fingerprint
    from dpokit.tasks.instructions_report import summarize, write_outputs

    stage = Stages(log)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "instructions_config.yaml")
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    prompts, prompt_counts = idata.study_prompts(cfg)
    train = [p for p in prompts if p.split == "train"]
    heldout = [p for p in prompts if p.split != "train"]
    ifbench, ifbench_counts = idata.load_ifbench(cfg.eval.ifbench_prompts) if cfg.eval.ifbench else ([], None)

    files = idata.file_pairs(cfg.pairs.files) if cfg.pairs.files else None  # a bad file fails before minutes of loading
    stage(f"loading {cfg.model}")
    ref_model, tokenizer = load_model(cfg.model, dtype=cfg.dtype)
    fp = model_fingerprint(ref_model)
    bf16 = samples_in_bf16(cfg, ref_model)
    if bf16:
        stage("sampling under bf16 autocast (mixed_precision); log-probs and the KL in fp32")
    rendered_of = {p.id: idata.render(tokenizer, p.text) for p in prompts}
    records, counts = make_pairs(cfg, stage, ref_model, tokenizer, fp, train, rendered_of, run_dir, cache_dir, files)

    rendered = [rendered_of[p.id] for p in heldout]
    ev = Evaluator(cfg, ref_model, tokenizer, heldout, rendered, ifbench, [idata.render(tokenizer, i.text) for i in ifbench], stage,
                   bf16=bf16)
    stage(f"sampling the reference on {len(heldout)} held-out prompts" + (f" and {len(ifbench)} IFBench prompts" if ifbench else ""))
    ref_samples = idata.cached_prompt_samples(cache_dir, "instructions-heldout", fp, ref_model, tokenizer, heldout, rendered,
                                              ev.settings(), stage)
    ifb_ref = None
    if ifbench:
        ifb_ref = idata.cached_prompt_samples(cache_dir, "instructions-ifbench", fp, ref_model, tokenizer, None,
                                              ev.ifbench_rendered, ev.settings(ifbench=True), stage)
    reference = ev.point("reference", "π_ref", 0, 0.0, ref_samples, ifb_ref, 0.0)

    train_rendered = [rendered_of[p.id] for p in train]
    prompt_of = {rendered_of[p.id]: p for p in prompts}
    if len(prompt_of) != len(prompts):
        raise ConfigError("two prompts of the study render to the same text; change prompts.seed")
    base = {"model": fp, "heldout": [p.id for p in heldout], "ifbench": [i.key for i in ifbench], "eval": ev.settings(),
            "ifbench_eval": ev.settings(ifbench=True), "dtype": cfg.dtype}
    # keys that came later join only when set, so that the default's run keys stay as they were
    if cfg.eval.ifbench_methods:
        base["ifbench_methods"] = sorted(cfg.ifbench_methods())
    if cfg.eval.kl_samples_per_prompt:
        base["kl_samples_per_prompt"] = cfg.eval.kl_samples_per_prompt
    if ev.temperature != 1.0:  # the KL then uses tempered log-probs (it used untempered ones before)
        base["kl_temperature"] = ev.temperature
    st = im.Study(cfg, run_dir, ev, FinishedRuns(run_dir, resume=resume, log=stage), base, train_rendered, prompt_of,
                  heldout_pairs(cfg, heldout, ref_samples, run_dir), ref_samples=ref_samples, bf16=bf16)

    results = {"judge": im.judge(st, ref_model, tokenizer, records) if cfg.judge.pairs else None}
    points, train_info = [], {}
    if cfg.preferred_ft.enabled:
        done = im.preferred_ft(st)
        points += done["points"]
        train_info["preferred-ft"] = done["train"]
    done = im.pairwise(st, "dpo", "dpo", cfg.beta, cfg.dpo.points, counts["total"])
    points += done["points"]
    train_info["dpo"] = done["train"]
    offline_dpo = done["points"][-1]
    r = cfg.robust
    done = im.pairwise(st, r.loss, r.loss, r.beta, r.points, counts["total"], label_smoothing=r.label_smoothing)
    points += done["points"]
    train_info[r.loss] = done["train"]
    rm_report = None
    if cfg.rloo.reward_model or cfg.bon.m:
        rm_report = im.reward_model(st)
    stopped = {}
    for method, wanted in (("rloo-rm", cfg.rloo.reward_model), ("rloo-oracle", cfg.rloo.oracle)):
        if wanted:
            done = im.rloo(st, method)
            points += done["points"]
            stopped[method] = done["stopped"]
    bon = im.best_of_n(st, ref_model, tokenizer) if cfg.bon.m else {"points": [], "reward_model_on_samples": None}
    if rm_report is not None:
        rm_report = {**rm_report, "on_best_of_n_samples": bon["reward_model_on_samples"]}
    online = None
    if cfg.online.rounds > 1:  # K online rounds at the offline DPO run's labels (instructions_online)
        from dpokit.tasks.instructions_online import online_study

        ref_train = train_samples(cfg, stage, ref_model, tokenizer, fp, train, rendered_of, cache_dir)
        online = online_study(st, ref_model, tokenizer, train, rendered_of, ref_train, counts["total"], reference,
                              offline_dpo)

    summary = summarize(cfg, reference, points, bon["points"], counts, results["judge"], rm_report, prompt_counts,
                        ifbench_counts, heldout, {"train": train_info, "online_runs_stopped": stopped,
                                                  "reused_runs": st.runs.reused, "run_wall_s": st.runs.wall_s,
                                                  **({"online": online} if online else {})})
    summary["elapsed_s"] = stage.elapsed()
    write_outputs(run_dir, summary, reference, points, bon["points"], heldout, cfg, stage)
    return summary
