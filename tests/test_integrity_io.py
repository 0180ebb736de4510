"""Issue 13, io/data parts: every layout numpy writes loads to the same splits, exports change together
or not at all and carry a split id that later stages can check, metrics JSON never holds NaN, and a
broken split file is refused by name."""
import hashlib
import json
import os

import numpy as np
import pytest

import lvm.io
from lvm import LvmError
from lvm.config import load_params
from lvm.data import SPLITS, WindowDataset, check_same_export, export_windows, load_corpus, should_mmap
from lvm.io import NpzReader, atomic_outputs, save_npz, write_json
from lvm.stages import export_ctx100

from conftest import TINY_PARAMS, merge, run_stage, write_params, write_vectors

LENGTHS = [30, 25, 40, 20, 35, 28]  # L=10: every article has windows
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


def digests(out_dir):
    return {name: hashlib.md5((out_dir / f"{name}.npz").read_bytes()).hexdigest() for name in SPLITS}


def export_file(path, out_dir, seed=7):
    return export_windows(load_corpus(path), out_dir, 10, 5, FRACTIONS, seed)


# --- case 1: layouts ------------------------------------------------------------------------------

LAYOUTS = {
    "fortran": lambda a: {**a, "vectors": np.asfortranarray(a["vectors"])},
    "transposed_copy": lambda a: {**a, "vectors": a["vectors"].T.copy().T},  # what X.T.copy().T gives
    "big_endian": lambda a: {k: v.astype(v.dtype.newbyteorder(">")) for k, v in a.items()},
    "fortran_big_endian_float64": lambda a: {
        **a, "vectors": np.asfortranarray(a["vectors"].astype(">f8"))},
    "uint64_ids_that_fit": lambda a: {**a, "article_indices": a["article_indices"].astype(np.uint64),
                                      "chunk_indices": a["chunk_indices"].astype(np.uint64)},
}


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "compressed"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_exports_the_same_splits(tmp_path, layout, compress):
    arrays = write_vectors(tmp_path / "c.npz", LENGTHS, interleave=True)
    other = LAYOUTS[layout](arrays)
    assert not other["vectors"].flags.c_contiguous or layout.startswith(("big", "uint"))
    (np.savez_compressed if compress else np.savez)(tmp_path / "other.npz", **other)
    ref = export_file(tmp_path / "c.npz", tmp_path / "ref")
    got = export_file(tmp_path / "other.npz", tmp_path / "got")
    assert digests(tmp_path / "got") == digests(tmp_path / "ref")  # byte-identical split files
    assert got["split_id"] == ref["split_id"]
    with NpzReader(tmp_path / "other.npz") as r:  # and the reader itself returns the values
        v = r.load("vectors")
        assert isinstance(v, np.memmap) == (not compress)
        np.testing.assert_array_equal(np.asarray(v, np.float32), arrays["vectors"])
        assert r.header("vectors")[0] == arrays["vectors"].shape


def test_fortran_file_is_memory_mapped_not_copied(tmp_path):
    arrays = write_vectors(tmp_path / "c.npz", LENGTHS)
    np.savez(tmp_path / "f.npz", **{**arrays, "vectors": np.asfortranarray(arrays["vectors"])})
    corpus = load_corpus(tmp_path / "f.npz")
    assert isinstance(corpus.vectors, np.memmap) and corpus.vectors.flags.f_contiguous
    np.testing.assert_array_equal(corpus.vectors, arrays["vectors"])


def test_other_zip_members_are_ignored(tmp_path):
    import zipfile

    arrays = write_vectors(tmp_path / "c.npz", LENGTHS)
    np.savez(tmp_path / "x.npz", **arrays)
    with zipfile.ZipFile(tmp_path / "x.npz", "a") as zf:
        zf.writestr("README.txt", "vectors from my encoder\n")
    with NpzReader(tmp_path / "x.npz") as r:
        assert sorted(r.keys) == sorted(arrays) and r.other_members == ["README.txt"]
    assert export_file(tmp_path / "x.npz", tmp_path / "a")["split_id"] == \
        export_file(tmp_path / "c.npz", tmp_path / "b")["split_id"]


# --- case 6: outputs change together; split ids ---------------------------------------------------

def _params(tmp_path, vectors, **over):
    return load_params(write_params(tmp_path / "params.yaml", merge({"data": {"vectors": str(vectors)}}, over)))


def _snapshot(out):
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def _export_once(tmp_path):
    write_vectors(tmp_path / "v.npz", LENGTHS, interleave=True)
    out = tmp_path / "ctx"
    export_ctx100.run(_params(tmp_path, tmp_path / "v.npz"), str(out), str(out / "metadata_ctx100.json"))
    return out


def test_disk_full_while_writing_val_changes_nothing(tmp_path, monkeypatch):
    out = _export_once(tmp_path)
    before = _snapshot(out)
    real = lvm.data.save_npz

    def failing(path, compress=False, **arrays):
        if path.name == "val.npz":  # write part of the rows, then the disk is full
            vectors = arrays["vectors"]

            def chunks():
                yield next(iter(vectors.chunks))[:3]
                raise OSError(28, "No space left on device")
            arrays["vectors"] = lvm.io.StreamedArray(vectors.shape, vectors.dtype, chunks())
        return real(path, compress, **arrays)

    monkeypatch.setattr(lvm.data, "save_npz", failing)
    with pytest.raises(LvmError, match=r"val\.npz: could not write it \(No space left on device\); "
                                       "no output of this stage was changed"):
        export_ctx100.run(_params(tmp_path, tmp_path / "v.npz", export={"seed": 8}), str(out),
                          str(out / "metadata_ctx100.json"))
    assert _snapshot(out) == before  # train.npz was written too, but never renamed into place
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_a_rename_failing_midway_is_caught_by_the_split_id(tmp_path, monkeypatch):
    out = _export_once(tmp_path)
    calls = []
    real = os.replace

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(lvm.io.os, "replace", flaky)
    with pytest.raises(LvmError, match=r"val\.npz: could not move the new file into place .* after 1 of 4"):
        export_ctx100.run(_params(tmp_path, tmp_path / "v.npz", export={"seed": 8}), str(out),
                          str(out / "metadata_ctx100.json"))
    monkeypatch.setattr(lvm.io.os, "replace", real)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    with pytest.raises(LvmError, match=r"not from one export: .*train\.npz \(split_id \w+\), .*val\.npz"):
        check_same_export([WindowDataset(out / f"{s}.npz") for s in SPLITS])


def test_split_id_is_in_metadata_and_every_split_and_reruns_are_byte_identical(tmp_path):
    out = _export_once(tmp_path)
    meta = json.loads((out / "metadata_ctx100.json").read_text())
    first = digests(out)
    datasets = [WindowDataset(out / f"{s}.npz", mmap=m) for s in SPLITS for m in (False, True)]
    assert {ds.split_id for ds in datasets} == {meta["split_id"]} and len(meta["split_id"]) == 16
    assert check_same_export(datasets, out / "metadata_ctx100.json") == meta["split_id"]
    assert check_same_export([out / f"{s}.npz" for s in SPLITS]) == meta["split_id"]  # paths work too
    export_ctx100.run(_params(tmp_path, tmp_path / "v.npz"), str(out), str(out / "metadata_ctx100.json"))
    assert digests(out) == first  # DVC sees no change on an identical rerun
    other = tmp_path / "seed8"
    export_ctx100.run(_params(tmp_path, tmp_path / "v.npz", export={"seed": 8}), str(other),
                      str(other / "metadata_ctx100.json"))
    assert json.loads((other / "metadata_ctx100.json").read_text())["split_id"] != meta["split_id"]


def test_split_id_changes_with_any_vector_value(tmp_path):
    arrays = write_vectors(tmp_path / "a.npz", LENGTHS)
    v = arrays["vectors"].copy()
    v[100, 2] = np.nextafter(v[100, 2], np.float32(2))  # one ulp
    np.savez(tmp_path / "b.npz", **{**arrays, "vectors": v})
    assert export_file(tmp_path / "a.npz", tmp_path / "a")["split_id"] != \
        export_file(tmp_path / "b.npz", tmp_path / "b")["split_id"]


def test_check_same_export_refuses_mixed_and_old_splits(tmp_path):
    write_vectors(tmp_path / "v.npz", LENGTHS)
    export_file(tmp_path / "v.npz", tmp_path / "a", seed=1)
    export_file(tmp_path / "v.npz", tmp_path / "b", seed=2)
    a, b = (tmp_path / "a" / "train.npz"), (tmp_path / "b" / "val.npz")
    with pytest.raises(LvmError, match=f"not from one export: {a} \\(split_id \\w+\\), {b}"):
        check_same_export([WindowDataset(a), WindowDataset(b)])
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"split_id": "0123456789abcdef"}))
    with pytest.raises(LvmError, match=f"{meta} \\(split_id 0123456789abcdef\\)"):
        check_same_export([WindowDataset(a)], meta)
    with pytest.raises(LvmError, match="nope.json: file not found"):
        check_same_export([WindowDataset(a)], tmp_path / "nope.json")
    with NpzReader(a) as r:  # a split written before split ids existed
        arrays = {k: np.array(r.load(k)) for k in r.keys if k != "split_id"}
    save_npz(tmp_path / "old.npz", **arrays)
    with pytest.raises(LvmError, match="old.npz: no 'split_id'.*dvc repro export_ctx100"):
        check_same_export([WindowDataset(tmp_path / "old.npz")])


def test_atomic_outputs_nests_and_renames_nothing_on_failure(tmp_path):
    write_json(tmp_path / "a.json", {"v": 1})
    with pytest.raises(KeyboardInterrupt):
        with atomic_outputs():
            write_json(tmp_path / "a.json", {"v": 2})
            with atomic_outputs():  # joins the outer group
                write_json(tmp_path / "b.json", {"v": 2})
            assert not (tmp_path / "b.json").exists()
            raise KeyboardInterrupt
    assert json.loads((tmp_path / "a.json").read_text()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["a.json"]
    with atomic_outputs():
        write_json(tmp_path / "a.json", {"v": 3})
        write_json(tmp_path / "b.json", {"v": 3})
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.json"]


# --- case 9: JSON without NaN ---------------------------------------------------------------------

def test_write_json_writes_null_for_nan_and_warns(tmp_path, capsys):
    path = tmp_path / "m.json"
    write_json(path, {"gru": {"test": {"cosine": float("nan"), "n": np.int64(3)}},
                      "curve": [0.5, np.float32("inf")], "ok": np.float64(0.25)})

    def no_constants(name):
        raise AssertionError(f"{name} in JSON")

    got = json.loads(path.read_text(), parse_constant=no_constants)
    assert got == {"gru": {"test": {"cosine": None, "n": 3}}, "curve": [0.5, None], "ok": 0.25}
    warnings = capsys.readouterr().out.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith(f"WARNING: {path}: ") for w in warnings)
    assert "gru.test.cosine is nan" in warnings[0] and "curve[1] is inf" in warnings[1]


# --- case 14: broken split files ------------------------------------------------------------------

def _split_with(tmp_path, **changes):
    write_vectors(tmp_path / "v.npz", LENGTHS)
    export_file(tmp_path / "v.npz", tmp_path / "ctx")
    with NpzReader(tmp_path / "ctx" / "train.npz") as r:
        arrays = {k: np.array(r.load(k)) for k in r.keys}
    for key, fn in changes.items():
        arrays[key] = fn(arrays[key])
    save_npz(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


@pytest.mark.parametrize("change, needles", [
    ({"window_starts": lambda s: s + 1000}, ["window_starts", "outside the", "rerun `dvc repro export_ctx100`"]),
    ({"window_starts": lambda s: s - s[0] - 1}, ["window_starts", "starts at -1"]),
    ({"article_indices": lambda a: np.concatenate([[-1], a[1:]])}, ["window_starts", "crossing an article"]),
    ({"window_starts": lambda s: s.astype(np.float32)}, ["window_starts", "integers"]),
    ({"context_length": lambda c: np.int64(0)}, ["context_length", ">= 1"]),
    ({"source_rows": lambda r: r[:-1]}, ["source_rows", "one per vector"]),
    ({"split_id": lambda s: np.int64(3)}, ["split_id", "string"]),
], ids=["beyond_end", "negative", "crossing", "float", "L_zero", "short_rows", "split_id_not_str"])
@pytest.mark.parametrize("mmap", [False, True], ids=["ram", "mmap"])
def test_broken_split_is_refused_by_name(tmp_path, change, needles, mmap):
    bad = _split_with(tmp_path, **change)
    with pytest.raises(LvmError) as e:
        WindowDataset(bad, mmap=mmap)
    assert str(e.value).startswith(f"{bad}: ")
    for needle in needles:
        assert needle in str(e.value)


def test_missing_split_is_an_lvm_error(tmp_path):
    for fn in (lambda p: WindowDataset(p), lambda p: should_mmap(p, "auto"), lambda p: should_mmap(p, True)):
        with pytest.raises(LvmError, match=f"{tmp_path / 'train.npz'}: file not found.*dvc repro export_ctx100"):
            fn(tmp_path / "train.npz")


@pytest.mark.parametrize("damage", ["missing", "starts_out_of_range"])
def test_train_stage_refuses_broken_split_in_one_line(tmp_path, damage):
    """The train stage gets the same one-line error (exit 2) instead of FileNotFoundError/IndexError."""
    write_vectors(tmp_path / "v.npz", LENGTHS)
    out = tmp_path / "data" / "ctx100"
    export_file(tmp_path / "v.npz", out)
    if damage == "missing":
        (out / "train.npz").unlink()
    else:
        with NpzReader(out / "train.npz") as r:
            arrays = {k: np.array(r.load(k)) for k in r.keys}
        arrays["window_starts"] = arrays["window_starts"] + 1000
        save_npz(out / "train.npz", **arrays)
    params = write_params(tmp_path / "params.yaml", merge(TINY_PARAMS, {
        "data": {"vectors": str(tmp_path / "v.npz")}, "train": {"epochs": 1, "device": "cpu"},
        "model": {"hidden_dim": 8, "gru_layers": 1, "transformer_heads": 1}}))
    import subprocess
    import sys

    from conftest import stage_env

    r = subprocess.run([sys.executable, "-m", "lvm.stages.train", "--model", "gru", "--experiment", "x", "--data", "data/ctx100", "--models", "models", "--metrics", "metrics", "--live", "dvclive",
                        "--params", str(params)], cwd=tmp_path, env=stage_env(), capture_output=True,
                       text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: ") and "train.npz" in lines[0]
    assert ("file not found" if damage == "missing" else "window_starts") in lines[0]


def test_baselines_on_a_one_article_train_split_fail_in_one_line(tmp_path):
    """ridge picks its lambda on held-out train articles: one train article gives an LvmError naming
    the split, not numpy's ValueError traceback."""
    from lvm import LvmError
    from lvm.config import load_params
    from lvm.data import WindowDataset
    from lvm.evaluation import fit_baselines

    write_vectors(tmp_path / "data/corpus/vectors.npz", [30, 30, 30])
    params = write_params(tmp_path / "params.yaml")
    r = run_stage("lvm.stages.export_ctx100", params, tmp_path)
    assert r.returncode == 0, r.stderr
    train = WindowDataset(tmp_path / "data/ctx100/train.npz")
    assert np.unique(train.window_articles()).size == 1
    with pytest.raises(LvmError, match=r"train\.npz: baseline ridge cannot be fitted .* 1 article"):
        fit_baselines(load_params(params)["evaluate"], train)
