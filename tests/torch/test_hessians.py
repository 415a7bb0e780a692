"""Hessians from forward hooks against direct computation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from nncodec_rd.torch import hessians as hessian_module  # noqa: E402
from nncodec_rd.torch.hessians import (  # noqa: E402
    collect_hessians,
    convolution_gram_by_shifts,
    convolution_gram_by_unfold,
    find_layers,
    weight_matrix,
)


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
    assert weight_matrix(model.projection.weight, "transposed_linear").shape == (3, 5)


def _lstm_inputs_by_hand(lstm, x, lengths, initial=None):
    """Per weight: the rows it is fed, from an explicit loop over time steps of the LSTM
    equations (the independent reference of RecurrentHessianAccumulator)."""
    batch, _, _ = x.shape
    hidden = lstm.hidden_size
    directions = 2 if lstm.bidirectional else 1
    rows = {}
    layer_input = [x[b, :lengths[b]] for b in range(batch)]  # valid steps only
    for layer in range(lstm.num_layers):
        outputs = [[None] * directions for _ in range(batch)]
        for direction, suffix in enumerate(("", "_reverse")[:directions]):
            w_ih = getattr(lstm, f"weight_ih_l{layer}{suffix}")
            w_hh = getattr(lstm, f"weight_hh_l{layer}{suffix}")
            bias = (getattr(lstm, f"bias_ih_l{layer}{suffix}")
                    + getattr(lstm, f"bias_hh_l{layer}{suffix}"))
            for b in range(batch):
                steps = list(range(int(lengths[b])))
                if direction:
                    steps.reverse()
                state = (torch.zeros(hidden), torch.zeros(hidden)) if initial is None else (
                    initial[0][layer * directions + direction, b],
                    initial[1][layer * directions + direction, b])
                h, c = state
                out = torch.zeros(int(lengths[b]), hidden)
                for t in steps:
                    rows.setdefault(f"weight_ih_l{layer}{suffix}", []).append(layer_input[b][t])
                    rows.setdefault(f"weight_hh_l{layer}{suffix}", []).append(h)
                    gates = w_ih @ layer_input[b][t] + w_hh @ h + bias
                    i, f, g, o = gates.chunk(4)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    out[t] = h
                outputs[b][direction] = out
        layer_input = [torch.cat(outputs[b], dim=1) for b in range(batch)]
    return {name: torch.stack(value).double().numpy() for name, value in rows.items()}


@pytest.mark.parametrize("packed", [False, True])
def test_lstm_hessians_are_those_of_each_matrix_inputs(packed):
    """Each matrix of a two-layer bidirectional LSTM gets 2/N Σ x xᵀ over exactly the inputs
    the LSTM equations feed it (the step before for weight_hh, the step after in reverse,
    the initial state at the ends), padded steps left out."""
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 6, 5)
    lengths = torch.tensor([6, 4, 2]) if packed else torch.tensor([6, 6, 6])
    initial = (torch.randn(4, 3, 4), torch.randn(4, 3, 4))
    batch = (torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True,
                                                     enforce_sorted=False) if packed else x)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = lstm

        def forward(self, inputs):
            return self.lstm(inputs, initial)[0]

    model = Wrapper()
    layers = find_layers(model)
    assert layers == {"lstm": "recurrent"}
    # a PackedSequence is a tuple: wrapped, or run_batch would spread it as arguments
    accumulator = collect_hessians(model, [(batch,)], layers).accumulators["lstm"]
    with torch.no_grad():
        expected_rows = _lstm_inputs_by_hand(lstm, x, lengths, initial)
    assert set(expected_rows) == set(accumulator.attributes)
    for name, rows in expected_rows.items():
        hessian, row_scale = accumulator.hessian(attribute=name)
        expected = 2.0 / len(rows) * rows.T @ rows
        np.testing.assert_allclose(hessian[0], expected, rtol=1e-4,
                                   atol=1e-5 * np.abs(expected).max(), err_msg=name)
        assert row_scale is None


def test_lstm_with_a_projection_is_not_a_layer():
    """proj_size feeds the recurrent weights a projection, which the Hessians do not model:
    such a module's weights stay raw (and are named in the summary)."""
    model = torch.nn.Sequential(torch.nn.LSTM(5, 8, proj_size=3))
    assert find_layers(model) == {}
    assert find_layers(torch.nn.Sequential(torch.nn.GRU(5, 8)), recurrent=False) == {}


@pytest.mark.parametrize("unbatched", [False, True])
def test_gru_with_hx_as_keyword_and_time_first_sees_the_states_it_ran_on(unbatched):
    """weight_hh's rows are the hidden states the module itself computed, from the initial
    state given as the keyword hx (time-first layout, batched or not)."""
    torch.manual_seed(0)
    gru = torch.nn.GRU(3, 5)  # batch_first=False: (time, batch, features)
    x = torch.randn(7, 2, 3) if not unbatched else torch.randn(7, 3)
    hx = torch.randn(1, 2, 5) if not unbatched else torch.randn(1, 5)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = gru

        def forward(self, inputs):
            return self.gru(inputs, hx=hx)[0]

    model = Wrapper()
    accumulator = collect_hessians(model, [x], find_layers(model)).accumulators["gru"]
    with torch.no_grad():
        output = gru(x, hx)[0]
    if unbatched:
        states = torch.cat([hx, output[:-1]])                        # (time, H)
    else:
        states = torch.cat([hx, output[:-1]]).reshape(-1, 5)       # (time · batch, H)
    rows = states.double().numpy()
    expected = 2.0 / len(rows) * rows.T @ rows
    hessian, _ = accumulator.hessian(attribute="weight_hh_l0")
    np.testing.assert_allclose(hessian[0], expected, rtol=1e-4, atol=1e-6)


def test_a_weight_computed_by_a_parametrization_is_no_layer():
    """weight_norm's weight is computed from weight_g and weight_v, not a tensor of the state
    dict: the layer is left to the raw path (its matrices named there)."""
    layer = torch.nn.utils.weight_norm(torch.nn.Linear(4, 3))
    assert find_layers(torch.nn.Sequential(layer, torch.nn.Linear(3, 2))) == {"1": "linear"}


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_gram_by_shifts_equals_the_gram_of_the_unfolded_patches(data):
    # Independent reference: torch's unfold materialises every patch.
    groups = data.draw(st.sampled_from([1, 2, 3]), label="groups")
    per_group = data.draw(st.integers(1, 3), label="channels per group")
    kernel = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    dilation = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)))
    height = data.draw(st.integers((kernel[0] - 1) * dilation[0] + 1, 12), label="height")
    width = data.draw(st.integers((kernel[1] - 1) * dilation[1] + 1, 12), label="width")
    batch = data.draw(st.integers(1, 3), label="batch")
    generator = torch.Generator().manual_seed(data.draw(st.integers(0, 1000)))
    x = torch.randn(batch, groups * per_group, height, width, generator=generator)
    gram, samples = convolution_gram_by_shifts(x, kernel, dilation, groups)
    expected, expected_samples = convolution_gram_by_unfold(x, kernel, dilation, (1, 1), groups)
    assert samples == expected_samples
    assert gram.shape == expected.shape
    np.testing.assert_allclose(gram.numpy(), expected.numpy(), rtol=0,
                               atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "circular"])
@pytest.mark.parametrize("conv", ["2d", "1d"])
def test_convolution_hessians_by_shifts_and_by_unfold_agree_through_the_hooks(conv, padding_mode,
                                                                            monkeypatch):
    torch.manual_seed(1)
    if conv == "2d":
        layer = torch.nn.Conv2d(6, 4, (3, 2), padding=(1, 2), dilation=(1, 2), groups=2,
                                padding_mode=padding_mode)
        batches = [torch.randn(2, 6, 7, 8), torch.randn(1, 6, 5, 9)]
    else:
        layer = torch.nn.Conv1d(3, 5, 5, padding="same", padding_mode=padding_mode)
        batches = [torch.randn(2, 3, 11)]
    hessians = {}
    calls = []
    original = hessian_module.convolution_gram_by_shifts
    monkeypatch.setattr(hessian_module, "convolution_gram_by_shifts",
                        lambda *arguments: calls.append(1) or original(*arguments))
    for method in ("shifts", "unfold"):
        collected = collect_hessians(layer, batches, find_layers(layer), convolution_gram=method)
        hessians[method] = collected.accumulators[""].hessian()[0]
    assert len(calls) == len(batches)  # the shifts' run took the shifts, the other not
    np.testing.assert_allclose(hessians["shifts"], hessians["unfold"], rtol=0,
                               atol=1e-5 * np.abs(hessians["unfold"]).max())


def test_the_cheapest_gram_takes_the_shifts_only_where_they_save_work():
    def takes_shifts(batch, channels, size, groups=1):
        x = torch.zeros(batch, channels, size, size)
        return hessian_module._shifts_are_cheaper(x, (3, 3), (1, 1), groups)

    assert takes_shifts(2, 64, 58)        # large maps: 13 products instead of 81 blocks
    assert not takes_shifts(4, 512, 9)    # 7 x 7 maps: the blocks' bookkeeping dominates
    assert not takes_shifts(8, 96, 58, groups=96)  # depthwise: memory-bound either way
    assert not takes_shifts(64, 32, 10, groups=4)  # the digits CNN's grouped layer


class _TokenModel(torch.nn.Module):
    """Tokens -> embedding (+ position embedding) -> Linear, position by position: a padded
    position changes no other position's output."""

    def __init__(self, vocabulary=20, width=6, length=8):
        super().__init__()
        self.tokens = torch.nn.Embedding(vocabulary, width)
        self.positions = torch.nn.Embedding(length, width)
        self.dense = torch.nn.Linear(width, width)

    def forward(self, input_ids, attention_mask=None):
        position_ids = torch.arange(input_ids.shape[1])[None]  # (1, sequence): broadcast
        return self.dense(self.tokens(input_ids) + self.positions(position_ids))


def test_padded_positions_are_no_calibration_data():
    """A padded batch gives the Hessian and token counts of its sentences run one by one
    without padding."""
    torch.manual_seed(0)
    model = _TokenModel()
    sentences = [torch.tensor([3, 5, 7, 9, 2]), torch.tensor([4, 4, 1]), torch.tensor([8])]
    padded = torch.zeros(3, 5, dtype=torch.long)
    mask = torch.zeros(3, 5, dtype=torch.long)
    for row, sentence in enumerate(sentences):
        padded[row, :len(sentence)] = sentence
        padded[row, len(sentence):] = 11 + row  # padding of any id: it must not count
        mask[row, :len(sentence)] = 1
    layers = find_layers(model)
    together = collect_hessians(model, [{"input_ids": padded, "attention_mask": mask}], layers)
    alone = collect_hessians(model, [{"input_ids": s[None]} for s in sentences], layers)
    for name in ("tokens", "positions"):
        np.testing.assert_array_equal(together.accumulators[name].token_counts,
                                      alone.accumulators[name].token_counts)
    assert together.accumulators["tokens"].token_counts[11:14].sum() == 0
    assert together.accumulators["positions"].token_counts.tolist()[:5] == [3, 2, 2, 1, 1]
    expected, _ = alone.accumulators["dense"].hessian()
    hessian, _ = together.accumulators["dense"].hessian()
    assert together.accumulators["dense"].samples == 9
    np.testing.assert_allclose(hessian, expected, rtol=1e-5, atol=1e-6)
    # Without a mask every position counts: the padding's ids and inputs are then data.
    unmasked = collect_hessians(model, [{"input_ids": padded}], layers)
    assert unmasked.accumulators["tokens"].token_counts[11:14].sum() == 6


def test_embedding_smoothing_inf_weighs_every_token_alike_and_zero_is_refused():
    model = _TokenModel()
    batch = {"input_ids": torch.tensor([[3, 3, 5]])}
    accumulator = collect_hessians(model, [batch], find_layers(model)).accumulators["tokens"]
    _, smoothed = accumulator.hessian(1.0)
    assert smoothed[3] == 3 * smoothed[5] / 2 == 3 * smoothed[0]  # (2 + 1) : (1 + 1) : (0 + 1)
    _, uniform = accumulator.hessian(float("inf"))
    np.testing.assert_array_equal(uniform, np.full(20, 2.0 / 20))
    assert smoothed.sum() == pytest.approx(uniform.sum())  # the same total weight
    from nncodec_rd.format.errors import EncoderError
    for smoothing in (0.0, -1.0, float("nan")):
        with pytest.raises(EncoderError, match="embedding_smoothing must be positive"):
            accumulator.hessian(smoothing)


def test_what_cannot_be_told_apart_is_not_masked_and_a_batch_of_padding_is_refused():
    from nncodec_rd.format.errors import EncoderError
    from nncodec_rd.torch.hessians import at_token_positions, token_positions

    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # An encoder-decoder batch: the mask is the encoder's, the decoder's tensors look alike.
    assert token_positions({"input_ids": mask, "attention_mask": mask,
                            "decoder_input_ids": mask}) is None
    positions = token_positions({"attention_mask": mask})
    relative_rows = torch.ones(1, 3, 4)  # float (1, n, ...): no batch of tokens (DeBERTa)
    assert at_token_positions(relative_rows, positions) is relative_rows
    assert at_token_positions(torch.zeros(1, 3, dtype=torch.long), positions).shape == (3,)
    with pytest.raises(EncoderError, match="marks no token"):
        token_positions({"attention_mask": torch.zeros(2, 3)})


def test_output_fidelity_takes_whole_or_token_references_alike():
    from nncodec_rd.torch.hessians import first_tensor, output_at_tokens, run_batch
    from nncodec_rd.torch.pretrained import output_fidelity

    torch.manual_seed(0)
    model, other = _TokenModel(), _TokenModel()
    batch = {"input_ids": torch.tensor([[3, 5, 7], [4, 19, 19]]),
             "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]])}
    with torch.no_grad():
        whole = [first_tensor(run_batch(model, batch))]
        tokens = [output_at_tokens(model, batch)]
        expected = torch.nn.functional.cosine_similarity(
            output_at_tokens(other, batch), tokens[0], dim=-1).mean()
    assert output_fidelity(model, whole, [batch]) == pytest.approx(1.0)
    assert output_fidelity(other, whole, [batch]) == pytest.approx(float(expected))
    assert output_fidelity(other, tokens, [batch]) == pytest.approx(float(expected))
