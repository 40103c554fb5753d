"""The core every `dpokit study NAME` shares: one setup, resumable training runs on transformed
pair files, one evaluation per run, and the study's files.

A study is a module in `dpokit.studies` with

    CONFIG = MyConfig            # a dataclass extending StudyConfig (its own sections added)
    TITLE = "…"
    def run(cfg, log=print, resume=False) -> dict      # calls open_study(...) ... study.finish(...)

registered by one line in `dpokit.studies.STUDIES` ({"name": "dpokit.studies.module"}); its
packaged recipes are `dpokit/configs/study_<name>.yaml` and `study_<name>_quick.yaml` (`-` in
the name becomes `_`).

API (all in this module):

    study = open_study(cfg, "noise", log, resume)
        The sentiment task's setup, shared and cached across studies: train / held-out prompts,
        reference samples → `study.records` (the pairs, dicts with chosen_reward /
        rejected_reward) and `study.pairs_path`; the reference's held-out samples (the
        yardstick of every evaluation); the calibration pairs (`study.calibration_pairs`: all
        within-prompt pairs of `calibration.samples_per_prompt` extra reference samples per
        held-out prompt, in sample order, with their ground-truth rewards a_reward / b_reward).
    path = study.write_pairs("flip-eps0.2", records)
        A pair file in the shared data folder `runs_dir/data/`, named by its label and content
        digest (two studies writing the same records get the same file, hence the same run key).
    result = study.train("dpo-eps0.2", path, loss="cdpo", label_smoothing=0.2, beta=0.1, ...)
        One run of any objective (dpo with any loss of dpokit.losses, sft, ...), TrainConfig
        fields as keyword changes over the study config's own training keys; `model=` /
        `ref_model=` a model directory (e.g. an SFT run's result["final_dir"]). Stored in
        `runs_dir/<label>-<key>` with `frontier_run.json`; `--resume` reuses a run whose key
        (model fingerprint, every training setting, the data file's digest, the evaluation
        settings) is unchanged, whichever study ran it. Returns a dict:
            point      frontier point (reward mean [95% CI], KL to the BASE model from policy
                       samples, win rate against the base model's samples) — every run is
                       measured against the same yardstick (evaluate=False: None)
            kl_own_ref KL(π‖own reference) where the run's reference is not the base model
            margins    h = (πa − ra) − (πb − rb) (summed log-probs, reference = the run's own)
                       for each calibration pair, None where a pair was not tokenized;
                       margins=False skips them (None; ~33 s a run at full size) for a study
                       that never reads them, and is part of the run's key
            heldout_rewards  the evaluation's rewards, one list per held-out prompt (runs stored
                       before it existed lack it; keep=True redoes those)
            scores     with score={name: pair file}: h of each record of those files (e.g. the
                       run's own noisy training pairs: which labels did it learn?)
            train      steps, train_seconds, last training metrics
            wall_s     seconds spent training (all of train(): loading, reference log-probs,
                       steps, saving), evaluating, on margins and on `score`
            run        the run's directory name under runs_dir
            final_dir  the trained model (None once deleted: keep_models=false deletes the
                       weights of DPO-family runs after evaluation; SFT runs are always kept,
                       they are references)
    files = study.finish(rows, title=…, plot=fn(fig), sections=[md, …], extra={…})
        `<output_dir>/<name>.json` (title, rows, extra incl. run wall times), `<name>.png`
        (fn draws on a matplotlib Figure, Agg canvas) and `<name>.md` (title, plot, sections,
        wall time).

Helpers: `md_table(header, rows)`, `fmt(x, digits)`, `ci_text(point)`, `ci_errors(points)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import ClassVar

from dpokit.config import SEED_RANGE, ConfigError, ranged
from dpokit.tasks.sentiment_config import SentimentConfig

STUDY_RUN_IGNORED = ("output_dir", "progress")  # settings that cannot change a run's result


@dataclass
class CalibrationSet:
    # extra reference samples per held-out prompt; their within-prompt pairs get each run's
    # implicit margin (0 = none: the runs record no margins)
    samples_per_prompt: int = ranged(3, ge=0)
    seed: int = ranged(3, **SEED_RANGE)


@dataclass
class StudyConfig(SentimentConfig):
    """The sentiment study's config (prompts, pairs, eval, every TrainConfig key at the top level
    for the runs) plus where runs are shared and the calibration pairs."""

    # Each study decides the objective of each of its runs (DPO, SFT for references): a user's
    # `objective` would be silently overruled, so SentimentConfig.validate refuses it.
    objectives: ClassVar[tuple[str, ...]] = ("dpo",)
    runs_dir: str = "runs/studies/runs"  # trained runs and pair files, shared by every study
    keep_models: bool = False  # keep the weights of DPO-family runs after evaluation (~0.5 GB each)
    calibration: CalibrationSet = field(default_factory=CalibrationSet)

    def validate(self, given: set[str] | None = None) -> None:
        super().validate(given)
        if self.sft.enabled:
            raise ConfigError("sft.enabled must stay false in a study: every run starts from the base model unless the "
                              "study itself trains a reference")
        if self.calibration.samples_per_prompt == 1:
            raise ConfigError("calibration.samples_per_prompt must be 0 (off) or ≥ 2 (two samples make a pair), got 1")


# -- pure helpers ---------------------------------------------------------------------------------
def check_grid(section: str, *, betas: list[float] | None = None, eps: list[float] | None = None) -> None:
    """The studies' shared grid checks: β values > 0, label-flip rates in [0, 0.5) (at 0.5 the labels
    carry no signal), each list non-empty; a bad value is one ConfigError naming the setting."""
    if betas is not None and (not betas or any(not (b > 0) for b in betas)):
        raise ConfigError(f"{section}.betas must be a non-empty list of values > 0, got {betas}")
    if eps is not None and (not eps or any(not (0 <= e < 0.5) for e in eps)):
        raise ConfigError(f"{section}.eps must be a non-empty list of flip rates in [0, 0.5), got {eps}")


def records_digest(records: list[dict]) -> str:
    return hashlib.sha256("".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode()).hexdigest()[:12]


def calibration_pairs(samples) -> tuple[list[dict], dict]:
    """Every within-prompt pair (i < j, in sample order: the orientation is random with respect
    to the reward) of a SampleSet as a pair record whose "chosen" is sample a and "rejected" is
    sample b, with a_reward / b_reward; pairs with identical text are dropped and counted (the
    data loader would drop them)."""
    records, dropped = [], 0
    for prompt, comps, rewards in zip(samples.prompts, samples.completions, samples.rewards):
        for i in range(len(comps)):
            for j in range(i + 1, len(comps)):
                if comps[i].text.strip() == comps[j].text.strip():
                    dropped += 1
                    continue
                records.append({"prompt": prompt, "chosen": comps[i].text, "rejected": comps[j].text,
                                "a_reward": rewards[i], "b_reward": rewards[j],
                                "chosen_finished": comps[i].finished, "rejected_finished": comps[j].finished})
    return records, {"pairs": len(records), "identical_dropped": dropped}


def fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def ci_text(point: dict | None) -> str:
    """'0.512 [0.47, 0.55]' for a point's reward."""
    if not point:
        return "n/a"
    lo, hi = point["reward_ci95"]
    return f"{point['reward_mean']:.3f} [{fmt(lo, 2)}, {fmt(hi, 2)}]"


def ci_errors(points: list[dict]) -> list[list[float]]:
    """matplotlib yerr [below, above] of points' reward CIs; an undefined bound (None, NaN: a CI
    over one prompt) gets no bar."""
    def gap(p, k):
        bound = p["reward_ci95"][k]
        return 0.0 if bound is None or math.isnan(bound) else max(0.0, abs(bound - p["reward_mean"]))
    return [[gap(p, 0) for p in points], [gap(p, 1) for p in points]]


def md_table(header: list[str], rows: list[list]) -> str:
    from dpokit.report import _md_cell

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# -- the study ------------------------------------------------------------------------------------
class Study:
    """What the runs of one study invocation share; made by `open_study`."""

    def __init__(self, cfg: StudyConfig, name: str, stage, run_dir: Path, resume: bool):
        self.cfg, self.name, self.stage, self.run_dir = cfg, name, stage, run_dir
        self.runs_dir = Path(cfg.runs_dir)
        from dpokit.tasks.frontier_runs import FinishedRuns

        self.runs = FinishedRuns(self.runs_dir, resume=resume, log=stage)
        self.results: dict[str, dict] = {}  # run dir name → result, of this invocation
        # set by open_study
        self.ref_model = self.tokenizer = self.fingerprint = self.ref_samples = None
        self.reward_fn = self.heldout = self.base = self.pairs_path = self.calibration_path = None
        self.records: list[dict] = []
        self.pair_counts: dict = {}
        self.calibration_pairs: list[dict] = []
        self._items: dict = {}  # pair file → (tokenized pairs, their lines, records in the file)
        self._ref_logps: dict = {}  # (reference name, pair file) → its (chosen, rejected) log-probs

    def write_pairs(self, label: str, records: list[dict]) -> Path:
        """records → runs_dir/data/<label>-<digest>.jsonl (written once; same records, same file)."""
        from dpokit.tasks.sentiment_pairs import write_jsonl

        path = self.runs_dir / "data" / f"{label}-{records_digest(records)}.jsonl"
        if not path.exists():
            tmp = path.with_name(path.name + ".tmp")
            write_jsonl(records, tmp)
            tmp.replace(path)
        return path

    def train_config(self, data: Path, **changes):
        """The TrainConfig of a run: the study config's training keys, then `changes`."""
        from dpokit.tasks import sentiment as st

        base = {"objective": "dpo", "data": str(data), "eval_data": None, "eval_fraction": 0.0, "save_every": 0,
                "keep_checkpoints": 0, "output_dir": ""}
        if changes.get("objective") == "sft":  # Preferred-FT's own learning rate and length
            base.update(lr=self.cfg.sft.lr, epochs=self.cfg.sft.epochs, max_steps=0)
        return st.train_config_of(self.cfg, **{**base, **changes})

    def train(self, label: str, data: Path, *, method: str | None = None, setting: str = "", evaluate: bool = True,
              score: dict[str, Path] | None = None, keep: bool = False, margins: bool = True, **changes) -> dict:
        """One run, reused by key under --resume (module docstring). `method` / `setting`: how
        its point is labelled (default: the loss, or "sft"). `score`: {name: pair file} whose
        margins h (policy against its own reference) the result keeps under result["scores"][name].
        `keep`: keep this run's weights whatever keep_models says; a stored run without them (or
        without its per-prompt held-out rewards) is then redone. `margins=False`: no calibration
        margins (result["margins"] None); keyed, so such a run never stands in for one with them."""
        from dpokit.tasks.frontier_runs import file_digest, key_of, settings_of

        train_cfg = self.train_config(data, **changes)
        settings = {k: v for k, v in settings_of(train_cfg).items() if k not in STUDY_RUN_IGNORED}
        score = dict(score or {})
        # "no margins" joins the key only when asked for, so every run with margins keeps its key
        key = key_of(self.base, settings, file_digest(data), evaluate, {k: file_digest(v) for k, v in score.items()} or None,
                     *(() if margins else ("no-margins",)))
        name = f"{label}-{key[:8]}"
        train_cfg = dataclasses.replace(train_cfg, output_dir=str(self.runs_dir / name), progress=self.cfg.progress)
        method = method or ("sft" if train_cfg.objective == "sft" else train_cfg.loss)
        sft = train_cfg.objective == "sft"
        intact = (lambda r: r["final_dir"] is not None and (Path(r["final_dir"]) / "config.json").exists()) if sft else None
        if keep:  # weights: a full model's or a LoRA adapter's safetensors (deleting weights leaves the configs)
            intact = lambda r: (r["final_dir"] is not None and (not evaluate or "heldout_rewards" in r)
                                and any(Path(r["final_dir"]).glob("*.safetensors")))
        compute = partial(self._run, train_cfg, method, setting, evaluate, not sft and not keep, score, margins)
        result = {**self.runs.run(name, key, compute, intact=intact), "run": name}
        self.results[name] = result
        return result

    def _run(self, train_cfg, method: str, setting: str, evaluate: bool, deletable: bool, score: dict,
             margins: bool = True) -> dict:
        from dpokit.models import load_model
        from dpokit.train.loop import train

        self.stage(f"{method} {setting}: training ({train_cfg.output_dir})")
        clock = time.perf_counter()
        out = train(train_cfg, log=lambda *_: None, force=True)
        wall = {"train": time.perf_counter() - clock}  # where a run's minutes go (the budget is sized from it)
        own_ref = train_cfg.ref_model or (train_cfg.model if train_cfg.model != self.cfg.model else None)
        summary = out.summary
        result = {"method": method, "setting": setting, "point": None, "kl_own_ref": None, "margins": None,
                  "train": {"steps": summary["steps"], "train_seconds": summary["train_seconds"],
                            "skipped_steps": summary["skipped_steps"], "last": summary.get("train_last")},
                  "final_dir": str(out.final_dir)}
        if evaluate:
            result.update(self._evaluate(out.model, method, setting, summary, own_ref, train_cfg, wall, margins))
        if score:
            clock = time.perf_counter()
            ref = self.ref_model if own_ref is None else load_model(own_ref, dtype=self.cfg.dtype)[0]
            result["scores"] = {k: self.pair_margins(out.model, ref, own_ref or "base", Path(p), train_cfg)
                                for k, p in score.items()}
            wall["score"] = time.perf_counter() - clock
        result["wall_s"] = wall
        del out
        if deletable and not self.cfg.keep_models:
            for f in Path(result["final_dir"]).glob("*.safetensors"):
                f.unlink()  # the numbers are kept; the weights (~0.5 GB a run) are not needed again
            result["final_dir"] = None
        return result

    def _evaluate(self, policy, method, setting, summary, own_ref: str | None, train_cfg, wall: dict,
                  with_margins: bool = True) -> dict:
        """Point against the base model; KL to the run's own reference; calibration margins."""
        from dpokit.eval import policy_eval as pe
        from dpokit.eval.stats import sequence_kl
        from dpokit.models import load_model
        from dpokit.tasks import frontier_methods as fm
        from dpokit.tasks import sentiment as st

        cfg = self.cfg
        clock = time.perf_counter()
        pol_samples, numbers = st.evaluate_policy(cfg, policy, self.ref_model, self.tokenizer, self.ref_samples,
                                                  self.reward_fn, self.heldout, lambda *_: None)
        pol = numbers["policy"]
        point = fm.point(method, setting, summary["steps"], numbers["kl"], pol["reward_mean"], pol["reward_ci95"],
                         numbers["win_rate"], numbers["n_heldout"], summary["train_seconds"])
        kl_own, ref = None, self.ref_model
        if own_ref is not None:
            ref = load_model(own_ref, dtype=cfg.dtype)[0]
            kl_own = sequence_kl(pe.completion_logps(policy, self.tokenizer, pol_samples),
                                 pe.completion_logps(ref, self.tokenizer, pol_samples))
        wall["evaluate"] = time.perf_counter() - clock
        clock = time.perf_counter()
        margins = self.margins(policy, ref, own_ref or "base", train_cfg) if with_margins else None
        wall["margins"] = time.perf_counter() - clock
        self.stage(f"  {method} {setting}: reward {pol['reward_mean']:.3f}, KL {numbers['kl']:.2f}"
                   + ("" if kl_own is None else f" (to its own reference {kl_own:.2f})") + f", win {numbers['win_rate']:.0%}")
        # per prompt, each sample's reward: paired comparisons between runs (same prompts, same order)
        return {"point": point, "kl_own_ref": kl_own, "margins": margins, "heldout_rewards": pol_samples.rewards}

    def margins(self, policy, ref, ref_name: str, train_cfg) -> list[float | None] | None:
        """h for each calibration pair (None: the study has none)."""
        if self.calibration_path is None:
            return None
        return self.pair_margins(policy, ref, ref_name, self.calibration_path, train_cfg)

    def pair_margins(self, policy, ref, ref_name: str, path: Path, train_cfg) -> list[float | None]:
        """h = (πc − rc) − (πr − rr), summed log-probs, for each record of pair file `path`, in
        file order; None where a record was skipped or not tokenized. The reference's log-probs
        are computed once per (reference, file) in this invocation."""
        from dpokit.data.collate import resolve_pad_id
        from dpokit.data.normalize import load_pairs
        from dpokit.data.tokenize import tokenize_pairs
        from dpokit.score import pair_logps
        from dpokit.train.prepare import tokenize_settings

        if str(path) not in self._items:
            pairs, _ = load_pairs(str(path), on_malformed="skip")
            # a skipped record leaves no pair: map each kept pair back to its line (source "file:LINE")
            lines = [int(p.source.rsplit(":", 1)[1]) - 1 for p in pairs]
            n = sum(1 for line in Path(path).read_text().splitlines() if line.strip())
            items = tokenize_pairs(pairs, self.tokenizer, tokenize_settings(train_cfg))[0]
            self._items[str(path)] = (items, lines, n)
        items, lines, n = self._items[str(path)]
        pad, batch = resolve_pad_id(self.tokenizer), max(self.cfg.batch_size, 8)
        if (ref_name, str(path)) not in self._ref_logps:
            self._ref_logps[ref_name, str(path)] = pair_logps(ref, items, pad, batch)[:2]
        out: list[float | None] = [None] * n
        if not items:
            return out
        pc, pr, _, _ = pair_logps(policy, items, pad, batch)
        rc, rr = self._ref_logps[ref_name, str(path)]
        for it, h in zip(items, ((pc - rc) - (pr - rr)).tolist()):
            out[lines[it.index]] = h
        return out

    def reference_point(self) -> dict:
        """The base model's own point (KL 0, win rate 0.5 by definition)."""
        from dpokit.eval.stats import mean_ci95
        from dpokit.tasks import frontier_methods as fm

        mean, ci = mean_ci95(self.ref_samples.flat_rewards())
        return fm.point("reference", "π_ref", 0, 0.0, mean, list(ci), 0.5, len(self.heldout), 0.0)

    def finish(self, rows: list[dict], *, title: str, plot=None, sections: list[str] = (), extra: dict | None = None) -> dict:
        """Write <name>.json, <name>.png (if `plot`), <name>.md; returns {kind: path}."""
        from dpokit.eval.frontier_report import _jsonable
        from dpokit.report import _figure, _save

        files = {"json": self.run_dir / f"{self.name}.json", "md": self.run_dir / f"{self.name}.md"}
        wall = dict(self.runs.wall_s)
        extra = {**(extra or {}), "pairs": self.pair_counts, "reused_runs": list(self.runs.reused),
                 "run_wall_s": wall, "elapsed_s": self.stage.elapsed()}
        files["json"].write_text(json.dumps(_jsonable({"title": title, "study": self.name, "rows": rows, "extra": extra}),
                                            indent=1, ensure_ascii=False, allow_nan=False))
        md = f"# {title}\n\n"
        if plot is not None:
            fig, _ = _figure(ncols=0)
            plot(fig)
            files["png"] = _save(fig, self.run_dir / f"{self.name}.png")
            md += f"![{self.name}]({self.name}.png)\n\n"
        md += "\n".join(s for s in sections if s)
        md += (f"\n## Wall time\n\n{len(wall)} runs, {sum(wall.values()) / 60:.1f} min of run time (reused runs at the time "
               f"they took; {len(self.runs.reused)} reused); this invocation {extra['elapsed_s'] / 60:.1f} min.\n")
        files["md"].write_text(md, encoding="utf-8")
        self.stage(f"{self.name}: {', '.join(str(p) for p in files.values())}")
        return files


def open_study(cfg: StudyConfig, name: str, log=print, resume: bool = False) -> Study:
    """Setup shared by every study (module docstring): samples and pairs come from the cache
    that `dpokit run sentiment` / `run frontier` use, keyed by model, prompts and settings."""
    from dpokit.eval import policy_eval as pe
    from dpokit.models import load_model, model_fingerprint
    from dpokit.tasks import sentiment as st
    from dpokit.tasks import sentiment_pairs as sp

    stage, run_dir, cache_dir, reward_fn, train_prompts, heldout = st.study_setup(cfg, f"{name}_config.yaml", log)
    study = Study(cfg, name, stage, run_dir, resume)
    stage(f"loading {cfg.model}")
    study.ref_model, study.tokenizer = load_model(cfg.model, dtype=cfg.dtype)
    study.fingerprint = model_fingerprint(study.ref_model)
    study.reward_fn, study.heldout = reward_fn, heldout
    study.pair_counts = st.make_pairs(cfg, study.ref_model, study.tokenizer, study.fingerprint, train_prompts, reward_fn,
                                      run_dir, cache_dir, stage)
    study.records = [json.loads(line) for line in (run_dir / "pairs.jsonl").read_text().splitlines() if line.strip()]
    if not study.records:
        raise ConfigError(f"no preference pairs from {len(train_prompts)} train prompts (every sample pair a tie): "
                          "raise prompts.n_train or pairs.samples_per_prompt, or lower pairs.min_gap")
    study.pairs_path = study.write_pairs("pairs", study.records)
    study.ref_samples, _ = st.reference_heldout(cfg, study.ref_model, study.tokenizer, study.fingerprint, heldout,
                                                reward_fn, run_dir, cache_dir, stage)
    c = cfg.calibration
    if c.samples_per_prompt:
        settings = {"n": c.samples_per_prompt, "max_new_tokens": cfg.pairs.max_new_tokens,
                    "temperature": cfg.pairs.temperature, "seed": c.seed}
        key = sp.samples_key(study.fingerprint, heldout, settings)
        samples = sp.cached_samples(cache_dir, "calibration", key, lambda: pe.sample_and_score(
            study.ref_model, study.tokenizer, heldout, reward_fn, n_per_prompt=c.samples_per_prompt,
            max_new_tokens=cfg.pairs.max_new_tokens, temperature=cfg.pairs.temperature, batch_size=cfg.pairs.batch_size,
            seed=c.seed, progress=cfg.progress, desc="calibration samples"), stage)
        study.calibration_pairs, counts = calibration_pairs(samples)
        study.calibration_path = study.write_pairs("calibration", study.calibration_pairs) if study.calibration_pairs else None
        stage(f"calibration pairs: {counts['pairs']} ({counts['identical_dropped']} with identical text dropped)")
    study.base = {"model": study.fingerprint, "heldout": heldout, "eval": dataclasses.asdict(cfg.eval), "reward": cfg.reward,
                  "sampling": sp.sample_settings(cfg.pairs), "dtype": cfg.dtype,
                  "calibration": dataclasses.asdict(c) if study.calibration_path else None}
    return study
