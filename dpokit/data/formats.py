"""Readers: each yields `(source, raw_record)` pairs and knows nothing about preference
fields (that is `normalize`'s job). Sources are described in `records`.

    read_records(path, split=None)     by extension / directory:
      *.jsonl                          JSON Lines (blank lines ignored)
      *.json                           a JSON array of objects, or JSON Lines (what
                                       `datasets.Dataset.to_json` writes under .json)
      *.parquet                        Parquet, via pyarrow, in record batches
      directory                        a `datasets` save_to_disk directory (Dataset or
                                       DatasetDict; split `train` unless `split=` says)

A record a reader cannot parse raises `DataError`, unless the caller passes `on_invalid`,
which then receives the error and the record is skipped: this lets
`load_pairs(on_malformed="skip")` count it and carry on. Per line (JSON Lines): invalid
JSON, a line that is not UTF-8 (`pairs.jsonl:3: not valid UTF-8 (byte 0xff at offset 17 of
the line)`), a NUL byte, nesting too deep for the parser, an integer past Python's
4300-digit limit, a key given twice in one object. Whole file (always raised): unreadable
(permissions, a socket, ...), UTF-16/32 (a byte-order mark says so), a JSON array that does
not parse, a file that is not Parquet or breaks while being read.

Files are read as bytes and decoded line by line, so an error names its line; a UTF-8
byte-order mark is dropped, and `\n`, `\r\n` and a lone `\r` all end a line (as in
Python's text mode). A JSON document that parses to null is a record like any other (and
`normalize` rejects it): nothing is dropped without being counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

from dpokit.data.records import DataError

OnInvalid = Callable[[DataError], None] | None

SUPPORTED = ".jsonl, .json, .parquet, or a directory saved with datasets' save_to_disk"
UTF8_BOM = b"\xef\xbb\xbf"
# UTF-32 LE first: its mark starts with UTF-16 LE's.
OTHER_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


class _BadJSON(ValueError):
    """Raised from inside the JSON parser (object hook) for valid syntax we refuse."""

    def __init__(self, reason: str, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(reason)


def _unique_keys(items: list[tuple[str, object]]) -> dict:
    """object_pairs_hook: a key given twice would silently keep only its last value."""
    out = {}
    for key, value in items:
        if key in out:
            raise _BadJSON("duplicate key in an object", repr(key))
        out[key] = value
    return out


def _report(err: DataError, on_invalid: OnInvalid) -> None:
    if on_invalid is None:
        raise err
    on_invalid(err)


def _cannot_read(path: Path, exc: OSError) -> DataError:
    return DataError(path.name, "cannot read the file", detail=exc.strerror or str(exc))


def _parse(text: str, name: str, line: int | None = None) -> tuple[object, DataError | None]:
    """(value, None), or (None, the DataError saying why `text` is not a record). `line`:
    the JSON Lines line `text` is; None for a whole file (syntax errors then name their line)."""
    where = name if line is None else f"{name}:{line}"
    try:
        return json.loads(text, object_pairs_hook=_unique_keys), None
    except json.JSONDecodeError as exc:
        where = f"{name}:{exc.lineno if line is None else line}"
        return None, DataError(where, "invalid JSON", detail=f"{exc.msg} at column {exc.colno}")
    except _BadJSON as exc:
        return None, DataError(where, exc.reason, detail=exc.detail)
    except RecursionError:
        return None, DataError(where, "invalid JSON", detail="nested too deeply to parse")
    except ValueError as exc:  # an integer past the int/str conversion limit
        return None, DataError(where, "invalid JSON", detail=str(exc).split(":")[0])


def _decode(data: bytes, name: str, first_line: int = 1) -> str:
    """UTF-8 text of `data` (lines from `first_line`); DataError naming line and offset."""
    nul = data.find(b"\x00")
    if nul >= 0:
        line = first_line + data.count(b"\n", 0, nul)
        raise DataError(f"{name}:{line}", "holds a NUL byte: a binary file, or UTF-16 without a byte-order mark?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + data.count(b"\n", 0, exc.start)
        offset = exc.start - (data.rfind(b"\n", 0, exc.start) + 1)
        detail = f"byte 0x{data[exc.start]:02x} at offset {offset} of the line"
        raise DataError(f"{name}:{line}", "not valid UTF-8", detail=detail) from None


def _without_bom(head: bytes, name: str) -> bytes:
    """`head` (the file's first bytes) without a UTF-8 byte-order mark; DataError for a
    UTF-16/32 mark (the file is not UTF-8 at all)."""
    if head.startswith(UTF8_BOM):
        return head[len(UTF8_BOM) :]
    for mark, encoding in OTHER_BOMS:
        if head.startswith(mark):
            raise DataError(name, f"the file is {encoding} (byte-order mark); save it as UTF-8")
    return head


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, bytes without the line end) of every line of `path`."""
    lineno = 0
    try:
        with path.open("rb") as f:
            for i, chunk in enumerate(f):  # chunks end at b"\n"
                if i == 0:
                    chunk = _without_bom(chunk, path.name)
                for line in chunk.splitlines():  # also splits at a lone b"\r"
                    lineno += 1
                    yield lineno, line
    except OSError as exc:
        raise _cannot_read(path, exc) from None


def read_jsonl(path: str | Path, *, on_invalid: OnInvalid = None) -> Iterator[tuple[str, object]]:
    """JSON Lines: one record per non-blank line; sources `name:LINE` with lines from 1."""
    path = Path(path)
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            raw, err = _parse(_decode(line.rstrip(), path.name, lineno), path.name, lineno)
        except DataError as bad_bytes:
            raw, err = None, bad_bytes
        if err is None:
            yield f"{path.name}:{lineno}", raw
        else:
            _report(err, on_invalid)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise _cannot_read(path, exc) from None


def read_json(path: str | Path, *, on_invalid: OnInvalid = None) -> Iterator[tuple[str, object]]:
    """A .json file: a JSON array (sources `name:item I`, 0-based), or JSON Lines."""
    path = Path(path)
    data = _without_bom(_read_bytes(path), path.name)
    if not data.lstrip().startswith(b"["):
        yield from read_jsonl(path, on_invalid=on_invalid)
        return
    items, err = _parse(_decode(data, path.name), path.name)
    if err is not None:  # a broken array cannot be read past the error: always raised
        raise err
    for i, raw in enumerate(items):
        yield f"{path.name}:item {i}", raw


def read_parquet(path: str | Path, *, batch_size: int = 1024) -> Iterator[tuple[str, object]]:
    """Parquet rows as dicts; sources `name:row R` (0-based). Missing values come back as
    None (a column exists for every row), which `normalize` treats as an absent field."""
    import pyarrow.parquet as pq

    path = Path(path)
    row = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            for raw in batch.to_pylist():
                yield f"{path.name}:row {row}", raw
                row += 1
    except Exception as exc:  # pyarrow raises several types for a non-Parquet or broken file
        where = f" (read {row} rows)" if row else ""
        raise DataError(path.name, f"cannot read as Parquet{where}: {exc}") from None


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
    except Exception as exc:  # a damaged one: json, pyarrow and OS errors of several types
        raise DataError(path.name, f"cannot read as a datasets directory: {exc}") from None
    if isinstance(ds, DatasetDict):
        split, ds = _pick_split(ds, split, path.name)
    elif split is not None and split != ds.split:
        raise DataError(path.name, f"holds a single Dataset, not a DatasetDict; split '{split}' does not apply")
    label = f"{path.name}[{split or ds.split or 'data'}]"
    row = 0
    try:
        for raw in ds:
            yield f"{label}:row {row}", raw
            row += 1
    except Exception as exc:  # arrow data that breaks while rows are read
        raise DataError(f"{label}:row {row}", f"cannot read the row: {exc}") from None


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
