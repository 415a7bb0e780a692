"""The fuzz runner's merge of several processes of one target (``--jobs``)."""

from nncodec_rd.conformance.fuzz.__main__ import _merge


def test_replicas_add_counts_and_keep_the_worst_cases():
    first = dict(target="fuzz_reader", executions=100, seconds=60.0, executions_per_second=1.7,
                 max_seconds_one_input=0.5, max_peak_bytes=10, max_input_bytes=300,
                 outcomes={"ok": 60, "checksum_payload": 40}, findings={}, exit_status=0,
                 crashes=[])
    second = dict(first, executions=50, seconds=61.0, executions_per_second=0.8,
                  max_seconds_one_input=2.0, max_peak_bytes=5, max_input_bytes=900,
                  outcomes={"ok": 50}, findings={"codes differ": 1}, exit_status=1)
    merged = _merge([first, second])
    assert merged["replicas"] == 2 and merged["executions"] == 150
    assert merged["seconds"] == 61.0 and merged["executions_per_second"] == 2.5
    assert merged["max_seconds_one_input"] == 2.0 and merged["max_peak_bytes"] == 10
    assert merged["max_input_bytes"] == 900
    assert merged["outcomes"] == {"checksum_payload": 40, "ok": 110}
    assert merged["findings"] == {"codes differ": 1} and merged["exit_status"] == 1
