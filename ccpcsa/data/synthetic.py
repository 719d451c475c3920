"""``synthetic`` source: procedurally generated, offline, deterministic and learnable images.

Each class is a distinct (shape, texture) pair — shapes: disc, square, triangle, cross, ring,
diamond; textures: solid, horizontal stripes, vertical stripes, diagonal stripes, checkerboard —
with the class-to-pair mapping chosen so that no single shape or texture identifies a class (with
10 classes every shape and texture appears in more than one class). Every image draws a random
background and foreground colour (one dark, one light), a random size and placement, a random
stripe phase and Gaussian pixel noise, so colour statistics alone do not tell the classes apart but
a small CNN learns them in a few epochs.

Spec forms::

    synthetic                                    10 classes, 32x32, 4000 train / 1000 test, seed 0
    synthetic:N_TRAIN:N_TEST                     same, with the given counts
    synthetic?classes=C&size=S&train=N&test=M&seed=K   any subset of the keys, in any order

``seed`` here seeds the *generation* (the pixels); the ``seed`` argument of ``load_data`` only
seeds the train/validation split. Train and test use independent random streams.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import UserError, unknown
from .raw import RawData

SHAPES = ("disc", "square", "triangle", "cross", "ring", "diamond")
TEXTURES = ("solid", "hstripes", "vstripes", "diagonal", "checker")
MAX_CLASSES = len(SHAPES) * len(TEXTURES)
GENERATOR_VERSION = 1
_CHUNK = 2048  # fixed, so the output does not depend on memory settings


@dataclass(frozen=True)
class SyntheticParams:
    """Generation parameters (all part of the cache key)."""

    classes: int = 10
    size: int = 32
    train: int = 4000
    test: int = 1000
    seed: int = 0

    def validate(self) -> None:
        """Raise UserError if a parameter is out of range."""
        if not 2 <= self.classes <= MAX_CLASSES:
            raise UserError(f"synthetic: classes must be between 2 and {MAX_CLASSES}, got {self.classes}")
        if not 8 <= self.size <= 256:
            raise UserError(f"synthetic: size must be between 8 and 256, got {self.size}")
        if self.train < 1 or self.test < 1:
            raise UserError(
                f"synthetic: train and test must be at least 1, got train={self.train} test={self.test}"
            )
        if self.seed < 0:
            raise UserError(f"synthetic: seed must be >= 0, got {self.seed}")


def class_recipe(k: int) -> tuple[str, str]:
    """(shape, texture) of class ``k``; distinct for every ``k < MAX_CLASSES``."""
    return SHAPES[k % len(SHAPES)], TEXTURES[(k // len(SHAPES) + k) % len(TEXTURES)]


def parse_synthetic(spec: str) -> SyntheticParams:
    """Parse ``synthetic``, ``synthetic:N_TRAIN:N_TEST`` or ``synthetic?key=value&...`` (UserError if bad)."""
    fields = {f: int(v) for f, v in asdict(SyntheticParams()).items()}
    if spec == "synthetic":
        pass
    elif spec.startswith("synthetic:"):
        parts = spec[len("synthetic:") :].split(":")
        if len(parts) != 2:
            raise UserError(
                f"bad synthetic spec '{spec}'; expected synthetic:N_TRAIN:N_TEST, e.g. synthetic:4000:1000"
            )
        fields["train"], fields["test"] = (_int(spec, "train", p) for p in parts)
    elif spec.startswith("synthetic?"):
        query = spec[len("synthetic?") :]
        for item in filter(None, query.split("&")):
            name, sep, value = item.partition("=")
            if name not in fields:
                raise unknown("synthetic option", name, fields)
            if not sep:
                raise UserError(f"bad synthetic spec '{spec}': option '{name}' needs a value ({name}=...)")
            fields[name] = _int(spec, name, value)
    else:
        raise UserError(f"bad synthetic spec '{spec}'")
    params = SyntheticParams(**fields)
    params.validate()
    return params


def _int(spec: str, name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"bad synthetic spec '{spec}': {name} must be an integer, got '{value}'") from None


class SyntheticSource:
    """Generated data described by :class:`SyntheticParams`."""

    kind = "synthetic"

    def __init__(self, spec: str, params: SyntheticParams) -> None:
        self.spec = spec
        self.params = params

    def key(self) -> str:
        """Hash of the parameters, seed and generator version."""
        payload = {"kind": "synthetic", "version": GENERATOR_VERSION, **asdict(self.params)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def build(self, progress: bool = True) -> RawData:
        """Generate the train and test arrays (deterministic in the parameters)."""
        p = self.params
        train_x, train_y = generate(p.train, p.classes, p.size, np.random.default_rng([p.seed, 0]))
        test_x, test_y = generate(p.test, p.classes, p.size, np.random.default_rng([p.seed, 1]))
        classes = ["-".join(class_recipe(k)) for k in range(p.classes)]
        return RawData(train_x, train_y, test_x, test_y, classes)


def generate(n: int, classes: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` images ``uint8 (n, size, size, 3)`` with balanced shuffled labels ``int64 (n,)``."""
    labels = rng.permutation(np.arange(n) % classes).astype(np.int64)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        images[start:stop] = _render(labels[start:stop], size, rng)
    return images, labels


def _render(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    radius = rng.uniform(0.24, 0.42, n).astype(np.float32) * s
    cx = radius + rng.random(n, dtype=np.float32) * (s - 2 * radius)
    cy = radius + rng.random(n, dtype=np.float32) * (s - 2 * radius)
    dx = (xx[None] - cx[:, None, None]) / radius[:, None, None]
    dy = (yy[None] - cy[:, None, None]) / radius[:, None, None]
    period = max(2, round(size / 8))
    phase = rng.integers(0, 2 * period, n)[:, None, None]

    mask = np.zeros((n, size, size), dtype=bool)
    tex = np.ones((n, size, size), dtype=bool)
    shape_id = labels % len(SHAPES)
    tex_id = (labels // len(SHAPES) + labels) % len(TEXTURES)
    for sid, name in enumerate(SHAPES):
        sel = shape_id == sid
        if sel.any():
            mask[sel] = _shape_mask(name, dx[sel], dy[sel])
    ix = xx.astype(np.int64)[None]
    iy = yy.astype(np.int64)[None]
    for tid, name in enumerate(TEXTURES):
        sel = tex_id == tid
        if sel.any() and name != "solid":
            tex[sel] = _texture(name, ix, iy, phase[sel], period)

    # One colour dark and one light, at random which; stripes alternate fg and the fg/bg midpoint.
    dark = rng.uniform(0.0, 0.4, (n, 3)).astype(np.float32)
    light = rng.uniform(0.6, 1.0, (n, 3)).astype(np.float32)
    fg_light = rng.random(n) < 0.5
    fg = np.where(fg_light[:, None], light, dark)
    bg = np.where(fg_light[:, None], dark, light)
    fg2 = 0.5 * (fg + bg)
    obj = np.where(tex[..., None], fg[:, None, None, :], fg2[:, None, None, :])
    img = np.where(mask[..., None], obj, bg[:, None, None, :])
    img += rng.normal(0.0, 0.06, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _shape_mask(name: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if name == "disc":
        return dx * dx + dy * dy <= 1.0
    if name == "square":
        return np.maximum(ax, ay) <= 0.8
    if name == "triangle":  # apex up, base at dy = 0.8
        return (dy <= 0.8) & (dy >= -1.0) & (ax <= (dy + 1.0) * 0.5)
    if name == "cross":
        return ((ax <= 0.3) & (ay <= 1.0)) | ((ay <= 0.3) & (ax <= 1.0))
    if name == "ring":
        r2 = dx * dx + dy * dy
        return (r2 <= 1.0) & (r2 >= 0.45)
    if name == "diamond":
        return ax + ay <= 1.0
    raise AssertionError(name)


def _texture(name: str, ix: np.ndarray, iy: np.ndarray, phase: np.ndarray, period: int) -> np.ndarray:
    if name == "hstripes":
        return ((iy + phase) // period) % 2 == 0
    if name == "vstripes":
        return ((ix + phase) // period) % 2 == 0
    if name == "diagonal":
        return ((ix + iy + phase) // period) % 2 == 0
    if name == "checker":
        return (((ix + phase) // period) + ((iy + phase) // period)) % 2 == 0
    raise AssertionError(name)
