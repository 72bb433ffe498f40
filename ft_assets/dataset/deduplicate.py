"""Deduplicate stage: the 64-bit keys that identify rows, and which rows repeat an earlier one.

The duplicate key of a row hashes its canonical JSON lower-cased, with whitespace, its JSON
escapes and markdown marks dropped, so examples differing only in those share a key. The first
occurrence of a key is kept; a later one is an exact duplicate when its cleaned content (its id
aside) equals the first's, else a normalized duplicate.
"""

from __future__ import annotations

import re

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from ft_assets.dataset.columnar import string_buffers
from ft_assets.dataset.text import NORMALIZED_AWAY

_BACKSLASH = ord("\\")
# Letters that make a backslash and themselves a whitespace escape, dropped from the key (the key is
# lower-cased, so upper-case ones count too).
_WHITESPACE_ESCAPES = np.zeros(256, dtype=bool)
_WHITESPACE_ESCAPES[list(b"ntrNTR")] = True
_LOWER_ASCII = bytes.maketrans(bytes(range(ord("A"), ord("Z") + 1)), bytes(range(ord("a"), ord("z") + 1)))
_DROPPED = bytes(sorted(set(NORMALIZED_AWAY) - {ord("\n")}))
# An answer's key also drops ASCII punctuation: "It left on Monday." and "it left on monday" are one answer.
ANSWER_DROPPED = bytes(sorted(set(_DROPPED) | set(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")))
HASH_SLICE_BYTES = 1 << 17  # the keys of this many bytes of rows are computed at once
_AUTO_ID = re.compile(r"[0-9a-f]{16}")
_HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def line_hashes(lines: pa.Array, dropped: bytes = _DROPPED) -> np.ndarray:
    """Return the 64-bit duplicate key of each valid UTF-8 string followed by a newline (and holding no other).

    The rows are cleaned in one buffer (lower-cased, ``dropped`` bytes removed) and told apart by
    their newlines again.
    """
    data, _ = string_buffers(lines)
    if len(data) and data.max() >= 0x80:
        data, _ = string_buffers(pc.utf8_lower(lines))
    escapes = np.flatnonzero(data[:-1] == _BACKSLASH)
    escapes = escapes[_WHITESPACE_ESCAPES[data[escapes + 1]]]
    if len(escapes):
        data = data.copy()
        data[escapes] = ord(" ")  # dropped below, like the other whitespace
        data[escapes + 1] = ord(" ")
    text = data.tobytes().translate(_LOWER_ASCII, dropped)
    hashes = np.empty(len(lines), dtype=np.uint64)
    row = start = 0
    while start < len(text):  # a slice at a time, so that the rows' bytes objects reuse the same memory
        end = text.find(b"\n", start + HASH_SLICE_BYTES) + 1 or len(text)
        rows = text[start : end - 1].split(b"\n")
        hashes[row : row + len(rows)] = np.fromiter(map(xxhash.xxh3_64_intdigest, rows), np.uint64, len(rows))
        row += len(rows)
        start = end
    return hashes


def hex_ids(values: np.ndarray) -> pa.Array:
    """Return each 64-bit value as 16 lower-case hex digits (the id of a row without one)."""
    octets = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    digits = np.empty((len(values), 16), dtype=np.uint8)
    digits[:, 0::2] = _HEX_DIGITS[octets >> 4]
    digits[:, 1::2] = _HEX_DIGITS[octets & 15]
    offsets = np.arange(0, 16 * (len(values) + 1), 16, dtype=np.int32)
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(digits.tobytes()))


def label_hash(label: str) -> int:
    """Return the 64-bit key of an id or group label; an auto id (16 hex digits) maps back to its hash."""
    return int(label, 16) if _AUTO_ID.fullmatch(label) else xxhash.xxh3_64_intdigest(label.encode())


def label_hashes(labels: pa.Array, default: np.ndarray) -> np.ndarray:
    """Return ``label_hash`` of each non-null label, ``default`` where the label is null."""
    hashes = default.astype(np.uint64, copy=True)
    present = np.flatnonzero(labels.is_valid().to_numpy(zero_copy_only=False))
    if len(present):
        values = labels.take(pa.array(present)).to_pylist()
        hashes[present] = np.fromiter(map(label_hash, values), np.uint64, len(values))
    return hashes


def find_duplicates(norm_hash: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (is duplicate, index of first occurrence) for each row, by normalized key."""
    n = len(norm_hash)
    if n == 0:
        return np.zeros(0, dtype=bool), np.zeros(0, dtype=np.int64)
    order = np.argsort(norm_hash)
    ordered = norm_hash[order]
    repeated = ordered[1:] == ordered[:-1]
    shared = np.flatnonzero(np.concatenate([repeated, [False]]) | np.concatenate([[False], repeated]))
    first_of = np.arange(n)
    if len(shared):  # only keys held by several rows need their first occurrence found
        keys, rows = ordered[shared], order[shared]
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        first_of[rows] = np.repeat(np.minimum.reduceat(rows, starts), np.diff(np.append(starts, len(rows))))
    return first_of != np.arange(n), first_of


def same_content(first: bytes, second: bytes) -> bool:
    """Return whether two cleaned lines hold the same example, their ids left out.

    Two copies of a row under two ids are still the same example.
    """
    if first == second:
        return True
    one, other = orjson.loads(first), orjson.loads(second)
    one.pop("id", None)
    other.pop("id", None)
    return one == other
