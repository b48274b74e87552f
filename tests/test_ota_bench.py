"""`bench_hot_swap()`: the figures `edge-agent bench` reports for hot swap and rollback.

Only what the figures mean is checked here (no window lost, the rollback happened); how
fast is the benchmark's business.
"""

from __future__ import annotations

from edge_agent.bench.ota import bench_hot_swap


def test_bench_hot_swap_reports_its_figures() -> None:
    figures = bench_hot_swap(swaps=6, interval_s=0.02)
    assert figures["windows_dropped_during_swap"] == 0
    assert figures["windows_during_swap_run"] > 0
    assert figures["hot_swap_swaps"] == 6
    assert 0 <= figures["hot_swap_pause_ms_p50"] <= figures["hot_swap_pause_ms"]
    # Six swaps, the activation of a trial version and its rollback: a stream's results
    # change version at most that often (fewer when no window fell between two swaps).
    assert 1 <= figures["version_changes_per_stream_max"] <= 8
    assert figures["rollback_signal"] == "errors"
    assert figures["rollback_after_failed_check_ms"] is not None
