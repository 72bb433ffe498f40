"""Group stage: examples that are the same question in other words are put in one group.

Rows are joined into one group when they share an explicit ``group`` label, when one is the
synthetic variant of the other (its ``source_id`` is the other's id), when they give the same
free-text answer, or when their prompts are near duplicates. Groups, not rows, are what the
split stage assigns, so none of these can straddle two splits.

Answers that repeat by design are labels (a category shared by many invoices) and are not
grouped under ``group_by_answer: auto``: an answer counts as free text when it has at least
``FREE_TEXT_ANSWER_WORDS`` words and is neither JSON nor made only of short ``Key: value``
lines. ``always`` groups every repeated answer, ``never`` none.

Near-duplicate prompts are found with MinHash over the set of lower-cased words of the user
turns (32 hash functions, 8 bits of each), banded for locality-sensitive hashing (8 bands of 4
bins) and confirmed when the estimated Jaccard similarity reaches the threshold. Free-text
answers that are near duplicates of each other (the same answer with a phrase added, say) are
joined the same way, under ``auto`` and ``always``; label answers never are. A word is a
run of characters other than whitespace once ASCII punctuation counts as whitespace. The
per-row features are computed in the scan workers; ``form_groups`` sees only fixed-size numbers,
all on whole arrays (sorting, banding and union-find included): no loop runs per row or pair.
``ft_assets_tests/test_fuzz.py`` checks it against a plain row-by-row version of each definition.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from ft_assets.compute_threads import available_cores
from ft_assets.dataset.columnar import string_buffers
from ft_assets.dataset.deduplicate import ANSWER_DROPPED, line_hashes
from ft_assets.dataset.splitting import mix64

SIGNATURE_BINS = 32
BANDS = 8
# Rows sharing a band are compared with the next few in band order, not only the next one.
NEAR_DUPLICATE_REACH = 2
BAND_THREADS = 2  # bands searched at once, where there are the cores and the memory
BAND_BYTES_PER_ROW = 30  # what one band's search holds per row while it runs
PARALLEL_BANDS_MEMORY = 256 << 20  # bands are searched at once only while together they hold less
PAIR_SLICE = 1 << 20  # rows compared at once in near_duplicate_pairs
LONG_PROMPT_WORDS = 256  # prompts with more words are reduced one by one
EMPTY_BIN = np.uint8(0xFF)
_HASH_SEEDS = np.arange(1, SIGNATURE_BINS + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
FREE_TEXT_ANSWER_WORDS = 4
GROUP_BY_ANSWER = ("auto", "always", "never")
# Every line a short "Key: value" pair: a structured label, e.g. "Category: Travel\nVendor: Acme".
_STRUCTURED = r"^(?:[^:\n]{1,40}:[ \t]*[^\n]{0,60}(?:\n|$))+$"
_PUNCTUATION = bytes(range(0x21, 0x30)) + bytes(range(0x3A, 0x41)) + bytes(range(0x5B, 0x61)) + bytes(range(0x7B, 0x7F))
# Punctuation and ASCII whitespace (with the separators \x1c-\x1f that Unicode splitting counts as
# whitespace and ASCII splitting does not) become spaces, ASCII capitals small letters (one pass).
_SPACES = b"\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f"
_TO_WORDS = bytes.maketrans(
    _PUNCTUATION + _SPACES + b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    b" " * (len(_PUNCTUATION) + len(_SPACES)) + b"abcdefghijklmnopqrstuvwxyz",
)


@dataclass(frozen=True)
class GroupConfig:
    """Which rows are grouped beyond explicit labels and synthetic sources."""

    group_by_answer: str = "auto"
    near_duplicate_threshold: float = 0.8

    def __post_init__(self) -> None:
        if self.group_by_answer not in GROUP_BY_ANSWER:
            raise ValueError(
                f"group_by_answer must be one of {', '.join(GROUP_BY_ANSWER)}, got {self.group_by_answer!r}"
            )
        if not 0 <= self.near_duplicate_threshold <= 1:
            raise ValueError(
                f"near_duplicate_threshold must be in [0, 1] (0 turns it off), got {self.near_duplicate_threshold}"
            )


def word_counts(strings: pa.Array) -> np.ndarray:
    """Return the number of words (runs of bytes other than space, tab and newline) in each string."""
    data, offsets = string_buffers(strings)
    n = len(strings)
    if not len(data):
        return np.zeros(n, dtype=np.int32)
    separator = (data == ord(" ")) | (data == ord("\t")) | (data == ord("\n"))
    opens = np.concatenate([[True], separator[:-1]])
    opens[offsets[:-1][offsets[:-1] < len(data)]] = True
    starts = np.flatnonzero(~separator & opens)
    return np.bincount(np.searchsorted(offsets[1:], starts, side="right"), minlength=n)[:n].astype(np.int32)


def answer_features(answers: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return, per answer, (its duplicate key or 0 when empty, its word count, its length in characters).

    The key is the duplicate key of ``deduplicate`` with ASCII punctuation dropped too: answers
    equal up to case, whitespace, markdown marks and punctuation share it.
    """
    words = word_counts(answers)
    chars = pc.utf8_length(answers).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int32)
    flat = pc.replace_substring(pc.replace_substring(answers, "\n", " "), "\r", " ")
    keys = line_hashes(pc.binary_join_element_wise(flat, "\n", ""), ANSWER_DROPPED)
    keys[words == 0] = 0
    return keys, words, chars


def free_text_answers(answers: pa.Array, words: np.ndarray) -> np.ndarray:
    """Return which answers are free text (see the module docstring), as opposed to labels."""
    if not len(answers):
        return np.zeros(0, dtype=bool)
    structured = pc.match_substring_regex(answers, _STRUCTURED).fill_null(False).to_numpy(zero_copy_only=False)
    json_like = pc.match_substring_regex(answers, r"^\s*[\[{]").fill_null(False).to_numpy(zero_copy_only=False)
    return (words >= FREE_TEXT_ANSWER_WORDS) & ~structured & ~json_like


def word_signatures(prompts: pa.Array) -> np.ndarray:
    """Return the MinHash signature (``SIGNATURE_BINS`` bytes) of each text's set of words (prompts, answers).

    Bin ``k`` holds the low 8 bits of the smallest (16-bit) value of the ``k``-th hash function
    over the words (b-bit minwise hashing: the minimum is taken before the bits are cut, so long
    texts do not all collapse to 0), and the share of equal bins between two rows estimates the
    Jaccard similarity of their word sets; a row without words is ``EMPTY_BIN`` throughout.
    Each distinct word of the chunk is hashed once (xxh3, then SplitMix64 of it XOR the
    function's seed, top 16 bits); rows gather their words' values.
    """
    n = len(prompts)
    signature = np.full((n, SIGNATURE_BINS), EMPTY_BIN, dtype=np.uint8)
    if not n:
        return signature
    data, _ = string_buffers(prompts)
    ascii_only = not len(data) or data.max() < 0x80
    lowered = prompts if ascii_only else pc.utf8_lower(prompts)
    low_data, offsets = string_buffers(lowered)
    text = low_data.tobytes().translate(_TO_WORDS)
    spaced = pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(text))
    words = pc.ascii_split_whitespace(spaced) if ascii_only else pc.utf8_split_whitespace(spaced)
    counts = pc.list_value_length(words).fill_null(0).to_numpy(zero_copy_only=False)
    flat = pc.list_flatten(words)
    if not len(flat):
        return signature
    encoded = pc.dictionary_encode(flat)
    vocabulary = encoded.dictionary.cast(pa.binary()).to_pylist()
    word_hash = np.fromiter(map(xxhash.xxh3_64_intdigest, vocabulary), np.uint64, len(vocabulary))
    per_function = (mix64(word_hash[:, None] ^ _HASH_SEEDS[None, :]) >> np.uint64(48)).astype(np.uint16)
    if b"" in vocabulary:  # Arrow's split yields "" at a leading or trailing space: no word, no effect on a minimum
        per_function[vocabulary.index(b"")] = 0xFFFF
    minimum = _word_minimum(per_function, encoded.indices.to_numpy(), counts)
    has_words = counts > 0
    signature[has_words] = (minimum[has_words] & 0xFF).astype(np.uint8)
    return signature


def _word_minimum(per_function: np.ndarray, word_ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Return, per row, the element-wise minimum of ``per_function`` over its words (0xFFFF where none).

    ``word_ids`` lists the rows' words one row after the other, ``counts`` how many each has.
    Rows are ranked by word count so that the rows with a ``p``-th word are a prefix: the ``p``-th
    words of all rows are folded in with one vectorized step. Rows of more than
    ``LONG_PROMPT_WORDS`` words are reduced on their own (``reduceat``, efficient on long runs).
    """
    n = len(counts)
    starts = np.cumsum(counts) - counts
    order = np.argsort(-counts, kind="stable")
    ranked, first = counts[order], starts[order]
    minimum = np.full((n, per_function.shape[1]), 0xFFFF, dtype=np.uint16)
    long_rows = int(np.count_nonzero(ranked > LONG_PROMPT_WORDS))
    if long_rows:
        lengths = ranked[:long_rows].astype(np.int64)
        segments = np.cumsum(lengths) - lengths
        positions = np.arange(int(lengths.sum())) + np.repeat(first[:long_rows] - segments, lengths)
        minimum[:long_rows] = np.minimum.reduceat(per_function[word_ids[positions]], segments, axis=0)
    # rows_with[p]: how many ranked rows have more than p words
    rows_with = n - np.searchsorted(ranked[::-1], np.arange(LONG_PROMPT_WORDS), side="right")
    for position in range(min(int(ranked[long_rows]) if long_rows < n else 0, LONG_PROMPT_WORDS)):
        rows = slice(long_rows, int(rows_with[position]))
        np.minimum(minimum[rows], per_function[word_ids[first[rows] + position]], out=minimum[rows])
    out = np.empty_like(minimum)
    out[order] = minimum
    return out


_ONE_PER_BYTE = np.uint64(0x0101010101010101)


def band_key(signature: np.ndarray, band: int) -> np.ndarray:
    """Return the 32-bit key of one band of each signature; a row without words gets none (0)."""
    keys = np.ascontiguousarray(signature).view(np.uint32)[:, band].copy()  # a copy even where the view is contiguous
    keys[keys == np.uint32(0xFFFFFFFF)] = 0
    return keys


def stable_order(keys: np.ndarray) -> np.ndarray:
    """Return the indices that sort unsigned integer ``keys``, equal keys in index order.

    The same order as ``np.argsort(keys, kind="stable")`` (int32 where the rows allow), computed as a
    least-significant-first radix sort of 16-bit digits: NumPy sorts 16-bit integers stably in
    linear time, 32- and 64-bit ones with a comparison sort several times slower.
    """
    index = np.int32 if len(keys) < 2**31 else np.int64  # the order kept between passes: 4 bytes a row
    order = np.argsort((keys & np.uint16(0xFFFF)).astype(np.uint16), kind="stable").astype(index)
    for shift in range(16, 8 * keys.dtype.itemsize, 16):
        digit = (keys[order] >> keys.dtype.type(shift)).astype(np.uint16)
        order = order[np.argsort(digit, kind="stable")]
    return order


def _pairs(keys: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return pairs of nodes that share a non-zero key: neighbours in key order, chaining every node of a key."""
    keep = keys != 0
    keys, nodes = keys[keep], nodes[keep]
    order = stable_order(keys)
    keys, nodes = keys[order], nodes[order]
    same = keys[1:] == keys[:-1]
    return nodes[:-1][same], nodes[1:][same]


def _equal_bins(signature: np.ndarray, step: int) -> np.ndarray:
    """Return, for each row of a (rows x bins) uint8 block, how many of its bins equal the row ``step`` below's."""
    equal = np.equal(signature[step:], signature[:-step]).view(np.uint64)  # eight 0/1 bytes per word
    total = np.add(equal[:, 0], equal[:, 1])
    for word in range(2, equal.shape[1]):
        np.add(total, equal[:, word], out=total)
    total *= _ONE_PER_BYTE  # the top byte of the product sums the eight bytes
    return (total >> np.uint64(56)).astype(np.uint8)


def _band_pairs(signature: np.ndarray, band: int, needed: float) -> tuple[np.ndarray, np.ndarray]:
    """Return the near-duplicate pairs one band finds (see ``near_duplicate_pairs``), nearest first."""
    keys = band_key(signature, band)
    rows = np.flatnonzero(keys).astype(np.int32)
    rows = rows[stable_order(keys[rows])]
    keys = keys[rows]
    reach = min(NEAR_DUPLICATE_REACH, len(rows) - 1)
    equal = [np.zeros(len(rows) - step, dtype=np.uint8) for step in range(1, reach + 1)]
    for start in range(0, len(rows), PAIR_SLICE):  # bounded temporaries however many rows
        block = np.take(signature, rows[start : start + PAIR_SLICE + reach], axis=0)
        for step in range(1, reach + 1):
            equal[step - 1][start : start + PAIR_SLICE] = _equal_bins(block, step)[:PAIR_SLICE]
        del block
    firsts, seconds = [], []
    for step in range(1, reach + 1):
        hit = np.flatnonzero((keys[step:] == keys[:-step]) & (equal[step - 1] >= needed))
        firsts.append(rows[hit])
        seconds.append(rows[hit + step])
    if not firsts:
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    return np.concatenate(firsts), np.concatenate(seconds)


def near_duplicate_pairs(signature: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Return pairs of rows whose prompts are near duplicates (sharing a band, then confirmed).

    For each band in turn, rows with a band key (not 0) are put in (key, row) order; a row and
    each of the next ``NEAR_DUPLICATE_REACH`` rows in that order form a pair when they share the
    key and at least ``threshold`` of their bins are equal. Pairs come band by band, nearest
    first. Rows are gathered in band order a slice at a time and neighbours compared by shifting.
    Bands are searched ``BAND_THREADS`` at a time (NumPy releases the GIL in its sorts and gathers)
    while their working memory (``BAND_BYTES_PER_ROW`` each) stays under ``PARALLEL_BANDS_MEMORY``,
    one at a time beyond (about 4 million rows), so memory stays bounded at tens of millions of rows.
    """
    if threshold <= 0 or not len(signature):
        return np.zeros(0, np.int32), np.zeros(0, np.int32)
    signature = np.ascontiguousarray(signature)
    needed = threshold * SIGNATURE_BINS - 1e-9
    threads = min(available_cores(), BAND_THREADS)
    if threads * BAND_BYTES_PER_ROW * len(signature) > PARALLEL_BANDS_MEMORY:
        threads = 1
    with ThreadPoolExecutor(threads) as pool:
        pairs = list(pool.map(lambda band: _band_pairs(signature, band, needed), range(BANDS)))
    return np.concatenate([first for first, _ in pairs]), np.concatenate([second for _, second in pairs])


def connected_groups(n: int, first: np.ndarray, second: np.ndarray) -> tuple[int, np.ndarray]:
    """Return the connected components of ``n`` nodes joined by edges ``first[i]``-``second[i]``.

    Returns their number and each node's component, numbered in order of the component's
    smallest node (the numbering ``scipy.sparse.csgraph.connected_components`` gives).

    Union-find on whole arrays: each round hooks the larger root of every edge whose ends have
    different roots under the smaller one, then points every node at its root (pointer jumping).
    A parent is never larger than its node, so each component's root is its smallest node.
    """
    index = np.int32 if n < 2**31 else np.int64
    parent = np.arange(n, dtype=index)
    first, second = np.asarray(first, dtype=index), np.asarray(second, dtype=index)
    while len(first):
        root_a, root_b = parent[first], parent[second]
        apart = root_a != root_b
        first, second, root_a, root_b = first[apart], second[apart], root_a[apart], root_b[apart]
        if not len(first):
            break
        np.minimum.at(parent, np.maximum(root_a, root_b), np.minimum(root_a, root_b))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    is_root = parent == np.arange(n, dtype=index)
    number = np.cumsum(is_root, dtype=index) - 1
    return int(np.count_nonzero(is_root)), number[parent]


def form_groups(columns: dict[str, np.ndarray], config: GroupConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Return each row's group number (0..groups-1) and what joined them.

    ``columns``: ``norm_hash`` (content key), ``group_hash`` and ``id_hash`` (the key of the row's
    group and id labels; the content key where it has none), ``source_hash`` (0: none),
    ``answer_hash`` (0: none), ``free_text`` (bool), ``signature`` (rows x ``SIGNATURE_BINS`` uint8) and
    ``answer_signature`` (the same, of the free-text answers only: one row per ``free_text`` row, in order).
    The columns it reads are removed from ``columns`` once used (``group_hash`` stays), so memory stays low
    at millions of rows.
    """
    n = len(columns["group_hash"])
    nodes = np.arange(n, dtype=np.int32)
    norm_hash, id_hash = columns.pop("norm_hash"), columns.pop("id_hash")
    labels_given = np.flatnonzero(columns["group_hash"] != norm_hash).astype(np.int32)
    ids_given = np.flatnonzero(id_hash != norm_hash).astype(np.int32)
    del norm_hash
    group_pairs = _pairs(columns["group_hash"][labels_given], labels_given)
    id_pairs = _pairs(id_hash[ids_given], ids_given)
    edges: dict[str, tuple[np.ndarray, np.ndarray]] = {
        "label": (np.concatenate([group_pairs[0], id_pairs[0]]), np.concatenate([group_pairs[1], id_pairs[1]]))
    }
    source_hash = columns.pop("source_hash")
    has_source = np.flatnonzero(source_hash != 0).astype(np.int32)
    if len(has_source):
        keys = np.concatenate([id_hash, source_hash[has_source]])
        edges["synthetic_source"] = _pairs(keys, np.concatenate([nodes, has_source]))
    del id_hash, source_hash
    answer, free_text = columns.pop("answer_hash"), columns.pop("free_text")
    free_rows = np.flatnonzero(free_text).astype(np.int32)
    free_text_answers = len(free_rows)
    if config.group_by_answer == "auto":
        answer = np.where(free_text, answer, np.uint64(0))
    if config.group_by_answer != "never":
        edges["same_answer"] = _pairs(answer, nodes)
    del answer, free_text
    edges["near_duplicate_prompt"] = near_duplicate_pairs(columns.pop("signature"), config.near_duplicate_threshold)
    answer_signature = columns.pop("answer_signature")
    if config.group_by_answer != "never":
        first, second = near_duplicate_pairs(answer_signature, config.near_duplicate_threshold)
        edges["near_duplicate_answer"] = (free_rows[first], free_rows[second])
    del answer_signature
    first = np.concatenate([e[0] for e in edges.values()])
    second = np.concatenate([e[1] for e in edges.values()])
    count, labels = connected_groups(n, first, second)
    grouped_by = {}
    for name, (a, b) in edges.items():
        joined = np.zeros(n, dtype=bool)
        joined[a] = joined[b] = True
        grouped_by[name] = {"pairs": len(a), "rows": int(np.count_nonzero(joined))}
    report = {
        "groups": int(count),
        "group_by_answer": config.group_by_answer,
        "near_duplicate_threshold": config.near_duplicate_threshold,
        "free_text_answers": free_text_answers,
        "joined_by": grouped_by,
    }
    return labels.astype(np.int64), report
