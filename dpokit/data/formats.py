"""Readers: each yields `(source, raw_record)` pairs and knows nothing about preference
fields (that is `normalize`'s job). Sources are described in `records`.

    read_records(path, split=None)     by extension / directory:
      *.jsonl                          JSON Lines (blank lines ignored)
      *.json                           a JSON array of objects, or JSON Lines (what
                                       `datasets.Dataset.to_json` writes under .json)
      *.parquet                        Parquet, via pyarrow, in record batches
      directory                        a `datasets` save_to_disk directory (Dataset or
                                       DatasetDict; split `train` unless `split=` says)

A record a reader cannot parse (invalid JSON on one line) raises `DataError`, unless the
caller passes `on_invalid`, which then receives the error and the line is skipped: this
lets `load_pairs(on_malformed="skip")` count it and carry on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from dpokit.data.records import DataError

OnInvalid = Callable[[DataError], None] | None

SUPPORTED = ".jsonl, .json, .parquet, or a directory saved with datasets' save_to_disk"


def _loads(text: str, source: str, on_invalid: OnInvalid):
    """Parse one JSON document; returns None (after reporting) when it is invalid."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        err = DataError(source, "invalid JSON", detail=f"{exc.msg} at column {exc.colno}")
        if on_invalid is None:
            raise err from None
        on_invalid(err)
        return None


def read_jsonl(path: str | Path, *, on_invalid: OnInvalid = None) -> Iterator[tuple[str, object]]:
    """JSON Lines: one record per non-blank line; sources `name:LINE` with lines from 1."""
    path = Path(path)
    # utf-8-sig: tolerate a byte-order mark written by some editors.
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            source = f"{path.name}:{lineno}"
            raw = _loads(line.rstrip(), source, on_invalid)
            if raw is not None:
                yield source, raw


def read_json(path: str | Path, *, on_invalid: OnInvalid = None) -> Iterator[tuple[str, object]]:
    """A .json file: a JSON array (sources `name:item I`, 0-based), or JSON Lines."""
    path = Path(path)
    with path.open(encoding="utf-8-sig") as f:
        head = f.read(4096).lstrip()
    if not head.startswith("["):
        yield from read_jsonl(path, on_invalid=on_invalid)
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        # A broken array cannot be read past the error, so this always raises.
        raise DataError(f"{path.name}:{exc.lineno}", "invalid JSON", detail=f"{exc.msg} at column {exc.colno}") from None
    for i, raw in enumerate(data):
        yield f"{path.name}:item {i}", raw


def read_parquet(path: str | Path, *, batch_size: int = 1024) -> Iterator[tuple[str, object]]:
    """Parquet rows as dicts; sources `name:row R` (0-based). Missing values come back as
    None (a column exists for every row), which `normalize` treats as an absent field."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise DataError(path.name, f"cannot read as Parquet: {exc}") from None
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size):
        for raw in batch.to_pylist():
            yield f"{path.name}:row {row}", raw
            row += 1


def _pick_split(dsd, split: str | None, name: str):
    """The requested split of a DatasetDict: `train` by default, or the only split there is."""
    splits = list(dsd.keys())
    if split is None:
        if "train" in dsd:
            return "train", dsd["train"]
        if len(splits) == 1:
            return splits[0], dsd[splits[0]]
        raise DataError(name, f"no 'train' split; pass split= one of {splits}")
    if split not in dsd:
        raise DataError(name, f"no split '{split}'; available splits: {splits}")
    return split, dsd[split]


def read_datasets_dir(path: str | Path, *, split: str | None = None) -> Iterator[tuple[str, object]]:
    """A directory written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`; sources
    `name[SPLIT]:row R` (0-based)."""
    from datasets import DatasetDict, load_from_disk

    path = Path(path)
    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as exc:
        raise DataError(path.name, f"not a datasets directory ({exc})") from None
    if isinstance(ds, DatasetDict):
        split, ds = _pick_split(ds, split, path.name)
    elif split is not None and split != ds.split:
        raise DataError(path.name, f"holds a single Dataset, not a DatasetDict; split '{split}' does not apply")
    label = f"{path.name}[{split or ds.split or 'data'}]"
    for i, raw in enumerate(ds):
        yield f"{label}:row {i}", raw


def read_records(path: str | Path, split: str | None = None, *, on_invalid: OnInvalid = None) -> Iterator[tuple[str, object]]:
    """Records of any supported file, chosen by extension (or directory)."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "no such file or directory")
    if split is not None and not path.is_dir():
        raise DataError(path.name, f"split '{split}' given, but only datasets directories have splits")
    if path.is_dir():
        return read_datasets_dir(path, split=split)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path, on_invalid=on_invalid)
    if suffix == ".json":
        return read_json(path, on_invalid=on_invalid)
    if suffix == ".parquet":
        return read_parquet(path)
    raise DataError(path.name, f"unsupported file type '{suffix or path.name}'; expected {SUPPORTED}")
