"""Image datasets as integer pixel levels: scikit-learn's digits, MNIST, IDX files, PNG folders, ``.npy``.

Every loader returns an :class:`ImageData` with ``(N, C, H, W)`` integer tensors of pixel levels
``0 .. levels-1`` and a fixed train/test split (seeded permutation).

* ``digits``: scikit-learn's 1,797 8x8 digits, values 0..16, so ``levels = 17`` (not 2**n).
* ``mnist``: the shipped MNIST test set (``data/mnist``, see ``data/SOURCES.md``), split
  8,000 / 2,000.
* a path: an IDX images file (gzip or raw), a folder of ``*.png`` files, or a ``.npy`` array of
  shape ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` (C <= 4; when both ends could be
  channels, a last axis of 1 or 3 means channels-last). uint8 data has 256 levels,
  other integers ``2**ceil(log2(max + 1))``, floats must lie in [0, 1] and are read as 8-bit.
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ctflow.data.datasets import data_path

__all__ = [
    "ImageData",
    "load_digits_images",
    "load_idx",
    "load_image_data",
    "load_mnist",
    "load_npy_images",
    "load_png_folder",
    "split_images",
]

MNIST_IMAGES = "mnist/t10k-images-idx3-ubyte.gz"
MNIST_LABELS = "mnist/t10k-labels-idx1-ubyte.gz"

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageData:
    """Train and test images (integer levels, ``(N, C, H, W)``) and the number of levels."""

    train: Tensor
    test: Tensor
    levels: int
    name: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


def load_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or raw, into an array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] < 1:
        raise ValueError(f"{path} is not an IDX file (expected magic 0x0000 <type> <ndim>, got {raw[:4]!r})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header promises {dims} ({expected} bytes) but holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _as_nchw(array: np.ndarray, source: str) -> np.ndarray:
    if array.ndim == 3:
        return array[:, None]
    if array.ndim == 4:
        first, last = array.shape[1], array.shape[-1]
        channels_last = last <= 4 and (first > 4 or (last in (1, 3) and first not in (1, 3)))
        if channels_last:
            return np.moveaxis(array, -1, 1)
        if first <= 4:
            return array
    raise ValueError(
        f"{source}: expected images of shape (N, H, W), (N, C, H, W) or (N, H, W, C) with C <= 4, "
        f"got {array.shape}"
    )


def _to_levels(array: np.ndarray, source: str) -> tuple[np.ndarray, int]:
    if array.size == 0:
        raise ValueError(f"{source}: no images")
    if array.dtype == np.bool_:
        return array.astype(np.uint8), 2
    if array.dtype == np.uint8:
        return array, 256
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0:
            raise ValueError(f"{source}: integer pixels must be >= 0, got minimum {lo}")
        return array, max(2, 2 ** math.ceil(math.log2(hi + 1)))
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{source}: float pixels must be finite and lie in [0, 1]")
        return np.round(array * 255).astype(np.uint8), 256
    raise TypeError(
        f"{source}: pixels must be integers, booleans or floats in [0, 1], got dtype {array.dtype}"
    )


def _tensor(array: np.ndarray, levels: int) -> Tensor:
    dtype = np.uint8 if levels <= 256 else np.int32
    return torch.from_numpy(np.ascontiguousarray(array, dtype=dtype))


def split_images(
    images: np.ndarray, levels: int, name: str, n_test: int | float = 0.2, seed: int = 0
) -> ImageData:
    """Split ``(N, C, H, W)`` levels by a seeded permutation; ``n_test`` is a count or a fraction."""
    n = images.shape[0]
    k = round(n * n_test) if isinstance(n_test, float) else int(n_test)
    if not 0 < k < n:
        raise ValueError(f"{name}: cannot hold out {k} of {n} images")
    perm = np.random.default_rng(seed).permutation(n)
    return ImageData(_tensor(images[perm[k:]], levels), _tensor(images[perm[:k]], levels), levels, name)


def load_digits_images(seed: int = 0, n_test: int | float = 0.2) -> ImageData:
    """scikit-learn's 8x8 digits (1,797 images, 17 levels 0..16); no download."""
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.uint8)[:, None]
    return split_images(images, 17, "digits", n_test, seed)


def load_mnist(seed: int = 0) -> ImageData:
    """The shipped MNIST test set (10,000 images, 28x28, 256 levels) split 8,000 train / 2,000 test."""
    images = load_idx(data_path(MNIST_IMAGES))
    return split_images(images[:, None], 256, "mnist", 2000, seed)


def load_png_folder(path: str | os.PathLike) -> np.ndarray:
    """All ``*.png`` files of a folder (sorted by name) as ``(N, C, H, W)`` uint8; grey gives C = 1."""
    from PIL import Image

    path = Path(path)
    files = sorted(path.glob("*.png"))
    if not files:
        raise ValueError(f"no .png files in folder {path}")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert("L" if im.mode in ("1", "L", "LA", "I", "I;16") else "RGB")
                arr = np.asarray(im, dtype=np.uint8)
        except OSError as err:
            raise ValueError(f"cannot read image {f}: {err}") from None
        arr = arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)
        if images and arr.shape != images[0].shape:
            raise ValueError(f"{f} has shape {arr.shape} but {files[0].name} has {images[0].shape}")
        images.append(arr)
    return np.stack(images)


def load_npy_images(path: str | os.PathLike) -> np.ndarray:
    """A ``.npy`` array of images (never unpickled: object arrays are refused)."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path}: not a plain numeric .npy array ({err})") from None
    if not isinstance(array, np.ndarray):
        raise ValueError(f"{path}: expected one array, got {type(array).__name__}")
    return array


def load_image_data(spec: str | os.PathLike, seed: int = 0, n_test: int | float = 0.2) -> ImageData:
    """``"digits"``, ``"mnist"``, or a path to an IDX file, a PNG folder or a ``.npy`` array."""
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"data must be 'digits', 'mnist' or a path, got {type(spec).__name__}")
    if str(spec) == "digits":
        return load_digits_images(seed, n_test)
    if str(spec) == "mnist":
        return load_mnist(seed)
    path = Path(spec)
    if path.is_dir():
        array, source = load_png_folder(path), str(path)
    elif path.is_file():
        source = str(path)
        array = load_npy_images(path) if path.suffix == ".npy" else load_idx(path)
    else:
        raise ValueError(
            f"data {str(spec)!r} is neither 'digits', 'mnist', a folder of PNGs nor an existing file "
            "(.npy or IDX)"
        )
    images, levels = _to_levels(_as_nchw(array, source), source)
    return split_images(images, levels, path.stem or str(path), n_test, seed)
