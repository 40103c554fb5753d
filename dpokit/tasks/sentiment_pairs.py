"""Preference pairs from reference samples scored by a ground-truth reward.

Samples are cached on disk keyed by model fingerprint + prompts + sampling settings, so a
re-run (or a β sweep) samples once."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dpokit.eval.policy_eval import SampleSet, sample_and_score


def samples_key(model_fp: str, prompts: list[str], settings: dict) -> str:
    h = hashlib.sha256()
    h.update(model_fp.encode())
    h.update(json.dumps(prompts).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()[:24]


def cached_samples(cache_dir: Path, kind: str, key: str, make, log=print) -> SampleSet:
    """Load samples from `<cache_dir>/samples/<kind>-<key>.json`, or make and store them."""
    path = Path(cache_dir) / "samples" / f"{kind}-{key}.json"
    if path.exists():
        log(f"{kind}: reusing cached samples {path}")
        return SampleSet.from_json(json.loads(path.read_text()))
    samples = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(samples.to_json()))
    tmp.rename(path)
    log(f"{kind}: sampled and cached {path}")
    return samples


def build_pairs(samples: SampleSet, *, per_prompt: int, min_gap: float) -> tuple[list[dict], dict]:
    """Ordered pairs (chosen reward > rejected reward + min_gap) per prompt, largest gap
    first, at most `per_prompt` of them (0 = all), each completion used at most once per
    prompt when possible. Returns (records, counts).

    Each record carries `chosen_finished` / `rejected_finished` from the samples: a
    completion cut at max_new_tokens is then trained without an EOS it never generated."""
    records, counts = [], {"prompts": len(samples.prompts), "ties_dropped": 0, "candidate_pairs": 0}
    for prompt, comps, rewards in zip(samples.prompts, samples.completions, samples.rewards):
        order = sorted(range(len(comps)), key=lambda k: -rewards[k])
        candidates = []
        for a in range(len(order)):
            for b in range(a + 1, len(order)):
                i, j = order[a], order[b]
                gap = rewards[i] - rewards[j]
                if gap < min_gap or comps[i].text.strip() == comps[j].text.strip():
                    counts["ties_dropped"] += 1
                    continue
                candidates.append((gap, i, j))
        counts["candidate_pairs"] += len(candidates)
        candidates.sort(key=lambda c: -c[0])
        chosen = _pick_disjoint_first(candidates, per_prompt)
        for gap, i, j in chosen:
            records.append({
                "prompt": prompt, "chosen": comps[i].text, "rejected": comps[j].text,
                "chosen_reward": rewards[i], "rejected_reward": rewards[j],
                "chosen_finished": comps[i].finished, "rejected_finished": comps[j].finished,
            })
    counts["pairs"] = len(records)
    return records, counts


def _pick_disjoint_first(candidates, limit: int):
    """Prefer pairs that reuse no completion (more distinct text per pair), then fill up."""
    if limit <= 0:
        return candidates
    picked, used = [], set()
    for c in candidates:
        if len(picked) < limit and c[1] not in used and c[2] not in used:
            picked.append(c)
            used.update(c[1:])
    for c in candidates:
        if len(picked) < limit and c not in picked:
            picked.append(c)
    return picked


def kto_records(pairs: list[dict]) -> list[dict]:
    """KTO's unpaired data from the pairs (Ethayarajh et al. 2024 train on pair data this way):
    each chosen completion a desirable example, each rejected one undesirable, exact repeats of
    (prompt, completion, label) once. A completion chosen in one pair and rejected in another
    keeps both labels: the unpaired view of the same comparisons, nothing dropped."""
    seen, out = set(), []
    for r in pairs:
        for side, label in (("chosen", True), ("rejected", False)):
            key = (r["prompt"], r[side], label)
            if key not in seen:
                seen.add(key)
                out.append({"prompt": r["prompt"], "completion": r[side], "label": label,
                            "completion_finished": r.get(f"{side}_finished", True)})
    return out


def ranked_records(samples: SampleSet, *, min_gap: float) -> tuple[list[dict], int]:
    """RRHF's ranked data (Yuan et al. 2023): per prompt its distinct sampled completions with
    their ground-truth scores. A prompt whose scores all lie within `min_gap` of each other
    ranks nothing (every pair a tie, as build_pairs drops them): skipped and counted.
    Returns (records, prompts skipped)."""
    out, skipped = [], 0
    for prompt, comps, rewards in zip(samples.prompts, samples.completions, samples.rewards):
        texts, scores = [], []
        for c, r in zip(comps, rewards):
            if c.text.strip() not in {t.strip() for t in texts}:
                texts.append(c.text)
                scores.append(r)
        if len(texts) < 2 or max(scores) - min(scores) < min_gap:
            skipped += 1
            continue
        out.append({"prompt": prompt, "responses": texts, "scores": scores})
    return out, skipped


def write_jsonl(records: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def sample_settings(cfg_pairs) -> dict:
    return {
        "n": cfg_pairs.samples_per_prompt, "max_new_tokens": cfg_pairs.max_new_tokens,
        "temperature": cfg_pairs.temperature, "seed": cfg_pairs.seed,
    }


def sample_reference(model, tokenizer, prompts, reward_fn, cfg_pairs, progress=True, desc="sampling") -> SampleSet:
    return sample_and_score(
        model, tokenizer, prompts, reward_fn, n_per_prompt=cfg_pairs.samples_per_prompt,
        max_new_tokens=cfg_pairs.max_new_tokens, temperature=cfg_pairs.temperature,
        batch_size=cfg_pairs.batch_size, seed=cfg_pairs.seed, progress=progress, desc=desc,
    )
