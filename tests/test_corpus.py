"""Wikitext cleaning, sentence splitting, chunking, page iteration, and ingest with the real encoder."""
import bz2
import json

import numpy as np
import pytest

from lvm.config import validate
from lvm.corpus import chunk_text, clean_wikitext, iter_pages, split_sentences

from conftest import SHORT_ARTICLES, merge, repository_params


def words(n, start=0):
    return " ".join(f"w{i}" for i in range(start, start + n))


# --- chunk_text -----------------------------------------------------------------------------------

def test_twenty_words_split_ten_ten():
    chunks = chunk_text(words(20) + ".", max_words=15, min_words=3)
    assert [len(c.split()) for c in chunks] == [10, 10]
    assert chunks[0] == words(10)
    assert chunks[1] == words(10, 10) + "."


@pytest.mark.parametrize("n, expected", [
    (15, [15]), (16, [8, 8]), (30, [15, 15]), (31, [10, 10, 11]), (7, [7]), (46, [11, 12, 11, 12]),
])
def test_piece_sizes_are_balanced(n, expected):
    assert [len(c.split()) for c in chunk_text(words(n), max_words=15, min_words=1)] == expected


@pytest.mark.parametrize("max_words", [1, 4, 15, 40])
def test_max_words_respected_and_nothing_lost(max_words):
    for n in range(1, 95):
        chunks = chunk_text(words(n), max_words=max_words, min_words=1)
        sizes = [len(c.split()) for c in chunks]
        assert max(sizes) <= max_words
        assert max(sizes) - min(sizes) <= 1  # balanced
        assert len(chunks) == -(-n // max_words)  # as few pieces as the cap allows
        assert " ".join(chunks) == words(n)  # words kept, in order


def test_min_words_drops_short_pieces():
    text = "Too short. " + words(5).capitalize() + ". Ok."
    assert chunk_text(text, max_words=15, min_words=3) == [words(5).capitalize() + "."]
    assert chunk_text(text, max_words=15, min_words=1) == ["Too short.", words(5).capitalize() + ".", "Ok."]
    # A 16-word sentence under min_words 9 becomes 8 + 8: both dropped.
    assert chunk_text(words(16), max_words=15, min_words=9) == []


def test_chunks_never_span_paragraphs():
    text = "first paragraph has no end\nsecond paragraph has no end either"
    assert chunk_text(text, max_words=15, min_words=1) == [
        "first paragraph has no end", "second paragraph has no end either"]


# --- split_sentences ------------------------------------------------------------------------------

def test_split_on_period_space_capital():
    assert split_sentences("The cat sat. The dog ran! Did it? Yes.") == [
        "The cat sat.", "The dog ran!", "Did it?", "Yes."]


def test_no_split_before_lowercase_or_without_space():
    assert split_sentences("It cost 3.5 dollars, e.g. too much. fine.") == [
        "It cost 3.5 dollars, e.g. too much. fine."]


def test_split_before_digit_and_opening_quote():
    assert split_sentences('It ended in 1990. 2000 was new. "Quoted" start.') == [
        "It ended in 1990.", "2000 was new.", '"Quoted" start.']


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    assert split_sentences('He said "Go." Then he left. (See the map.) Next.') == [
        'He said "Go."', "Then he left.", "(See the map.)", "Next."]


# --- clean_wikitext -------------------------------------------------------------------------------

WIKITEXT = """{{Infobox river|name=Foo River|length=12 km}}
'''Foo River''' is a [[river]] in [[Northern France|northern France]].<ref>{{cite web|title=Rivers|url=http://x}}</ref> It flows into the [[Atlantic Ocean]] near Calais.<ref name="b"/>
[[File:Foo river.jpg|thumb|A caption about the Foo bridge]]
[[Image:Other.png|left|Second caption about images]]
It is {{convert|12|km}} long and '''very''' ''scenic'' indeed here.

== History ==
Romans built a [[bridge]] over the river in the first century.

== References ==
{{reflist}}
* A reference book title, 1999, Some Publisher Name.

== External links ==
* [http://example.com An external site describing things]

[[Category:Rivers of France]]
[[Category:Calais]]
"""


def test_clean_wikitext_keeps_prose_drops_markup():
    clean = clean_wikitext(WIKITEXT)
    lines = clean.splitlines()
    assert lines[0] == ("Foo River is a river in northern France. "
                        "It flows into the Atlantic Ocean near Calais.")
    assert "Romans built a bridge over the river in the first century." in lines
    for gone in ("{{", "}}", "<ref", "cite web", "Infobox", "[[", "]]", "caption", "Category",
                 "Rivers of France", "reference book", "external site", "References", "History",
                 "External links", "'''", "http"):
        assert gone not in clean, gone
    assert "very scenic" in clean  # bold/italic markup removed, text kept


@pytest.mark.parametrize("heading", ["See also", "Further reading", "Notes", "Bibliography"])
def test_link_sections_cut(heading):
    text = f"Main prose sentence with enough words.\n\n== {heading} ==\nSomething only listed here in full.\n"
    clean = clean_wikitext(text)
    assert clean == "Main prose sentence with enough words."


def _page(title, text, ns="0", redirect=False):
    red = '<redirect title="X" />' if redirect else ""
    return f"<page><title>{title}</title><ns>{ns}</ns>{red}<revision><text>{text}</text></revision></page>"


def test_iter_pages_skips_redirects_disambiguation_and_other_namespaces(tmp_path):
    xml = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">'
           + _page("Real", "Real article text here.")
           + _page("Moved", "#REDIRECT [[Real]]")
           + _page("Moved2", "anything", redirect=True)
           + _page("Mercury (disambiguation)", "Mercury may be")
           + _page("Mercury", "Mercury may be: {{disambiguation}}")
           + _page("Talk:Real", "talk page text", ns="1")
           + _page("Second", "Second article text.")
           + "</mediawiki>")
    plain, packed = tmp_path / "d.xml", tmp_path / "d.xml.bz2"
    plain.write_text(xml)
    packed.write_bytes(bz2.compress(xml.encode()))
    for path in (plain, packed):
        assert [t for t, _ in iter_pages(path)] == ["Real", "Second"]


# --- ingest with the real encoder on short real articles ------------------------------------------

@pytest.fixture(scope="module")
def ingested(tmp_path_factory, small_wiki):
    from lvm.stages import ingest

    out = tmp_path_factory.mktemp("ingest")
    p = validate(merge(repository_params(), {"ingest": {"source": str(small_wiki), "max_articles": 3}}))
    stats = ingest.run(p, out=str(out / "corpus" / "vectors.npz"), stats_path=str(out / "corpus" / "stats.json"))
    return p, stats, out / "corpus"


@pytest.mark.slow
def test_ingest_real_articles(ingested):
    p, stats, out = ingested
    assert sorted(f.name for f in out.iterdir()) == ["stats.json", "vectors.npz"]  # no temp files left
    assert json.loads((out / "stats.json").read_text()) == stats
    with np.load(out / "vectors.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    v, art, chunk = arrays["vectors"], arrays["article_indices"], arrays["chunk_indices"]
    texts, titles = arrays["concept_texts"], arrays["article_titles"]
    assert list(titles) == list(SHORT_ARTICLES[:3])  # max_articles=3, the redirect page skipped
    assert texts.dtype.kind == "U" and titles.dtype.kind == "U"
    n = v.shape[0]
    assert v.dtype == np.float32 and v.shape == (n, 384) and n > 30
    assert np.isfinite(v).all()
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert art.shape == chunk.shape == texts.shape == (n,)
    assert np.all(np.diff(art) >= 0) and set(art.tolist()) == {0, 1, 2}
    for a in range(3):
        assert chunk[art == a].tolist() == list(range(int((art == a).sum())))
    assert stats["articles"] == 3 and stats["chunks"] == n and stats["vector_dim"] == 384
    max_words = p["ingest"]["max_words"]
    for t in texts:
        assert p["ingest"]["min_words"] <= len(t.split()) <= max_words
        assert not any(m in t for m in ("{{", "}}", "<ref", "[[", "]]", "Category:")), t
    # Vectors are aligned with their texts: re-encoding a chunk's text gives its stored vector.
    from lvm.corpus import encode, load_encoder

    rows = np.unique(np.linspace(0, n - 1, 12).astype(int))
    again = encode(load_encoder("minilm", p["ingest"]["precision"]), [str(texts[i]) for i in rows],
                   progress=False)
    cos = again @ v[rows].T  # [12, 12]
    assert np.all(np.diag(cos) > 0.99), np.diag(cos)
    assert np.all(np.argmax(cos, axis=1) == np.arange(rows.size))
