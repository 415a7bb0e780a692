"""A small CNN trained on scikit-learn's bundled digits, as a model to benchmark weight compression.

The data are scikit-learn's ``load_digits`` (1797 grey 8x8 images of the digits 0 to 9, pixel
values 0 to 16, shipped inside scikit-learn: nothing is downloaded). They are split once, with a
fixed seed and stratified by class, into

* a training set (70 %, 1257 images);
* a calibration set: 256 of the training images, also stratified, the inputs from which
  Hessian-aware methods estimate second moments of the layer inputs;
* a test set (30 %, 540 images) on which the accuracy of a compressed model is measured.

:class:`DigitsCNN` has a regular convolution, a depthwise convolution, a grouped convolution and
two fully connected layers (38 442 parameters), so that every kind of layer a codec has to handle
is present. :func:`train_digits_cnn` trains it deterministically on one CPU thread in about 10 seconds.

Examples
--------
>>> model, data = train_digits_cnn(seed=0)                       # doctest: +SKIP
>>> accuracy(model, data.x_test, data.y_test)                    # doctest: +SKIP
0.98...
>>> batches = calibration_batches(data)                          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: Seed of the train / calibration / test split; independent of the training seed so that every
#: trained model is evaluated on the same images.
SPLIT_SEED = 0
#: Fraction of the images held out for testing.
TEST_FRACTION = 0.3
#: Number of training images kept aside (still trained on) as calibration inputs.
CALIBRATION_COUNT = 256
#: Largest pixel value of ``load_digits``; inputs are divided by it to lie in [0, 1].
PIXEL_MAXIMUM = 16.0


@dataclass
class DigitsData:
    """The digits images, split into training, calibration and test sets.

    Attributes
    ----------
    x_train : torch.Tensor
        Training images, float32 of shape (1257, 1, 8, 8), values in [0, 1].
    y_train : torch.Tensor
        Training labels, int64 of shape (1257,), values 0 to 9.
    x_calibration : torch.Tensor
        Calibration images, float32 of shape (256, 1, 8, 8): a stratified subset of ``x_train``.
    x_test : torch.Tensor
        Test images, float32 of shape (540, 1, 8, 8).
    y_test : torch.Tensor
        Test labels, int64 of shape (540,).

    Notes
    -----
    Labels are int64 rather than float32 because ``torch.nn.functional.cross_entropy`` takes class
    indices as integers.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_calibration: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_data() -> DigitsData:
    """Load scikit-learn's digits and split them with the fixed seed :data:`SPLIT_SEED`.

    Returns
    -------
    DigitsData
        The same split on every call (and on every machine with the same scikit-learn data).

    Raises
    ------
    ImportError
        If scikit-learn is not installed.
    """
    # Imported here so that the model class can be used without scikit-learn installed.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / PIXEL_MAXIMUM).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED)
    x_calibration, _, _, _ = train_test_split(
        x_train, y_train, train_size=CALIBRATION_COUNT, stratify=y_train, random_state=SPLIT_SEED)
    return DigitsData(
        x_train=torch.from_numpy(np.ascontiguousarray(x_train)),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train)),
        x_calibration=torch.from_numpy(np.ascontiguousarray(x_calibration)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_test)),
        y_test=torch.from_numpy(np.ascontiguousarray(y_test)))


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digit images with several kinds of layers.

    Layers, on an input of shape (N, 1, 8, 8):

    ==================  ===========================================  ============  ==========
    name                layer                                        output        parameters
    ==================  ===========================================  ============  ==========
    ``convolution``     ``Conv2d(1, 32, 3, padding=1)`` + ReLU       (N, 32, 8, 8)        320
    ``depthwise``       ``Conv2d(32, 32, 3, padding=1, groups=32)``  (N, 32, 8, 8)        320
                        + ReLU
    ``grouped``         ``Conv2d(32, 64, 3, padding=1, groups=4)``   (N, 64, 8, 8)      4 672
                        + ReLU, then ``MaxPool2d(2)``                (N, 64, 4, 4)
    ``hidden``          ``Linear(1024, 32)`` + ReLU                  (N, 32)           32 800
    ``classifier``      ``Linear(32, 10)``                           (N, 10)              330
    ==================  ===========================================  ============  ==========

    38 442 parameters in all. There is no batch normalisation, so every parameter is a weight or a
    bias that a codec stores as is.
    """

    def __init__(self) -> None:
        super().__init__()
        self.convolution = nn.Conv2d(1, 32, kernel_size=3, padding=1)
        self.depthwise = nn.Conv2d(32, 32, kernel_size=3, padding=1, groups=32)
        self.grouped = nn.Conv2d(32, 64, kernel_size=3, padding=1, groups=4)
        self.pool = nn.MaxPool2d(2)
        self.hidden = nn.Linear(64 * 4 * 4, 32)
        self.classifier = nn.Linear(32, 10)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch of images.

        Parameters
        ----------
        images : torch.Tensor
            Float32 of shape (N, 1, 8, 8), values in [0, 1].

        Returns
        -------
        torch.Tensor
            Logits of shape (N, 10).
        """
        hidden = torch.relu(self.convolution(images))
        hidden = torch.relu(self.depthwise(hidden))
        hidden = self.pool(torch.relu(self.grouped(hidden)))
        hidden = torch.relu(self.hidden(hidden.flatten(1)))
        return self.classifier(hidden)


def parameter_count(model: nn.Module) -> int:
    """Number of scalar parameters (weights and biases) of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Any module.

    Returns
    -------
    int
        The sum of the sizes of its parameters.
    """
    return sum(parameter.numel() for parameter in model.parameters())


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the images ``x`` that ``model`` classifies as ``y``.

    The model is evaluated in eval mode without gradients; its previous mode is restored.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier returning logits of shape (N, classes).
    x : torch.Tensor
        Inputs, shape (N, 1, 8, 8) for :class:`DigitsCNN`.
    y : torch.Tensor
        Integer labels of shape (N,).

    Returns
    -------
    float
        Correct predictions divided by N, in [0, 1].
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            predictions = model(x).argmax(dim=1)
    finally:
        model.train(was_training)
    return float((predictions == y).float().mean())


def calibration_batches(data: DigitsData, batch_size: int = 64) -> list[torch.Tensor]:
    """The calibration images as a list of input batches, in a fixed order.

    Parameters
    ----------
    data : DigitsData
        The split, as returned by :func:`load_digits_data` or :func:`train_digits_cnn`.
    batch_size : int, default 64
        Images per batch; the last batch is smaller when it does not divide 256.

    Returns
    -------
    list of torch.Tensor
        Float32 tensors of shape (batch, 1, 8, 8) that together hold ``data.x_calibration``.

    Raises
    ------
    ValueError
        If ``batch_size`` is not positive.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return list(data.x_calibration.split(batch_size))


def train_digits_cnn(seed: int = 0, epochs: int = 40,
                     progress: Callable[[str], None] | None = None,
                     data: DigitsData | None = None) -> tuple[DigitsCNN, DigitsData]:
    """Train a :class:`DigitsCNN` on the training split, deterministically.

    Adam (learning rate 3e-3, cosine decay to zero), batches of 32 in an order drawn from a
    generator seeded with ``seed``, cross-entropy loss. The same ``seed`` gives bit-identical
    weights on the same machine and torch version. Training runs on one thread, so
    results do not depend on the number of cores. The default 40 epochs take about
    10 s on one busy CPU core and reach about 98-99 % test accuracy.

    The global torch random state, thread count and deterministic-algorithms flag are restored on
    return.

    Parameters
    ----------
    seed : int, default 0
        Seed of the initial weights and of the order of the training batches.
    epochs : int, default 40
        Passes over the 1257 training images.
    progress : callable, optional
        Called after each epoch with one line: epoch, mean training loss, test accuracy.
    data : DigitsData, optional
        The split to use; loaded with :func:`load_digits_data` when not given.

    Returns
    -------
    model : DigitsCNN
        The trained model, in eval mode.
    data : DigitsData
        The split it was trained and evaluated on.
    """
    if data is None:
        data = load_digits_data()
    batch_size = 32
    steps_per_epoch = -(-len(data.x_train) // batch_size)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    threads_before = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    # The tensors are far too small to gain from threads: on a busy machine two threads were ten
    # times slower than one, and one thread also makes the sums independent of the core count.
    torch.set_num_threads(1)
    try:
        # fork_rng keeps the caller's global random state untouched by the seeding below.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = DigitsCNN()
            order_generator = torch.Generator().manual_seed(seed)
            optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(1, epochs * steps_per_epoch))
            for epoch in range(epochs):
                model.train()
                order = torch.randperm(len(data.x_train), generator=order_generator)
                loss_sum = 0.0
                for batch in order.split(batch_size):
                    optimizer.zero_grad(set_to_none=True)
                    loss = nn.functional.cross_entropy(model(data.x_train[batch]),
                                                       data.y_train[batch])
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    loss_sum += float(loss.detach()) * len(batch)
                if progress is not None:
                    test_accuracy = accuracy(model, data.x_test, data.y_test)
                    progress(f"epoch {epoch + 1}/{epochs}: training loss "
                             f"{loss_sum / len(data.x_train):.4f}, test accuracy {test_accuracy:.4f}")
    finally:
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)
    model.eval()
    return model, data
