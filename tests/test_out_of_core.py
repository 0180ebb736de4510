"""Out-of-core data: a memory-mapped split serves exactly the in-memory windows, and training on it
gives the same model; train.mmap: auto maps a split only when copies would crowd the RAM."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_vectors
from lvm.data import WindowDataset, export_windows, load_corpus, should_mmap
from lvm.checkpoints import load_checkpoint
from lvm.training import run
from test_train import tiny_params


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ooc")
    write_vectors(root / "vectors.npz", [30, 45, 22, 60, 31, 27, 40, 33, 50, 26], dim=12, seed=4)
    export_windows(load_corpus(root / "vectors.npz"), root / "ctx", 10, 5,
                   {"train": 0.6, "val": 0.2, "test": 0.2}, seed=2)
    return root / "ctx"


def test_memory_mapped_dataset_yields_the_same_windows_bit_for_bit(data_dir):
    mem = WindowDataset(data_dir / "train.npz")
    mapped = WindowDataset(data_dir / "train.npz", mmap=True)
    assert isinstance(mapped.vectors_np, np.memmap) and mapped.vectors is None  # no copy of the table
    assert not isinstance(mem.vectors_np, np.memmap)
    assert (len(mapped), mapped.dim, mapped.context_length) == (len(mem), mem.dim, mem.context_length)
    for a, b in ((mem, mapped), (mem.restrided(1), mapped.restrided(1))):
        for kw in ({}, {"shuffle": True, "seed": 3}, {"shuffle": True, "seed": 3, "limit": 17},
                   {"shuffle": True, "seed": 3, "rank": 1, "world": 2}):
            got = list(b.batches(5, **kw))
            want = list(a.batches(5, **kw))
            assert len(got) == len(want) > 0
            for (i1, c1, t1), (i2, c2, t2) in zip(want, got):
                assert np.array_equal(i1, i2)
                assert c2.dtype == torch.float32 and torch.equal(c1, c2) and torch.equal(t1, t2)
        for i in (0, len(a) // 2, len(a) - 1):
            assert all(torch.equal(x, y) for x, y in zip(a[i], b[i]))


def test_training_on_the_memory_map_gives_the_same_model(tmp_path, data_dir):
    ckpts = []
    for setting in (False, True):
        out = tmp_path / str(setting)
        run(tiny_params(mmap=setting, window_stride=1, max_train_windows=40, epochs=1), "gru", "exp",
            data_dir=str(data_dir), models_dir=str(out / "m"), metrics_dir=str(out / "x"),
            live_dir=str(out / "l"), progress=False)
        ckpts.append(load_checkpoint(out / "m/exp/final.pt")["state_dict"])
    assert all(torch.equal(ckpts[0][k], ckpts[1][k]) for k in ckpts[0])


def test_mmap_setting(data_dir, monkeypatch):
    path = data_dir / "train.npz"
    assert should_mmap(path, True) and not should_mmap(path, False)
    assert not should_mmap(path, "auto")  # a few KB: copied into memory (the faster loader)
    ram = path.stat().st_size * 8  # pretend: 8 copies would take all of this machine's RAM
    monkeypatch.setattr("os.sysconf", lambda name: {"SC_PAGE_SIZE": 1, "SC_PHYS_PAGES": ram}[name])
    monkeypatch.setattr("lvm.data.MMAP_RAM_FRACTION", 0.25)
    assert not should_mmap(path, "auto", processes=1)  # 1/8 of RAM
    assert should_mmap(path, "auto", processes=4)  # 4 copies: 1/2 of RAM
