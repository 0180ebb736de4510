"""Bad input and params: the export stage exits 2 with one `error:` line naming the problem, no traceback,
and leaves no output behind. Good-but-unusual inputs (no article ids, 784-D, trusted pickles) work."""
import io
import json
import struct
import zipfile

import numpy as np
import pytest

from conftest import merge, run_stage, unit_rows, write_params, write_vectors

STAGE = "lvm.stages.export_ctx100"
GOOD_LENGTHS = [30, 25, 40, 20, 35, 28]  # L=10 (TINY_PARAMS): every article has windows


def good(path, **kw):
    return write_vectors(path, GOOD_LENGTHS, **kw)


def raw(path, **arrays):
    np.savez(path, **arrays)


def _nan_rows(path):
    a = good(path)
    a["vectors"][5, 2] = np.nan
    a["vectors"][9, 0] = np.inf
    raw(path, **a)


def _bad_article_len(path):
    a = good(path)
    raw(path, **{**a, "article_indices": a["article_indices"][:-1]})


def _float_article_ids(path):
    a = good(path)
    raw(path, **{**a, "article_indices": a["article_indices"].astype(np.float32)})


def _chunks_out_of_order(path):
    a = good(path)
    c = a["chunk_indices"].copy()
    c[[3, 4]] = c[[4, 3]]  # rows 3 and 4 are both in the first article
    raw(path, **{**a, "chunk_indices": c})


def _pickled(path):
    raw(path, **good(path), concept_texts=np.array(["x"] * sum(GOOD_LENGTHS), dtype=object))


def _beyond_float32(path, row=7, col=3, value=1e39):
    a = good(path)
    v = a["vectors"].astype(np.float64)
    v[row, col] = value  # finite as float64, Inf once exported as float32
    raw(path, **{**a, "vectors": v})


def _float16_inf(path):
    a = good(path)
    v = a["vectors"].astype(np.float16)
    v[4, 1] = np.inf
    raw(path, **{**a, "vectors": v})


def _zero_rows(path):
    a = good(path)
    a["vectors"][[12, 40]] = 0.0  # padding rows: finite, but no direction
    raw(path, **a)


def _shards_reusing_ids(path):
    """Two shards, each numbering its articles 10, 13, ..., concatenated; no chunk_indices."""
    a = good(path, with_chunks=False)
    b = good(path, with_chunks=False, seed=1)
    raw(path, **{k: np.concatenate([a[k], b[k]]) for k in a})


def _copied_article(path):
    """Article 16 included a second time under the new id 99 (e.g. one shard exported twice)."""
    a = good(path)
    rows = a["article_indices"] == 16
    raw(path, **{k: np.concatenate([v, v[rows] if k != "article_indices" else np.full(rows.sum(), 99, v.dtype)])
                 for k, v in a.items()})


def _uint64_ids(key):
    def write(path):
        a = good(path)
        ids = a[key].astype(np.uint64)
        ids[11] = np.uint64(2 ** 63 + 5)  # would wrap to a negative int64
        raw(path, **{**a, key: ids})
    return write


def _replace_key(key, value):
    def write(path):
        raw(path, **{**good(path), key: value})
    return write


def _members(path, members, compress=zipfile.ZIP_STORED):
    """A zip holding the given raw members (name -> bytes): what np.savez would never write."""
    with zipfile.ZipFile(path, "w", compression=compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def _npy_bytes(arr):
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _text_as_member(key):
    def write(path):
        a = good(path)
        members = {f"{k}.npy": _npy_bytes(v) for k, v in a.items()}
        members[f"{key}.npy"] = b"hello, this is a text file and no array\n"
        _members(path, members)
    return write


def _bad_npy_header(path):
    a = good(path)
    members = {f"{k}.npy": _npy_bytes(v) for k, v in a.items()}
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (oops}"
    header += b" " * (63 - len(header)) + b"\n"
    members["vectors.npy"] = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + b"\0" * 64
    _members(path, members)


def _short_stored_member(path):
    """A stored member whose header promises more rows than it holds (a map would read past it)."""
    a = good(path)
    members = {f"{k}.npy": _npy_bytes(v) for k, v in a.items()}
    members["vectors.npy"] = _npy_bytes(a["vectors"])[:-8 * 4 * 10]  # 10 rows short
    _members(path, {"vectors.npy": members.pop("vectors.npy"), **members})


def _patch_crc(path, member):
    """Flip the CRC-32 recorded for `member` (local header and central directory): the data is intact."""
    with zipfile.ZipFile(path) as zf:
        info, start_dir = zf.getinfo(member), zf.start_dir
    data = bytearray(path.read_bytes())
    bad = struct.pack("<I", info.CRC ^ 0xDEADBEEF)
    data[info.header_offset + 14:info.header_offset + 18] = bad
    pos = start_dir
    while data[pos:pos + 4] == b"PK\x01\x02":
        n, e, c = struct.unpack("<HHH", data[pos + 28:pos + 34])
        if data[pos + 46:pos + 46 + n].decode() == member:
            data[pos + 16:pos + 20] = bad
        pos += 46 + n + e + c
    path.write_bytes(bytes(data))


def _bad_crc_compressed(path):
    np.savez_compressed(path, **good(path))
    _patch_crc(path, "vectors.npy")


def _bad_crc_ids(path):
    np.savez_compressed(path, **good(path))
    _patch_crc(path, "article_indices.npy")


def _flipped_bit_stored(path, fortran=False):
    """One flipped bit in the data of a stored (memory-mapped) member: only its CRC tells."""
    a = good(path)
    if fortran:  # mapped too, but not as the float32 rows the loader hashes: checked in its own pass
        raw(path, **{**a, "vectors": np.asfortranarray(a["vectors"])})
    from lvm.io import NpzReader

    with NpzReader(path) as r:
        offset, _ = r._data_offset(r._zip.getinfo("vectors.npy"))
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0x01  # lowest mantissa bit of one float32: a plausible value
    path.write_bytes(bytes(data))


def _corrupt_deflate(path):
    np.savez_compressed(path, vectors=unit_rows(np.random.default_rng(0), 400, 8))
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("vectors.npy")
    data = bytearray(path.read_bytes())
    mid = info.header_offset + 30 + len(info.filename) + info.compress_size // 2
    data[mid:mid + 16] = bytes(16)
    path.write_bytes(bytes(data))


def _truncated_zip(path):
    good(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _vectors_as_txt(path):
    a = good(path)
    _members(path, {"vectors.txt": b"0.1 0.2\n", "article_indices.npy": _npy_bytes(a["article_indices"])})


# (name, writes the vectors file (or None), params overrides, substrings of the one error line)
BAD = [
    ("missing_file", None, {}, ["vectors.npz", "file not found"]),
    ("not_a_zip", lambda p: p.write_text("hello"), {}, ["vectors.npz", "not an .npz file"]),
    ("no_vectors_key", lambda p: raw(p, embeddings=np.zeros((5, 4), np.float32)), {},
     ["vectors.npz", "missing key 'vectors'", "embeddings"]),
    ("vectors_1d", lambda p: raw(p, vectors=np.zeros(40, np.float32)), {}, ["'vectors'", "2-D", "(40,)"]),
    ("vectors_3d", lambda p: raw(p, vectors=np.zeros((4, 5, 6), np.float32)), {}, ["'vectors'", "2-D"]),
    ("vectors_int", lambda p: raw(p, vectors=np.zeros((40, 4), np.int32)), {}, ["'vectors'", "floating"]),
    ("vectors_empty", lambda p: raw(p, vectors=np.zeros((0, 4), np.float32)), {}, ["'vectors'", "empty"]),
    ("nan_inf_rows", _nan_rows, {}, ["'vectors'", "NaN/Inf", "2 rows", "row 5"]),
    ("article_indices_wrong_length", _bad_article_len, {}, ["'article_indices'", f"[{sum(GOOD_LENGTHS)}]"]),
    ("article_indices_float", _float_article_ids, {}, ["'article_indices'", "integers"]),
    ("chunk_order_not_monotone", _chunks_out_of_order, {}, ["'chunk_indices'", "not increasing", "article 10"]),
    ("all_articles_too_short", lambda p: write_vectors(p, [5, 8, 10, 3]), {},
     ["vectors.npz", "shorter than data.context_length + 1 = 11", "longest has 10"]),
    ("too_few_long_articles", lambda p: write_vectors(p, [30, 5, 25]), {}, ["export.split", "only 2 articles"]),
    ("overlap_equals_L", good, {"export": {"overlap": 10}}, ["export.overlap"]),
    ("overlap_above_L", good, {"export": {"overlap": 15}}, ["export.overlap"]),
    ("L_zero", good, {"data": {"context_length": 0}}, ["data.context_length", ">= 1"]),
    ("L_negative", good, {"data": {"context_length": -5}}, ["data.context_length", ">= 1"]),
    ("split_sum", good, {"export": {"split": {"train": 0.7, "val": 0.2, "test": 0.2}}}, ["export.split", "sum to 1"]),
    ("pickled_keys_untrusted", _pickled, {}, ["'concept_texts'", "pickle", "data.trust_pickle"]),
    ("unknown_key", good, {"data": {"contxt_length": 10}}, ["data.contxt_length", "unknown key"]),
    ("unknown_section", good, {"exprt": {"overlap": 5}}, ["exprt", "unknown key"]),
    ("min_target_beyond_every_article", good, {"export": {"min_target_position": 45}},
     ["shorter than export.min_target_position + 1 = 46", "longest has 40"]),
    ("unknown_device", good, {"train": {"device": "tpu"}}, ["train.device", "'tpu'"]),
    ("wrong_type", good, {"data": {"context_length": "ten"}}, ["data.context_length", "integer"]),
    # --- issue 13: values a cast would change (case 2, 3) ---
    ("float64_beyond_float32", _beyond_float32, {},
     ["vectors.npz", "'vectors'", "float32", "1 rows", "row 7, column 3", "1e+39"]),
    ("float64_far_below_float32", lambda p: _beyond_float32(p, 2, 0, -1e300), {}, ["'vectors'", "row 2"]),
    ("float16_inf", _float16_inf, {}, ["'vectors'", "row 4, column 1"]),
    ("zero_rows", _zero_rows, {}, ["'vectors'", "2 all-zero rows", "first: row 12"]),
    # an article twice under two ids: its copy in test would be a test target seen in training
    ("copied_article", _copied_article, {},
     ["vectors.npz", "'vectors'", "1 articles repeat", "article 99 = article 16, 40 rows", "leak"]),
    # ids restarting in a second shard: without chunk_indices two texts would silently become one article
    ("shards_reusing_article_ids", _shards_reusing_ids, {},
     ["vectors.npz", "'article_indices'", "6 articles", "article 10: rows from 0 and again from 178", "'chunk_indices'"]),
    ("uint64_article_ids_above_int64", _uint64_ids("article_indices"), {},
     ["vectors.npz", "'article_indices'", "int64", "row 11", str(2 ** 63 + 5)]),
    ("uint64_chunk_ids_above_int64", _uint64_ids("chunk_indices"), {}, ["'chunk_indices'", "int64", "row 11"]),
    ("vectors_complex", _replace_key("vectors", np.zeros((178, 8), np.complex64)), {}, ["'vectors'", "floating"]),
    ("vectors_structured", _replace_key("vectors", np.zeros(178, [("a", "<f4"), ("b", "<f4")])), {},
     ["'vectors'", "2-D"]),
    ("article_indices_bool", _replace_key("article_indices", np.ones(178, bool)), {},
     ["'article_indices'", "integers"]),
    ("article_indices_2d", _replace_key("article_indices", np.ones((178, 2), np.int32)), {},
     ["'article_indices'", "[178]"]),
    # --- damaged files and members that are no array (case 12) ---
    ("bad_crc_compressed_vectors", _bad_crc_compressed, {}, ["vectors.npz", "member 'vectors.npy'", "CRC"]),
    ("bad_crc_compressed_ids", _bad_crc_ids, {}, ["vectors.npz", "member 'article_indices.npy'", "CRC"]),
    ("flipped_bit_stored_vectors", _flipped_bit_stored, {}, ["vectors.npz", "member 'vectors.npy'", "CRC"]),
    ("flipped_bit_stored_fortran_vectors", lambda p: _flipped_bit_stored(p, fortran=True), {},
     ["vectors.npz", "member 'vectors.npy'", "CRC"]),
    ("corrupt_deflate_stream", _corrupt_deflate, {}, ["vectors.npz", "member 'vectors.npy'", "damaged"]),
    ("text_member_as_vectors", _text_as_member("vectors"), {},
     ["vectors.npz", "member 'vectors.npy'", "not a readable .npy array"]),
    ("text_member_as_chunk_indices", _text_as_member("chunk_indices"), {},
     ["member 'chunk_indices.npy'", "not a readable .npy array"]),
    ("garbled_npy_header", _bad_npy_header, {}, ["member 'vectors.npy'", "not a readable .npy array"]),
    ("stored_member_shorter_than_header", _short_stored_member, {},
     ["member 'vectors.npy'", "damaged", "(178, 8)"]),
    ("vectors_as_txt_member", _vectors_as_txt, {}, ["missing key 'vectors'", "other members: vectors.txt"]),
    ("truncated_zip", _truncated_zip, {}, ["vectors.npz", "not an .npz file"]),
    ("empty_file", lambda p: p.write_bytes(b""), {}, ["vectors.npz", "not an .npz file"]),
    # --- params torch or numpy would reject later, after the work (case 13) ---
    ("export_seed_negative", good, {"export": {"seed": -1}}, ["export.seed", ">= 0"]),
    ("train_seed_negative", good, {"train": {"seed": -1}}, ["train.seed"]),
    ("train_lr_nan", good, {"train": {"lr": float("nan")}}, ["train.lr", "finite", "nan"]),
    ("train_lr_inf", good, {"train": {"lr": float("inf")}}, ["train.lr", "finite", "inf"]),
    ("train_lr_overflow", good, {"train": {"lr": "1.0e+400"}}, ["train.lr", "finite"]),
    ("train_weight_decay_negative", good, {"train": {"weight_decay": -0.1}}, ["train.weight_decay", ">= 0"]),
    ("train_grad_clip_negative", good, {"train": {"grad_clip": -1.0}}, ["train.grad_clip", ">= 0"]),
    ("train_lr_factor_zero", good, {"train": {"lr_factor": 0.0}}, ["train.lr_factor", "(0, 1)"]),
    ("train_lr_factor_one", good, {"train": {"lr_factor": 1.0}}, ["train.lr_factor", "(0, 1)"]),
    ("train_lr_factor_above_one", good, {"train": {"lr_factor": 1.5}}, ["train.lr_factor", "(0, 1)"]),
    ("evaluate_n_boot_zero", good, {"evaluate": {"n_boot": 0}}, ["evaluate.n_boot", ">= 1"]),
    ("evaluate_batch_size_zero", good, {"evaluate": {"batch_size": 0}}, ["evaluate.batch_size", ">= 1"]),
    ("nested_split_nan", good, {"export": {"split": {"train": 0.6, "val": float("nan"), "test": 0.2}}},
     ["export.split.val", "finite"]),
    ("dropout_inf", good, {"model": {"dropout": float("-inf")}}, ["model.dropout", "finite"]),
    # the file has article ids, so stream_block is not the culprit: the long context is named first
    ("context_length_huge", good, {"data": {"context_length": 100000}},
     ["params: data.context_length: 100000 needs data.stream_block", "lower data.context_length"]),
    ("min_target_position_beyond_stream_block", good, {"export": {"min_target_position": 5000}},
     ["params: export.min_target_position: 5000", "data.stream_block"]),
]

PREVIOUS = {"train.npz": b"previous train", "val.npz": b"previous val", "test.npz": b"previous test",
            "metadata_ctx100.json": b'{"previous": true}\n'}


def _stage_dir(tmp_path, write, overrides):
    vectors = tmp_path / "in" / "vectors.npz"
    vectors.parent.mkdir()
    if write is not None:
        write(vectors)
    params = write_params(tmp_path / "params.yaml", merge({"data": {"vectors": str(vectors)}}, overrides))
    if isinstance(overrides.get("train", {}).get("lr"), str):  # a YAML float that overflows to inf
        params.write_text(params.read_text().replace("'1.0e+400'", "1.0e+400"))
    return params


@pytest.mark.parametrize("name, write, overrides, needles", BAD, ids=[b[0] for b in BAD])
def test_bad_input_fails_cleanly(tmp_path, name, write, overrides, needles):
    params = _stage_dir(tmp_path, write, overrides)
    out = tmp_path / "data" / "ctx100"  # a previous export: a refused input must not touch it
    out.mkdir(parents=True)
    for fname, content in PREVIOUS.items():
        (out / fname).write_bytes(content)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    r = run_stage(STAGE, params, cwd=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, f"stage left files behind: {set(after) - set(before)}"
    assert {f: (out / f).read_bytes() for f in PREVIOUS} == PREVIOUS, "previous outputs changed"


def _ok(tmp_path, write, overrides=None):
    params = _stage_dir(tmp_path, write, overrides or {})
    r = run_stage(STAGE, params, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = tmp_path / "data" / "ctx100"
    assert sorted(p.name for p in out.iterdir()) == ["metadata_ctx100.json", "test.npz", "train.npz", "val.npz"]
    assert not list(tmp_path.rglob("*.tmp"))
    meta = json.loads((out / "metadata_ctx100.json").read_text())
    assert meta["context_length"] == 10 and all(s["windows"] > 0 for s in meta["splits"].values())
    return r, meta, out


def test_good_input_control(tmp_path):
    r, meta, _ = _ok(tmp_path, good)
    assert "WARNING" not in r.stdout and meta["article_ids_present"] is True and meta["notes"] == []
    assert meta["total_vectors"] == sum(GOOD_LENGTHS) and meta["vector_dim"] == 8


def test_trusted_pickles_accepted(tmp_path):
    _ok(tmp_path, _pickled, {"data": {"trust_pickle": True}})


def test_file_without_article_indices_is_one_stream_and_says_so(tmp_path):
    write = lambda p: raw(p, vectors=unit_rows(np.random.default_rng(0), 200, 8))  # noqa: E731
    r, meta, out = _ok(tmp_path, write, {"data": {"stream_block": 20}})
    warnings = [line for line in r.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "article_indices" in warnings[0] and "ONE stream" in warnings[0]
    assert meta["article_ids_present"] is False and meta["notes"] == warnings
    assert meta["total_articles"] == 10


def test_gaps_in_chunk_indices_are_reported_once(tmp_path):
    def write(path):
        a = good(path)
        keep = np.ones(len(a["vectors"]), bool)
        keep[[7, 8, 40]] = False  # rows dropped from two articles (e.g. after removing padding rows)
        raw(path, **{k: v[keep] for k, v in a.items()})
    r, meta, _ = _ok(tmp_path, write)
    warnings = [line for line in r.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and meta["notes"] == warnings
    assert "'chunk_indices' skips chunks inside 2 articles (2 gaps; first: article 10, chunk 6 then 9)" in warnings[0]


def test_784_dim_file_works(tmp_path):
    r, meta, out = _ok(tmp_path, lambda p: good(p, dim=784))
    assert meta["vector_dim"] == 784
    with np.load(out / "train.npz", allow_pickle=False) as z:
        assert z["vectors"].shape[1] == 784 and z["vectors"].dtype == np.float32


def test_contiguous_articles_without_chunk_indices_are_in_file_order(tmp_path):
    """The control for shards_reusing_article_ids: one block of rows per id needs no chunk_indices."""
    r, meta, _ = _ok(tmp_path, lambda p: good(p, with_chunks=False))
    assert "WARNING" not in r.stdout and meta["total_articles"] == len(GOOD_LENGTHS)


def test_articles_sharing_a_first_row_are_not_copies(tmp_path):
    """The control for copied_article: same length and same first vector, different after that."""
    def write(path):
        a = write_vectors(path, [30, 30, 25, 40, 20, 35])
        rows = [np.flatnonzero(a["article_indices"] == i) for i in (10, 13)]
        a["vectors"][rows[1][0]] = a["vectors"][rows[0][0]]  # e.g. a shared boilerplate opening chunk
        raw(path, **a)
    r, meta, _ = _ok(tmp_path, write)
    assert meta["total_articles"] == 6
