"""Histogram bucket bounds shared by the metrics and by what is computed from them.

A latency SLO's threshold must be one of these bounds (``dtecho.config`` checks it), because a
Prometheus rule can only count the requests within a threshold that a bucket ends at. The
tuples live here, apart from ``prometheus_client``, so the settings can validate against them
without importing the metrics machinery.
"""

from __future__ import annotations

__all__ = [
    "E2E_LATENCY_BUCKETS",
    "EVENT_LOOP_LAG_BUCKETS",
    "LATENCY_BUCKETS",
    "TIME_PER_OUTPUT_TOKEN_BUCKETS",
    "TIME_TO_FIRST_TOKEN_BUCKETS",
]

# dtecho_http_request_duration_seconds. Finer buckets below 10 ms: cache hits and proxy
# overhead live there.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip

# The LLM serving histograms follow vLLM's bounds (vllm/engine/metrics.py) so dashboards read
# alike, with bounds below 10 ms added: the native DTESN models and cache hits answer there.
TIME_TO_FIRST_TOKEN_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TIME_PER_OUTPUT_TOKEN_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15,
    0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
E2E_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5,
    5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# dtecho_event_loop_lag_seconds: how late a sleeping task wakes. A healthy loop is well under a
# millisecond late; a blocked one by as long as it was blocked.
EVENT_LOOP_LAG_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
