"""Word embeddings of the labels, used as graph node features (ML-GCN style).

Each label maps to a short phrase; its embedding is the mean of the vectors of the phrase's words that
the vocabulary knows. Vectors come from gensim ``KeyedVectors``, whatever the source:

- ``glove``: the embedded default, a GloVe-format file shipped in the package with the real GloVe 6B 50-d
  vectors of the words of :data:`DEFAULT_PHRASES` (see ``data/README`` for provenance);
- ``glove:PATH``: a user's GloVe text file (no header), or a word2vec text or binary file (``.gz`` too);
- ``gensim:NAME``: a gensim-data model such as ``glove-wiki-gigaword-300`` (the paper's 300-d GloVe),
  downloaded once to gensim's data folder (``GENSIM_DATA_DIR``, default ``~/gensim-data``).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import logging
import re
import socket
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError, first_line
from mlcdf.io import read_json_object

if TYPE_CHECKING:
    from gensim.models import KeyedVectors

#: The embedded GloVe subset, inside the package so that installed copies find it.
EMBEDDED_GLOVE_FILE = "glove_6b_50d_subset.txt"

#: The paper's node features: GloVe 300-d (Wikipedia + Gigaword), through gensim-data.
PAPER_WORD_EMBEDDING = "gensim:glove-wiki-gigaword-300"

#: Phrases whose mean word vector stands for each label. Extra words pin the intended sense: GloVe's
#: "bangs" sits among noises ("growls", "screams"), "young" among people ("who", "friends").
DEFAULT_PHRASES: dict[str, str] = {
    # facial_components
    "nose": "nose",
    "eye": "eye eyes",
    "eyebrow": "eyebrow eyebrows",
    "lip": "lip lips mouth",
    "hair": "hair",
    # facial_attributes
    "Bangs": "bangs fringe hairstyle",
    "Eyeglasses": "eyeglasses glasses spectacles",
    "Beard": "beard moustache",
    "Smiling": "smiling smile",
    "Young": "young youthful",
}

#: Socket timeout while gensim talks to its server: without one, a network that drops packets makes
#: ``urlopen`` wait for minutes instead of failing.
GENSIM_NETWORK_TIMEOUT_S = 20.0

EMBEDDING_FORMS = "'glove', 'glove:PATH', 'gensim:NAME' or 'image'"


@dataclass(frozen=True)
class EmbeddingSource:
    """A parsed ``--embedding`` value.

    Attributes:
        kind: ``"glove"`` (a word-vector file, the embedded one when ``location`` is empty),
            ``"gensim"`` (a gensim-data model named ``location``) or ``"image"``.
        location: the file path or model name; empty for the embedded GloVe and for images.
    """

    kind: str
    location: str = ""

    @property
    def is_word(self) -> bool:
        return self.kind != "image"

    @property
    def is_embedded(self) -> bool:
        """The GloVe subset shipped with mlcdf."""
        return self.kind == "glove" and not self.location

    def __str__(self) -> str:
        return f"{self.kind}:{self.location}" if self.location else self.kind


@dataclass(frozen=True)
class LabelEmbeddings:
    """Node features for C labels and what the ``.json`` sidecar says about them.

    Attributes:
        vectors: (C, D) float32 embeddings, one row per label in label order.
        info: JSON-ready description: source, dimension and a ``per_label`` entry for every label.
        warnings: things the user should hear about (missing words, clamped dimension, random weights).
    """

    vectors: np.ndarray
    info: dict
    warnings: tuple[str, ...] = field(default=())


def parse_embedding_source(text: str) -> EmbeddingSource:
    """Parse ``glove``, ``glove:PATH``, ``gensim:NAME`` or ``image``.

    Raises:
        ValueError: anything else, or a prefix with nothing after the colon.
    """
    kind, sep, location = text.partition(":")
    if kind in ("glove", "image") and not sep:
        return EmbeddingSource(kind)
    if kind in ("glove", "gensim") and sep and location:
        return EmbeddingSource(kind, location)
    raise ValueError(f"unknown embedding source {text!r}; expected {EMBEDDING_FORMS}")


def name_words(label: str) -> list[str]:
    """The words of a label name: split at underscores, hyphens and spaces, at camelCase (``lipColor``,
    ``HTTPServer``: an acronym ends before the capital that starts the next word) and around digits.

    >>> name_words("5_o_Clock_Shadow"), name_words("lipColor"), name_words("HTTPServer")
    (['5', 'o', 'Clock', 'Shadow'], ['lip', 'Color'], ['HTTP', 'Server'])
    """
    words = []
    for chunk in filter(None, re.split(r"[\W_]+", label)):
        start = 0
        for i in range(1, len(chunk)):
            before, here, after = chunk[i - 1], chunk[i], chunk[i + 1 : i + 2]
            if (
                before.isdigit() != here.isdigit()
                or (before.islower() and here.isupper())
                or (before.isupper() and here.isupper() and after.islower())
            ):
                words.append(chunk[start:i])
                start = i
        words.append(chunk[start:])
    return words


def default_phrase(label: str) -> str:
    """The built-in phrase of ``label``; for a label without one, the words of its name (:func:`name_words`)."""
    return DEFAULT_PHRASES.get(label) or " ".join(name_words(label)) or label


def label_phrases(labels: Sequence[str], phrases_file: str | Path | None = None) -> dict[str, str]:
    """The phrase of every label: the defaults, overridden by a JSON file of ``{"label": "phrase"}``.

    Labels missing from the file keep their default phrase.

    Raises:
        MissingArtifactError: ``phrases_file`` does not exist.
        SchemaError: the file is not a JSON object of non-empty strings keyed by label names.
    """
    phrases = {label: default_phrase(label) for label in labels}
    if phrases_file is None:
        return phrases
    path = Path(phrases_file)
    if not path.is_file():
        raise MissingArtifactError(path, 'a JSON object such as {"Bangs": "bangs fringe hairstyle"}')
    overrides = read_json_object(path, "a JSON object mapping label names to phrases")
    for label, phrase in overrides.items():
        if label not in phrases:
            raise SchemaError(path, f"{label!r} is not a label of this subset ({', '.join(labels)})")
        if not isinstance(phrase, str) or not phrase.split():
            raise SchemaError(path, f"the phrase of {label!r} must be a non-empty string, got {phrase!r}")
        phrases[label] = phrase
    return phrases


def load_word_vectors(source: EmbeddingSource) -> tuple[KeyedVectors, Path]:
    """Load the ``gensim.models.KeyedVectors`` of a word source.

    Returns:
        ``(vectors, path)``: the vectors and the file they were read from.

    Raises:
        MlcdfError: the file cannot be found or read, or a gensim-data model cannot be downloaded.
    """
    if source.is_embedded:
        embedded = importlib.resources.files("mlcdf") / "resources" / EMBEDDED_GLOVE_FILE
        with importlib.resources.as_file(embedded) as path:
            return read_word_vectors_file(path), path
    if source.kind == "glove":
        path = Path(source.location).expanduser()
        return read_word_vectors_file(path), path
    if source.kind == "gensim":
        path = gensim_data_file(source.location)
        return read_word_vectors_file(path), path
    raise ValueError(f"{source} is not a word-vector source")


def read_word_vectors_file(path: str | Path) -> KeyedVectors:
    """Read a GloVe text file (no header) or a word2vec text/binary file, optionally gzipped.

    The format is sniffed: a first line of two integers is a word2vec header; the record after it tells
    text from binary. Text is read here rather than by gensim, which pads a short row with the values of
    the row before it and fails with a bare ``TypeError`` on an empty file; a word given twice keeps its
    first vector, as gensim does.

    Raises:
        MissingArtifactError: the file does not exist.
        SchemaError: the file cannot be parsed, is not UTF-8 text, or holds a NaN or infinite value
            (naming the line, for text files): such a vector would only surface later as a NaN loss.
    """
    from gensim.models import KeyedVectors

    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, "a GloVe or word2vec file")
    try:
        has_header, binary = _sniff_word2vec_format(path)
        if not binary:
            return _read_text_vectors(path, has_header)
        vectors = KeyedVectors.load_word2vec_format(str(path), binary=True)
    # gensim fails on a damaged binary file with ValueError (UnicodeDecodeError too) or EOFError; gzip
    # on a damaged .gz with OSError or EOFError.
    except (ValueError, EOFError, OSError) as error:
        raise SchemaError(path, f"not a GloVe or word2vec file ({first_line(error)})") from None
    bad_rows = np.flatnonzero(~np.isfinite(vectors.vectors).all(axis=1))
    if len(bad_rows):
        raise SchemaError(path, f"the vector of {vectors.index_to_key[bad_rows[0]]!r} holds NaN or infinite values")
    return vectors


def _read_text_vectors(path: Path, has_header: bool) -> KeyedVectors:
    """Parse ``word v1 ... vD`` lines (after a ``count D`` header when ``has_header``), checking each one."""
    from gensim.models import KeyedVectors
    from gensim.utils import open as smart_open  # reads .gz and .bz2 transparently

    words: list[str] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    dim, declared_count, records = None, None, 0
    with smart_open(str(path), "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if has_header and line == 1:
                declared_count, dim = (int(token) for token in raw.split())
                continue
            try:
                text = raw.decode("utf-8").rstrip()
            except UnicodeDecodeError as error:
                raise SchemaError(path, f"not UTF-8 text (byte {error.start + 1} of the line)", line=line) from None
            if not text:
                continue
            word, *values = text.split(" ")  # a single space, as GloVe writes: some GloVe words hold U+00A0
            dim = dim if dim is not None else len(values)
            if not values or len(values) != dim:
                raise SchemaError(path, f"{len(values)} numbers after {word!r}, expected {dim or 'at least 1'}", line=line)
            try:
                with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused just below
                    vector = np.array(values, dtype=np.float32)
            except ValueError:
                raise SchemaError(path, f"the vector of {word!r} holds something that is not a number", line=line) from None
            if not np.isfinite(vector).all():
                raise SchemaError(path, f"the vector of {word!r} holds NaN or infinite values", line=line)
            records += 1
            if word not in seen:
                seen.add(word)
                words.append(word)
                rows.append(vector)
    if not rows:
        raise SchemaError(path, "no word vectors in the file")
    if declared_count is not None and declared_count != records:
        raise SchemaError(path, f"the header announces {declared_count} vectors, the file holds {records}", line=1)
    vectors = KeyedVectors(dim)
    vectors.add_vectors(words, np.stack(rows))
    return vectors


def _sniff_word2vec_format(path: Path) -> tuple[bool, bool]:
    """``(has_header, binary)`` of a word-vector file; GloVe files are headerless text."""
    from gensim.utils import open as smart_open  # reads .gz and .bz2 transparently

    with smart_open(str(path), "rb") as handle:
        header = handle.readline().split()
        if not (len(header) == 2 and all(token.isdigit() for token in header)):
            return False, False
        dim = int(header[1])
        # A binary record is "word " followed by raw float32 bytes, which are rarely valid UTF-8 and
        # never dim + 1 numbers on one line.
        record = handle.readline(1 << 20)
    return True, not _is_text_record(record, dim)


def _is_text_record(record: bytes, dim: int) -> bool:
    """Whether ``record`` reads as ``word v1 ... v_dim`` in UTF-8 text."""
    try:
        tokens = record.decode("utf-8").split()
        for token in tokens[1:]:
            float(token)
    except (UnicodeDecodeError, ValueError):
        return False
    return len(tokens) == dim + 1


def gensim_data_file(name: str) -> Path:
    """The local file of gensim-data model ``name``, downloading it first if it is not there yet.

    A model downloaded earlier is found in gensim's data folder without any network access. The file is
    then read as plain word2vec data: gensim's own loader would import the Python module that comes with
    the download and unpickle data, neither of which this project does.

    Raises:
        MlcdfError: the model is not downloaded and cannot be (offline, unknown name, no disk space).
    """
    import gensim.downloader as api

    folder = Path(api.BASE_DIR) / name
    if folder.is_dir():
        files = [p for p in folder.iterdir() if p.is_file() and p.name != "__init__.py" and not p.name.startswith(".")]
        if len(files) != 1:
            raise MlcdfError(f"{folder}: expected one gensim-data model file, found {len(files)}; delete the folder and retry")
        return files[0]
    try:
        # gensim prints download progress on stdout, which carries only results (--json).
        with (
            _network_timeout(GENSIM_NETWORK_TIMEOUT_S),
            _quiet_logger(api.logger),
            contextlib.redirect_stdout(sys.stderr),
        ):
            return Path(api.load(name, return_path=True))
    # gensim reports a failed download as OSError, an unknown name or an unreachable index as ValueError,
    # and an unwritable data folder as a bare Exception: all are the user's environment, not a bug here.
    except Exception as error:  # noqa: BLE001  (see above: gensim raises a bare Exception)
        raise MlcdfError(
            f"gensim:{name}: cannot download the model into {api.BASE_DIR} ({error}). It needs internet once; "
            f"offline, use the embedded 'glove' or 'glove:PATH' with a downloaded GloVe/word2vec file"
        ) from None


@contextlib.contextmanager
def _network_timeout(seconds: float) -> Iterator[None]:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@contextlib.contextmanager
def _quiet_logger(logger: logging.Logger) -> Iterator[None]:
    """Silence ``logger`` for the block: gensim logs a full traceback before it raises the error we report."""
    previous = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = previous


def embed_phrases(vectors: KeyedVectors, phrases: Mapping[str, str], *, source: EmbeddingSource, path: str | Path) -> LabelEmbeddings:
    """Average the word vectors of each label's phrase.

    A word is looked up as written, then lower-cased (GloVe's vocabulary is lower case, word2vec's is not).

    Args:
        vectors: the word vectors.
        phrases: label -> phrase, in label order.
        source: where the vectors came from (recorded in ``info``).
        path: the file they were read from (recorded in ``info``).

    Raises:
        MlcdfError: no word of some labels' phrases is in the vocabulary (naming all such labels).
    """
    rows = []
    per_label = {}
    warnings = []
    unknown: list[str] = []
    for label, phrase in phrases.items():
        found, missing = [], []
        for word in phrase.split():
            key = next((w for w in (word, word.lower()) if w in vectors.key_to_index), None)
            if key is None:
                missing.append(word)
            else:
                found.append(key)
        if not found:
            unknown.append(f"{label!r} ({phrase!r})")
            continue
        if missing:
            warnings.append(f"label {label!r}: {', '.join(missing)} not in the vocabulary, averaged {', '.join(found)}")
        rows.append(np.mean([vectors[word] for word in found], axis=0))
        per_label[label] = {"phrase": phrase, "words_found": found, "words_missing": missing}
    if unknown:
        hint = " (the embedded GloVe holds only the words of the Seq-DeepFake labels)" if source.is_embedded else ""
        raise MlcdfError(
            f"{len(unknown)} label(s) with no word in the vocabulary of {path}{hint}: {', '.join(unknown)}; give "
            "phrases with --label-phrases, or a larger vocabulary with glove:PATH or gensim:NAME "
            "(e.g. gensim:glove-wiki-gigaword-300)"
        )
    embeddings = np.stack(rows).astype(np.float32)
    info = {
        "kind": "word",
        "source": str(source),
        "file": str(path),
        "dim": int(embeddings.shape[1]),
        "per_label": per_label,
    }
    return LabelEmbeddings(embeddings, info, tuple(warnings))


def word_embeddings(labels: Sequence[str], source: EmbeddingSource, phrases_file: str | Path | None = None) -> LabelEmbeddings:
    """Word embeddings of ``labels`` from ``source``, with phrases optionally overridden by a JSON file."""
    phrases = label_phrases(labels, phrases_file)
    vectors, path = load_word_vectors(source)
    return embed_phrases(vectors, phrases, source=source, path=path)
