"""The rate-fidelity harness on a tiny model (no NNCodec)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from bench.rate_fidelity import (Workload, interpolate_bits_at, run_workload,  # noqa: E402
                                  write_report)


def test_interpolation_brackets_the_target():
    points = [{"bits_per_weight": 2.0, "fidelity": 0.9}, {"bits_per_weight": 4.0, "fidelity": 0.99},
              {"bits_per_weight": 3.0, "fidelity": 0.95}]
    assert interpolate_bits_at(points, 0.97) == pytest.approx(3.5)
    assert interpolate_bits_at(points, 0.999) is None  # never reached
    assert interpolate_bits_at(points, 0.5) is None    # not bracketed: no extrapolation


def test_run_workload_writes_real_files_and_reports(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    batches = [torch.randn(32, 16) for _ in range(2)]
    reference = model(batches[0]).detach()

    @torch.no_grad()
    def closeness(candidate):
        error = (candidate(batches[0]) - reference).pow(2).mean() / reference.pow(2).mean()
        return float(1 - error)

    workload = Workload("tiny", model, batches, closeness, "1 - relative error", 0.99)
    report = run_workload(workload, str(tmp_path), methods=("rtn", "cerwu"),
                          lam_factors=(1, 16), qps=None)
    curves = report["ours"]["curves"]
    assert [len(curves[m]) for m in ("rtn", "cerwu")] == [2, 2]
    for points in curves.values():
        assert points[0]["bits_per_weight"] > points[1]["bits_per_weight"]
        assert points[0]["fidelity"] <= 1.0
    assert report["original_fidelity"] == pytest.approx(1.0)
    write_report(report, str(tmp_path / "tiny"))
    assert json.loads((tmp_path / "tiny.json").read_text())["workload"] == "tiny"
    assert "| cerwu |" in (tmp_path / "tiny.md").read_text()
    assert (tmp_path / "tiny.png").stat().st_size > 1000


class _TinyRecurrent(torch.nn.Module):
    """An LSTM (coded), a custom matrix (stored raw: no coded layer type holds it) and a
    Linear (coded)."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(16, 32, batch_first=True)
        self.mixing = torch.nn.Parameter(torch.randn(32, 32) / 6)
        self.head = torch.nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.rnn(x)[0] @ self.mixing)


def test_further_figures_and_raw_weights_are_recorded(tmp_path):
    torch.manual_seed(0)
    model = _TinyRecurrent()
    batches = [torch.randn(8, 5, 16) for _ in range(2)]
    reference = model(batches[0]).detach()

    @torch.no_grad()
    def figures(candidate):
        output = candidate(batches[0])
        cosine = torch.nn.functional.cosine_similarity(output, reference, dim=-1).mean()
        same = (output.argmax(-1) == reference.argmax(-1)).float().mean()
        return {"fidelity": float(cosine), "argmax agreement": float(same)}

    workload = Workload("recurrent", model, batches, figures, "cosine", 0.99)
    report = run_workload(workload, str(tmp_path), methods=("rtn",), lam_factors=(1, 16),
                          qps=None)
    assert report["original_figures"] == {"argmax agreement": 1.0}
    points = report["ours"]["curves"]["rtn"]
    assert all(0.0 <= point["figures"]["argmax agreement"] <= 1.0 for point in points)
    assert report["ours"]["raw_weights"] == {"mixing": 32 * 32}
    assert all(point["raw_weights"] == 32 * 32 for point in points)
    assert report["ours"]["coded_layer_kinds"]["recurrent"] == {"layers": 2,
                                                                "weights": 128 * (16 + 32)}
    write_report(report, str(tmp_path / "recurrent"))
    assert "| argmax agreement |" in (tmp_path / "recurrent.md").read_text()
