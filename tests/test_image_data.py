"""Image data loaders: built-in sets, IDX / PNG / .npy files and clear errors on bad input."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from ctflow.data.datasets import data_path
from ctflow.image.data import load_digits_images, load_idx, load_image_data, load_mnist


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(
        struct.pack(">I", d) for d in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def test_digits_have_17_levels_and_a_fixed_split():
    d = load_digits_images()
    assert d.levels == 17 and d.shape == (1, 8, 8)
    assert d.train.shape[0] + d.test.shape[0] == 1797
    assert int(d.train.max()) == 16 and d.train.dtype == torch.uint8
    assert torch.equal(load_digits_images().test, d.test)


def test_mnist_is_shipped_and_split_8000_2000():
    assert data_path("mnist/t10k-images-idx3-ubyte.gz").is_file()
    labels = load_idx(data_path("mnist/t10k-labels-idx1-ubyte.gz"))
    assert labels.shape == (10000,) and np.bincount(labels)[1] == 1135
    m = load_mnist()
    assert m.train.shape == (8000, 1, 28, 28) and m.test.shape == (2000, 1, 28, 28) and m.levels == 256
    assert torch.equal(load_mnist().test[:5], m.test[:5])


@pytest.mark.parametrize("compress", [False, True])
def test_idx_files_gz_or_raw(tmp_path, compress):
    array = np.random.default_rng(0).integers(0, 256, (10, 5, 6))
    raw = _idx_bytes(array)
    path = tmp_path / ("img.idx.gz" if compress else "img.idx")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    assert np.array_equal(load_idx(path), array)
    d = load_image_data(path, n_test=2)
    assert d.shape == (1, 5, 6) and d.levels == 256 and d.test.shape[0] == 2


def test_png_folder_and_npy(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    d = load_image_data(tmp_path)
    assert d.shape == (1, 4, 4) and d.train.shape[0] + d.test.shape[0] == 6
    npy = tmp_path / "x.npy"
    np.save(npy, rng.integers(0, 4, (10, 4, 4, 3)))
    d = load_image_data(npy)
    assert d.shape == (3, 4, 4) and d.levels == 4
    np.save(npy, rng.random((10, 2, 4, 4)))
    assert load_image_data(npy).levels == 256


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="neither 'digits'"):
        load_image_data(tmp_path / "missing")
    with pytest.raises(TypeError, match="digits"):
        load_image_data(3)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x56\x78")
    with pytest.raises(ValueError, match=r"bad\.idx is not an IDX file"):
        load_image_data(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(_idx_bytes(np.zeros((4, 3, 3)))[:-1])
    with pytest.raises(ValueError, match=r"short\.idx: IDX header promises"):
        load_idx(short)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"no \.png files"):
        load_image_data(empty)
    npy = tmp_path / "neg.npy"
    np.save(npy, -np.ones((4, 3, 3), dtype=np.int64))
    with pytest.raises(ValueError, match=r"neg\.npy: integer pixels must be >= 0"):
        load_image_data(npy)
    np.save(npy, np.zeros((4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"expected images of shape"):
        load_image_data(npy)
    np.save(npy, np.full((4, 3, 3), 2.0))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        load_image_data(npy)
    np.save(npy, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain numeric"):
        load_image_data(npy)
