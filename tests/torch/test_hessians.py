"""Hessians from forward hooks against direct computation."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from nncodec_rd.torch.hessians import collect_hessians, find_layers, weight_matrix  # noqa: E402


def test_linear_hessian_is_the_mean_outer_product_of_inputs():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 3)
    batches = [torch.randn(4, 7, 5) for _ in range(3)]
    collected = collect_hessians(layer, batches, find_layers(layer))
    hessian, row_scale = collected.accumulators[""].hessian()
    inputs = torch.cat([b.reshape(-1, 5) for b in batches]).double().numpy()
    expected = 2.0 / len(inputs) * inputs.T @ inputs  # float32 sums per batch: close, not equal
    np.testing.assert_allclose(hessian[0], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert row_scale is None


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_conv2d_has_one_hessian_per_group_over_its_patches(groups):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, stride=2, groups=groups)
    batches = [torch.randn(2, 4, 6, 6)]
    hessians, _ = collect_hessians(conv, batches, find_layers(conv)).accumulators[""].hessian()
    assert hessians.shape == (groups, 4 // groups * 9, 4 // groups * 9)
    # Direct: the layer's output is W_g · patch_g; check the loss identity on random errors.
    error = torch.randn_like(conv.weight) * 0.01
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(batches[0], error, stride=2, padding=1,
                                              groups=groups)
    output_error = float((expected.double() ** 2).sum(dim=1).mean())  # per location
    matrix = error.reshape(8, -1).double().numpy()
    rows = 8 // groups
    loss = sum(0.5 * np.trace(matrix[g * rows:(g + 1) * rows] @ hessians[g]
                              @ matrix[g * rows:(g + 1) * rows].T) for g in range(groups))
    assert loss == pytest.approx(output_error, rel=1e-4)


def test_conv1d_and_embedding_and_transposed_layers_are_found():
    class Conv1D(torch.nn.Module):  # the transformers layer: weight stored (in, out)
        def __init__(self):
            super().__init__()
            self.nf = 3
            self.weight = torch.nn.Parameter(torch.randn(5, 3))

        def forward(self, x):
            return x @ self.weight

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(10, 5)
            self.conv = torch.nn.Conv1d(5, 5, 3, padding=1)
            self.projection = Conv1D()

        def forward(self, ids):
            x = self.embedding(ids)
            x = self.conv(x.transpose(1, 2)).transpose(1, 2)
            return self.projection(x)

    model = Model()
    layers = find_layers(model)
    assert layers == {"embedding": "embedding", "conv": "conv1d", "projection": "transposed_linear"}
    ids = torch.tensor([[1, 1, 1, 2], [2, 3, 1, 1]])
    collected = collect_hessians(model, [ids], layers)
    _, token_weights = collected.accumulators["embedding"].hessian(smoothing=1.0)
    assert token_weights[1] == pytest.approx(2 * 6 / 18) and token_weights[0] == pytest.approx(2 / 18)
    hessian, _ = collected.accumulators["projection"].hessian()
    assert hessian.shape == (1, 5, 5)
    assert weight_matrix(model.projection, "transposed_linear").shape == (3, 5)
