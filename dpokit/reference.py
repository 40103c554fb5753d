"""Reference-model log-probs behind one interface.

Every backend answers `pair_logps(items, pad_id) -> (ref_chosen_logps, ref_rejected_logps)`,
each (B,) float32, summed over completion tokens, without grad, for tokenized pairs (what the
trainer calls), and `logps(batch)` for a collated padded batch. Model backends compute the
first through the packed path (dpokit.packing, prefix shared, as the policy does by default)
and the second through `dpokit.logprobs.batch_logps`; both end in the same chunked head and
are tested to agree to float round-off:

    FrozenCopyReference        a frozen deep copy (or a separately loaded model)
    AdapterDisabledReference   the LoRA policy itself with its adapter switched off (no copy)
    CachedReference            values computed once by `precompute_reference`, kept on disk at
                               <cache_dir>/reference/<key>.safetensors and reused by later runs
                               and epochs; the key (`reference_cache_key`) hashes the model
                               fingerprint, the data fingerprint and the tokenization settings,
                               so changing any of them computes afresh instead of reusing.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import tempfile
from abc import ABC, abstractmethod
from contextlib import nullcontext
from pathlib import Path

import torch

from dpokit import accel
from dpokit.data.collate import TokenizedPair, collate_pairs
from dpokit.logprobs import DEFAULT_CHUNK, batch_logps
from dpokit.models import new_hasher, is_peft_model

log = logging.getLogger(__name__)

# Bump when the way reference log-probs are computed changes: old cache files then miss.
CACHE_FORMAT = 1
_KEY = re.compile(r"^[A-Za-z0-9._-]+$")


class ReferenceBackend(ABC):
    """Reference log-probs for a [chosen; rejected] batch."""

    @abstractmethod
    def logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(ref_chosen_logps, ref_rejected_logps), each (B,), summed, no grad."""

    def pair_logps(self, items: list[TokenizedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same for tokenized pairs, in their order (what the trainer calls)."""
        return self.logps(collate_pairs(items, pad_id))


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _on(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}




class _ModelReference(ReferenceBackend):
    """A reference computed by a model, with dropout off and no grad, every module's
    train/eval flag restored afterwards (a blanket `train(was_training)` would clobber
    modules the caller froze).

    `pack_tokens`: pairs given as tokens (`pair_logps`) are packed with prefix sharing
    (dpokit.packing, rows of at most this many tokens; None = padded [chosen; rejected]
    batches). `autocast_bf16`: compute under bf16 autocast, as a policy trained with it does,
    so that policy and reference agree at step 0 (h = 0, DPO loss ln 2)."""

    def __init__(self, model, *, chunk_size: int = DEFAULT_CHUNK, pack_tokens: int | None = 1024, autocast_bf16: bool = False):
        self.model, self.chunk_size, self.pack_tokens, self.autocast_bf16 = model, chunk_size, pack_tokens, autocast_bf16

    def _context(self):
        return nullcontext()

    def _run(self, compute):
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad(), self._context(), accel.autocast(self.autocast_bf16, _model_device(self.model)):
                return compute()
        finally:
            for module, mode in modes:
                module.training = mode

    def logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        def compute():
            out = batch_logps(self.model, _on(batch, _model_device(self.model)), chunk_size=self.chunk_size)
            return out.split_pairs()[:2]

        return self._run(compute)

    def pair_logps(self, items: list[TokenizedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pack_tokens is None:
            return super().pair_logps(items, pad_id)
        from dpokit.packing import pairs_logps

        def compute():
            return pairs_logps(self.model, items, pad_id, self.pack_tokens, self.chunk_size)[:2]

        return self._run(compute)


class FrozenCopyReference(_ModelReference):
    """A frozen model: by default a deep copy of `model` (later updates to `model` do not
    reach it); pass `copy_model=False` for a separately loaded model that is yours to freeze."""

    def __init__(self, model, *, copy_model: bool = True, **options):
        super().__init__(copy.deepcopy(model) if copy_model else model, **options)
        self.model.eval()
        self.model.requires_grad_(False)


class AdapterDisabledReference(_ModelReference):
    """The peft (LoRA) policy with its adapter switched off: the base model, no second copy."""

    def __init__(self, peft_model, **options):
        if not is_peft_model(peft_model):
            raise TypeError(
                "AdapterDisabledReference needs a peft model (load with lora.r > 0); "
                "use FrozenCopyReference for a full model"
            )
        super().__init__(peft_model, **options)

    def _context(self):
        return self.model.disable_adapter()


class CachedReference(ReferenceBackend):
    """Precomputed reference log-probs looked up by `batch["pair_index"]`.

    `reused` says whether they were read from `path` (True) or computed this run (False)."""

    def __init__(
        self,
        pair_index: torch.Tensor,
        chosen: torch.Tensor,
        rejected: torch.Tensor,
        *,
        path: Path | None = None,
        reused: bool = False,
    ):
        self.pair_index = pair_index.long().cpu()
        self.chosen = chosen.float().cpu()
        self.rejected = rejected.float().cpu()
        self.path = path
        self.reused = reused
        self._row = {int(i): r for r, i in enumerate(self.pair_index.tolist())}

    def __len__(self) -> int:
        return len(self._row)

    def covers(self, indices) -> bool:
        """True if every pair index in `indices` has cached values."""
        return all(int(i) in self._row for i in indices)

    def logps(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        wanted = batch["pair_index"].tolist()
        missing = [i for i in wanted if i not in self._row]
        if missing:
            raise KeyError(
                f"reference cache {self.path or '(in memory)'} has no log-probs for pair "
                f"index(es) {missing[:10]}{' ...' if len(missing) > 10 else ''}: it was computed "
                "for other data; precompute it for this data set"
            )
        rows = torch.tensor([self._row[i] for i in wanted], dtype=torch.long)
        device = batch["input_ids"].device if "input_ids" in batch else accel.current().device
        return self.chosen[rows].to(device), self.rejected[rows].to(device)

    def pair_logps(self, items: list[TokenizedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Only the indices are needed: no padded batch is built.
        return self.logps({"pair_index": torch.tensor([p.index for p in items], dtype=torch.long)})

    # -- persistence ---------------------------------------------------------------------------

    def save(self, path: Path, key: str) -> None:
        """Write atomically: a temp file in the same directory, then rename over `path`."""
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"pair_index": self.pair_index, "chosen": self.chosen, "rejected": self.rejected}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata={"key": key, "format": str(CACHE_FORMAT)})
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self.path = path

    @classmethod
    def load(cls, path: Path) -> "CachedReference":
        """Read a cache file written by `save`."""
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["pair_index"], t["chosen"], t["rejected"], path=path, reused=True)


def reference_cache_path(cache_dir: str | os.PathLike, key: str) -> Path:
    """`<cache_dir>/reference/<key>.safetensors`; the key must be a plain file name."""
    if not _KEY.match(key):
        raise ValueError(f"reference cache key {key!r} must match {_KEY.pattern}")
    return Path(cache_dir) / "reference" / f"{key}.safetensors"


def data_fingerprint(tokenized_pairs: list[TokenizedPair]) -> str:
    """Hex hash of every pair's index and token ids (prompt, chosen, rejected; for RRHF's
    ranked records the prompt and every response, and the scores).

    Independent of list order (the cache is keyed by pair index, so a shuffled list is the
    same data); duplicate indices are an error since the cache could not tell them apart."""
    hasher = new_hasher()
    seen: set[int] = set()
    for pair in sorted(tokenized_pairs, key=lambda p: p.index):
        if pair.index in seen:
            raise ValueError(f"duplicate pair index {pair.index} in tokenized pairs")
        seen.add(pair.index)
        # Lengths first so that moving a token between fields changes the hash.
        if hasattr(pair, "response_ids"):
            parts = (pair.prompt_ids, *pair.response_ids)
            hasher.update(repr(pair.scores).encode())
        else:
            parts = (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids)
        header = [pair.index, *(len(p) for p in parts)]
        ids = torch.tensor(header + [t for p in parts for t in p], dtype=torch.int64)
        hasher.update(ids.numpy().tobytes())
    return hasher.hexdigest()


def reference_cache_key(
    model_fp: str, data_fp: str, tokenize_settings: dict, extra: dict | None = None
) -> str:
    """A file-name-safe key from everything the cached values depend on.

    `tokenize_settings`: e.g. max_length, max_prompt_length, truncation mode, chat template.
    `extra`: anything else that changes the numbers (compute dtype, autocast, logprob mode)."""
    payload = {
        "format": CACHE_FORMAT,
        "model": model_fp,
        "data": data_fp,
        "tokenize": tokenize_settings,
        "extra": extra or {},
    }
    hasher = new_hasher()
    hasher.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return hasher.hexdigest()


class _LiveReference(_ModelReference):
    """A model used as is (no copy, no freezing): for one-off precomputation only."""


def _backend_for(model, **options) -> ReferenceBackend:
    """How to compute reference values with `model` without copying or freezing it."""
    if isinstance(model, ReferenceBackend):
        return model
    if is_peft_model(model):
        return AdapterDisabledReference(model, **options)
    return _LiveReference(model, **options)


def _compute(backend: ReferenceBackend, pairs: list[TokenizedPair], pad_id: int, batch_size: int, progress: bool):
    """(pair_index, chosen, rejected) for all pairs, in batches of `batch_size`."""
    from tqdm.auto import tqdm

    # Longest first, in batches of similar length: less padding, and an out-of-memory error
    # (if any) shows up in the first batch rather than at the end.
    order = sorted(pairs, key=lambda p: -(len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids))))
    index, chosen, rejected = [], [], []
    with tqdm(total=len(order), desc="reference log-probs", unit="pair", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            items = order[start : start + batch_size]
            c, r = backend.pair_logps(items, pad_id)
            index.append(torch.tensor([p.index for p in items], dtype=torch.long))
            chosen.append(c.float().cpu())
            rejected.append(r.float().cpu())
            bar.update(len(items))
    if not index:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0)
    return torch.cat(index), torch.cat(chosen), torch.cat(rejected)


def precompute_reference(
    model,
    tokenized_pairs: list[TokenizedPair],
    pad_id: int,
    *,
    cache_dir: str | os.PathLike,
    key: str,
    batch_size: int = 8,
    progress: bool = True,
    **options,
) -> CachedReference:
    """Reference log-probs for every pair, computed once and persisted under `key`.

    If `<cache_dir>/reference/<key>.safetensors` exists and covers all pairs it is loaded
    (`.reused` is True); otherwise the values are computed and written atomically. `model` is
    a plain model (used in eval mode, no grad, modes restored), a peft model (its adapter is
    disabled: the reference is the base model, as `model_fingerprint` assumes) or any
    ReferenceBackend. `options` (chunk_size, pack_tokens, autocast_bf16) go to the model
    backend (`_ModelReference`); put whatever changes the numbers in `key`. Logs at INFO
    whether the cache was reused or computed."""
    path = reference_cache_path(cache_dir, key)
    wanted = {p.index for p in tokenized_pairs}
    if len(wanted) != len(tokenized_pairs):
        raise ValueError("tokenized pairs have duplicate indices; the cache is keyed by index")
    if path.exists():
        try:
            cached = CachedReference.load(path)
        except Exception as err:  # a corrupt file is recomputed, never trusted
            log.warning("reference cache %s unreadable (%s); recomputing", path, err)
        else:
            if cached.covers(wanted):
                log.info("reference cache reused: %s (%d pairs)", path, len(cached))
                return cached
            log.warning("reference cache %s lacks some pairs; recomputing", path)
    placement = accel.current()
    backend = _backend_for(model, **options)
    if placement.world_size > 1:
        cached = _compute_sharded(backend, tokenized_pairs, pad_id, batch_size, progress, path, key, placement)
    else:
        cached = CachedReference(*_compute(backend, tokenized_pairs, pad_id, batch_size, progress), reused=False)
        cached.save(path, key)
    log.info("reference cache computed: %s (%d pairs)", path, len(cached))
    return cached


def _compute_sharded(backend, pairs, pad_id, batch_size, progress, path: Path, key: str, placement) -> CachedReference:
    """Data-parallel precomputation: each rank computes its share of the pairs and writes it
    next to `path`; rank 0 merges the shares into `path` and deletes them; every rank then
    reads the merged file. No rank computes a pair twice; the files are safetensors."""
    part = path.with_name(f"{path.stem}.part{placement.rank}of{placement.world_size}.safetensors")
    mine = accel.shard(pairs, placement)
    CachedReference(*_compute(backend, mine, pad_id, batch_size, progress and placement.is_main), reused=False).save(part, key)
    accel.barrier(placement)
    if placement.is_main:
        parts = [path.with_name(f"{path.stem}.part{r}of{placement.world_size}.safetensors") for r in range(placement.world_size)]
        shares = [CachedReference.load(p) for p in parts]
        merged = CachedReference(*(torch.cat([getattr(c, name) for c in shares]) for name in ("pair_index", "chosen", "rejected")))
        merged.save(path, key)
        for p in parts:
            p.unlink()
    accel.barrier(placement)
    cached = CachedReference.load(path)
    cached.reused = False
    return cached
