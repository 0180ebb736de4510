"""Bad input and params: the export stage exits 2 with one `error:` line naming the problem, no traceback,
and leaves no output behind. Good-but-unusual inputs (no article ids, 784-D, trusted pickles) work."""
import json

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
]


def _stage_dir(tmp_path, write, overrides):
    vectors = tmp_path / "in" / "vectors.npz"
    vectors.parent.mkdir()
    if write is not None:
        write(vectors)
    return write_params(tmp_path / "params.yaml", merge({"data": {"vectors": str(vectors)}}, overrides))


@pytest.mark.parametrize("name, write, overrides, needles", BAD, ids=[b[0] for b in BAD])
def test_bad_input_fails_cleanly(tmp_path, name, write, overrides, needles):
    params = _stage_dir(tmp_path, write, overrides)
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


def test_784_dim_file_works(tmp_path):
    r, meta, out = _ok(tmp_path, lambda p: good(p, dim=784))
    assert meta["vector_dim"] == 784
    with np.load(out / "train.npz", allow_pickle=False) as z:
        assert z["vectors"].shape[1] == 784 and z["vectors"].dtype == np.float32
