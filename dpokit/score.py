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
from dpokit.data.records import SkipReport, require_pairs
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


def summary_path(out: str | Path) -> Path:
    """Where the summary of scores written to `out` goes: `<out>.summary.json`."""
    out = Path(out)
    return out.with_name(out.name + ".summary.json")


def _tokenized(pairs, load_report, tokenizer, settings: ScoreSettings, name: str, log):
    """(items, tokenize report) of the loaded pairs; the skip and truncation counts are
    printed, zeros too; DataError when no pair is left."""
    from dpokit.data.tokenize import TokenizeSettings, tokenize_pairs

    tok_settings = TokenizeSettings(max_length=settings.max_length, max_prompt_length=settings.max_prompt_length)
    items, tok_report = tokenize_pairs(pairs, tokenizer, tok_settings)
    both = SkipReport().merge(load_report).merge(tok_report)
    require_pairs(len(items), name, both)
    log(f"data: {both.counts_line()}")
    if both.total or both.truncations:
        log(both.format())
    return items, tok_report


def score_file(model_name: str, ref_name: str, data: str, out: str, settings: ScoreSettings, log=print) -> dict:
    """Write one JSON object per scored pair (input order) to `out` and a summary to
    `<out>.summary.json`; return the summary. Skipped and truncated records are printed and
    counted in the summary; a data set with no usable pair is a DataError (raised before
    any model is loaded when the loader already drops every record)."""
    from dpokit.data.normalize import load_pairs
    from dpokit.models import load_model

    pairs, load_report = load_pairs(data, on_malformed=settings.on_malformed)
    require_pairs(len(pairs), Path(data).name, load_report)
    policy, tokenizer = load_model(model_name)
    items, tok_report = _tokenized(pairs, load_report, tokenizer, settings, Path(data).name, log)
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
    summary_file = summary_path(out_path)
    summary_file.write_text(json.dumps(summary, indent=2))
    skipped = load_report.total + tok_report.total
    log(
        f"scored {summary['pairs']} pairs ({skipped} skipped): accuracy {summary['accuracy']:.3f}, "
        f"mean margin {summary['mean_margin']:.4f} (β={settings.beta})"
    )
    log(f"wrote {out_path} and {summary_file}")
    return summary
