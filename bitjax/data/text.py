"""Plain-Python corpus helpers: find files, read them as text, split by file.

Nothing here imports tensorflow_datasets; the tfds builders in
`bitjax.data.builders` call these helpers so every bad-input check lives in one
place and raises a `DataError` that names the problem and the fix.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
import sysconfig
from collections.abc import Iterable, Sequence

from bitjax.errors import UserError

# A file with more than this fraction of invalid UTF-8 bytes is not text (but binary).
_MAX_INVALID_UTF8_FRACTION = 0.1
DEFAULT_ENCODING = "utf-8"


class DataError(UserError):
    """Bad data (missing files, binary files, empty or too-small corpus).

    Raised by `get_datasets` before training starts; the message names the
    offending path / config field and how to fix it.
    """


# ----------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------


def resolve_paths(patterns: Sequence[str] | str) -> list[str]:
    """Expands files and globs (`~`, `**` allowed) into sorted absolute paths.

    Raises:
      DataError: no pattern given, a pattern matches no file, or it names a
        directory (a glob such as 'dir/**/*.txt' is required instead).
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    patterns = [str(p) for p in patterns]
    if not patterns:
        raise DataError(
            "text_files: no input files; set config.data.paths to a list of text files or globs, e.g. ['corpus/*.txt']."
        )
    files = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if os.path.isdir(expanded):
            raise DataError(
                f"text_files: {pattern!r} is a directory; pass the files in it as a "
                f"glob instead, e.g. {os.path.join(pattern, '**', '*.txt')!r}."
            )
        matches = [m for m in glob.glob(expanded, recursive=True) if os.path.isfile(m)]
        if not matches:
            raise DataError(
                f"text_files: {pattern!r} matches no file (cwd={os.getcwd()!r}); fix "
                "the path/glob in config.data.paths."
            )
        files.update(os.path.realpath(m) for m in matches)
    return sorted(files)


def files_fingerprint(files: Sequence[str], *extra) -> str:
    """A short, stable id of a file set: paths, sizes and mtimes (+ `extra`).

    Editing a file changes its size/mtime, hence the id, hence the cache dir.
    """
    h = hashlib.sha256(repr(extra).encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def read_text(path: str, encoding: str = DEFAULT_ENCODING) -> str:
    """Reads a text file in `encoding` (config.data.encoding).

    `encoding` is a Python codec name, optionally with an error handler after
    a colon: 'utf-8' (strict), 'latin-1', 'cp1252', 'utf-8:replace' (invalid
    bytes become U+FFFD). Nothing is mangled silently: a file that does not
    decode is refused, naming the file and the option.

    Raises:
      DataError: the file is not text, or not in `encoding`.
    """
    with open(path, "rb") as f:
        raw = f.read()
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataError(
            f"{path}: not a text file (NUL byte at offset {nul}); remove it from "
            "config.data.paths or narrow the glob to text files."
        )
    codec, _, errors = encoding.partition(":")
    try:
        return raw.decode(codec, errors=errors or "strict")
    except LookupError as e:
        raise DataError(
            f"config.data.encoding={encoding!r}: {e}; use a Python codec name such as 'utf-8' or 'latin-1'."
        ) from None
    except UnicodeDecodeError as e:
        where = f"byte 0x{raw[e.start]:02x} at offset {e.start}"
    if codec.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise DataError(
            f"{path}: not valid {codec} text ({where}); fix "
            "config.data.encoding or remove the file from "
            "config.data.paths."
        )
    # Each bad byte becomes one U+FFFD (real U+FFFD characters are rare).
    bad = raw.decode("utf-8", errors="replace").count("\ufffd")
    if bad > _MAX_INVALID_UTF8_FRACTION * len(raw):
        raise DataError(
            f"{path}: not UTF-8 text ({bad} of {len(raw)} bytes are invalid "
            "UTF-8); convert it to UTF-8 or remove it from config.data.paths."
        )
    raise DataError(
        f"{path}: not valid UTF-8 ({bad} invalid byte(s), the first is {where}); "
        "if it is in another encoding, set config.data.encoding (e.g. "
        "'latin-1' or 'cp1252'), or 'utf-8:replace' to replace invalid bytes "
        "with U+FFFD."
    )


def common_root(files: Sequence[str]) -> str:
    """Directory that relative paths (and thus the split hash) are taken from."""
    return os.path.commonpath([os.path.dirname(f) for f in files])


# ----------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------


def in_validation(relpath: str, fraction: float) -> bool:
    """Deterministic by-file split: a stable hash of the relative path.

    Independent of the Python hash seed, the machine and the other files, so
    adding a file never moves an existing one between splits.
    """
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def split_tail(text: str, fraction: float) -> tuple[str, str]:
    """Splits one text into (head, tail) with ~`fraction` of it in the tail.

    The cut moves forward to the next line start when there is one, so lines
    stay whole; a text of < 2 characters stays whole in the head.
    """
    if len(text) < 2:
        return text, ""
    cut = int(len(text) * (1 - fraction))
    newline = text.find("\n", cut, len(text) - 1)
    if newline >= 0:
        cut = newline + 1
    cut = min(max(cut, 1), len(text) - 1)
    return text[:cut], text[cut:]


Doc = tuple[str, str]  # (relative path, text)


def split_docs(docs: Sequence[Doc], fraction: float) -> dict[str, list[Doc]]:
    """Splits documents into {'train': [...], 'validation': [...]}.

    By file (see `in_validation`) when that leaves both splits non-empty;
    otherwise (e.g. one or a few files) the last ~`fraction` of every file is
    held out instead, so validation is never empty for a non-trivial corpus.
    """
    val = [d for d in docs if in_validation(d[0], fraction)]
    train = [d for d in docs if not in_validation(d[0], fraction)]
    if val and train:
        return {"train": train, "validation": val}
    train, val = [], []
    for path, text in docs:
        head, tail = split_tail(text, fraction)
        if head:
            train.append((path, head))
        if tail:
            val.append((path, tail))
    return {"train": train, "validation": val}


def check_not_empty(docs: Iterable[Doc], what: str) -> None:
    """Raises `DataError` when no document has any non-whitespace text."""
    docs = list(docs)
    if not any(text.strip() for _, text in docs):
        raise DataError(
            f"{what}: the corpus is empty ({len(docs)} document(s), no text); "
            "point config.data.paths / config.data.name at non-empty text."
        )


# ----------------------------------------------------------------------------
# The embedded default corpus: this interpreter's standard library.
# ----------------------------------------------------------------------------

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def stdlib_root() -> str:
    """Directory of the running interpreter's pure-Python standard library."""
    return sysconfig.get_paths()["stdlib"]


def stdlib_files() -> list[str]:
    """Sorted relative paths of the stdlib `*.py` files.

    Third-party packages (site-/dist-packages) and test suites (directories
    named test/tests/idle_test or test_*) are skipped: the tests are most of
    the bytes, contain deliberately malformed files, and slow the build.
    """
    root = stdlib_root()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk from descending into skipped dirs.
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("test_")]
        rel = os.path.relpath(dirpath, root)
        out.extend(os.path.normpath(os.path.join(rel, f)) for f in filenames if f.endswith(".py"))
    return sorted(out)


def stdlib_docs() -> list[Doc]:
    """All documents of the `python_stdlib` corpus, in a deterministic order.

    The stdlib sources (decoded as UTF-8, invalid bytes replaced) followed by
    the `pydoc_data` topics (the language reference text `help()` shows),
    one document per topic under the path 'pydoc_data/topics/<topic>'.
    """
    root = stdlib_root()
    docs = []
    for rel in stdlib_files():
        with open(os.path.join(root, rel), "rb") as f:
            docs.append((rel, f.read().decode("utf-8", errors="replace")))
    from pydoc_data import topics  # pylint: disable=g-import-not-at-top

    docs.extend((f"pydoc_data/topics/{k}", topics.topics[k]) for k in sorted(topics.topics))
    return [d for d in docs if d[1]]


def python_version_tag() -> str:
    """E.g. 'py3.11.7': the stdlib corpus differs between interpreters."""
    return "py{}.{}.{}".format(*sys.version_info[:3])
