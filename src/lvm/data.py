"""The one data module: read and validate vector files, cut article-bounded windows, split by article,
store windows compactly (vectors once + start indices), and serve them to every stage.

A window is (context = rows s .. s+L-1, target = row s+L) of ONE article's rows in chunk order.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lvm import LvmError
from lvm.io import NpzReader, StreamedArray, atomic_outputs, save_npz

SPLITS = ("train", "val", "test")
TOKENS_PER_VECTOR = 20  # design figure: one concept vector ~ a 20-token chunk
ROW_CHUNK = 65536  # rows per pass when scanning large files; bounds temporary memory


@dataclass
class Corpus:
    """Validated vectors with rows grouped by article: `order` lists rows article by article."""

    path: Path
    vectors: np.ndarray  # [N, D], possibly a read-only memmap
    article: np.ndarray  # [N] article id per row
    chunk: np.ndarray  # [N] chunk index per row
    has_article_ids: bool
    order: np.ndarray  # row indices sorted by (article, file order)
    article_ids: np.ndarray  # [A] distinct article ids, ascending
    article_start: np.ndarray  # [A] offset into `order`
    article_len: np.ndarray  # [A] rows per article
    notes: list[str] = field(default_factory=list)
    content_hash: str = ""  # sha256 of the vectors as float32 rows in file order (feeds the split id)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def article_rows(self, i: int) -> np.ndarray:
        """Rows of the i-th article (position in article_ids), in chunk order."""
        return self.order[self.article_start[i]:self.article_start[i] + self.article_len[i]]


def load_corpus(path, trust_pickle: bool = False, stream_block: int = 2000) -> Corpus:
    """Open and check a vectors npz (keys: vectors [N,D]; optional article_indices, chunk_indices)."""
    path = Path(path)
    reader = NpzReader(path, trust_pickle=trust_pickle)
    for key in reader.keys:  # refuse pickled keys up front, even ones no stage reads
        if reader.header(key)[1].hasobject and not trust_pickle:
            reader.load(key)
    if "vectors" not in reader:
        raise reader.missing_error("vectors")
    vectors = reader.load("vectors")
    if vectors.ndim != 2:
        raise LvmError(f"{path}: key 'vectors' must be 2-D [N, D], got shape {vectors.shape}")
    if not np.issubdtype(vectors.dtype, np.floating):
        raise LvmError(f"{path}: key 'vectors' must be floating point, got {vectors.dtype}")
    n = vectors.shape[0]
    if n == 0 or vectors.shape[1] == 0:
        raise LvmError(f"{path}: key 'vectors' is empty, shape {vectors.shape}")
    # A memory map skips zipfile's CRC check, so a flipped bit would pass unseen: check it here. When the
    # mapped bytes are already the float32 rows we hash, the one pass over the data does both.
    crc = None
    if isinstance(vectors, np.memmap):
        if vectors.dtype == np.dtype(np.float32) and vectors.flags.c_contiguous:
            crc = reader.crc_of_header("vectors")
        else:
            reader.verify("vectors")
    content_hash, data_crc = _check_finite(path, vectors, crc[0] if crc else None)
    if crc and data_crc != crc[1]:
        raise reader.damaged_error("vectors", f"Bad CRC-32 for file 'vectors.npy': {data_crc:#010x} "
                                   f"computed, {crc[1]:#010x} recorded")

    notes = []
    has_ids = "article_indices" in reader
    if has_ids:
        article = _int_key(reader, path, "article_indices", n)
    else:
        article = np.arange(n, dtype=np.int64) // stream_block
        notes.append(
            f"WARNING: {path} has no 'article_indices': treating it as ONE stream cut into "
            f"pseudo-articles of {stream_block} rows (data.stream_block). Windows may cross real "
            "document boundaries inside a block; splits never share a block.")
    chunk = _int_key(reader, path, "chunk_indices", n) if "chunk_indices" in reader else None
    if has_ids and chunk is None:
        _check_contiguous_articles(path, article)

    order = np.argsort(article, kind="stable")
    sorted_article = article[order]
    boundaries = np.flatnonzero(np.diff(sorted_article)) + 1
    article_start = np.concatenate([[0], boundaries]).astype(np.int64)
    article_len = np.diff(np.concatenate([article_start, [n]])).astype(np.int64)
    article_ids = sorted_article[article_start]
    if chunk is None:
        chunk = np.empty(n, dtype=np.int64)
        chunk[order] = np.arange(n) - np.repeat(article_start, article_len)
    else:
        sorted_chunk = chunk[order]
        same_article = sorted_article[1:] == sorted_article[:-1]
        bad = np.flatnonzero(same_article & (sorted_chunk[1:] <= sorted_chunk[:-1]))
        if bad.size:
            row = int(order[bad[0] + 1])
            raise LvmError(
                f"{path}: key 'chunk_indices' is not increasing inside article {int(article[row])} "
                f"(row {row}: chunk {int(chunk[row])} after {int(sorted_chunk[bad[0]])}); "
                f"{bad.size} such rows. Rows of an article must be in chunk order (and two articles, e.g. from "
                "shards that each number from 0, must not share an id).")
        gaps = np.flatnonzero(same_article & (sorted_chunk[1:] > sorted_chunk[:-1] + 1))
        if gaps.size:  # a window's target is then not the chunk after its context: say so, once
            row = int(order[gaps[0] + 1])
            notes.append(
                f"WARNING: {path} key 'chunk_indices' skips chunks inside {np.unique(sorted_article[gaps]).size} "
                f"articles ({gaps.size} gaps; first: article {int(article[row])}, chunk {int(sorted_chunk[gaps[0]])} "
                f"then {int(chunk[row])}): windows run over the gaps, so there a 'next vector' is not the next "
                "chunk of the text. Fine if rows were dropped on purpose.")
    reader.close()
    return Corpus(path, vectors, article, chunk, has_ids, order, article_ids, article_start,
                  article_len, notes, content_hash)


def _int_key(reader: NpzReader, path: Path, key: str, n: int) -> np.ndarray:
    arr = np.asarray(reader.load(key, mmap=False))
    if arr.ndim != 1 or arr.shape[0] != n:
        raise LvmError(f"{path}: key '{key}' must have shape [{n}] (one per vector), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise LvmError(f"{path}: key '{key}' must be integers, got {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size:  # the int64 cast would wrap these to negative ids
        too_big = np.flatnonzero(arr > np.iinfo(np.int64).max)
        if too_big.size:
            r = int(too_big[0])
            raise LvmError(f"{path}: key '{key}' has {too_big.size} values above the int64 maximum "
                           f"{np.iinfo(np.int64).max} (first: row {r} = {int(arr[r])}); ids must fit in int64")
    return arr.astype(np.int64)


def _check_contiguous_articles(path: Path, article: np.ndarray) -> None:
    """Without chunk_indices an article's order is its rows' file order, so its rows must be one block.
    Rows of one id in several blocks are what concatenating shards that each number their articles from
    0 gives: two different texts would be merged into one "article" and windows would run across them."""
    run_start = np.concatenate([[0], np.flatnonzero(np.diff(article)) + 1])
    run_ids = article[run_start]
    ids, counts = np.unique(run_ids, return_counts=True)
    split = ids[counts > 1]
    if split.size:
        first = split[0]
        runs = run_start[run_ids == first]
        raise LvmError(
            f"{path}: key 'article_indices': the rows of {split.size} articles are not one contiguous block "
            f"(article {int(first)}: rows from {int(runs[0])} and again from {int(runs[1])}), and there is no "
            "'chunk_indices' to order them; shards concatenated with ids restarting at 0 look like this. "
            "Give each article its own id and one block of rows, or add 'chunk_indices'.")


def _as_float32(block: np.ndarray) -> np.ndarray:
    """Rows as the float32 every split stores (values beyond float32 range become Inf, silently)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(block, dtype=np.float32)


def _check_finite(path: Path, vectors: np.ndarray, crc: int | None = None) -> tuple[str, int | None]:
    """Refuse rows that are not finite AS FLOAT32 (a float64 1e39 passes isfinite but is Inf once
    exported) and all-zero rows; return the sha256 of those float32 rows (the content part of the split id) and `crc`
    continued over them (the member's CRC-32 when they are the file's own bytes)."""
    # ~16 MB of float32 per pass: bounds the cast's temporary copy of a float64 file
    step = max(1, min(ROW_CHUNK, (1 << 22) // max(vectors.shape[1], 1)))
    digest = hashlib.sha256()
    for a in range(0, vectors.shape[0], step):
        block = _as_float32(vectors[a:a + step])
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            first = a + int(np.argmin(ok))
            col = int(np.argmin(np.isfinite(block[first - a])))
            total = sum(int((~np.isfinite(_as_float32(vectors[b:b + step]))).any(axis=1).sum())
                        for b in range(a, vectors.shape[0], step))
            raise LvmError(f"{path}: key 'vectors' has NaN/Inf (or values beyond float32's +-3.4e38, which "
                           f"become Inf) in {total} rows (first: row {first}, column {col}, value "
                           f"{float(vectors[first, col])})")
        zero = ~block.any(axis=1)
        if zero.any():  # no direction: every cosine with such a row is 0 (eps), silently, for every predictor
            first = a + int(np.argmax(zero))
            total = sum(int((~_as_float32(vectors[b:b + step]).any(axis=1)).sum())
                        for b in range(a, vectors.shape[0], step))
            raise LvmError(f"{path}: key 'vectors' has {total} all-zero rows (first: row {first}); a zero vector "
                           "has no direction, so every cosine with it would score 0. Drop them (padding or "
                           "failed encodes?) and their article_indices/chunk_indices entries")
        digest.update(block)
        if crc is not None:
            crc = zlib.crc32(block, crc)
    return digest.hexdigest(), crc


def first_target(context_length: int, min_target_position: int = 0) -> int:
    """Position (inside its article) of the first target: L, or later when min_target_position > L.

    A sweep over L that sets min_target_position to its largest L scores every L on the same targets.
    """
    return max(context_length, min_target_position)


def count_windows(length: np.ndarray, context_length: int, stride: int, min_target_position: int = 0) -> np.ndarray:
    """Windows per article: targets at first_target(L, P), + stride, ... while inside the article."""
    usable = length - first_target(context_length, min_target_position) - 1
    return np.where(usable >= 0, usable // stride + 1, 0)


def window_starts(lengths: np.ndarray, context_length: int, stride: int, min_target_position: int = 0) -> np.ndarray:
    """Start rows of every window when articles of `lengths` rows are stored back to back."""
    lengths = np.asarray(lengths, dtype=np.int64)
    counts = count_windows(lengths, context_length, stride, min_target_position)
    offsets = np.cumsum(lengths) - lengths  # also right for no articles (an empty split)
    within = np.arange(counts.sum(), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    skip = first_target(context_length, min_target_position) - context_length
    return np.repeat(offsets, counts) + skip + stride * within


def split_articles(article_ids: np.ndarray, fractions: dict, seed: int, folds: int = 0,
                   fold: int = 0) -> dict[str, np.ndarray]:
    """Seeded, article-level split: every article lands in exactly one split.

    folds = 0: train/val/test by `fractions` of a seeded permutation (test its last articles, val the
    ones before). folds = K: the same permutation read from its end and cut into K near-equal blocks
    (np.array_split); fold k tests block k, validates on block k+1 (mod K) and trains on the rest, so
    over k = 0..K-1 every article is tested exactly once. Read from the end, block 0 is the fraction
    split's test and block 1 its val whenever their sizes agree (76 articles, K = 10, 0.1/0.1: 8 and 8),
    so fold 0 is then the one split, file for file."""
    ids = np.sort(np.asarray(article_ids))
    n = ids.size
    if folds:
        if n < folds:
            raise LvmError(f"export.folds: {folds} folds need at least {folds} long-enough articles, found {n}")
        blocks = np.array_split(np.random.default_rng(seed).permutation(ids)[::-1], folds)
        test, val = blocks[fold], blocks[(fold + 1) % folds]
        train = np.concatenate([b for i, b in enumerate(blocks) if i not in (fold, (fold + 1) % folds)])
        return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    n_test = max(1, int(round(fractions["test"] * n)))
    n_val = max(1, int(round(fractions["val"] * n))) if fractions["val"] > 0 else 0
    n_train = n - n_test - n_val
    if n_train < 1:
        raise LvmError(f"export.split: only {n} articles are long enough; cannot give train, val "
                       f"and test at least one article each")
    perm = np.random.default_rng(seed).permutation(ids)
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}


def _check_no_copied_articles(corpus: Corpus, idx: np.ndarray) -> None:
    """An article that repeats another's vectors exactly (the same shard included twice under new ids,
    a crawl's duplicate pages) may land in train with its copy in test: test targets seen in training,
    the leak this project exists to rule out. Candidates share length and first row; those are compared
    whole."""
    seen, copies = {}, []
    for i in idx:
        first_row = np.ascontiguousarray(corpus.vectors[corpus.article_rows(i)[0]])
        key = (int(corpus.article_len[i]), hashlib.blake2b(first_row, digest_size=16).digest())
        for j in seen.setdefault(key, []):
            if np.array_equal(corpus.vectors[corpus.article_rows(i)], corpus.vectors[corpus.article_rows(j)]):
                copies.append((j, i))
                break
        else:
            seen[key].append(i)
    if copies:
        j, i = copies[0]
        raise LvmError(
            f"{corpus.path}: key 'vectors': {len(copies)} articles repeat another article's vectors exactly "
            f"(first: article {int(corpus.article_ids[i])} = article {int(corpus.article_ids[j])}, "
            f"{int(corpus.article_len[i])} rows); a copy in test with its original in train would leak test "
            "targets into training. Keep one of each.")


def export_windows(corpus: Corpus, out_dir, context_length: int, overlap: int,
                   fractions: dict, seed: int, test_stride: int | None = None,
                   min_target_position: int = 0, val_stride: int = 0, folds: int = 0, fold: int = 0) -> dict:
    """Write {train,val,test}.npz (vectors once + window starts) and return the metadata dict.

    Train uses stride L - overlap, val `val_stride` (0: the same) and test `test_stride` (default: the
    same), so the held-out score can cover every target of the test articles without costing training
    time. `min_target_position` P > L keeps only targets at positions >= P inside their article (in
    every split) and skips articles shorter than P + 1: with P fixed, every L <= P gets the same
    article split and the same targets.
    """
    L, stride = context_length, context_length - overlap
    test_stride = test_stride or stride
    val_stride = val_stride or stride
    first = first_target(L, min_target_position)
    out_dir = Path(out_dir)
    n_windows = count_windows(corpus.article_len, L, stride, min_target_position)
    eligible = n_windows > 0
    if not eligible.any():
        why = (f"data.context_length + 1 = {L + 1}" if first == L else
               f"export.min_target_position + 1 = {first + 1}")
        raise LvmError(
            f"{corpus.path}: every article is shorter than {why} vectors "
            f"(longest has {int(corpus.article_len.max())}); lower data.context_length"
            + ("" if first == L else " or export.min_target_position"))
    _check_no_copied_articles(corpus, np.flatnonzero(eligible))
    splits = split_articles(corpus.article_ids[eligible], fractions, seed, folds, fold)
    meta_splits, arrays = {}, {}
    for name in SPLITS:
        idx = np.searchsorted(corpus.article_ids, splits[name])  # positions of this split's articles
        split_stride = {"train": stride, "val": val_stride, "test": test_stride}[name]
        lengths = corpus.article_len[idx]
        starts = window_starts(lengths, L, split_stride, min_target_position)
        rows = np.concatenate([corpus.article_rows(i) for i in idx]) if idx.size else np.zeros(0, np.int64)
        # first_target is stored only when it is not L (files written before it existed stay valid)
        extra = {"first_target": np.int64(first)} if first != L else {}
        arrays[name] = {"article_indices": corpus.article[rows], "chunk_indices": corpus.chunk[rows],
                        "source_rows": rows, "window_starts": starts, "context_length": np.int64(L), **extra}
        meta_splits[name] = {"articles": int(idx.size), "vectors": int(lengths.sum()),
                             "windows": int(starts.size), "stride": split_stride}
    split_id = export_id(corpus, arrays)
    # all three splits change together or not at all (the stage adds its metadata to the same group)
    with atomic_outputs():
        for name in SPLITS:
            rows, n_rows = arrays[name]["source_rows"], meta_splits[name]["vectors"]
            save_npz(
                out_dir / f"{name}.npz",
                vectors=StreamedArray((n_rows, corpus.dim), np.float32,
                                      (corpus.vectors[rows[a:a + ROW_CHUNK]] for a in range(0, n_rows, ROW_CHUNK))),
                **arrays[name],
                split_id=np.array(split_id),
            )
    mean, std = coherence(corpus)
    return {
        "split_id": split_id,
        "source_file": str(corpus.path),
        "context_length": L,
        "overlap": overlap,
        "stride": stride,
        "test_stride": test_stride,
        "val_stride": val_stride,
        "min_target_position": min_target_position,
        "first_target_position": first,
        "vector_dim": corpus.dim,
        "total_vectors": int(corpus.vectors.shape[0]),
        "total_articles": int(corpus.article_ids.size),
        "article_ids_present": corpus.has_article_ids,
        "articles_skipped_too_short": int((~eligible).sum()),
        "vectors_in_skipped_articles": int(corpus.article_len[~eligible].sum()),
        "split_seed": seed,
        "split_fractions": dict(fractions),
        "folds": folds,
        "fold": fold,
        "splits": meta_splits,
        "total_windows": int(sum(s["windows"] for s in meta_splits.values())),
        "coherence": {"mean_consecutive_cosine": mean, "std_consecutive_cosine": std},
        "effective_tokens": L * TOKENS_PER_VECTOR,
        "notes": corpus.notes,
    }


SPLIT_ID_FORMAT = b"lvm-split-v1"


def export_id(corpus: Corpus, arrays: dict[str, dict]) -> str:
    """The split id: a hash of exactly what the split files hold (the corpus' float32 rows, which with
    `source_rows` fix every split's vectors, and every other array written), so an identical rerun
    writes identical bytes (DVC sees no change) and splits of different exports never share an id."""
    if not corpus.content_hash:
        raise ValueError("corpus has no content hash; load it with load_corpus")
    digest = hashlib.sha256(SPLIT_ID_FORMAT)
    digest.update(corpus.content_hash.encode())
    digest.update(repr(tuple(corpus.vectors.shape)).encode())
    for name in SPLITS:
        for key, value in arrays[name].items():
            value = np.ascontiguousarray(value)
            digest.update(f"|{name}.{key}:{value.dtype.str}:{value.shape}|".encode())
            digest.update(value)
    return digest.hexdigest()[:16]


def check_same_export(datasets, metadata=None) -> str:
    """Refuse splits that are not from one export run; return their common split id.

    `datasets`: WindowDatasets (or split .npz paths); `metadata`: optionally the export's
    metadata_ctx100.json, which must carry the same id. A failed or interrupted export, or a file
    copied in by hand, shows up as a mismatch here instead of as a silently wrong score.
    """
    ids = []
    for ds in datasets:
        if not isinstance(ds, WindowDataset):
            path = Path(ds)
            with NpzReader(path) as reader:
                sid = _read_split_id(reader, path)
        else:
            path, sid = ds.path, ds.split_id
        if sid is None:
            raise LvmError(f"{path}: no 'split_id' (exported before split ids existed); rerun "
                           "`dvc repro export_ctx100`")
        ids.append((str(path), sid))
    if metadata is not None:
        try:
            meta_id = json.loads(Path(metadata).read_text()).get("split_id")
        except FileNotFoundError:
            raise LvmError(f"{metadata}: file not found; rerun `dvc repro export_ctx100`") from None
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
            raise LvmError(f"{metadata}: not a valid export metadata file ({e})") from None
        if meta_id is None:
            raise LvmError(f"{metadata}: no 'split_id'; rerun `dvc repro export_ctx100`")
        ids.append((str(metadata), meta_id))
    if len({sid for _, sid in ids}) > 1:
        listing = ", ".join(f"{path} (split_id {sid})" for path, sid in ids)
        raise LvmError(f"these files are not from one export: {listing}; rerun `dvc repro export_ctx100`")
    return ids[0][1] if ids else ""


def _read_split_id(reader: NpzReader, path: Path) -> str | None:
    if "split_id" not in reader:
        return None
    value = np.asarray(reader.load("split_id", mmap=False))
    if value.shape != () or value.dtype.kind != "U":
        raise LvmError(f"{path}: key 'split_id' must be a string, got {value.dtype} {value.shape}")
    return str(value)


def coherence(corpus: Corpus) -> tuple[float, float]:
    """Mean/std cosine of consecutive vectors within articles (how predictable 'next' is by copying)."""
    total, total_sq, count = 0.0, 0.0, 0
    n = corpus.order.size
    for a in range(0, n - 1, ROW_CHUNK):
        rows = corpus.order[a:min(a + ROW_CHUNK + 1, n)]
        v = np.asarray(corpus.vectors[rows], dtype=np.float32)
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        cos = np.einsum("ij,ij->i", v[:-1], v[1:])
        same = corpus.article[rows[1:]] == corpus.article[rows[:-1]]
        cos = cos[same].astype(np.float64)
        total, total_sq, count = total + cos.sum(), total_sq + (cos ** 2).sum(), count + cos.size
    if count == 0:
        return float("nan"), float("nan")
    mean = total / count
    return round(mean, 6), round(float(np.sqrt(max(total_sq / count - mean ** 2, 0.0))), 6)


MMAP_RAM_FRACTION = 0.25  # train.mmap auto: map the vectors when copies would take > 1/4 of RAM


def should_mmap(path, setting, processes: int = 1) -> bool:
    """train.mmap: true/false as given; auto maps a split whose vectors, copied once per process on
    this node, would take more than MMAP_RAM_FRACTION of physical memory."""
    if not Path(path).is_file():  # here, before any stage work, rather than as a FileNotFoundError
        raise LvmError(f"{path}: file not found; run `dvc repro export_ctx100`")
    if setting != "auto":
        return bool(setting)
    import os

    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: be safe and map
        return True
    return Path(path).stat().st_size * max(processes, 1) > MMAP_RAM_FRACTION * ram


def _scalar_int(reader: NpzReader, path: Path, key: str) -> int:
    value = np.asarray(reader.load(key, mmap=False))
    ok = value.shape in ((), (1,)) and np.issubdtype(value.dtype, np.integer)
    if not ok or int(value.reshape(-1)[0]) < 1:
        raise LvmError(f"{path}: key '{key}' must be one integer >= 1, got {value!r}")
    return int(value.reshape(-1)[0])


def _check_split(path: Path, vectors, starts, L: int, articles, source_rows) -> np.ndarray:
    """Refuse a split file whose windows would index outside its vectors (an IndexError mid-epoch, or
    worse, with negative starts, a silently wrong window) or cross an article boundary."""
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.floating):
        raise LvmError(f"{path}: key 'vectors' must be a 2-D float array, got {vectors.dtype} {vectors.shape}")
    n = vectors.shape[0]
    for key, arr in (("article_indices", articles), ("source_rows", source_rows)):
        if arr.shape != (n,):
            raise LvmError(f"{path}: key '{key}' must have shape [{n}] (one per vector), got {arr.shape}")
    if starts.ndim != 1 or (starts.size and not np.issubdtype(starts.dtype, np.integer)):
        raise LvmError(f"{path}: key 'window_starts' must be 1-D integers, got {starts.dtype} {starts.shape}")
    starts = starts.astype(np.int64)
    bad = np.flatnonzero((starts < 0) | (starts + L >= n))
    if bad.size:
        i = int(bad[0])
        raise LvmError(f"{path}: key 'window_starts' has {bad.size} windows outside the {n} vectors "
                       f"(first: window {i} starts at {int(starts[i])}; context {L} + target needs "
                       f"0 <= start <= {n - L - 1}); rerun `dvc repro export_ctx100`")
    cross = np.flatnonzero(articles[starts] != articles[starts + L])
    if cross.size:
        i = int(cross[0])
        raise LvmError(f"{path}: key 'window_starts' has {cross.size} windows crossing an article boundary "
                       f"(first: window {i} at row {int(starts[i])}); rerun `dvc repro export_ctx100`")
    return starts


class WindowDataset:
    """Windows of one split, gathered on the fly from the split's vectors (no [n, L, D] copy).

    Works as a torch map-style Dataset (`ds[i]` -> (context, target)) and, faster, as a batch source:
    `ds.batch(indices)` gathers a whole batch with one fancy-indexing op per tensor.
    """

    def __init__(self, path, mmap: bool = False):
        import torch

        path = Path(path)
        if not path.is_file():
            raise LvmError(f"{path}: file not found; run `dvc repro export_ctx100`")
        with NpzReader(path) as reader:
            for key in ("vectors", "window_starts", "context_length", "article_indices", "source_rows"):
                if key not in reader:
                    raise LvmError(f"{path}: missing key '{key}'; rerun `dvc repro export_ctx100`")
            vectors = reader.load("vectors", mmap=mmap)
            starts = np.asarray(reader.load("window_starts", mmap=False))
            self.context_length = _scalar_int(reader, path, "context_length")
            # position of the first target inside its article (files before min_target_position: L)
            self.first_target = (_scalar_int(reader, path, "first_target") if "first_target" in reader
                                 else self.context_length)
            self.article_indices = np.asarray(reader.load("article_indices", mmap=False))
            self.source_rows = np.asarray(reader.load("source_rows", mmap=False))
            self.split_id = _read_split_id(reader, path)
        self.path = path
        self.starts = _check_split(path, vectors, starts, self.context_length, self.article_indices,
                                   self.source_rows)
        self.vectors_np = vectors if mmap else np.ascontiguousarray(vectors, dtype=np.float32)
        self.vectors = torch.from_numpy(np.asarray(self.vectors_np)) if not mmap else None
        self.context_vectors = self.vectors  # the table contexts are gathered from (see with_context_dtype)
        self._starts_t = torch.from_numpy(self.starts)

    @property
    def dim(self) -> int:
        return self.vectors_np.shape[1]

    def __len__(self) -> int:
        return self.starts.size

    def __getitem__(self, i):
        s = int(self.starts[i])
        L = self.context_length
        if self.vectors is None:
            import torch
            block = np.array(self.vectors_np[s:s + L + 1], dtype=np.float32)  # copy: the map is read-only
            return torch.from_numpy(block[:L]), torch.from_numpy(block[L])
        return self.vectors[s:s + L], self.vectors[s + L]

    def batch(self, indices, all_targets: bool = False):
        """(contexts [B, L, D], targets [B, D]) as new contiguous tensors: targets float32, contexts in
        the context table's dtype (float32 unless `with_context_dtype`).

        Rows are gathered one memcpy per row: with torch.index_select over the flat row indices when
        the vectors are in memory (it runs on every intra-op thread: ~1.7x numpy's single-threaded
        fancy indexing at batch 32, D=768 on 2 cores, bench/throughput.py), with numpy fancy indexing
        from a memory map. Either is ~15x faster at batch 32 than torch advanced indexing through a
        strided [n, L, D] view (bench/export_bench.py).
        """
        import torch

        starts = self.starts[np.asarray(indices, dtype=np.int64)]
        L = self.context_length
        # all_targets: the next vector after every position, [B, L, D] (rows start+1 .. start+L)
        target_rows = starts[:, None] + np.arange(1, L + 1) if all_targets else starts + L
        if self.vectors is not None:
            rows = torch.from_numpy((starts[:, None] + np.arange(L)).reshape(-1))
            contexts = self.context_vectors.index_select(0, rows).view(starts.size, L, self.dim)
            targets = self.vectors.index_select(0, torch.from_numpy(target_rows.reshape(-1)))
            return contexts, targets.view(*target_rows.shape, self.dim)
        contexts = np.asarray(self.vectors_np[starts[:, None] + np.arange(L)], dtype=np.float32)
        targets = np.asarray(self.vectors_np[target_rows], dtype=np.float32)
        return torch.from_numpy(contexts), torch.from_numpy(targets)

    def with_context_dtype(self, dtype) -> "WindowDataset":
        """The same windows with contexts gathered from a `dtype` copy of the vectors (targets stay float32).

        The gather is memory-bound: at D=768, batch 32 on this machine float32 windows come at ~77% of
        a plain memcpy's rate, so only fewer bytes make it faster. A bfloat16 table halves them (2.2x
        windows/s, bench/throughput.py) and changes nothing a bf16-autocast model computes from its
        matmul inputs, which autocast rounds to bfloat16 anyway. Costs dtype-sized extra memory for
        the table; a memory-mapped dataset is returned unchanged (a copy would defeat the map).
        """
        import copy

        if self.vectors is None or self.vectors.dtype == dtype:
            return self
        other = copy.copy(self)
        other.context_vectors = self.vectors.to(dtype)
        return other

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0, limit: int = 0,
                rank: int = 0, world: int = 1, all_targets: bool = False):
        """Yield (indices, contexts, targets). `limit` > 0 takes a seeded subsample of that many windows.

        With `world` > 1 (data-parallel training) every process draws the same seeded order and cuts
        the same global batches of `batch_size`; each global batch is split into `world` near-equal
        contiguous parts and process `rank` gets its part. So the ranks' k-th batches together are
        exactly the single-process k-th batch, whatever the number of processes. Every rank yields the
        same number of batches; a part can be empty when the last global batch has < `world` windows.
        """
        n = len(self)
        rng = np.random.default_rng(seed)
        order = rng.permutation(n) if shuffle or (limit and limit < n) else np.arange(n)
        if limit and limit < n:
            order = order[:limit] if shuffle else np.sort(order[:limit])
        for a in range(0, order.size, batch_size):
            idx = order[a:a + batch_size]
            if world > 1:
                idx = np.array_split(idx, world)[rank]
            yield (idx, *self.batch(idx, all_targets))

    # articles whose windows this dataset keeps (None = all); set by subset_articles
    kept_articles: np.ndarray | None = None

    def with_starts(self, starts: np.ndarray, **changes) -> "WindowDataset":
        """A shallow copy (the same vectors) holding the windows that start at `starts`; `changes`
        set other attributes of the copy (context_length, kept_articles)."""
        import copy

        import torch

        other = copy.copy(self)
        other.starts = np.ascontiguousarray(starts)
        other._starts_t = torch.from_numpy(other.starts)
        for name, value in changes.items():
            setattr(other, name, value)
        return other

    def restrided(self, stride: int) -> "WindowDataset":
        """The same split (and article subset) with windows at another stride (shares the vectors)."""
        articles = self.article_indices
        boundaries = np.flatnonzero(articles[1:] != articles[:-1]) + 1
        lengths = np.diff(np.concatenate([[0], boundaries, [articles.size]]))
        starts = window_starts(lengths, self.context_length, stride, self.first_target)
        if self.kept_articles is not None:
            starts = starts[np.isin(articles[starts], self.kept_articles)]
        return self.with_starts(starts)

    def every(self, n: int) -> "WindowDataset":
        """Every n-th of these windows, in order (a sample for descriptive figures; shares the vectors)."""
        return self if n == 1 else self.with_starts(self.starts[::n])

    def subset_articles(self, fraction: float, seed: int) -> "WindowDataset":
        """The windows of a seeded `fraction` of this split's articles (at least one); shares the vectors.
        For data-scale curves: the same val/test, fewer train articles."""
        if fraction >= 1.0:
            return self
        ids = np.unique(self.article_indices[self.starts])
        keep = np.sort(np.random.default_rng(seed).permutation(ids)[:max(1, round(fraction * ids.size))])
        return self.with_starts(self.starts[np.isin(self.article_indices[self.starts], keep)], kept_articles=keep)

    def kept_rows(self) -> np.ndarray:
        """Vectors of the kept articles [n, D] (all rows of the split without a subset)."""
        if self.kept_articles is None:
            return self.vectors_np
        return self.vectors_np[np.isin(self.article_indices, self.kept_articles)]

    def last_context_rows(self) -> np.ndarray:
        return self.starts + self.context_length - 1

    def targets_rows(self) -> np.ndarray:
        """Row (inside this split's vectors) of each window's target: the retrieval bank index."""
        return self.starts + self.context_length

    def target_rows(self, indices, all_targets: bool = False) -> np.ndarray:
        """Rows of the targets of windows `indices`: [B], or [B, L] with all_targets."""
        starts = self.starts[np.asarray(indices, dtype=np.int64)]
        return starts[:, None] + np.arange(1, self.context_length + 1) if all_targets else starts + self.context_length

    def window_articles(self) -> np.ndarray:
        return self.article_indices[self.targets_rows()]
