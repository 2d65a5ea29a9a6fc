"""Tests for keras_vib.datasets on small files written here (no real data)."""

import os

import keras
import numpy as np
import pytest

from keras_vib import datasets


def _ragged(seqs):
    # A 1-D object array even when all sequences have the same length.
    return np.array(list(seqs) + [None], dtype="object")[:-1]


def write_imdb(folder, n_train=40, n_test=30, vocab=60, seed=0):
    """A tiny imdb.npz in the Keras layout: raw ranks from 1, no offset."""
    rng = np.random.default_rng(seed)

    def make(n):
        xs = [
            list(map(int, rng.integers(1, vocab, rng.integers(1, 12))))
            for _ in range(n)
        ]
        return _ragged(xs), rng.integers(0, 2, n).astype("int64")

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    path = os.path.join(folder, "imdb.npz")
    np.savez(
        path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test
    )
    return path, (x_train, y_train, x_test, y_test)


def keras_reference(monkeypatch, path, **kwargs):
    """Keras's own `imdb.load_data`, reading our file instead of a download."""
    from keras.src.datasets import imdb as keras_imdb

    monkeypatch.setattr(keras_imdb, "get_file", lambda *a, **k: path)
    return keras_imdb.load_data(**kwargs)


def assert_same(ours, theirs):
    (xa, ya), (xb, yb) = ours
    (xc, yc), (xd, yd) = theirs
    assert [list(s) for s in xa] == [list(s) for s in xc]
    assert [list(s) for s in xb] == [list(s) for s in xd]
    np.testing.assert_array_equal(ya, yc)
    np.testing.assert_array_equal(yb, yd)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_words": 20},
        {"num_words": 20, "skip_top": 5},
        {"num_words": 25, "oov_char": None},
        {"start_char": None, "index_from": 0},
        {"start_char": None, "index_from": 3, "num_words": 30},
        {"seed": 7, "index_from": 5, "oov_char": 4, "num_words": 15},
    ],
)
def test_load_imdb_matches_keras(tmp_path, monkeypatch, kwargs):
    path, _ = write_imdb(str(tmp_path))
    ours = datasets.load_imdb(str(tmp_path), **kwargs)
    theirs = keras_reference(monkeypatch, path, **kwargs)
    assert_same(ours, theirs)


def test_load_imdb_by_hand(tmp_path):
    # Two reviews per split; check the transforms against values worked out
    # by hand: ranks + index_from, start_char first, ranks >= num_words -> oov.
    x = _ragged([[1, 2, 9], [4]])
    y = np.array([0, 1])
    np.savez(tmp_path / "imdb.npz", x_train=x, y_train=y, x_test=x, y_test=y)
    (x_train, y_train), _ = datasets.load_imdb(
        str(tmp_path), num_words=10, seed=113
    )
    order = np.arange(2)
    np.random.RandomState(113).shuffle(order)
    expected = [[1, 4, 5, 2], [1, 7]]  # 9 + 3 = 12 >= 10 -> oov 2
    assert [list(s) for s in x_train] == [expected[i] for i in order]
    np.testing.assert_array_equal(y_train, y[order])
    assert x_train.dtype == object and x_train.ndim == 1


def test_load_imdb_from_env_and_download_fallback(tmp_path, monkeypatch):
    path, _ = write_imdb(str(tmp_path))
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp_path))
    from_env = datasets.load_imdb(num_words=20)
    monkeypatch.delenv(datasets.ENV_VAR)
    # No directory at all: goes through keras.datasets (its download is
    # replaced by our file here).
    from keras.src.datasets import imdb as keras_imdb

    monkeypatch.setattr(keras_imdb, "get_file", lambda *a, **k: path)
    downloaded = datasets.load_imdb(num_words=20)
    assert_same(from_env, downloaded)


def test_data_dir_argument_beats_env(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.ENV_VAR, "/nonexistent")
    assert datasets.resolve_data_dir(str(tmp_path)) == str(tmp_path)
    assert datasets.resolve_data_dir(None) == "/nonexistent"
    monkeypatch.delenv(datasets.ENV_VAR)
    assert datasets.resolve_data_dir(None) is None


def test_missing_file_names_path(tmp_path):
    with pytest.raises(datasets.DataFileError, match="imdb.npz") as info:
        datasets.load_imdb(str(tmp_path))
    assert str(tmp_path) in str(info.value)
    assert "x_train" in str(info.value)
    with pytest.raises(datasets.DataFileError, match="mnist.npz"):
        datasets.load_mnist(str(tmp_path))


def test_malformed_files(tmp_path):
    np.savez(
        tmp_path / "imdb.npz", x_train=_ragged([[1]]), y_train=np.array([0])
    )
    with pytest.raises(
        datasets.DataFileError, match=r"missing arrays \['x_test', 'y_test'\]"
    ):
        datasets.load_imdb(str(tmp_path))
    (tmp_path / "imdb.npz").write_bytes(b"not a zip file")
    with pytest.raises(datasets.DataFileError, match="could not read"):
        datasets.load_imdb(str(tmp_path))
    np.savez(
        tmp_path / "imdb.npz",
        x_train=_ragged([[1], [2]]),
        y_train=np.array([0]),
        x_test=_ragged([[1]]),
        y_test=np.array([0]),
    )
    with pytest.raises(datasets.DataFileError, match="one label per example"):
        datasets.load_imdb(str(tmp_path))
    np.savez(
        tmp_path / "mnist.npz",
        x_train=np.zeros((3, 784)),
        y_train=np.zeros(3),
        x_test=np.zeros((1, 28, 28)),
        y_test=np.zeros(1),
    )
    with pytest.raises(datasets.DataFileError, match=r"\(n, 28, 28\)"):
        datasets.load_mnist(str(tmp_path))


def test_split_validation_takes_last_examples():
    x, y = np.arange(100), np.arange(100) % 2
    (xt, yt), (xv, yv) = datasets.split_validation(x, y, 30)
    np.testing.assert_array_equal(xt, np.arange(70))
    np.testing.assert_array_equal(xv, np.arange(70, 100))
    np.testing.assert_array_equal(yv, np.arange(70, 100) % 2)
    (xt, _), (xv, _) = datasets.split_validation(x, y, 30, train_size=25)
    np.testing.assert_array_equal(xt, np.arange(25))
    assert (
        len(xv) == 30
    )  # the validation set does not shrink with the training set
    (xt, _), (xv, _) = datasets.split_validation(x, y, 0)
    assert len(xt) == 100 and len(xv) == 0
    with pytest.raises(ValueError, match="val_size"):
        datasets.split_validation(x, y, 100)
    with pytest.raises(ValueError, match="train_size"):
        datasets.split_validation(x, y, 30, train_size=71)


def test_load_mnist(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x_test = rng.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    np.savez(
        tmp_path / "mnist.npz",
        x_train=x_train,
        y_train=np.arange(5, dtype="uint8"),
        x_test=x_test,
        y_test=np.arange(2, dtype="uint8"),
    )
    (xa, ya), (xb, yb) = datasets.load_mnist(str(tmp_path))
    assert (
        xa.shape == (5, 784) and xb.shape == (2, 784) and xa.dtype == np.float32
    )
    np.testing.assert_allclose(xa, x_train.reshape(5, -1) / 255.0, rtol=1e-6)
    assert ya.dtype == np.int64 and list(yb) == [0, 1]
    (xa, _), _ = datasets.load_mnist(
        str(tmp_path), flatten=False, normalize=False
    )
    np.testing.assert_array_equal(xa, x_train)


def test_binarize_statistics():
    x = np.full((200, 500), 0.3, dtype="float32")
    b = datasets.binarize(x, 0)
    assert set(np.unique(b)) <= {0.0, 1.0}
    # Bernoulli(0.3) mean over n = 1e5 pixels: std sqrt(0.21 / n) ~ 0.00145.
    assert abs(b.mean() - 0.3) < 5 * np.sqrt(0.21 / b.size)
    edges = datasets.binarize(np.array([[0.0, 1.0]] * 1000, dtype="float32"), 1)
    np.testing.assert_array_equal(edges[:, 0], 0.0)
    np.testing.assert_array_equal(edges[:, 1], 1.0)


def test_dynamic_binarization_resamples_each_epoch():
    x = np.full((50, 784), 0.5, dtype="float32")
    data = datasets.DynamicBinarization(x, batch_size=20, seed=0)
    assert len(data) == 3
    (first,) = data[0]  # an input and no target, as VAE.fit takes
    assert first.shape == (20, 784) and data[2][0].shape == (10, 784)
    data.on_epoch_end()
    # Two independent draws at p = 0.5 agree on about half the pixels.
    agree = np.mean(data[0][0] == first)
    assert abs(agree - 0.5) < 5 * np.sqrt(0.25 / first.size)
    assert isinstance(data, keras.utils.PyDataset)
