"""Tests for ccpcsa.data: sources, cache, splits, transforms and the batch loader."""

from __future__ import annotations

import io
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ccpcsa.data import ArrayDataset, BatchLoader, augment_batch, load_data, normalize_batch
from ccpcsa.data import cifar as cifar_mod
from ccpcsa.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR_JPG = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg.tar.gz"
SMALL = "synthetic?train=200&test=60&classes=4"


# --------------------------------------------------------------------------------------------
# synthetic
# --------------------------------------------------------------------------------------------
def test_synthetic_is_deterministic_and_shaped(tmp_path: Path) -> None:
    a = load_data(SMALL, cache_dir=tmp_path / "a", progress=False)
    b = load_data(SMALL, cache_dir=tmp_path / "b", progress=False)
    assert (len(a.train), len(a.val), len(a.test)) == (180, 20, 60)  # default val = 10 %
    assert a.train.images.shape == (180, 32, 32, 3) and a.train.images.dtype == np.uint8
    assert a.train.labels.dtype == np.int64 and set(np.unique(a.test.labels)) == {0, 1, 2, 3}
    assert a.input_size == 32 and len(a.classes) == 4 and len(set(a.classes)) == 4
    assert a.source_hash == b.source_hash and a.spec == SMALL
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, split).images, getattr(b, split).images)
        np.testing.assert_array_equal(getattr(a, split).labels, getattr(b, split).labels)
    assert all(0.0 < m < 1.0 for m in a.mean) and all(0.0 < s < 1.0 for s in a.std)
    other = load_data(SMALL + "&seed=1", cache_dir=tmp_path / "a", progress=False)
    assert other.source_hash != a.source_hash
    assert not np.array_equal(other.test.images, a.test.images)


def test_synthetic_spec_forms(tmp_path: Path) -> None:
    d = load_data("synthetic:100:40", val_size=0, cache_dir=tmp_path, progress=False)
    assert (len(d.train), len(d.val), len(d.test)) == (100, 0, 40)
    assert d.val.images.shape == (0, 32, 32, 3)
    d = load_data("synthetic?classes=3&size=16&train=30&test=9", cache_dir=tmp_path, progress=False)
    assert d.test.images.shape == (9, 16, 16, 3) and len(d.classes) == 3
    for bad, fragment in [
        ("synthetic:10", "N_TRAIN:N_TEST"),
        ("synthetic?colour=3", "unknown synthetic option 'colour'"),
        ("synthetic?train=x", "train must be an integer"),
        ("synthetic?classes=99", "classes must be between"),
        ("imagenet", "unknown dataset 'imagenet'"),
        ("", "empty dataset spec"),
    ]:
        with pytest.raises(UserError, match=fragment):
            load_data(bad, cache_dir=tmp_path, progress=False)


def test_split_is_seeded_stratified_and_validated(tmp_path: Path) -> None:
    a = load_data(SMALL, val_size=40, seed=3, cache_dir=tmp_path, progress=False)
    b = load_data(SMALL, val_size=40, seed=3, cache_dir=tmp_path, progress=False)
    c = load_data(SMALL, val_size=40, seed=4, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(a.val.images, b.val.images)
    assert not np.array_equal(a.val.images, c.val.images)
    assert np.bincount(a.val.labels).tolist() == [10, 10, 10, 10]  # 200 balanced → stratified
    assert len(a.train) == 160
    for bad in (-1, 200, 1000):
        with pytest.raises(UserError, match="val_size must be between 0 and 199"):
            load_data(SMALL, val_size=bad, cache_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------------------------
# imagefolder
# --------------------------------------------------------------------------------------------
def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _make_tree(root: Path) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for ci, cls in enumerate(("cat", "dog")):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                arr = np.full((8, 8, 3), 40 + 100 * ci, np.uint8) + rng.integers(
                    0, 20, (8, 8, 3), dtype=np.uint8
                )
                (folder / f"{i}.png").write_bytes(_png(arr))
    (root / "train/cat/gray.jpg").write_bytes(_png(np.full((8, 8), 128, np.uint8), "JPEG"))
    (root / "train/dog/big.png").write_bytes(_png(np.zeros((12, 10, 3), np.uint8)))
    (root / "test/dog/notes.txt").write_text("not an image\n")


def _make_tgz(src: Path, dest: Path, arcname: str) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        tf.add(src, arcname=arcname)
    return dest


def test_imagefolder_dir_and_tar_with_conversions(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    _make_tree(tree)
    with pytest.warns(UserWarning, match="converted 1 non-RGB.*resized 1.*skipped 1 non-image"):
        d = load_data(f"imagefolder:{tree}", val_size=0, cache_dir=tmp_path / "cache", progress=False)
    assert d.classes == ["cat", "dog"]
    assert (len(d.train), len(d.test)) == (8, 6)
    assert d.train.images.shape == (8, 8, 8, 3) and d.input_size == 8
    assert d.stats["converted"] == 1 and d.stats["resized"] == 1 and d.stats["non_image"] == 1
    assert np.bincount(d.train.labels).tolist() == [4, 4] and np.bincount(d.test.labels).tolist() == [3, 3]
    gray = d.train.images[d.train.labels == 0][-1]  # "gray.jpg" sorts after "2.png"
    assert np.all(np.abs(gray.astype(int) - 128) <= 3) and np.all(gray[..., 0] == gray[..., 1])

    # The same tree as a .tar.gz with one top-level folder decodes to the same arrays.
    tgz = _make_tgz(tree, tmp_path / "tree.tar.gz", "cifar-like")
    with pytest.warns(UserWarning):
        t = load_data(f"imagefolder:{tgz}", val_size=0, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(t.train.images, d.train.images)
    np.testing.assert_array_equal(t.test.labels, d.test.labels)
    assert t.source_hash != d.source_hash


def test_imagefolder_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(UserError, match=rf"{missing}.*does not exist.*train/<class>/ and test/<class>/"):
        load_data(f"imagefolder:{missing}", cache_dir=tmp_path / "c", progress=False)

    tree = tmp_path / "tree"
    _make_tree(tree)
    full = _make_tgz(tree, tmp_path / "full.tgz", ".").read_bytes()
    half = tmp_path / "half.tar.gz"
    half.write_bytes(full[: len(full) // 2])
    with pytest.raises(UserError, match=rf"{half} is truncated or not a gzip tar archive"):
        load_data(f"imagefolder:{half}", cache_dir=tmp_path / "c", progress=False)
    junk = tmp_path / "junk.tgz"
    junk.write_bytes(b"definitely not an archive" * 40)
    with pytest.raises(UserError, match=rf"{junk} is truncated or not a gzip tar archive"):
        load_data(f"imagefolder:{junk}", cache_dir=tmp_path / "c", progress=False)

    (tree / "train/bird").mkdir()
    (tree / "test/bird").mkdir()
    with pytest.raises(UserError, match=rf"{tree}: class folder train/bird/ has no images"):
        load_data(f"imagefolder:{tree}", cache_dir=tmp_path / "c", progress=False)
    (tree / "train/bird").rmdir()
    with pytest.raises(
        UserError, match=r"same class folders; train has \{cat, dog\}, test has \{bird, cat, dog\}"
    ):
        load_data(f"imagefolder:{tree}", cache_dir=tmp_path / "c", progress=False)
    flat = tmp_path / "flat"
    (flat / "cat").mkdir(parents=True)
    (flat / "cat/0.png").write_bytes(_png(np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(UserError, match=rf"{flat}: no train/ folder found \(found: cat\)"):
        load_data(f"imagefolder:{flat}", cache_dir=tmp_path / "c", progress=False)


# --------------------------------------------------------------------------------------------
# cifar pickle batches
# --------------------------------------------------------------------------------------------
def _write_fake_cifar10(root: Path, per_batch: int = 4) -> np.ndarray:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    first = None
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        batch = {b"data": data, b"labels": [int(v) for v in rng.integers(0, 10, per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [n.encode() for n in "airplane automobile bird cat deer dog frog horse ship truck".split()]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}))
    assert first is not None
    return first


def test_cifar_pickle_batches(tmp_path: Path) -> None:
    first = _write_fake_cifar10(tmp_path / "cifar")
    d = load_data(f"cifar10:{tmp_path / 'cifar'}", val_size=0, cache_dir=tmp_path / "c", progress=False)
    assert (len(d.train), len(d.test)) == (20, 4)
    assert d.classes[0] == "airplane" and len(d.classes) == 10 and d.input_size == 32
    # Channel-planar rows (R plane, G plane, B plane) become HWC pixels.
    assert d.train.images[0, 0, 1].tolist() == [first[0, 1], first[0, 1024 + 1], first[0, 2048 + 1]]


def test_cifar_missing_batches_names_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(cifar_mod, "fetch_url", offline)
    target = tmp_path / "cifar" / "cifar-100-python"
    with pytest.raises(
        UserError, match=rf"cifar100 batches not found in {target}.*network disabled.*{target}/train exists"
    ):
        load_data(f"cifar100:{tmp_path / 'cifar'}", cache_dir=tmp_path / "c", progress=False)


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------
def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    good = load_data(SMALL, cache_dir=tmp_path, progress=False)
    npy = tmp_path / good.source_hash / "train_images.npy"
    size = npy.stat().st_size
    npy.write_bytes(npy.read_bytes()[: size // 2])  # truncated
    with pytest.warns(UserWarning, match="invalid.*rebuilding"):
        again = load_data(SMALL, cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(again.train.images, good.train.images)
    assert npy.stat().st_size == size
    # Now valid again: no warning.
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_data(SMALL, cache_dir=tmp_path, progress=False)


# --------------------------------------------------------------------------------------------
# transforms and loader
# --------------------------------------------------------------------------------------------
def test_normalize_batch_layout_and_values() -> None:
    x = np.zeros((2, 4, 5, 3), np.uint8)
    x[..., 0] = 255
    out = normalize_batch(x, (0.5, 0.0, 0.0), (0.5, 1.0, 1.0))
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32 and out.is_contiguous()
    assert torch.allclose(out[:, 0], torch.ones(1)) and torch.allclose(out[:, 1], torch.zeros(1))
    cl = normalize_batch(torch.from_numpy(x), (0.5, 0.0, 0.0), (0.5, 1.0, 1.0), channels_last=True)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)
    with pytest.raises(ValueError):
        normalize_batch(x.astype(np.float32), (0.5,) * 3, (0.5,) * 3)


def test_augmentation_is_batched_seeded_and_changes_pixels() -> None:
    x = torch.from_numpy(np.random.default_rng(0).integers(1, 256, (64, 32, 32, 3), dtype=np.uint8))
    a = augment_batch(x, torch.Generator().manual_seed(1))
    b = augment_batch(x, torch.Generator().manual_seed(1))
    c = augment_batch(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, x)
    assert (a == 0).any()  # some crops show the black padding
    # Every output is a shifted (and maybe mirrored) window of its own input.
    padded = torch.nn.functional.pad(x.permute(0, 3, 1, 2), (4, 4, 4, 4)).permute(0, 2, 3, 1)
    for i in range(4):
        windows = [padded[i, dy : dy + 32, dx : dx + 32] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(1)) for w in windows)


def _tiny(n: int = 10) -> ArrayDataset:
    images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return ArrayDataset(images, np.arange(n, dtype=np.int64))


def test_loader_batches_shuffle_and_augment() -> None:
    ds = _tiny(10)
    plain = BatchLoader(ds, 4, (0.5,) * 3, (0.25,) * 3)
    batches = list(plain)
    assert len(plain) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x0, y0 = batches[0]
    assert x0.shape == (4, 3, 8, 8) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    assert torch.equal(x0, normalize_batch(ds.images[:4], (0.5,) * 3, (0.25,) * 3))
    assert len(BatchLoader(ds, 4, (0.5,) * 3, (0.25,) * 3, drop_last=True)) == 2

    shuf = BatchLoader(
        ds, 10, (0.5,) * 3, (0.25,) * 3, shuffle=True, augment=True, seed=7, channels_last=True
    )
    e0 = next(iter(shuf))
    assert e0[0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(next(iter(shuf))[0], e0[0])  # same epoch → same batch
    shuf.set_epoch(1)
    e1 = next(iter(shuf))
    assert sorted(e1[1].tolist()) == list(range(10)) and not torch.equal(e1[1], e0[1])


def test_loader_shards_are_disjoint_and_equal() -> None:
    ds = _tiny(10)
    seen = []
    for rank in range(2):
        loader = BatchLoader(ds, 3, (0.5,) * 3, (0.25,) * 3, shuffle=True, seed=1, rank=rank, world_size=2)
        loader.set_epoch(5)
        assert len(loader) == 2
        seen.append(torch.cat([y for _, y in loader]).tolist())
    assert len(seen[0]) == len(seen[1]) == 5
    assert not set(seen[0]) & set(seen[1]) and sorted(seen[0] + seen[1]) == list(range(10))
    # Uneven N: padded by wrapping so every rank has the same number of samples.
    ds7 = _tiny(7)
    shards = [BatchLoader(ds7, 2, (0.5,) * 3, (0.25,) * 3, rank=r, world_size=3).indices() for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    assert set(np.concatenate(shards).tolist()) == set(range(7))


# --------------------------------------------------------------------------------------------
# real data
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_JPG.exists(), reason=f"shared CIFAR-10 archive not found at {CIFAR_JPG}")
def test_real_cifar10_archive() -> None:
    spec = f"imagefolder:{CIFAR_JPG}"
    cache = REPO_ROOT / ".cache/data"  # the default cache_dir when run from the repo root
    load_data(spec, cache_dir=cache, progress=False)  # decodes on the first run, then cached
    start = time.perf_counter()
    d = load_data(spec, cache_dir=cache, progress=False)
    elapsed = time.perf_counter() - start
    assert (len(d.train), len(d.val), len(d.test)) == (45_000, 5_000, 10_000)
    assert len(d.classes) == 10 and d.classes[0] == "airplane"
    assert d.train.images.shape[1:] == (32, 32, 3) and d.input_size == 32
    assert np.bincount(d.val.labels).tolist() == [500] * 10
    assert np.allclose(d.mean, (0.4914, 0.4822, 0.4465), atol=0.01)
    assert elapsed < 2.0, f"cached load took {elapsed:.2f}s"
