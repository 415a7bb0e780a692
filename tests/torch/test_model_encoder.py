"""ModelEncoder's layer sensitivities: the gradient estimator against exact values and against
the perturbation estimator."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nncodec_rd.encoder.problem import (  # noqa: E402
    LayerProblem,
    expected_noise_distortion,
    layer_distortion,
)
from nncodec_rd.format.errors import EncoderError  # noqa: E402
from nncodec_rd.torch.model_encoder import ModelEncoder  # noqa: E402


def test_expected_noise_distortion_is_the_mean_over_noise_draws():
    generator = np.random.default_rng(0)
    # two groups of Hessians and row weights: every term of the formula matters
    roots = generator.standard_normal((2, 4, 4))
    problem = LayerProblem(generator.standard_normal((6, 4)), roots @ roots.transpose(0, 2, 1),
                           row_scale=generator.uniform(0.5, 2.0, 6))
    variance = 0.3
    draws = [layer_distortion(problem, problem.weights + np.sqrt(variance)
                              * generator.standard_normal(problem.weights.shape))
             for _ in range(4000)]
    assert expected_noise_distortion(problem, variance) == pytest.approx(np.mean(draws),
                                                                         rel=0.03)


def _encoder(model, batches, estimator, seed=0):
    encoder = ModelEncoder(model, batches, sensitivity=False, nonweights=False, progress=False)
    encoder.measure_sensitivities(batches[:1], exponent=1.0, estimator=estimator, seed=seed)
    return encoder


def _measured_by_default(model, batches):
    """(encoder with the default estimator's sensitivities, the progress lines it wrote)."""
    lines = []
    encoder = ModelEncoder(model, batches, sensitivity=False, nonweights=False,
                           progress=lines.append)
    encoder.measure_sensitivities(batches, exponent=1.0)
    return encoder, lines


def test_a_lone_linear_layer_has_sensitivity_one_over_its_outputs():
    # y = W x: noise N moves the mean squared output by σ² Σ‖x‖² / N_samples, and its layer
    # loss is ½ σ² · rows · tr(H) with H = 2/N Σ x xᵀ: the ratio is exactly 1 / rows.
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8, bias=False)
    batches = [torch.randn(4096, 16)]
    for estimator in ("gradient", "perturbation"):
        sensitivity = _encoder(layer, batches, estimator).layers[0].sensitivity
        assert sensitivity == pytest.approx(1 / 8, rel=0.1), estimator


def test_gradient_and_perturbation_estimates_agree_layer_by_layer():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1, groups=4), torch.nn.Tanh(),
                                torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))
    with torch.no_grad():
        model[5].weight.mul_(10.0)  # a last layer much more sensitive than the others
    batches = [torch.randn(64, 3, 6, 6)]
    estimates = {estimator: np.mean([[layer.sensitivity for layer in
                                      _encoder(model, batches, estimator, seed).layers]
                                     for seed in range(8)], axis=0)
                 for estimator in ("gradient", "perturbation")}
    # the layers span orders of magnitude; the two estimators agree within 25 %
    np.testing.assert_allclose(estimates["gradient"], estimates["perturbation"], rtol=0.25)
    assert estimates["gradient"].max() / estimates["gradient"].min() > 10


def test_gradient_estimator_leaves_requires_grad_as_it_was():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    flags = [parameter.requires_grad for parameter in model.parameters()]
    _encoder(model, [torch.randn(8, 4)], "gradient")
    assert [parameter.requires_grad for parameter in model.parameters()] == flags
    assert all(parameter.grad is None for parameter in model.parameters())


def test_a_model_without_gradients_falls_back_to_perturbation_and_says_so():
    class Detached(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.layer(x).detach()

    torch.manual_seed(0)
    model, batches = Detached(), [torch.randn(256, 4)]
    encoder, lines = _measured_by_default(model, batches)
    assert any("no gradient" in line and "perturbing" in line for line in lines)
    assert encoder.layers[0].sensitivity == pytest.approx(1 / 3, rel=0.2)


def test_an_unknown_estimator_is_refused():
    model = torch.nn.Linear(4, 2)
    with pytest.raises(EncoderError, match="unknown sensitivity estimator"):
        _encoder(model, [torch.randn(8, 4)], "finite-differences")


def test_a_layer_no_gradient_reaches_is_measured_by_perturbation():
    class HalfFrozen(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(6, 6, bias=False)
            self.second = torch.nn.Linear(6, 3, bias=False)

        def forward(self, x):
            with torch.no_grad():  # autograd never sees the first layer
                x = self.first(x)
            return self.second(x)

    torch.manual_seed(0)
    model, batches = HalfFrozen(), [torch.randn(2048, 6)]
    encoder, lines = _measured_by_default(model, batches)
    assert any("no gradient reached 1 layer" in line for line in lines)
    reference = _encoder(model, batches, "perturbation")
    first, second = (layer.sensitivity for layer in encoder.layers)
    assert first == reference.layers[0].sensitivity  # the same draw, the same estimator
    assert second == pytest.approx(1 / 3, rel=0.15)  # the last layer: exactly 1 / rows


@pytest.mark.parametrize("smoothing", [0.0, float("nan")])
def test_a_bad_embedding_smoothing_is_refused_before_any_calibration(smoothing):
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4))
    runs = []
    model.register_forward_pre_hook(lambda module, inputs: runs.append(1))
    with pytest.raises(EncoderError, match="embedding_smoothing must be positive"):
        ModelEncoder(model, [torch.tensor([[1, 2, 3]])], embedding_smoothing=smoothing,
                     progress=False)
    assert runs == []  # refused before a calibration batch ran
    from nncodec_rd.torch.sequential import SequentialEncoder
    with pytest.raises(EncoderError, match="embedding_smoothing must be positive"):
        SequentialEncoder(model, [torch.tensor([[1, 2, 3]])], embedding_smoothing=smoothing,
                          progress=False)
