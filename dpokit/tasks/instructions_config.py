"""Case study 2's config (`dpokit run instructions`): every TrainConfig key at the top level sets
the DPO run (lr, batch_size, beta, max_length ...), as in the sentiment study, plus one section
per stage. Each numeric key carries its valid range (`dpokit.config.ranged`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpokit.config import (
    SEED_RANGE,
    ConfigError,
    TrainConfig,
    ranged,
    validate_train_config,
)
from dpokit.instructions.constraints import MIN_BUDGET_TOKENS

# TrainConfig keys the study sets itself (it trains on the pairs it builds, with the loss each
# method names): a value given for one of these would be silently overwritten.
STUDY_SETS = ("objective", "data", "split", "eval_data", "eval_fraction", "loss")
ROBUST_LOSSES = ("ipo", "cdpo", "robust")


@dataclass
class PromptsSection:
    n_train: int = ranged(180, ge=1, note="train questions, one constraint each")
    n_heldout: int = ranged(36, ge=1, note="held-out questions; as many train prompts re-asked in the held-out wording")
    harmful_fraction: float = ranged(0.25, ge=0, note="harmful prompts per constraint prompt; as many harmless ones")
    heldout_fraction: float = ranged(0.2, gt=0, lt=1, note="share of questions and harmful prompts held out by hashing")
    n_heldout_safety: int = ranged(0, ge=0, note="held-out harmful prompts and as many harmless questions (apart from "
                                   "the n_heldout constraint ones); 0 = round(harmful_fraction × n_heldout) of each")
    seed: int = ranged(0, **SEED_RANGE)


@dataclass
class PairsSection:
    rules: bool = True  # sample the reference on the train prompts and label its samples by the checkers
    files: list[str] = field(default_factory=list)  # extra pair files (HH-RLHF, UltraFeedback, dpokit): trained on too
    samples_per_prompt: int = ranged(4, ge=1)
    max_pairs_per_prompt: int = ranged(2, ge=1)
    revise: bool = True  # critique -> revision where no sample is acceptable
    revisions_per_prompt: int = ranged(1, ge=1, note="samples revised (one pair each) on a prompt with no acceptable sample; "
                                       "with harmless_contrast also the contrast pairs per harmless prompt")
    # harmless prompt with acceptable samples: up to revisions_per_prompt of them, each ≻ a template refusal
    # (origin "contrast"), besides its sampled pairs
    harmless_contrast: bool = False
    # the token budget of every constraint answer (train samples, held-out, RLOO rollouts, online rounds,
    # Best-of-N); the word-count, bullet and end-phrase params are drawn to fit it
    max_new_tokens: int = ranged(48, ge=MIN_BUDGET_TOKENS,
                                 note="below it some constraint could never pass or never fail")
    temperature: float = ranged(1.0, gt=0)
    batch_size: int = ranged(32, ge=1, note="sequences per generate() call")
    seed: int = ranged(1, **SEED_RANGE)


@dataclass
class EvalSection:
    samples_per_prompt: int = ranged(2, ge=1)  # per held-out prompt, every method alike
    kl_samples_per_prompt: int = ranged(0, ge=0, note="the first samples of each held-out prompt the KL is estimated from; 0 = all")
    temperature: float = ranged(0.0, ge=0, note="sampling temperature of the evaluation (held-out, IFBench, Best-of-N; "
                                "the KL is then between the tempered distributions); 0 = pairs.temperature")
    seed: int = ranged(2, **SEED_RANGE)
    ifbench: bool = True  # IFBench prompts with an instruction our checkers judge, as an out-of-distribution set
    ifbench_max_new_tokens: int = ranged(128, ge=1, note="IFBench asks for long answers (up to hundreds of words)")
    ifbench_prompts: int = ranged(24, ge=0, note="IFBench prompts sampled (first by a hash of the key); 0 = every judged one")
    # the methods sampled on IFBench besides the reference (its samples cost about a third of an
    # evaluation); empty = every method; "robust" = the robust variant, whatever robust.loss
    ifbench_methods: list[str] = field(default_factory=list)
    examples: int = ranged(6, ge=0)  # side-by-side examples in the report


@dataclass
class JudgeSection:
    pairs: int = ranged(60, ge=0, note="labelled pairs the bundled model judges (both orders); 0 = no judge")
    seed: int = ranged(0, **SEED_RANGE)


PROMPT_KINDS = ("constraint", "harmful", "harmless")


@dataclass
class PreferredFTSection:
    enabled: bool = True
    lr: float = ranged(1.0e-5, gt=0)
    epochs: float = ranged(1.0, gt=0)
    # the prompt kinds whose chosen responses Preferred-FT trains on. Without "harmful" it never
    # sees a refusal template: a DPO anchored to it learns refusal only from the pairs, against
    # the harmless prompts' answer ≻ refusal pairs, instead of inheriting an SFT model that refuses
    # harmless questions too. Pair-file records without a kind are always kept.
    kinds: list[str] = field(default_factory=lambda: list(PROMPT_KINDS))


DPO_STARTS = ("reference", "preferred-ft")


@dataclass
class DPOSection:
    points: int = ranged(2, ge=1, note="evaluations per run: intermediate checkpoints + the final model")
    # where DPO and the robust variant start, and the model their loss is anchored to:
    # "reference" = the study's model; "preferred-ft" = the Preferred-FT model (π_ref = SFT on
    # the chosen responses: Rafailov et al. 2023, sec. 4, for pairs the reference did not sample)
    start: str = "reference"


@dataclass
class RobustSection:
    loss: str = "ipo"  # ipo | cdpo | robust
    beta: float = ranged(0.1, gt=0)
    label_smoothing: float = ranged(0.1, ge=0, lt=0.5, note="cdpo / robust: the assumed share of flipped labels")
    points: int = ranged(1, ge=1)


@dataclass
class RewardModelSection:
    lr: float = ranged(3.0e-5, gt=0)
    head_lr: float = ranged(1.0e-3, ge=0, note="0 = lr")
    epochs: float = ranged(1.0, gt=0)
    batch_size: int = ranged(8, ge=1)


@dataclass
class RLOOSection:
    reward_model: bool = True  # RLOO against the reward model (the RLHF baseline)
    oracle: bool = True  # RLOO against the checker itself (principles as a 0/1 reward)
    kl_coef: float = ranged(0.05, ge=0)
    steps: int = ranged(8, ge=1)
    rollout_prompts: int = ranged(8, ge=1)
    k: int = ranged(4, ge=2)
    lr: float = ranged(3.0e-5, gt=0)
    points: int = ranged(2, ge=1)
    # where both RLOO runs start, and the model their KL penalty is to: "reference" = the study's
    # model; "preferred-ft" = the Preferred-FT model (the SFT model of the RLHF pipeline,
    # Ouyang et al. 2022, sec. 3.5: RL starts from it, KL to it), the start DPO has with dpo.start
    start: str = "reference"


@dataclass
class BestOfNSection:
    m: int = ranged(4, ge=0, note="reference samples per held-out prompt; 0 = no Best-of-N")
    ns: list[int] = field(default_factory=lambda: [1, 2, 4])
    reuse_reference: bool = False  # the first eval.samples_per_prompt of the m are the reference's held-out samples


ONLINE_REFERENCES = ("fixed", "updated", "both")


@dataclass
class OnlineSection:
    """Hybrid training (dpokit.tasks.instructions_online): K online DPO rounds on failure slices,
    at the offline DPO run's total of labelled pairs."""

    rounds: int = ranged(1, ge=1, note="1 = offline only; K ≥ 2 adds K online DPO rounds at the offline run's labels")
    reference: str = "fixed"  # fixed (the starting reference every round) | updated (the previous round's policy) | both
    prompts_per_draw: int = ranged(0, ge=0, note="fresh train prompts sampled per draw; 0 = train prompts / rounds")
    seed: int = ranged(3, **SEED_RANGE)


@dataclass
class InstructionsConfig(TrainConfig):
    prompts: PromptsSection = field(default_factory=PromptsSection)
    pairs: PairsSection = field(default_factory=PairsSection)
    eval: EvalSection = field(default_factory=EvalSection)
    judge: JudgeSection = field(default_factory=JudgeSection)
    preferred_ft: PreferredFTSection = field(default_factory=PreferredFTSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    robust: RobustSection = field(default_factory=RobustSection)
    rm: RewardModelSection = field(default_factory=RewardModelSection)
    rloo: RLOOSection = field(default_factory=RLOOSection)
    bon: BestOfNSection = field(default_factory=BestOfNSection)
    online: OnlineSection = field(default_factory=OnlineSection)
    output_dir: str = "runs/instructions"

    def validate(self, given: set[str] | None = None) -> None:
        """`given`: the keys the user's file and overrides name (load_config)."""
        fixed = [key for key in STUDY_SETS if key in (given or ())]
        if fixed:
            raise ConfigError(f"{', '.join(fixed)}: set by the instructions study itself (it trains each method on the "
                              "pairs it builds; the robust variant's loss is robust.loss); remove from the config")
        validate_train_config(self)
        self._validate_start()
        if self.eval.kl_samples_per_prompt > self.eval.samples_per_prompt:
            raise ConfigError(f"eval.kl_samples_per_prompt ({self.eval.kl_samples_per_prompt}) must be ≤ "
                              f"eval.samples_per_prompt ({self.eval.samples_per_prompt})")
        methods = ("preferred-ft", "dpo", self.robust.loss, "rloo-rm", "rloo-oracle")
        unknown = [m for m in self.ifbench_methods() if m not in methods]
        if unknown:
            raise ConfigError(f"eval.ifbench_methods: {', '.join(map(str, unknown))} not among the methods "
                              f"{', '.join(methods)} (or robust: robust.loss)")
        kinds = self.preferred_ft.kinds
        if not kinds or any(k not in PROMPT_KINDS for k in kinds):
            raise ConfigError(f"preferred_ft.kinds: {kinds} must be a non-empty list of {', '.join(PROMPT_KINDS)}")
        if self.robust.loss not in ROBUST_LOSSES:
            raise ConfigError(f"robust.loss: {self.robust.loss!r} is not one of {', '.join(ROBUST_LOSSES)}")
        if self.robust.loss in ("cdpo", "robust") and self.robust.label_smoothing == 0:
            raise ConfigError(f"robust.loss={self.robust.loss} with robust.label_smoothing=0 is plain DPO: set it in (0, 0.5)")
        if not self.pairs.rules and not self.pairs.files:
            raise ConfigError("pairs.rules=false needs pairs.files (HH-RLHF, UltraFeedback or dpokit pair files)")
        if self.pairs.rules and self.pairs.samples_per_prompt < 2 and not self.pairs.revise:
            raise ConfigError("pairs.samples_per_prompt=1 makes pairs only by revision: set pairs.revise=true or sample ≥ 2")
        if self.prompts.n_heldout > self.prompts.n_train:
            raise ConfigError(f"prompts.n_heldout ({self.prompts.n_heldout}) must be ≤ prompts.n_train "
                              f"({self.prompts.n_train}): the held-out wording re-asks that many train prompts")
        if self.bon.m and any(not 1 <= n <= self.bon.m for n in self.bon.ns):
            raise ConfigError(f"bon.ns must lie in [1, bon.m={self.bon.m}], got {self.bon.ns}")
        if self.rloo.rollout_prompts * self.rloo.k < 2:
            raise ConfigError("rloo: rollout_prompts × k must be ≥ 2")
        self._validate_online()

    def ifbench_methods(self) -> list[str]:
        """eval.ifbench_methods with "robust" read as the robust variant's name (robust.loss), so a
        recipe naming "robust" holds whichever loss a user picks."""
        return [self.robust.loss if m == "robust" else m for m in self.eval.ifbench_methods]

    def _validate_start(self) -> None:
        for name, start in (("dpo", self.dpo.start), ("rloo", self.rloo.start)):
            if start not in DPO_STARTS:
                raise ConfigError(f"{name}.start: {start!r} is not one of {', '.join(DPO_STARTS)}")
            if start != "preferred-ft":
                continue
            if not self.preferred_ft.enabled:
                raise ConfigError(f"{name}.start=preferred-ft needs the Preferred-FT run: set preferred_ft.enabled=true")
            if self.ref_model:
                what = "DPO" if name == "dpo" else "RLOO's KL penalty"
                raise ConfigError(f"{name}.start=preferred-ft anchors {what} to the Preferred-FT model; "
                                  f"ref_model={self.ref_model} would replace it: remove ref_model")

    def _validate_online(self) -> None:
        o = self.online
        if o.reference not in ONLINE_REFERENCES:
            raise ConfigError(f"online.reference: {o.reference!r} is not one of {', '.join(ONLINE_REFERENCES)}")
        if o.rounds > 1 and (not self.pairs.rules or self.pairs.files):
            # the online rounds label their pairs by the checkers; file pairs would count as
            # labels of the offline run that no online round can spend
            raise ConfigError(f"online.rounds={o.rounds} compares with offline DPO at equal checker labels: it needs "
                              "pairs.rules=true and no pairs.files")
