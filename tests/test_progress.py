"""Progress bars: tqdm on a terminal, nothing (the stages' own summary lines) in a log or CI."""
from __future__ import annotations

import io
import sys

from tqdm import tqdm

from lvm.io import progress
from lvm.stages.ingest import build_chunks


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_a_bar_only_on_a_terminal(monkeypatch):
    items = [1, 2, 3]
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))
    assert progress(items, desc="x") is items  # the plain iterable: no `\r` frames in dvc's stage log
    monkeypatch.setattr(sys, "stderr", term := _Stream(tty=True))
    bar = progress(items, desc="x", file=term)
    assert isinstance(bar, tqdm) and list(bar) == items and "\r" in term.getvalue()
    assert progress(items, enabled=False) is items  # --no-progress wins on a terminal too


def test_ingest_parse_writes_no_frames_into_a_log(small_wiki, capsys):
    titles, *_ = build_chunks(small_wiki, max_words=15, min_words=3)
    assert titles  # it parsed; pytest's captured stderr is no terminal: no bar was drawn into it
    assert "\r" not in capsys.readouterr().err
