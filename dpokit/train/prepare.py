"""Everything a run needs before its first step: data (read, validated, split, tokenized)
and the reference backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dpokit.data.collate import TokenizedPair


@dataclass
class PreparedData:
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    train_votes: dict[int, tuple[int, int]] = field(default_factory=dict)
    eval_votes: dict[int, tuple[int, int]] = field(default_factory=dict)
    report: dict = field(default_factory=dict)  # counts of skips / truncations per stage
    # objective=kto: desirable (True) / undesirable (False) per pair index (dpokit.data.unpaired)
    train_labels: dict[int, bool] = field(default_factory=dict)
    eval_labels: dict[int, bool] = field(default_factory=dict)


def tokenize_settings(cfg):
    from dpokit.data.tokenize import TokenizeSettings

    return TokenizeSettings(
        max_length=cfg.max_length, max_prompt_length=cfg.max_prompt_length, prompt_overflow=cfg.prompt_overflow
    )


def _votes(pairs) -> dict[int, tuple[int, int]]:
    return {i: tuple(p.votes) for i, p in enumerate(pairs) if getattr(p, "votes", None)}


def _load(cfg, path, **kwargs):
    """Records of `path`: preference pairs, or for objective=kto labelled completions."""
    if cfg.objective == "kto":
        from dpokit.data.unpaired import load_labelled

        return load_labelled(path, on_malformed=cfg.on_malformed, **kwargs)
    if cfg.objective == "rrhf":
        from dpokit.data.ranked import load_ranked

        return load_ranked(path, on_malformed=cfg.on_malformed, **kwargs)
    from dpokit.data.normalize import load_pairs

    return load_pairs(path, on_malformed=cfg.on_malformed, **kwargs)


def _as_pairs(cfg, records) -> tuple[list, dict[int, bool]]:
    """(pairs, labels by pair index): KTO's labelled completions become pairs with their
    mismatched partners (dpokit.data.unpaired.as_pairs); pairs stay as they are."""
    if cfg.objective != "kto" or not records:
        return records, {}
    from dpokit.data.records import DataError
    from dpokit.data.unpaired import as_pairs

    if len(records) < 2:
        raise DataError(records[0].source, "objective=kto needs at least 2 records on each side of the train/eval split "
                        "(each is paired with another record's completion to estimate KTO's reference point)")
    pairs, desirable = as_pairs(records, cfg.seed)
    return pairs, dict(enumerate(desirable))


def _split(cfg, pairs, log_reports):
    """(train pairs, eval pairs): `eval_data` when given (its load report joins
    `log_reports`), else a held-out fraction of `pairs`, else no eval."""
    from dpokit.data.normalize import split_pairs
    from dpokit.data.records import require_pairs

    if cfg.eval_data:
        eval_pairs, eval_load_report = _load(cfg, cfg.eval_data)
        require_pairs(len(eval_pairs), Path(cfg.eval_data).name, eval_load_report)
        log_reports.merge(eval_load_report)
        return pairs, eval_pairs
    if cfg.eval_fraction > 0:
        return split_pairs(pairs, cfg.eval_fraction, cfg.seed)
    return pairs, []


def prepare_data(cfg, tokenizer, log=print) -> PreparedData:
    """Read `cfg.data` (and `cfg.eval_data`), validate, split, tokenize; print and return
    the skip counts (nothing is dropped silently; the totals are printed even when zero).
    A data set with no usable pair left is a DataError naming the file and the counts."""
    from dpokit.data.records import SkipReport, require_pairs
    from dpokit.data.tokenize import tokenize_pairs

    name = Path(cfg.data).name
    pairs, load_report = _load(cfg, cfg.data, split=cfg.split)
    require_pairs(len(pairs), name, load_report)
    train_records, eval_records = _split(cfg, pairs, load_report)
    (train_pairs, train_labels), (eval_pairs, eval_labels) = _as_pairs(cfg, train_records), _as_pairs(cfg, eval_records)
    settings = tokenize_settings(cfg)
    tokenize = tokenize_pairs
    if cfg.objective == "rrhf":  # K responses per record
        from dpokit.data.ranked import tokenize_ranked as tokenize
    train, train_report = tokenize(train_pairs, tokenizer, settings)
    evals, eval_report = tokenize(eval_pairs, tokenizer, settings)
    everything = SkipReport().merge(load_report).merge(train_report).merge(eval_report)
    require_pairs(len(train), name, everything)
    report = {
        "records_read": len(pairs) + load_report.total,
        "loading": load_report.to_dict(),
        "tokenizing_train": train_report.to_dict(),
        "tokenizing_eval": eval_report.to_dict(),
        "train_pairs": len(train),
        "eval_pairs": len(evals),
    }
    log(f"data: {len(train)} train / {len(evals)} eval pairs from {cfg.data}; {everything.counts_line()}")
    for title, rep in (("loading", load_report), ("tokenizing train", train_report), ("tokenizing eval", eval_report)):
        if rep.total or rep.truncations:
            log(f"data ({title}): {rep.format()}")
    return PreparedData(train, evals, _votes(train_pairs), _votes(eval_pairs), report, train_labels, eval_labels)


def build_reference(cfg, model, data: PreparedData, pad_id: int, log=print):
    """(train reference, eval reference) for pairwise objectives.

    `cached`: log-probs of the reference computed once and kept on disk, keyed by reference
    weights + data + tokenization; when the reference is the starting model they are taken
    from the policy before its first update, so no second copy of the model ever exists.
    `copy`: a frozen copy. `adapter`: the same LoRA model with its adapter switched off.
    A reference-free loss (SimPO, ORPO) gets (None, None): nothing is loaded, computed or
    cached, which is what such a loss saves."""
    from dpokit.losses import get_loss

    if get_loss(cfg.loss).reference_free:
        ignored = f"; ref_model={cfg.ref_model} is not used" if cfg.ref_model else ""
        log(f"loss={cfg.loss} is reference-free: no reference log-probs{ignored}")
        return None, None
    from dpokit import reference as ref

    # The reference computes as the policy does (packing, head chunks, autocast), so that at
    # step 0 both give the same numbers and the DPO loss starts at ln 2.
    options = {
        "chunk_size": cfg.chunk_size,
        "pack_tokens": cfg.pack_tokens if cfg.packing else None,
        "autocast_bf16": cfg.autocast_bf16,
    }
    if cfg.reference == "adapter":
        backend = ref.AdapterDisabledReference(model, **options)
        return backend, backend
    ref_model = model
    if cfg.ref_model:
        from dpokit.models import load_model

        ref_model, _ = load_model(cfg.ref_model, dtype=cfg.dtype)
    if cfg.reference == "copy":
        backend = ref.FrozenCopyReference(ref_model, **options)
        return backend, backend
    from dpokit.models import default_cache_dir, model_fingerprint

    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    model_fp = model_fingerprint(ref_model)
    settings = tokenize_settings(cfg).to_dict()
    out = []
    for split, items in (("train", data.train), ("eval", data.eval)):
        if not items:
            out.append(None)
            continue
        extra = {"dtype": cfg.dtype, **({"autocast_bf16": True} if cfg.autocast_bf16 else {})}
        key = ref.reference_cache_key(model_fp, ref.data_fingerprint(items), settings, extra)
        backend = ref.precompute_reference(
            ref_model, items, pad_id, cache_dir=cache_dir, key=key, progress=cfg.progress, **options
        )
        log(f"reference log-probs ({split}): {'reused from cache' if backend.reused else 'computed and cached'} {backend.path}")
        out.append(backend)
    return out[0], out[1]
