"""The digits CNN benchmark model: data split, architecture, a short deterministic training run."""

import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from bench.digits_cnn import (
    CALIBRATION_COUNT,
    DigitsCNN,
    accuracy,
    calibration_batches,
    load_digits_data,
    parameter_count,
    train_digits_cnn,
)


@pytest.fixture(scope="module")
def data():
    return load_digits_data()


def test_the_split_is_fixed_stratified_and_scaled(data):
    again = load_digits_data()
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.y_test, again.y_test)
    assert len(data.x_train) + len(data.x_test) == 1797 and len(data.x_test) == 540
    assert data.x_train.shape[1:] == (1, 8, 8) and data.x_train.dtype == torch.float32
    assert data.x_calibration.shape == (CALIBRATION_COUNT, 1, 8, 8)
    assert 0.0 <= float(data.x_train.min()) and float(data.x_train.max()) == 1.0
    # every class appears in the test set in about its share of the data
    assert torch.bincount(data.y_test, minlength=10).min() >= 50


def test_calibration_images_are_training_images(data):
    training = {tuple(image.flatten().tolist()) for image in data.x_train}
    assert all(tuple(image.flatten().tolist()) in training for image in data.x_calibration)


def test_the_model_has_the_intended_layers_and_size():
    model = DigitsCNN()
    assert 20_000 <= parameter_count(model) <= 60_000
    convolutions = [module for module in model.modules() if isinstance(module, torch.nn.Conv2d)]
    assert any(module.groups == 1 for module in convolutions)
    assert any(module.groups == module.in_channels > 1 for module in convolutions)  # depthwise
    assert any(1 < module.groups < module.in_channels for module in convolutions)  # grouped
    assert sum(isinstance(module, torch.nn.Linear) for module in model.modules()) >= 2
    assert model(torch.zeros(5, 1, 8, 8)).shape == (5, 10)


def test_calibration_batches_cover_the_calibration_images(data):
    batches = calibration_batches(data, batch_size=100)
    assert [len(batch) for batch in batches] == [100, 100, CALIBRATION_COUNT - 200]
    assert torch.equal(torch.cat(batches), data.x_calibration)
    with pytest.raises(ValueError):
        calibration_batches(data, batch_size=0)


def test_one_epoch_trains_reproducibly_and_leaves_global_state_alone(data):
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    random_state = torch.get_rng_state()
    lines = []
    model, returned = train_digits_cnn(seed=3, epochs=1, progress=lines.append, data=data)
    again, _ = train_digits_cnn(seed=3, epochs=1, data=data)
    assert returned is data and len(lines) == 1 and "epoch 1/1" in lines[0]
    for (name, value), other in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(value, other), name
    assert math.isfinite(accuracy(model, data.x_test, data.y_test))
    assert not model.training
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), random_state)


def test_accuracy_counts_correct_predictions_and_keeps_the_mode():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot(x.long(), 3).float()

    model = Fixed().train()
    assert accuracy(model, torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 2, 0])) == 0.75
    assert model.training
