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
        """Read, decode and assemble the train and test arrays (raises UserError on a bad layout)."""
        listing = self._list(progress)
        where = str(self.path)
        root = _find_root(listing, where)
        all_dirs = _all_dirs(listing)
        classes_by_split = {s: _class_dirs(all_dirs, f"{root}{s}/") for s in SPLITS}
        train_classes, test_classes = classes_by_split["train"], classes_by_split["test"]
        if not train_classes:
            raise UserError(f"{where}: {root}train/ has no class folders; expected {EXPECTED}")
        if train_classes != test_classes:
            raise UserError(
                f"{where}: train/ and test/ must have the same class folders; "
                f"train has {_names(train_classes)}, test has {_names(test_classes)}"
            )
        classes = sorted(train_classes)
        class_index = {c: i for i, c in enumerate(classes)}
        stats = dict.fromkeys(STAT_KEYS, 0)
        examples: dict[str, str] = {}

        def count(kind: str, rel: str) -> None:
            stats[kind] += 1
            examples.setdefault(kind, rel)

        # (split, label, relpath) for every file inside a class folder.
        items: list[tuple[str, int, str]] = []
        per_class_files: collections.Counter[tuple[str, str]] = collections.Counter()
        for rel in listing.files:
            for split in SPLITS:
                prefix = f"{root}{split}/"
                if not rel.startswith(prefix):
                    continue
                rest = rel[len(prefix) :]
                cls, sep, _ = rest.partition("/")
                if not sep or cls not in class_index:
                    count("stray", rel)
                else:
                    items.append((split, class_index[cls], rel))
                    per_class_files[(split, cls)] += 1
        for split in SPLITS:
            for cls in classes:
                if per_class_files[(split, cls)] == 0:
                    raise UserError(f"{where}: class folder {root}{split}/{cls}/ has no images")
        items.sort(key=lambda it: (SPLITS.index(it[0]), it[1], it[2]))

        decoded: list[tuple[str, int, str, np.ndarray]] = []
        good_per_class: collections.Counter[tuple[str, int]] = collections.Counter()
        for split, label, rel in tqdm(
            items, desc="decoding images", unit="img", disable=not progress, leave=False, mininterval=0.5
        ):
            source = listing.files[rel]
            try:
                data = source if isinstance(source, bytes) else source.read_bytes()
            except OSError:
                count("undecodable", rel)
                continue
            arr, outcome = _decode(data, rel)
            if arr is None:
                count(outcome, rel)
                continue
            if outcome == "converted":
                count("converted", rel)
            decoded.append((split, label, rel, arr))
            good_per_class[(split, label)] += 1
        for split in SPLITS:
            for label, cls in enumerate(classes):
                if good_per_class[(split, label)] == 0:
                    raise UserError(
                        f"{where}: class folder {root}{split}/{cls}/ has no images that could be decoded"
                    )

        sizes = collections.Counter(arr.shape[:2] for _, _, _, arr in decoded)
        (height, width), _ = sizes.most_common(1)[0]
        if height != width:
            raise UserError(
                f"{where}: most images are {width}x{height} (width x height); only square images are "
                "supported, resize them to a square size first"
            )
        arrays: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
        labels: dict[str, list[int]] = {s: [] for s in SPLITS}
        for split, label, rel, arr in decoded:
            if arr.shape[:2] != (height, width):
                arr = np.asarray(
                    Image.fromarray(arr).resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8
                )
                count("resized", rel)
            arrays[split].append(arr)
            labels[split].append(label)
        return RawData(
            train_images=np.stack(arrays["train"]),
            train_labels=np.asarray(labels["train"], dtype=np.int64),
            test_images=np.stack(arrays["test"]),
            test_labels=np.asarray(labels["test"], dtype=np.int64),
            classes=classes,
            stats=stats,
            examples=examples,
        )


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
