"""Fashion-MNIST reading (idx format, gzip) with numpy only."""

from __future__ import annotations

import gzip
import os

import numpy as np

#: Location used by the Debian/Ubuntu package ``dataset-fashion-mnist``.
DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _open(path: str):
    if os.path.exists(path):
        return gzip.open(path, "rb")
    plain = path[:-3] if path.endswith(".gz") else path
    if os.path.exists(plain):
        return open(plain, "rb")
    raise FileNotFoundError(path)


def read_idx(path: str) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) into a numpy array."""
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"not an idx file: {path}")
    dtype_code, ndim = data[2], data[3]
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if dtype_code not in dtypes:
        raise ValueError(f"unknown idx dtype 0x{dtype_code:02x} in {path}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=dtypes[dtype_code], offset=offset)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"idx size mismatch in {path}")
    return arr.reshape(shape).astype(np.dtype(dtypes[dtype_code]).newbyteorder("="))


def load_fashion_mnist(split: str = "train", data_dir: str = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N, 28, 28], labels int64 [N])`` for 'train' or 'test'."""
    if split not in _FILES:
        raise ValueError("split must be 'train' or 'test'")
    d = data_dir or os.environ.get("FASHION_MNIST_DIR") or DEFAULT_DATA_DIR
    img_name, lab_name = _FILES[split]
    images = read_idx(os.path.join(d, img_name))
    labels = read_idx(os.path.join(d, lab_name)).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ValueError("image/label count mismatch")
    return images, labels


def to_model_images(images_u8: np.ndarray):
    """uint8 ``[N, 28, 28]`` -> float32 torch ``[N, 1, 32, 32]`` in [-1, 1] (padded with -1)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images_u8)).float().div_(127.5).sub_(1.0)
    x = x.unsqueeze(1)
    return torch.nn.functional.pad(x, (2, 2, 2, 2), value=-1.0)
