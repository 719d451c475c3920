"""``imagefolder:PATH`` sources: a directory or a tar(.gz) archive in the ImageFolder layout.

Layout (optionally inside one top-level folder)::

    train/<class>/**/<image>
    test/<class>/**/<image>

Class names are the sorted folder names under ``train/``; ``test/`` must have the same ones. An
archive is read in one streaming pass (never extracted to disk) and every image is decoded with
Pillow into memory. Decoding fixes what it can and counts it: non-RGB images (grayscale, RGBA,
palette, CMYK) are converted to RGB (alpha is dropped, not composited); images whose size differs
from the most common size are resized to it (bilinear); files that are not images or do not decode
are skipped, as are files lying outside a class folder.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import io
import json
import os
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import UserError
from ..io.artifacts import sha256_file
from .raw import RawData

EXPECTED = "a directory or .tar.gz with train/<class>/ and test/<class>/"
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"}
)
SPLITS = ("train", "test")
STAT_KEYS = ("converted", "resized", "non_image", "undecodable", "stray")


@dataclass
class _Listing:
    """Files (relative POSIX path → bytes or a path to read) and directories of a source."""

    files: dict[str, bytes | Path] = field(default_factory=dict)
    dirs: set[str] = field(default_factory=set)


class _ProgressReader:
    """A minimal file-like wrapper that reports bytes read to a tqdm bar (for streaming tar)."""

    def __init__(self, raw: Any, bar: tqdm) -> None:
        self._raw = raw
        self._bar = bar

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._bar.update(len(data))
        return data

    def close(self) -> None:
        self._raw.close()


def _clean_member(name: str) -> str | None:
    """Normalise an archive member name to a relative POSIX path; None for unsafe/empty names."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".", "/")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


class ImageFolderSource:
    """An ImageFolder directory or archive at ``path`` (which must exist)."""

    kind = "imagefolder"

    def __init__(self, spec: str, path: Path) -> None:
        self.spec = spec
        self.path = path
        self._walk: list[tuple[str, int, int]] | None = None

    # -- cache key ---------------------------------------------------------------------------
    def key(self) -> str:
        """Content key: SHA-256 of an archive's bytes, or of a directory's (relpath, size, mtime) list."""
        if self.path.is_dir():
            payload: dict[str, Any] = {"kind": "imagefolder-dir", "files": self._dir_walk()}
        else:
            try:
                digest = sha256_file(self.path)
            except OSError as exc:
                raise UserError(f"cannot read {self.path}: {exc.strerror or exc}") from None
            payload = {"kind": "imagefolder-file", "sha256": digest}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _dir_walk(self) -> list[tuple[str, int, int]]:
        if self._walk is None:
            entries: list[tuple[str, int, int]] = []
            for dirpath, dirnames, filenames in os.walk(self.path, followlinks=True):
                dirnames.sort()
                for fname in sorted(filenames):
                    full = Path(dirpath) / fname
                    try:
                        st = full.stat()
                    except OSError:
                        continue
                    entries.append((full.relative_to(self.path).as_posix(), st.st_size, st.st_mtime_ns))
            self._walk = entries
        return self._walk

    # -- listing -----------------------------------------------------------------------------
    def _list(self, progress: bool) -> _Listing:
        if self.path.is_dir():
            listing = _Listing()
            for dirpath, dirnames, _ in os.walk(self.path, followlinks=True):
                rel = Path(dirpath).relative_to(self.path).as_posix()
                for d in dirnames:
                    listing.dirs.add(d if rel == "." else f"{rel}/{d}")
            for rel, _, _ in self._dir_walk():
                listing.files[rel] = self.path / rel
            return listing
        return self._list_archive(progress)

    def _list_archive(self, progress: bool) -> _Listing:
        listing = _Listing()
        try:
            raw = open(self.path, "rb")  # closed in the finally below
        except OSError as exc:
            raise UserError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        size = os.fstat(raw.fileno()).st_size
        bar = tqdm(
            total=size,
            unit="B",
            unit_scale=True,
            desc=f"reading {self.path.name}",
            disable=not progress,
            leave=False,
        )
        try:
            magic = raw.read(2)
            raw.seek(0)
            reader: Any = _ProgressReader(raw, bar)
            # gzip is decoded by GzipFile (not tarfile's own stream) so that draining it at the end
            # verifies the gzip trailer (CRC, length): a truncation that happens to fall on a tar
            # member boundary is still detected. Other compressions / plain tar: tarfile's "r|*".
            gz = gzip.GzipFile(fileobj=reader, mode="rb") if magic == b"\x1f\x8b" else None
            tar = (
                tarfile.open(fileobj=gz, mode="r|")
                if gz is not None
                else tarfile.open(fileobj=reader, mode="r|*")
            )
            with tar as tf:
                for member in tf:
                    name = _clean_member(member.name)
                    if name is None:
                        continue
                    if member.isdir():
                        listing.dirs.add(name)
                    elif member.isfile():
                        fh = tf.extractfile(member)
                        if fh is not None:
                            listing.files[name] = fh.read()
            if gz is not None:
                while gz.read(1 << 20):
                    pass
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise UserError(f"{self.path} is truncated or not a gzip tar archive ({exc})") from None
        finally:
            bar.close()
            raw.close()
        return listing

    # -- build -------------------------------------------------------------------------------
    def build(self, progress: bool = True) -> RawData:
        """Read, decode and assemble the train and test arrays (raises UserError on a bad layout): the class folders
        (the same under train/ and test/), every file inside one (strays counted), decoded (undecodable / converted
        counted; every class keeps at least one image), resized to the most common square size (counted)."""
        listing = self._list(progress)
        where = str(self.path)
        root = _find_root(listing, where)
        classes = _split_classes(listing, root, where)
        tally = _Tally(dict.fromkeys(STAT_KEYS, 0), {})
        items = _class_files(listing, root, classes, tally, where)
        decoded = _decode_items(items, listing, tally, progress)
        for split in SPLITS:
            present = {label for s, label, _, _ in decoded if s == split}
            for label, cls in enumerate(classes):
                if label not in present:
                    raise UserError(f"{where}: class folder {root}{split}/{cls}/ has no images that could be decoded")
        arrays, labels = _assemble(decoded, tally, where)
        return RawData(train_images=np.stack(arrays["train"]), train_labels=np.asarray(labels["train"], dtype=np.int64),
                       test_images=np.stack(arrays["test"]), test_labels=np.asarray(labels["test"], dtype=np.int64),
                       classes=classes, stats=tally.stats, examples=tally.examples)


def _all_dirs(listing: _Listing) -> set[str]:
    """Every directory: listed ones plus the parents implied by file paths."""
    dirs = set(listing.dirs)
    for rel in listing.files:
        parts = rel.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    return dirs


def _find_root(listing: _Listing, where: str) -> str:
    """Return the prefix ("" or "<top>/") under which train/ and test/ live, or raise UserError."""
    dirs = _all_dirs(listing)
    if "train" in dirs:
        root = ""
    else:
        candidates = sorted(d for d in dirs if "/" not in d and f"{d}/train" in dirs)
        if len(candidates) != 1:
            tops = sorted({p.split("/", 1)[0] for p in (*dirs, *listing.files)})
            found = ", ".join(tops[:10]) + (", ..." if len(tops) > 10 else "") if tops else "nothing"
            raise UserError(f"{where}: no train/ folder found (found: {found}); expected {EXPECTED}")
        root = candidates[0] + "/"
    if f"{root}test" not in dirs:
        raise UserError(f"{where}: has {root}train/ but no {root}test/; expected {EXPECTED}")
    return root


def _class_dirs(dirs: set[str], prefix: str) -> set[str]:
    """Names of the direct, non-hidden sub-folders of ``prefix``."""
    out = set()
    for d in dirs:
        if d.startswith(prefix):
            rest = d[len(prefix) :]
            if rest and "/" not in rest and not rest.startswith("."):
                out.add(rest)
    return out


def _names(names: set[str], limit: int = 20) -> str:
    items = sorted(names)
    shown = ", ".join(items[:limit]) + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")
    return "{" + shown + "}"


def _decode(data: bytes, name: str) -> tuple[np.ndarray | None, str]:
    """Decode one image to uint8 (H, W, 3) RGB.

    Returns ``(array, "ok" | "converted")`` or ``(None, "non_image" | "undecodable")``; a file that
    Pillow does not recognise counts as undecodable when its extension says it is an image.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode == "RGB":
                return np.asarray(im, dtype=np.uint8), "ok"
            conv = im.convert("RGBA") if im.mode == "P" and "transparency" in im.info else im
            return np.asarray(conv.convert("RGB"), dtype=np.uint8), "converted"
    except UnidentifiedImageError:
        suffix = PurePosixPath(name).suffix.lower()
        return None, "undecodable" if suffix in IMAGE_EXTENSIONS else "non_image"
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None, "undecodable"


@dataclass
class _Tally:
    """What the reader skipped or changed: a count per kind (:data:`STAT_KEYS`) and the first file of each kind."""

    stats: dict[str, int]
    examples: dict[str, str]

    def count(self, kind: str, rel: str) -> None:
        """One more file of ``kind``; the first one is kept as the example."""
        self.stats[kind] += 1
        self.examples.setdefault(kind, rel)


def _split_classes(listing: Any, root: str, where: str) -> list[str]:
    """The sorted class folder names, the same under ``train/`` and ``test/`` (else one :class:`UserError` line)."""
    all_dirs = _all_dirs(listing)
    by_split = {s: _class_dirs(all_dirs, f"{root}{s}/") for s in SPLITS}
    if not by_split["train"]:
        raise UserError(f"{where}: {root}train/ has no class folders; expected {EXPECTED}")
    if by_split["train"] != by_split["test"]:
        raise UserError(f"{where}: train/ and test/ must have the same class folders; "
                        f"train has {_names(by_split['train'])}, test has {_names(by_split['test'])}")
    return sorted(by_split["train"])


def _class_files(listing: Any, root: str, classes: list[str], tally: _Tally, where: str) -> list[tuple[str, int, str]]:
    """``(split, label, relpath)`` of every file inside a class folder, sorted by split, label, path; files elsewhere
    count as ``stray``; a class folder without files is one :class:`UserError` line."""
    class_index = {c: i for i, c in enumerate(classes)}
    items: list[tuple[str, int, str]] = []
    per_class: collections.Counter[tuple[str, str]] = collections.Counter()
    for rel in listing.files:
        for split in SPLITS:
            prefix = f"{root}{split}/"
            if not rel.startswith(prefix):
                continue
            cls, sep, _ = rel[len(prefix):].partition("/")
            if not sep or cls not in class_index:
                tally.count("stray", rel)
            else:
                items.append((split, class_index[cls], rel))
                per_class[(split, cls)] += 1
    for split in SPLITS:
        for cls in classes:
            if per_class[(split, cls)] == 0:
                raise UserError(f"{where}: class folder {root}{split}/{cls}/ has no images")
    items.sort(key=lambda it: (SPLITS.index(it[0]), it[1], it[2]))
    return items


def _decode_items(items: list[tuple[str, int, str]], listing: Any, tally: _Tally,
                  progress: bool) -> list[tuple[str, int, str, np.ndarray]]:
    """Each item's pixels (RGB uint8), with a progress bar; unreadable or undecodable files are counted and left out,
    converted ones (another mode) counted and kept."""
    decoded: list[tuple[str, int, str, np.ndarray]] = []
    for split, label, rel in tqdm(items, desc="decoding images", unit="img", disable=not progress, leave=False,
                                  mininterval=0.5):
        source = listing.files[rel]
        try:
            data = source if isinstance(source, bytes) else source.read_bytes()
        except OSError:
            tally.count("undecodable", rel)
            continue
        arr, outcome = _decode(data, rel)
        if arr is None:
            tally.count(outcome, rel)
            continue
        if outcome == "converted":
            tally.count("converted", rel)
        decoded.append((split, label, rel, arr))
    return decoded


def _assemble(decoded: list[tuple[str, int, str, np.ndarray]], tally: _Tally,
              where: str) -> tuple[dict[str, list[np.ndarray]], dict[str, list[int]]]:
    """Images and labels per split at the most common size, which must be square (one :class:`UserError` line
    otherwise); images of another size are resized bilinearly and counted."""
    sizes = collections.Counter(arr.shape[:2] for _, _, _, arr in decoded)
    (height, width), _ = sizes.most_common(1)[0]
    if height != width:
        raise UserError(f"{where}: most images are {width}x{height} (width x height); only square images are "
                        "supported, resize them to a square size first")
    arrays: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    for split, label, rel, arr in decoded:
        if arr.shape[:2] != (height, width):
            arr = np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)
            tally.count("resized", rel)
        arrays[split].append(arr)
        labels[split].append(label)
    return arrays, labels
