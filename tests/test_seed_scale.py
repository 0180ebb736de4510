"""bench/seed_scale.py: the stand-in for the original's 630k x 768 data is a valid vectors file, its
lengths sum to the rows asked for, it is the same bytes for one seed, and its vectors carry the
structure it promises (a per-article topic and a drift the next vector follows)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import seed_scale  # noqa: E402


def _write(tmp_path, name="v.npz", *extra):
    out = tmp_path / name
    seed_scale.main(["--rows", "3000", "--articles", "60", "--dim", "64", "--latent", "8", "--out", str(out), *extra])
    return out


def test_the_file_loads_as_a_corpus_with_every_key_a_user_file_has(tmp_path):
    from lvm.data import load_corpus

    out = _write(tmp_path)
    corpus = load_corpus(out)
    assert corpus.article_len.sum() == 3000 and len(corpus.article_len) == 60
    assert corpus.article_len.min() >= 2
    with np.load(out, allow_pickle=False) as z:
        assert z["vectors"].shape == (3000, 64) and z["vectors"].dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(z["vectors"], axis=1), 1, atol=1e-5)
        assert z["concept_texts"].shape == (3000,) and z["concept_texts"][1] == "article 0 chunk 1"
        assert z["article_titles"].shape == (60,)


def test_one_seed_gives_the_same_bytes_and_another_seed_other_vectors(tmp_path):
    a, b = _write(tmp_path, "a.npz").read_bytes(), _write(tmp_path, "b.npz").read_bytes()
    assert a == b
    c = _write(tmp_path, "c.npz", "--seed", "1")
    with np.load(tmp_path / "a.npz") as za, np.load(c) as zc:
        assert not np.allclose(za["vectors"], zc["vectors"])


def test_the_window_counts_are_the_exports_own_count(tmp_path):
    from lvm.data import count_windows

    out = _write(tmp_path)
    stats = json.loads(out.with_name("v_stats.json").read_text())
    with np.load(out) as z:
        _, lengths = np.unique(z["article_indices"], return_counts=True)
    for L in (20, 50, 100):
        row = stats["window_counts"][str(L)]
        # a window at stride 1 for every target with L vectors of context inside its article
        assert row["windows"] == sum(max(0, n - L) for n in lengths) == count_windows(lengths, L, 1).sum()
        assert row["articles"] == int((lengths > L).sum())


def test_the_vectors_have_a_learnable_drift_and_topic(tmp_path):
    """Inside an article the next vector is closer to the last one than to a random earlier one of the
    same article (the drift), and closer to a random vector of its own article than to another's (topic)."""
    out = _write(tmp_path)
    with np.load(out) as z:
        v, art = z["vectors"], z["article_indices"]
    same = art[1:] == art[:-1]
    next_cos = (v[1:] * v[:-1]).sum(1)[same].mean()
    rng = np.random.default_rng(0)
    far, other = [], []
    for a in range(60):
        rows = np.flatnonzero(art == a)
        if rows.size >= 10:
            far.append(v[rows[-1]] @ v[rows[0]])
        other.append(v[rows[0]] @ v[rng.choice(np.flatnonzero(art != a))])
    assert next_cos > np.mean(far) + 0.1
    assert np.mean(far) > np.mean(other) + 0.2


def test_shard_lengths_fill_the_rows_from_the_shards_distribution(tmp_path):
    shard = tmp_path / "shard.npz"
    np.savez(shard, article_indices=np.repeat(np.arange(3), [5, 7, 11]))
    lengths = seed_scale.shard_lengths(100, shard, np.random.default_rng(0))
    assert lengths.sum() == 100
    assert set(lengths[:-1]) <= {5, 7, 11} and 0 < lengths[-1] <= 11


@pytest.mark.parametrize("args, needle", [(["--rows", "10", "--articles", "6"], "--rows 10"),
                                          (["--rho", "1.0"], "--rho"), (["--latent", "900"], "--latent")])
def test_bad_arguments_fail_with_one_error_line(tmp_path, args, needle):
    with pytest.raises(SystemExit) as e:
        seed_scale.main([*args, "--out", str(tmp_path / "x.npz")])
    assert str(e.value).startswith("error:") and needle in str(e.value)
    assert not (tmp_path / "x.npz").exists()
