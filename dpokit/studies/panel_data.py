"""Rated data for the disagreement and cycles studies: the reference's own train samples (all K
per prompt, from the cache the study setup filled), their criteria scores, and the panel's
multi-rater records."""

from __future__ import annotations

import random
from pathlib import Path

from dpokit.studies.raters import Panel, Standardizer, rate_pair, score_texts


def train_samples(study, cfg):
    """The K reference samples of every train prompt (dpokit.tasks.sentiment.make_pairs sampled
    and cached them during the study's setup; the same key finds them again)."""
    from dpokit.models import default_cache_dir
    from dpokit.tasks import sentiment_pairs as sp
    from dpokit.tasks.sentiment_prompts import build_prompts, split_prompts

    prompts = split_prompts(build_prompts(), cfg.prompts.n_heldout, cfg.prompts.seed)[0][: cfg.prompts.n_train]
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    key = sp.samples_key(study.fingerprint, prompts, sp.sample_settings(cfg.pairs))
    return sp.cached_samples(cache_dir, "train", key, lambda: sp.sample_reference(
        study.ref_model, study.tokenizer, prompts, study.reward_fn, cfg.pairs, cfg.progress), study.stage)


def sample_rows(samples, criteria: list[str]) -> list[dict]:
    """{"prompt", "texts", "finished", "scores": {criterion: raw score per text}} per prompt."""
    rows = []
    for prompt, comps in zip(samples.prompts, samples.completions):
        texts = [c.text for c in comps]
        rows.append({"prompt": prompt, "texts": texts, "finished": [c.finished for c in comps],
                     "scores": score_texts(texts, criteria)})
    return rows


def fit_standardizer(rows: list[dict], criteria: list[str]) -> Standardizer:
    """Mean and sd of every criterion over all the rows' texts (the reference's pool)."""
    return Standardizer.fit({c: [s for row in rows for s in row["scores"][c]] for c in criteria})


def zs(row: dict, std: Standardizer) -> list[dict[str, float]]:
    """The standardised scores of each text of a row, as {criterion: z} per text."""
    per = std(row["scores"])
    return [{c: per[c][i] for c in per} for i in range(len(row["texts"]))]


def panel_records(rows: list[dict], panel: Panel, std: Standardizer, seed: int) -> tuple[list[dict], dict]:
    """Every within-prompt pair of distinct texts, voted on by the panel (raters.rate_pair, one
    seeded generator for the whole set, pairs in prompt then (i < j) order). Returns
    (records, counts): pairs, identical-text pairs skipped, ties broken by a coin, unanimous."""
    rng = random.Random(seed)
    records, counts = [], {"pairs": 0, "identical_skipped": 0, "ties_broken": 0, "unanimous": 0}
    for row in rows:
        z = zs(row, std)
        texts = row["texts"]
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if texts[i].strip() == texts[j].strip():
                    counts["identical_skipped"] += 1
                    continue
                rec = rate_pair(panel, row["prompt"], texts[i], texts[j], z[i], z[j], rng)
                fin = {texts[i]: row["finished"][i], texts[j]: row["finished"][j]}
                rec["chosen_finished"], rec["rejected_finished"] = bool(fin[rec["chosen"]]), bool(fin[rec["rejected"]])
                records.append(rec)
                counts["ties_broken"] += rec["tie_broken"]
                counts["unanimous"] += is_unanimous(rec)
    counts["pairs"] = len(records)
    return records, counts


def is_unanimous(record: dict) -> bool:
    return len(set(record["votes"].values())) == 1


def utility_records(records: list[dict]) -> tuple[list[dict], int]:
    """The same pairs labelled by the mixture's expected utility U (the higher-U text chosen),
    without votes: DPO on these is the oracle that knows the mixture's own ground truth.
    Pairs with equal U are dropped and counted (returned second)."""
    out, ties = [], 0
    for r in records:
        uc, ur = r["utility_chosen"], r["utility_rejected"]
        if uc == ur:
            ties += 1
            continue
        keep = {k: v for k, v in r.items() if k not in ("votes", "tie_broken")}
        if uc < ur:
            for a, b in (("chosen", "rejected"), ("z_chosen", "z_rejected"), ("utility_chosen", "utility_rejected"),
                         ("chosen_finished", "rejected_finished")):
                keep[a], keep[b] = r[b], r[a]
            keep["p_mix"] = 1 - r["p_mix"]
        out.append(keep)
    return out, ties
