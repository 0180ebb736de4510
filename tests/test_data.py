"""Windows, article splits, compact storage vs naive windows, WindowDataset, npz reading and atomic writes."""
import json
import os

import numpy as np
import pytest

from lvm import LvmError
import lvm.data as D
from lvm.data import SPLITS, WindowDataset, count_windows, export_windows, load_corpus, split_articles
from lvm.io import NpzReader, StreamedArray, atomic_path, save_npz, write_json

FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
# 15 articles; with L=6 the ones shorter than 7 rows (3 and 6) have no window.
LENGTHS = [3, 12, 7, 30, 11, 25, 6, 18, 40, 10, 22, 15, 9, 33, 13]


def load_split(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def export(make_npz, out, L=6, overlap=3, seed=1, lengths=LENGTHS, fractions=FRACTIONS, **kw):
    path, arrays = make_npz(lengths, interleave=True, **kw)
    corpus = load_corpus(path)
    meta = export_windows(corpus, out, L, overlap, fractions, seed)
    return meta, arrays, {name: load_split(out / f"{name}.npz") for name in SPLITS}


def naive_windows(arrays, article_ids, L, stride):
    """[n, L, D] contexts and [n, D] targets, looping over articles (sorted ids) in file order."""
    ctx, tgt, art = [], [], []
    for a in sorted(article_ids):
        rows = np.flatnonzero(arrays["article_indices"] == a)
        for s in range(0, rows.size - L, stride):
            ctx.append(arrays["vectors"][rows[s:s + L]])
            tgt.append(arrays["vectors"][rows[s + L]])
            art.append(a)
    d = arrays["vectors"].shape[1]
    return (np.array(ctx, np.float32).reshape(-1, L, d), np.array(tgt, np.float32).reshape(-1, d),
            np.array(art))


# --- window geometry ------------------------------------------------------------------------------

@pytest.mark.parametrize("L, overlap", [(6, 3), (6, 5), (6, 0), (1, 0), (10, 9)])
def test_windows_stay_in_one_article_and_target_is_next_chunk(tmp_path, make_npz, L, overlap):
    meta, src, splits = export(make_npz, tmp_path / "out", L=L, overlap=overlap)
    stride = L - overlap
    total = 0
    for name, s in splits.items():
        starts, rows = s["window_starts"], s["source_rows"]
        assert int(s["context_length"]) == L
        # the split file stores its rows' true source rows, article ids, chunk ids and vectors
        np.testing.assert_array_equal(s["article_indices"], src["article_indices"][rows])
        np.testing.assert_array_equal(s["chunk_indices"], src["chunk_indices"][rows])
        np.testing.assert_array_equal(s["vectors"], src["vectors"][rows])
        assert starts.size == meta["splits"][name]["windows"]
        assert starts.size == 0 or starts.max() + L < rows.size
        for st in starts:
            span = np.arange(st, st + L + 1)  # context rows + target row
            assert np.all(s["article_indices"][span] == s["article_indices"][st]), "window crosses articles"
            assert np.all(np.diff(s["chunk_indices"][span]) == 1), "target is not the chunk after the context"
            assert np.all(np.diff(rows[span]) > 0), "rows not in file order"
        # stride respected: per article, starts are offset + 0, stride, 2*stride, ...
        for a in np.unique(s["article_indices"]):
            a_rows = np.flatnonzero(s["article_indices"] == a)
            assert np.all(np.diff(a_rows) == 1)  # each article stored contiguously
            mine = starts[(starts >= a_rows[0]) & (starts <= a_rows[-1])] - a_rows[0]
            np.testing.assert_array_equal(mine, np.arange(0, a_rows.size - L, stride))
        total += starts.size
    assert total == meta["total_windows"] == sum(len(range(0, n - L, stride)) for n in LENGTHS if n > L)
    assert meta["context_length"] == L and meta["overlap"] == overlap and meta["stride"] == stride


def test_count_windows_matches_naive_count():
    lengths = np.arange(0, 60)
    for L in (1, 2, 5, 10, 30):
        for stride in (1, 2, 3, 7, L):
            expected = [len(range(0, n - L, stride)) if n > L else 0 for n in lengths]
            np.testing.assert_array_equal(count_windows(lengths, L, stride), expected)


# --- article splits -------------------------------------------------------------------------------

def test_splits_are_article_disjoint_and_cover_eligible_articles(tmp_path, make_npz):
    L = 6
    meta, src, splits = export(make_npz, tmp_path / "out", L=L)
    sets = {name: set(np.unique(s["article_indices"]).tolist()) for name, s in splits.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    ids = 10 + 3 * np.arange(len(LENGTHS))
    eligible = {int(a) for a, n in zip(ids, LENGTHS) if n >= L + 1}
    assert sets["train"] | sets["val"] | sets["test"] == eligible
    assert all(len(v) > 0 for v in sets.values())
    assert [meta["splits"][n]["articles"] for n in SPLITS] == [len(sets[n]) for n in SPLITS] == [7, 3, 3]  # 13 eligible: round(2.6)=3 val, 3 test
    assert meta["articles_skipped_too_short"] == 2 and meta["vectors_in_skipped_articles"] == 9
    assert meta["total_articles"] == len(LENGTHS) and meta["total_vectors"] == sum(LENGTHS)
    for name, s in splits.items():  # every row of an eligible article is stored, once
        assert meta["splits"][name]["vectors"] == s["vectors"].shape[0]
        for a in sets[name]:
            assert (s["article_indices"] == a).sum() == LENGTHS[(a - 10) // 3]


def test_split_is_deterministic_and_seeded(tmp_path, make_npz):
    _, _, first = export(make_npz, tmp_path / "a", seed=5)
    _, _, again = export(make_npz, tmp_path / "b", seed=5)
    _, _, other = export(make_npz, tmp_path / "c", seed=6)
    for name in SPLITS:
        assert first[name].keys() == again[name].keys()
        for key in first[name]:
            np.testing.assert_array_equal(first[name][key], again[name][key])
    for name in SPLITS:
        assert (tmp_path / "a" / f"{name}.npz").read_bytes() == (tmp_path / "b" / f"{name}.npz").read_bytes()
    assert any(set(first[n]["article_indices"].tolist()) != set(other[n]["article_indices"].tolist())
               for n in SPLITS)


def test_split_articles_fractions_and_errors():
    ids = np.arange(100) * 2
    s = split_articles(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert [s[n].size for n in SPLITS] == [80, 10, 10]
    assert np.array_equal(np.sort(np.concatenate(list(s.values()))), ids)
    s = split_articles(ids, {"train": 0.9, "val": 0.0, "test": 0.1}, seed=0)
    assert [s[n].size for n in SPLITS] == [90, 0, 10]
    s = split_articles(ids[:3], {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert [s[n].size for n in SPLITS] == [1, 1, 1]
    with pytest.raises(LvmError, match="only 2 articles"):
        split_articles(ids[:2], {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)



@pytest.mark.parametrize("n, folds", [(76, 10), (23, 5), (9, 3)])
def test_folds_test_every_article_exactly_once_and_never_mix_splits(n, folds):
    ids = np.arange(n) * 3 + 1
    tested = []
    for k in range(folds):
        s = split_articles(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=42, folds=folds, fold=k)
        assert np.array_equal(np.sort(np.concatenate([s[name] for name in SPLITS])), ids)  # each in one split
        assert min(s["val"].size, s["test"].size) >= n // folds and s["train"].size == n - s["val"].size - s["test"].size
        tested.append(s["test"])
        # fold k validates on the articles fold k+1 tests
        nxt = split_articles(ids, {}, seed=42, folds=folds, fold=(k + 1) % folds)
        assert np.array_equal(s["val"], nxt["test"])
    assert np.array_equal(np.sort(np.concatenate(tested)), ids)  # every article tested exactly once
    with pytest.raises(LvmError, match="export.folds"):
        split_articles(ids[:folds - 1], {}, seed=42, folds=folds, fold=0)


@pytest.mark.parametrize("n", [76, 100, 40])
def test_fold_zero_of_ten_is_the_one_split(n):
    """The committed pipeline (export.folds: 0) is fold 0 of the 10-fold cross-validation: the default
    corpus has 76 articles long enough for L=100, split 0.8/0.1/0.1 with export.seed 42."""
    ids = np.arange(n) * 2
    one = split_articles(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=42)
    fold0 = split_articles(ids, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=42, folds=10, fold=0)
    for name in SPLITS:
        assert np.array_equal(one[name], fold0[name]), name

# --- compact storage == naive windows; WindowDataset ----------------------------------------------

@pytest.mark.parametrize("L, overlap", [(6, 3), (6, 5), (4, 0)])
def test_compact_windows_equal_naive_windows(tmp_path, make_npz, L, overlap):
    meta, src, _ = export(make_npz, tmp_path / "out", L=L, overlap=overlap, dim=5)
    stride = L - overlap
    for name in SPLITS:
        path = tmp_path / "out" / f"{name}.npz"
        ds, ds_map = WindowDataset(path), WindowDataset(path, mmap=True)
        ctx, tgt, art = naive_windows(src, np.unique(ds.article_indices), L, stride)
        assert len(ds) == len(ds_map) == ctx.shape[0] == meta["splits"][name]["windows"] > 0
        assert ds.dim == ds_map.dim == 5
        for d in (ds, ds_map):
            bc, bt = d.batch(np.arange(len(d)))
            assert tuple(bc.shape) == (len(d), L, 5) and tuple(bt.shape) == (len(d), 5)
            np.testing.assert_array_equal(bc.numpy(), ctx)
            np.testing.assert_array_equal(bt.numpy(), tgt)
            for i in range(len(d)):
                c, t = d[i]
                np.testing.assert_array_equal(c.numpy(), ctx[i])
                np.testing.assert_array_equal(t.numpy(), tgt[i])
            np.testing.assert_array_equal(d.window_articles(), art)
            np.testing.assert_array_equal(d.vectors_np[d.targets_rows()], tgt)
        perm = np.random.default_rng(0).permutation(len(ds))[:7]
        for d in (ds, ds_map):
            bc, bt = d.batch(perm)
            np.testing.assert_array_equal(bc.numpy(), ctx[perm])
            np.testing.assert_array_equal(bt.numpy(), tgt[perm])


def test_batch_returns_copies(tmp_path, make_npz):
    export(make_npz, tmp_path / "out")
    ds = WindowDataset(tmp_path / "out" / "train.npz")
    before = ds.vectors_np.copy()
    bc, bt = ds.batch([0, 1])
    bc.zero_()
    bt.zero_()
    np.testing.assert_array_equal(ds.vectors_np, before)


def test_batches_cover_every_window_once(tmp_path, make_npz):
    export(make_npz, tmp_path / "out", L=6, overlap=5)
    ds = WindowDataset(tmp_path / "out" / "train.npz")
    n = len(ds)
    seen = np.concatenate([i for i, _, _ in ds.batches(batch_size=16)])
    np.testing.assert_array_equal(seen, np.arange(n))
    shuffled = [i for i, c, t in ds.batches(batch_size=16, shuffle=True, seed=3)]
    assert all(len(i) == 16 for i in shuffled[:-1])
    flat = np.concatenate(shuffled)
    assert not np.array_equal(flat, np.arange(n)) and np.array_equal(np.sort(flat), np.arange(n))
    again = np.concatenate([i for i, _, _ in ds.batches(batch_size=16, shuffle=True, seed=3)])
    np.testing.assert_array_equal(flat, again)
    sub = np.concatenate([i for i, _, _ in ds.batches(batch_size=8, limit=20, seed=1)])
    assert sub.size == 20 and np.unique(sub).size == 20 and np.all(np.diff(sub) > 0)
    for idx, c, t in ds.batches(batch_size=16, shuffle=True, seed=3):
        ec, et = ds.batch(idx)
        np.testing.assert_array_equal(c.numpy(), ec.numpy())
        np.testing.assert_array_equal(t.numpy(), et.numpy())


def test_small_row_chunks_give_identical_output(tmp_path, make_npz, monkeypatch):
    meta_big, _, big = export(make_npz, tmp_path / "big")
    monkeypatch.setattr(D, "ROW_CHUNK", 7)  # forces multi-chunk streaming, finite check and coherence
    meta_small, _, small = export(make_npz, tmp_path / "small")
    for name in SPLITS:
        for key in big[name]:
            np.testing.assert_array_equal(big[name][key], small[name][key])
    assert meta_big["coherence"] == meta_small["coherence"]


def test_coherence_is_mean_consecutive_cosine_inside_articles(tmp_path, make_npz):
    meta, src, _ = export(make_npz, tmp_path / "out")
    cos = []
    for a in np.unique(src["article_indices"]):
        v = src["vectors"][src["article_indices"] == a]
        cos.extend(np.sum(v[1:] * v[:-1], axis=1))
    assert meta["coherence"]["mean_consecutive_cosine"] == pytest.approx(np.mean(cos), abs=1e-5)
    assert meta["coherence"]["std_consecutive_cosine"] == pytest.approx(np.std(cos), abs=1e-5)


def test_file_without_article_indices_is_one_stream(tmp_path, make_npz):
    path, src = make_npz([100], with_articles=False, with_chunks=False)
    corpus = load_corpus(path, stream_block=20)
    assert not corpus.has_article_ids
    assert len(corpus.notes) == 1 and corpus.notes[0].startswith("WARNING") and "article_indices" in corpus.notes[0]
    meta = export_windows(corpus, tmp_path / "out", 6, 3, FRACTIONS, 0)
    assert meta["article_ids_present"] is False and meta["notes"] == corpus.notes
    assert meta["total_articles"] == 5
    for name in SPLITS:
        s = load_split(tmp_path / "out" / f"{name}.npz")
        assert np.all(s["source_rows"] // 20 == s["article_indices"])  # pseudo-article = block of 20 rows
        np.testing.assert_array_equal(s["chunk_indices"], s["source_rows"] % 20)


def test_float64_and_compressed_inputs(tmp_path, make_npz):
    path, src = make_npz(LENGTHS)
    wide = tmp_path / "wide.npz"
    np.savez_compressed(wide, **{**src, "vectors": src["vectors"].astype(np.float64)})
    export_windows(load_corpus(path), tmp_path / "a", 6, 3, FRACTIONS, 0)
    export_windows(load_corpus(wide), tmp_path / "b", 6, 3, FRACTIONS, 0)
    for name in SPLITS:
        a, b = load_split(tmp_path / "a" / f"{name}.npz"), load_split(tmp_path / "b" / f"{name}.npz")
        assert b["vectors"].dtype == np.float32
        np.testing.assert_array_equal(a["vectors"], b["vectors"])


# --- NpzReader ------------------------------------------------------------------------------------

def test_npz_reader_memmaps_stored_members_and_reads_compressed(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a": rng.standard_normal((33, 7)).astype(np.float32), "b": np.arange(5), "s": np.int64(4),
              "t": np.array(["x", "yy"])}
    np.savez(tmp_path / "plain.npz", **arrays)
    np.savez_compressed(tmp_path / "packed.npz", **arrays)
    save_npz(tmp_path / "ours.npz", **arrays)
    for name in ("plain.npz", "packed.npz", "ours.npz"):
        with NpzReader(tmp_path / name) as r:
            assert sorted(r.keys) == ["a", "b", "s", "t"]
            assert r.header("a") == ((33, 7), np.dtype(np.float32))
            for k, v in arrays.items():
                got = r.load(k)
                np.testing.assert_array_equal(got, v)
                assert got.dtype == np.asarray(v).dtype
            assert isinstance(r.load("a"), np.memmap) == (name != "packed.npz")
            assert not isinstance(r.load("a", mmap=False), np.memmap)
            with pytest.raises(LvmError, match="missing key 'zz'"):
                r.load("zz")


def test_npz_reader_refuses_pickles_unless_trusted(tmp_path):
    np.savez(tmp_path / "obj.npz", vectors=np.zeros((2, 3), np.float32),
             concept_texts=np.array(["a", None], dtype=object))
    with NpzReader(tmp_path / "obj.npz") as r:
        assert r.load("vectors").shape == (2, 3)
        with pytest.raises(LvmError, match="concept_texts.*pickle.*data.trust_pickle"):
            r.load("concept_texts")
    with NpzReader(tmp_path / "obj.npz", trust_pickle=True) as r:
        assert r.load("concept_texts").tolist() == ["a", None]


def test_npz_reader_bad_files(tmp_path):
    with pytest.raises(LvmError, match="file not found"):
        NpzReader(tmp_path / "none.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(LvmError, match="not an .npz file"):
        NpzReader(tmp_path / "junk.npz")


# --- atomic writes --------------------------------------------------------------------------------

def _failing_rows(n_ok_chunks):
    for i in range(n_ok_chunks):
        yield np.full((4, 3), i, np.float32)
    raise RuntimeError("disk on fire")


def test_save_npz_failure_leaves_nothing(tmp_path):
    dest = tmp_path / "sub" / "out.npz"
    with pytest.raises(RuntimeError, match="disk on fire"):
        save_npz(dest, first=np.arange(3), vectors=StreamedArray((12, 3), np.float32, _failing_rows(2)))
    assert not dest.exists()
    assert os.listdir(dest.parent) == []  # no temp file either


def test_save_npz_row_count_mismatch_fails(tmp_path):
    dest = tmp_path / "out.npz"
    with pytest.raises(RuntimeError, match="streamed 8 rows, header promised 12"):
        save_npz(dest, vectors=StreamedArray((12, 3), np.float32, (np.zeros((4, 3)) for _ in range(2))))
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_existing_good_file(tmp_path):
    dest = tmp_path / "out.npz"
    good = np.arange(12, dtype=np.float32).reshape(4, 3)
    save_npz(dest, vectors=StreamedArray((4, 3), np.float32, iter([good[:2], good[2:]])), n=np.int64(4))
    before = dest.read_bytes()
    for bad in (StreamedArray((12, 3), np.float32, _failing_rows(1)),):
        with pytest.raises(RuntimeError):
            save_npz(dest, vectors=bad)
    with pytest.raises(ValueError):  # object arrays are refused by write_array(allow_pickle=False)
        save_npz(dest, vectors=good, texts=np.array(["a", None], dtype=object))
    assert dest.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.npz"]
    with np.load(dest, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["vectors"], good)
        assert int(z["n"]) == 4


def test_atomic_path_and_json(tmp_path):
    dest = tmp_path / "m.json"
    write_json(dest, {"a": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(dest) as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert json.loads(dest.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["m.json"]


def test_batch_accepts_lists_arrays_and_tensors(tmp_path, make_npz):
    import torch

    export(make_npz, tmp_path / "out")
    ds = WindowDataset(tmp_path / "out" / "train.npz")
    ref_c, ref_t = ds.batch(np.array([3, 0, 5]))
    for idx in ([3, 0, 5], torch.tensor([3, 0, 5]), np.array([3, 0, 5], dtype=np.int32)):
        c, t = ds.batch(idx)
        assert c.dtype == torch.float32 and c.is_contiguous() and t.is_contiguous()
        np.testing.assert_array_equal(c.numpy(), ref_c.numpy())
        np.testing.assert_array_equal(t.numpy(), ref_t.numpy())


def test_empty_val_split(tmp_path, make_npz):
    meta, _, splits = export(make_npz, tmp_path / "out", fractions={"train": 0.9, "val": 0.0, "test": 0.1})
    assert meta["splits"]["val"] == {**meta["splits"]["val"], "articles": 0, "vectors": 0, "windows": 0}
    for mmap in (False, True):
        ds = WindowDataset(tmp_path / "out" / "val.npz", mmap=mmap)
        assert len(ds) == 0
        c, t = ds.batch(np.zeros(0, np.int64))
        assert tuple(c.shape) == (0, 6, 8) and tuple(t.shape) == (0, 8)
        assert list(ds.batches(4)) == []


def test_test_split_can_use_its_own_stride(tmp_path, make_npz):
    path, _ = make_npz(LENGTHS, interleave=True)
    meta = export_windows(load_corpus(path), tmp_path / "out", 6, 2, FRACTIONS, 1, 1)
    assert meta["stride"] == 4 and meta["test_stride"] == 1
    for name, stride in (("train", 4), ("val", 4), ("test", 1)):
        s = load_split(tmp_path / "out" / f"{name}.npz")
        expected = []
        for a in np.unique(s["article_indices"]):
            a_rows = np.flatnonzero(s["article_indices"] == a)
            expected.extend(a_rows[0] + np.arange(0, a_rows.size - 6, stride))
        np.testing.assert_array_equal(s["window_starts"], expected)
        assert meta["splits"][name]["windows"] == len(expected)


def test_save_npz_is_byte_identical_across_runs(tmp_path):
    """DVC hashes file bytes: a rerun with the same content must not look like a change downstream."""
    import hashlib
    import time

    from lvm.io import save_npz

    arrays = {"vectors": np.arange(12, dtype=np.float32).reshape(3, 4), "texts": np.array(["a", "bc"])}
    save_npz(tmp_path / "a.npz", compress=True, **arrays)
    time.sleep(2.1)  # zip timestamps have 2 s resolution
    save_npz(tmp_path / "b.npz", compress=True, **arrays)
    digest = [hashlib.md5((tmp_path / n).read_bytes()).hexdigest() for n in ("a.npz", "b.npz")]
    assert digest[0] == digest[1]


def test_min_target_position_gives_every_context_length_the_same_split_and_targets(tmp_path, make_npz):
    """The context-length sweep's premise: with P fixed, L only changes how much context a target gets."""
    path, arrays = make_npz(LENGTHS, interleave=True)
    corpus = load_corpus(path)
    P = 12
    targets = {}
    for L in (1, 4, 12):
        out = tmp_path / f"L{L}"
        meta = export_windows(corpus, out, L, 0, FRACTIONS, 1, 1, min_target_position=P, val_stride=2)
        assert meta["first_target_position"] == P and meta["val_stride"] == 2
        for name in SPLITS:
            s = load_split(out / f"{name}.npz")
            ds = WindowDataset(out / f"{name}.npz")
            assert ds.first_target == int(s.get("first_target", L)) == P  # stored only when != L
            tgt_rows = s["source_rows"][s["window_starts"] + L]
            # every target sits at position >= P of its article; its context is the L chunks before it
            assert np.all(s["chunk_indices"][s["window_starts"] + L] >= P)
            assert np.all(s["chunk_indices"][s["window_starts"]] == s["chunk_indices"][s["window_starts"] + L] - L)
            if name != "train":  # train is exported at stride L - overlap, which depends on L
                targets.setdefault(name, []).append(tgt_rows)
            if name == "train":  # restriding keeps P: stride-1 training windows are the same targets for every L
                targets.setdefault("train1", []).append(s["source_rows"][ds.restrided(1).targets_rows()])
    for name, per_L in targets.items():
        for other in per_L[1:]:
            np.testing.assert_array_equal(per_L[0], other)
    # articles with <= P rows are left out of every split, so the split itself does not depend on L
    long_ids = {10 + 3 * i for i, n in enumerate(LENGTHS) if n > P}
    kept = set()
    for name in SPLITS:
        kept |= set(np.unique(load_split(tmp_path / "L1" / f"{name}.npz")["article_indices"]).tolist())
    assert kept == long_ids


def test_min_target_position_below_context_length_changes_nothing(tmp_path, make_npz):
    path, _ = make_npz(LENGTHS, interleave=True)
    corpus = load_corpus(path)
    export_windows(corpus, tmp_path / "a", 6, 3, FRACTIONS, 1, 1)
    export_windows(corpus, tmp_path / "b", 6, 3, FRACTIONS, 1, 1, min_target_position=4, val_stride=3)
    for name in SPLITS:
        a, b = load_split(tmp_path / "a" / f"{name}.npz"), load_split(tmp_path / "b" / f"{name}.npz")
        assert a.keys() == b.keys() and "first_target" not in a
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
