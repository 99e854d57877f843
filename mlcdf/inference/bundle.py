"""The bundle: a trained detector as one file (``.mlcdf``), and its way to and from the Hugging Face Hub.

A bundle is a zip archive of these members (names fixed by the format, never taken from the archive):

- ``manifest.json``: ``format`` (``mlcdf-bundle``), ``format_version``, the ``mlcdf_version`` that wrote it,
  the ``checkpoint`` its weights come from (``best``, ``last`` or ``ema``), the run's ``alignment``, its
  ``labels``, its ``normalisation`` (``image_size``, ``mean``, ``std``) and ``members``: the sha256 and size
  of every other member;
- ``config.json``: the run's own, byte for byte;
- ``weights.safetensors``: the model's state dict (safetensors: tensors and a JSON header, no pickle);
- ``MODEL_CARD.md``: data, metrics, intended use and limits, for a person;
- where the run has them: ``graph.npz`` (a graph model's label graph), ``thresholds.json`` (per-label
  thresholds tuned on validation, from an evaluation with ``--tune-thresholds``) and ``prior_orders.json``
  (the "set + prior order" decoder's orders, :mod:`mlcdf.tasks.prior_order`).

Opening one (:func:`open_bundle`) trusts nothing in it: the archive must be a zip with exactly the members
its manifest lists, each name one of the format's, each size within :data:`MAX_MEMBER_BYTES` and as
declared, each compression ratio below :data:`MAX_COMPRESSION_RATIO` (a zip bomb), each sha256 as listed.
The members are extracted under their format names into a private temporary folder laid out as a run
folder, removed when the process ends, so the code that reads run folders reads bundles unchanged.

``hf-hub:ORG/NAME[@REVISION]`` stands for the bundle ``model.mlcdf`` in that Hub repository, fetched with
``huggingface_hub.hf_hub_download`` as timm fetches its weights (and, like timm, from the local cache
under ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from mlcdf import __version__
from mlcdf.errors import MissingArtifactError, MlcdfError, SchemaError, first_line
from mlcdf.io import atomic_path, read_json_object
from mlcdf.train.stage import CONFIG_FILE, GRAPH_FILE

__all__ = [
    "BUNDLE_SUFFIX",
    "check_hub_repo",
    "FORMAT_VERSION",
    "HUB_PREFIX",
    "Bundle",
    "download_from_hub",
    "is_bundle_file",
    "is_bundle_reference",
    "open_bundle",
    "push_to_hub",
    "write_bundle",
]

BUNDLE_SUFFIX = ".mlcdf"
BUNDLE_FORMAT = "mlcdf-bundle"
#: The version this mlcdf writes and the newest it reads; a change to the members or their meaning adds one.
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
MODEL_CARD = "MODEL_CARD.md"
THRESHOLDS = "thresholds.json"
PRIOR_ORDERS = "prior_orders.json"
REQUIRED_MEMBERS = (CONFIG_FILE, WEIGHTS, MODEL_CARD)
OPTIONAL_MEMBERS = (GRAPH_FILE, THRESHOLDS, PRIOR_ORDERS)

#: The largest member (uncompressed): the weights of the biggest timm backbones are a few GB.
MAX_MEMBER_BYTES = 8 << 30
#: The largest manifest read into memory.
MAX_MANIFEST_BYTES = 1 << 20
#: Uncompressed / compressed size above which a member (over 1 MiB) is refused as a zip bomb. Weights barely
#: compress and JSON text about 10:1; deflate's own ceiling is about 1000:1.
MAX_COMPRESSION_RATIO = 100
_SMALL_MEMBER = 1 << 20
_CHUNK = 1 << 20

HUB_PREFIX = "hf-hub:"
#: The bundle's file name inside a Hub repository.
HUB_FILENAME = "model.mlcdf"
# Fixed, so that one run and one mlcdf always give the same bytes (zip's earliest date).
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Bundle:
    """An opened, checked bundle.

    Attributes:
        source: what the user gave (the ``.mlcdf`` path, or ``hf-hub:ORG/NAME``), for messages.
        path: the bundle file on this machine (the Hub cache's copy for ``hf-hub:``).
        folder: the private folder its members were extracted to (a run folder's layout).
        manifest: the checked ``manifest.json``.
    """

    source: str
    path: Path
    folder: Path
    manifest: dict[str, Any]

    @property
    def checkpoint(self) -> str:
        return str(self.manifest["checkpoint"])

    @property
    def thresholds(self) -> dict[str, Any] | None:
        """``thresholds.json``: ``{"thresholds": {label: t in [0, 1]}, "objective", "tuned_on"}``, or None.

        Raises:
            SchemaError: ``thresholds`` is not a mapping of labels to numbers in [0, 1].
        """
        document = self._member_json(THRESHOLDS)
        values = None if document is None else document.get("thresholds")
        if document is not None and not (
            isinstance(values, dict)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values.values())
        ):
            raise SchemaError(self.source, f"{THRESHOLDS}: 'thresholds' must map each label to a number in [0, 1]")
        return document

    @property
    def prior_orders(self) -> dict[str, Any] | None:
        """``prior_orders.json`` (:func:`mlcdf.tasks.prior_order.estimate_prior_orders`'s dict), or None."""
        return self._member_json(PRIOR_ORDERS)

    def _member_json(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name
        return read_json_object(path) if path.is_file() else None


def is_bundle_reference(run: str | Path) -> bool:
    """Whether ``run`` names a bundle (a file, or ``hf-hub:...``) rather than a run folder."""
    return str(run).startswith(HUB_PREFIX) or Path(run).is_file()


def is_bundle_file(path: Path) -> bool:
    """``path`` is a zip whose manifest says it is a bundle (how ``export --bundle`` knows its own output)."""
    try:
        with zipfile.ZipFile(path) as archive:
            if archive.getinfo(MANIFEST).file_size > MAX_MANIFEST_BYTES:
                return False
            manifest = json.loads(archive.read(MANIFEST))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError, zlib.error):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT


def write_bundle(path: str | Path, members: Mapping[str, bytes], manifest: Mapping[str, Any]) -> str:
    """Write a bundle of ``members`` (name -> bytes) with ``manifest`` (its fields other than ``format``,
    ``format_version``, ``mlcdf_version`` and ``members``) atomically; returns the sha256 of the file.

    Raises:
        ValueError: a member name the format does not know, or a required member missing (a bug).
    """
    unknown = set(members) - set(REQUIRED_MEMBERS) - set(OPTIONAL_MEMBERS)
    missing = set(REQUIRED_MEMBERS) - set(members)
    if unknown or missing:
        raise ValueError(f"bundle members: unknown {sorted(unknown)}, missing {sorted(missing)}")
    listing = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)} for name, data in sorted(members.items())}
    document = {"format": BUNDLE_FORMAT, "format_version": FORMAT_VERSION, "mlcdf_version": __version__, **manifest, "members": listing}
    entries = {MANIFEST: (json.dumps(document, indent=2) + "\n").encode("utf-8"), **dict(sorted(members.items()))}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            for name, data in entries.items():
                info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
                # Tensors barely compress and deflating hundreds of MB takes seconds: stored as they are.
                info.compress_type = zipfile.ZIP_STORED if name in (WEIGHTS, GRAPH_FILE) else zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, data)
        return _sha256_of(tmp)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# Opened bundles by (file, size, modification time): a command reads its run several times (the config,
# then the model, then the prior order), and a bundle is checked and extracted once per process. The
# TemporaryDirectory objects kept here remove their folders when the process ends. The lock makes a server's
# concurrent requests share one extraction (a second one would drop, and so delete, the first one's folder).
_OPENED: dict[tuple[str, int, int], tuple[Bundle, tempfile.TemporaryDirectory[str]]] = {}
_OPENING = threading.Lock()


def open_bundle(reference: str | Path) -> Bundle:
    """Check a bundle (a path, or ``hf-hub:ORG/NAME[@REVISION]``) and extract it; see the module docstring.

    Raises:
        MissingArtifactError: no such file.
        SchemaError: naming the bundle: not a zip, truncated or damaged, from another format version, a
            member path that would leave the bundle, an unknown, missing, oversized or tampered member.
        MlcdfError: a Hub reference that cannot be fetched (see :func:`download_from_hub`).
    """
    source = str(reference)
    path = download_from_hub(source) if source.startswith(HUB_PREFIX) else Path(reference)
    if not path.is_file():
        raise MissingArtifactError(path, "not a bundle file (write one with 'mlcdf export RUN --bundle FILE.mlcdf')")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _OPENING:
        if key not in _OPENED:
            folder = tempfile.TemporaryDirectory(prefix="mlcdf-bundle-")
            try:
                manifest = _extract(path, Path(folder.name))
            except BaseException:
                folder.cleanup()
                raise
            _OPENED[key] = (Bundle(source, path, Path(folder.name), manifest), folder)
        bundle = _OPENED[key][0]
    return bundle if bundle.source == source else Bundle(source, bundle.path, bundle.folder, bundle.manifest)


def _extract(path: Path, folder: Path) -> dict[str, Any]:
    """Check the archive at ``path`` and extract its members into ``folder``; returns the manifest."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        with open(path, "rb") as handle:
            starts_as_zip = handle.read(4) == b"PK\x03\x04"
        what = "a truncated or damaged bundle (the zip archive has no end)" if starts_as_zip else "not an mlcdf bundle (not a zip archive)"
        raise SchemaError(path, what) from None
    with archive:
        entries = archive.infolist()
        names = [entry.filename for entry in entries]
        for name in names:
            if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/") or ":" in name:
                raise SchemaError(path, f"member path {name!r} would leave the bundle; refusing it")
        if len(set(names)) != len(names):
            raise SchemaError(path, "a member name appears twice; refusing the bundle")
        if MANIFEST not in names:
            raise SchemaError(path, f"not an mlcdf bundle (no {MANIFEST})")
        manifest = _read_manifest(path, archive)
        listed: dict[str, dict[str, Any]] = manifest["members"]
        unexpected = sorted(set(names) - {MANIFEST} - set(listed))
        absent = sorted(set(listed) - set(names))
        if unexpected or absent:
            problem = f"member(s) {unexpected} not in its manifest" if unexpected else f"member(s) {absent} of its manifest missing"
            raise SchemaError(path, f"{problem}; the bundle was altered or damaged")
        for entry in entries:
            if entry.filename != MANIFEST:
                _check_entry(path, entry, listed[entry.filename])
        for name, record in listed.items():
            _copy_checked(path, archive, name, record, folder / name)
    return manifest


def _read_manifest(path: Path, archive: zipfile.ZipFile) -> dict[str, Any]:
    if archive.getinfo(MANIFEST).file_size > MAX_MANIFEST_BYTES:
        raise SchemaError(path, f"{MANIFEST} is over {MAX_MANIFEST_BYTES >> 20} MiB; not an mlcdf bundle")
    try:
        manifest = json.loads(_read_member(path, archive, MANIFEST))
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise SchemaError(path, f"{MANIFEST} is not valid JSON ({first_line(error)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise SchemaError(path, f"not an mlcdf bundle ({MANIFEST} does not say format {BUNDLE_FORMAT!r})")
    version = manifest.get("format_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise SchemaError(
            path, f"bundle format version {version} is newer than this mlcdf {__version__} reads ({FORMAT_VERSION}); upgrade mlcdf"
        )
    if version != FORMAT_VERSION:
        raise SchemaError(path, f"unknown bundle format version {version!r}; this mlcdf reads version {FORMAT_VERSION}")
    members = manifest.get("members")
    if not isinstance(members, dict):
        raise SchemaError(path, f"{MANIFEST} has no 'members' object")
    known = set(REQUIRED_MEMBERS) | set(OPTIONAL_MEMBERS)
    for name, record in members.items():
        if name not in known:
            raise SchemaError(path, f"member {name!r} is not part of bundle format {FORMAT_VERSION}")
        size = record.get("size") if isinstance(record, dict) else None
        digest = record.get("sha256") if isinstance(record, dict) else None
        if not (isinstance(size, int) and 0 <= size and isinstance(digest, str) and len(digest) == 64):
            raise SchemaError(path, f"{MANIFEST}: member {name!r} needs an integer 'size' and a sha256 hex 'sha256'")
    missing = [name for name in REQUIRED_MEMBERS if name not in members]
    if missing:
        raise SchemaError(path, f"member(s) {missing} missing; not a whole detector")
    if manifest.get("checkpoint") not in ("best", "last", "ema") or not isinstance(manifest.get("alignment"), str):
        raise SchemaError(path, f"{MANIFEST} needs 'checkpoint' (best, last or ema) and 'alignment'")
    return manifest


def _check_entry(path: Path, entry: zipfile.ZipInfo, record: dict[str, Any]) -> None:
    """The sizes the archive declares, before a byte is decompressed."""
    name = entry.filename
    if entry.flag_bits & 0x1:
        raise SchemaError(path, f"member {name} is encrypted; refusing it")
    if entry.file_size > MAX_MEMBER_BYTES:
        raise SchemaError(path, f"member {name} is {entry.file_size:,} bytes, over the {MAX_MEMBER_BYTES:,} a bundle member may be")
    if entry.file_size != record["size"]:
        raise SchemaError(path, f"member {name} is {entry.file_size:,} bytes, its manifest says {record['size']:,}; altered or damaged")
    if entry.file_size > _SMALL_MEMBER and entry.file_size > MAX_COMPRESSION_RATIO * max(entry.compress_size, 1):
        raise SchemaError(path, f"member {name} expands {entry.file_size // max(entry.compress_size, 1)}-fold; refusing a zip bomb")


def _read_member(path: Path, archive: zipfile.ZipFile, name: str) -> bytes:
    buffer = io.BytesIO()
    _copy_bounded(path, archive, name, archive.getinfo(name).file_size, buffer)
    return buffer.getvalue()


def _copy_checked(path: Path, archive: zipfile.ZipFile, name: str, record: dict[str, Any], target: Path) -> None:
    with open(target, "xb") as handle:
        digest = _copy_bounded(path, archive, name, record["size"], handle)
    if digest != record["sha256"]:
        raise SchemaError(path, f"member {name} does not match its sha256 in the manifest; the bundle was altered or damaged")


def _copy_bounded(path: Path, archive: zipfile.ZipFile, name: str, size: int, handle: IO[bytes]) -> str:
    """Decompress member ``name`` into ``handle``, stopping at more than ``size`` bytes; returns its sha256."""
    digest = hashlib.sha256()
    copied = 0
    try:
        with archive.open(name) as member:
            while chunk := member.read(_CHUNK):
                copied += len(chunk)
                if copied > size:
                    raise SchemaError(path, f"member {name} holds more than the {size:,} bytes declared; refusing it")
                digest.update(chunk)
                handle.write(chunk)
    # A damaged member fails in zipfile (a CRC or a size mismatch), zlib, or a read past the file's end.
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise SchemaError(path, f"member {name} is damaged ({first_line(error)})") from None
    return digest.hexdigest()


def _hub_repo(reference: str) -> tuple[str, str | None]:
    """``hf-hub:ORG/NAME[@REVISION]`` -> ``(ORG/NAME, REVISION or None)``."""
    repo, _, revision = reference.removeprefix(HUB_PREFIX).partition("@")
    return repo, revision or None


def _huggingface_hub() -> Any:
    try:
        import huggingface_hub
        import huggingface_hub.errors
        import huggingface_hub.utils  # submodules: the package loads its attributes lazily
    except ImportError:
        raise MlcdfError("the Hugging Face Hub needs huggingface_hub: pip install 'mlcdf[hub]'") from None
    return huggingface_hub


def check_hub_repo(repo: str, named: str | None = None) -> None:
    """Raise unless huggingface_hub is installed and ``repo`` is a Hub repository name (``ORG/NAME``).

    Raises:
        MlcdfError: naming ``named`` (what the user typed; default ``--push-to-hub REPO``).
    """
    named = named or f"--push-to-hub {repo}"
    hub = _huggingface_hub()
    try:
        hub.utils.validate_repo_id(repo)
    except hub.errors.HFValidationError as error:
        raise MlcdfError(f"{named}: not a Hub repository name ORG/NAME ({first_line(error)})") from None
    if "/" not in repo:
        raise MlcdfError(f"{named}: give the repository as ORG/NAME")


@functools.cache  # once per process: a command reads its run several times, and asks the Hub once
def download_from_hub(reference: str) -> Path:
    """The local copy of the bundle ``hf-hub:ORG/NAME[@REVISION]`` (downloaded once, then the Hub cache's).

    Raises:
        MlcdfError: huggingface_hub is missing, the name is not a repository name, or the Hub (or, offline,
            the cache) does not have the bundle.
    """
    repo, revision = _hub_repo(reference)
    check_hub_repo(repo, named=reference)
    hub = _huggingface_hub()
    try:
        return Path(hub.hf_hub_download(repo, HUB_FILENAME, revision=revision, library_name="mlcdf", library_version=__version__))
    except (OSError, ValueError, hub.errors.EntryNotFoundError) as error:
        # Offline mode without the file in the cache, no such repository or file, no network, no access.
        raise MlcdfError(
            f"{reference}: cannot get {HUB_FILENAME} from the Hugging Face Hub ({type(error).__name__}: {first_line(error)})"
        ) from None


def push_to_hub(bundle: str | Path, repo: str, model_card: str) -> str:
    """Upload ``bundle`` as ``model.mlcdf`` (and its model card as ``README.md``) to the Hub model repository
    ``repo``, created if absent; returns the ``hf-hub:`` reference that loads it.

    Raises:
        MlcdfError: huggingface_hub is missing, ``repo`` is not a repository name, or the Hub refused (no
            token, no access, no network).
    """
    check_hub_repo(repo)
    hub = _huggingface_hub()
    try:
        api = hub.HfApi(library_name="mlcdf", library_version=__version__)
        api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_file(path_or_fileobj=str(bundle), path_in_repo=HUB_FILENAME, repo_id=repo, commit_message="mlcdf export --bundle")
        api.upload_file(path_or_fileobj=model_card.encode("utf-8"), path_in_repo="README.md", repo_id=repo, commit_message="model card")
    except (OSError, ValueError) as error:
        raise MlcdfError(f"--push-to-hub {repo}: the Hub refused the upload ({type(error).__name__}: {first_line(error)})") from None
    return f"{HUB_PREFIX}{repo}"
