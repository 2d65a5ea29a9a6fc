"""Data loaders that also work offline: IMDB, MNIST and Fashion-MNIST.

Each loader reads the standard Keras `.npz` file from `data_dir` (the
examples' `--data-dir` flag) or `$KERAS_VIB_DATA`, or else downloads it with
`keras.datasets`. A missing or malformed file, or a failed download, raises
a `DataFileError` that says what was expected.
"""

import os
import pickle
import zipfile

import keras
import numpy as np

ENV_VAR = "KERAS_VIB_DATA"
IMDB_FILE = "imdb.npz"
MNIST_FILE = "mnist.npz"
FASHION_MNIST_FILE = "fashion_mnist.npz"
IMDB_KEYS = MNIST_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataFileError(ValueError):
    """A data file is missing or does not have the expected layout."""


def resolve_data_dir(data_dir=None):
    """Return the data directory to read from, or `None` to download.

    Args:
        data_dir: a directory, or `None` to use `$KERAS_VIB_DATA`.

    Returns:
        The directory as a string, or `None` when neither is set (meaning:
        fall back to `keras.datasets`).
    """
    if data_dir:
        return os.fspath(data_dir)
    return os.environ.get(ENV_VAR) or None


def _read_npz(path, allow_pickle, x_layout, is_x):
    """`[x_train, y_train, x_test, y_test]` of a Keras data file, or raise a
    `DataFileError`; `is_x(x)` tells if `x` has the layout `x_layout` says."""
    keys = list(IMDB_KEYS)
    if not os.path.isfile(path):
        raise DataFileError(
            f"Data file not found: {path}. Expected the Keras "
            f"`{os.path.basename(path)}` file with arrays {keys}. Pass "
            f"--data-dir (or set ${ENV_VAR}) to the folder that holds it, or "
            "unset both to download it with keras.datasets."
        )
    try:
        with np.load(path, allow_pickle=allow_pickle) as f:
            files = sorted(f.files)
            arrays = {k: f[k] for k in keys if k in files}
    except (
        OSError,
        ValueError,
        EOFError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
    ) as e:
        raise DataFileError(
            f"Malformed data file {path}: could not read it as a numpy .npz "
            f"archive with arrays {keys} ({type(e).__name__}: {e})."
        ) from e
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataFileError(
            f"Malformed data file {path}: missing arrays {missing}. "
            f"Expected arrays {keys}; found {files}."
        )
    for x_name, y_name in (("x_train", "y_train"), ("x_test", "y_test")):
        x, y = arrays[x_name], arrays[y_name]
        if not is_x(x):
            raise DataFileError(
                f"Malformed data file {path}: `{x_name}` must be {x_layout}. "
                f"Received: an array of shape {x.shape} and dtype {x.dtype}."
            )
        if len(x) != len(y):
            raise DataFileError(
                f"Malformed data file {path}: `{x_name}` has {len(x)} entries "
                f"but `{y_name}` has {len(y)}. Expected one label per example."
            )
    return [arrays[key] for key in keys]


def load_imdb(
    data_dir=None,
    num_words=None,
    skip_top=0,
    seed=113,
    start_char=1,
    oov_char=2,
    index_from=3,
):
    """IMDB reviews as lists of word indices, as `keras.datasets.imdb`.

    The transforms of `keras.datasets.imdb.load_data`, in its order (one
    shuffle, train first; offset; `start_char`; `oov_char`), without its
    `maxlen` filter: truncate with `keras.utils.pad_sequences` instead.

    Args:
        data_dir: folder holding `imdb.npz`; `None` uses `$KERAS_VIB_DATA`,
            and if that is unset too, downloads with `keras.datasets`.
        num_words: keep indices below this (`None`: keep all).
        skip_top: indices below this become `oov_char`.
        seed: shuffle seed (Keras uses 113).
        start_char: index marking the start of a review, or `None`.
        oov_char: index for out-of-vocabulary words, or `None` to drop them.
        index_from: offset added to every word rank.

    Returns:
        `(x_train, y_train), (x_test, y_test)`: object arrays of int lists
        and int64 label arrays.
    """
    data_dir = resolve_data_dir(data_dir)
    if data_dir is None:
        # Ask keras.datasets for the shuffled raw ranks (no start char, no
        # offset, no vocabulary cut) so that one code path below does the
        # rest. num_words must be set: with None, Keras's `w < max(w)` test
        # would drop the rarest word.
        (x_train, y_train), (x_test, y_test) = _download(
            "imdb",
            lambda: keras.datasets.imdb.load_data(
                start_char=None,
                oov_char=None,
                index_from=0,
                num_words=2**62,
                seed=seed,
            ),
        )
    else:
        x_train, y_train, x_test, y_test = _read_npz(
            os.path.join(data_dir, IMDB_FILE),
            allow_pickle=True,
            x_layout="a 1-D object array of integer sequences (word ranks)",
            is_x=lambda x: (
                x.ndim == 1 and (len(x) == 0 or hasattr(x[0], "__len__"))
            ),
        )
        # One generator, train first, as keras.datasets.imdb shuffles.
        rng = np.random.RandomState(seed)
        train = rng.permutation(len(x_train))
        test = rng.permutation(len(x_test))
        x_train, y_train = x_train[train], y_train[train]
        x_test, y_test = x_test[test], y_test[test]

    start = [] if start_char is None else [start_char]
    xs = [start + [w + index_from for w in x] for x in (*x_train, *x_test)]

    if not num_words:
        num_words = max(max(x) for x in xs if x)
    if oov_char is not None:
        xs = [
            [w if skip_top <= w < num_words else oov_char for w in x]
            for x in xs
        ]
    else:
        xs = [[w for w in x if skip_top <= w < num_words] for x in xs]

    n = len(x_train)
    x_train = np.array(xs[:n] + [None], dtype="object")[:-1]
    x_test = np.array(xs[n:] + [None], dtype="object")[:-1]
    y_train = np.asarray(y_train, dtype="int64")
    y_test = np.asarray(y_test, dtype="int64")
    return (x_train, y_train), (x_test, y_test)


def split_validation(x, y, val_size, train_size=None):
    """Hold out the last `val_size` examples; optionally cut the rest.

    Args:
        x, y: training arrays (already shuffled, as the loaders return them).
        val_size: int >= 0, number of examples at the end kept for
            validation (0: no validation set).
        train_size: `None` for all remaining examples, or an int: keep the
            first `train_size` of them (a reduced-data regime).

    Returns:
        `(x_train, y_train), (x_val, y_val)`; the validation arrays are
        empty when `val_size=0`.
    """
    n = len(x)
    if not 0 <= val_size < n:
        raise ValueError(
            "Invalid value received for argument `val_size`. Expected an int "
            f"in [0, {n}). Received: val_size={val_size}"
        )
    cut = n - val_size
    if train_size is not None and not 1 <= train_size <= cut:
        raise ValueError(
            "Invalid value received for argument `train_size`. Expected "
            f"an int in [1, {cut}]. Received: train_size={train_size}"
        )
    end = cut if train_size is None else train_size
    return (x[:end], y[:end]), (x[cut:], y[cut:])


def _download(name, load_data):
    """`load_data()`, or an error that says how to pass a local copy."""
    try:
        return load_data()
    except Exception as error:  # Keras raises several kinds on no network
        raise DataFileError(
            f"Could not download the {name} data set with keras.datasets "
            f"({type(error).__name__}: {error}). Offline, pass a folder "
            f"holding a copy of Keras's `{name}.npz` as `data_dir` (the "
            f"examples' --data-dir flag) or set ${ENV_VAR}."
        ) from error


def _load_images(name, data_dir, flatten, normalize):
    """`load_mnist` for the Keras data set `name` (`mnist.npz`, ...)."""
    data_dir = resolve_data_dir(data_dir)
    if data_dir is None:
        load_data = getattr(keras.datasets, name).load_data
        (x_train, y_train), (x_test, y_test) = _download(name, load_data)
    else:
        x_train, y_train, x_test, y_test = _read_npz(
            os.path.join(data_dir, f"{name}.npz"),
            allow_pickle=False,
            x_layout="of shape (n, 28, 28)",
            is_x=lambda x: x.shape[1:] == (28, 28) and x.ndim == 3,
        )

    def prepare(x, y):
        x = x.reshape(len(x), -1) if flatten else x
        x = x.astype("float32") / 255.0 if normalize else x
        return x, np.asarray(y, dtype="int64")

    return prepare(x_train, y_train), prepare(x_test, y_test)


def load_mnist(data_dir=None, flatten=True, normalize=True):
    """MNIST digits, optionally flattened to 784 and scaled to [0, 1].

    Args:
        data_dir: folder holding `mnist.npz`; `None` uses `$KERAS_VIB_DATA`,
            and if that is unset too, downloads with `keras.datasets`.
        flatten: bool. `True` reshapes the images to `(n, 784)`; `False`
            keeps them `(n, 28, 28)`, with no channel axis (add one with
            `x[..., None]` for a `Conv2D`).
        normalize: bool. `True` returns float32 pixels in [0, 1]; `False`
            the uint8 values 0-255 (which a `"bernoulli"` `VAE` refuses).

    Returns:
        `(x_train, y_train), (x_test, y_test)`: 60,000 and 10,000 images,
        `(n, 784)` or `(n, 28, 28)`, and their labels 0-9 as int64 `(n,)`.

    Example:

    >>> (x_train, y_train), _ = kv.datasets.load_mnist()  # doctest: +SKIP
    >>> x_train.shape, x_train.dtype  # doctest: +SKIP
    ((60000, 784), dtype('float32'))
    >>> (images, _), _ = kv.datasets.load_mnist(  # doctest: +SKIP
    ...     flatten=False)
    >>> images.shape  # doctest: +SKIP
    (60000, 28, 28)
    """
    return _load_images("mnist", data_dir, flatten, normalize)


def load_fashion_mnist(data_dir=None, flatten=True, normalize=True):
    """Fashion-MNIST, in the layout of `load_mnist` (`fashion_mnist.npz`).

    Args:
        data_dir: folder holding `fashion_mnist.npz` (see `load_mnist`).
        flatten: bool, as in `load_mnist`.
        normalize: bool, as in `load_mnist`.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, as `load_mnist`.
    """
    return _load_images("fashion_mnist", data_dir, flatten, normalize)


def binarize(x, rng):
    """Dynamic binarization: one Bernoulli draw per pixel, `x` in [0, 1].

    Args:
        x: float array of pixel intensities in [0, 1].
        rng: a `np.random.Generator` or an int seed.

    Returns:
        A float32 array of 0s and 1s, the shape of `x`.

    Example:

    >>> kv.datasets.binarize(np.array([0.0, 1.0]), rng=0)
    array([0., 1.], dtype=float32)
    """
    rng = np.random.default_rng(rng)
    return (rng.random(x.shape, dtype="float32") < x).astype("float32")


class DynamicBinarization(keras.utils.PyDataset):
    """Batches of `x` binarized afresh every epoch, for `VAE.fit`.

    As in the IWAE paper, each epoch draws new binary images (and, with
    `shuffle`, a new order). Each item is a one-element tuple `(batch,)`:
    an input and no target, as `VAE` and `IWAE` take.

    Args:
        x: float array in [0, 1], shape `(n, ...)`.
        batch_size: int, examples per batch.
        seed: int, seeds the Bernoulli draws and the shuffling.
        shuffle: reshuffle the order each epoch.
        **kwargs: `keras.utils.PyDataset` arguments (`workers`, ...).

    Example:

    >>> data = kv.datasets.DynamicBinarization(
    ...     np.full((10, 4), 0.5), batch_size=4, seed=0)
    >>> len(data), data[0][0].shape
    (3, (4, 4))
    """

    def __init__(self, x, batch_size=100, seed=0, shuffle=True, **kwargs):
        super().__init__(**kwargs)
        self.x = x
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)
        self.shuffle = shuffle
        self.on_epoch_end()

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def on_epoch_end(self):
        order = np.arange(len(self.x))
        if self.shuffle:
            order = self.rng.permutation(order)
        self._epoch = binarize(self.x[order], self.rng)

    def __getitem__(self, index):
        start = index * self.batch_size
        return (self._epoch[start : start + self.batch_size],)
