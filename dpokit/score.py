"""Score preference pairs with a policy and a reference: per-pair log-probs and the implicit
reward margin  β[(πc − rc) − (πr − rr)]. Audits a data set, or uses a DPO model as a reward
model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dpokit.data.collate import TokenizedPair, collate_pairs, resolve_pad_id
from dpokit.logprobs import batch_logps


@dataclass
class ScoreSettings:
    beta: float = 0.1
    max_length: int = 512
    max_prompt_length: int = 256
    batch_size: int = 8
    on_malformed: str = "raise"
    progress: bool = True


@torch.no_grad()
def pair_logps(model, items: list[TokenizedPair], pad_id: int, batch_size: int, progress: bool = False, desc: str = "scoring"):
    """(chosen_logps, rejected_logps, chosen_counts, rejected_counts) for all items, in order."""
    model.eval()
    parts = []
    for start in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress):
        out = batch_logps(model, collate_pairs(items[start : start + batch_size], pad_id))
        parts.append(out.split_pairs())
    return tuple(torch.cat([p[k] for p in parts]) for k in range(4))


def score_rows(policy_out, ref_out, beta: float, sources: list[str]) -> list[dict]:
    pc, pr, nc, nr = policy_out
    rc, rr, _, _ = ref_out
    margins = beta * ((pc - rc) - (pr - rr))
    rows = []
    for i, source in enumerate(sources):
        rows.append(
            {
                "source": source,
                "policy_chosen_logp": float(pc[i]),
                "policy_rejected_logp": float(pr[i]),
                "ref_chosen_logp": float(rc[i]),
                "ref_rejected_logp": float(rr[i]),
                "chosen_tokens": int(nc[i]),
                "rejected_tokens": int(nr[i]),
                "margin": float(margins[i]),
                "correct": bool(margins[i] > 0),
            }
        )
    return rows


def summarize(rows: list[dict], beta: float, skips: dict) -> dict:
    n = len(rows)
    return {
        "pairs": n,
        "beta": beta,
        "accuracy": sum(r["correct"] for r in rows) / n if n else float("nan"),
        "mean_margin": sum(r["margin"] for r in rows) / n if n else float("nan"),
        "skipped": skips,
    }


def score_file(model_name: str, ref_name: str, data: str, out: str, settings: ScoreSettings, log=print) -> dict:
    """Write one JSON object per scored pair (input order) to `out` and a summary to
    `<out stem>.summary.json`; return the summary."""
    from dpokit.data.normalize import load_pairs
    from dpokit.data.tokenize import TokenizeSettings, tokenize_pairs
    from dpokit.models import load_model

    policy, tokenizer = load_model(model_name)
    pairs, load_report = load_pairs(data, on_malformed=settings.on_malformed)
    tok_settings = TokenizeSettings(max_length=settings.max_length, max_prompt_length=settings.max_prompt_length)
    items, tok_report = tokenize_pairs(pairs, tokenizer, tok_settings)
    pad_id = resolve_pad_id(tokenizer)
    policy_out = pair_logps(policy, items, pad_id, settings.batch_size, settings.progress, "policy")
    del policy
    reference, _ = load_model(ref_name)
    ref_out = pair_logps(reference, items, pad_id, settings.batch_size, settings.progress, "reference")
    rows = score_rows(policy_out, ref_out, settings.beta, [pairs[p.index].source for p in items])
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize(rows, settings.beta, {"loading": load_report.to_dict(), "tokenizing": tok_report.to_dict()})
    summary_path = out_path.with_name(out_path.stem + ".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2))
    log(f"scored {summary['pairs']} pairs: accuracy {summary['accuracy']:.3f}, mean margin {summary['mean_margin']:.4f} (β={settings.beta})")
    log(f"wrote {out_path} and {summary_path}")
    return summary
