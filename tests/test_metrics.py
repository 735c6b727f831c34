"""The batched hot-path metrics expose exactly what prometheus-client's own would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from authproxy.observability.metrics import MULTIPROC_ENV, BatchedCounter, BatchedHistogram, Metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# On every bound (prometheus buckets are "<= bound"), between them, below and above all.
SAMPLES = [0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 1.5, 100.0, 0.001]


def without_created(text: str) -> str:
    """The exposition minus its *_created timestamps (when each metric was made)."""
    return "\n".join(line for line in text.splitlines() if "_created" not in line)


def exposition(registry: CollectorRegistry) -> str:
    return without_created(generate_latest(registry).decode())


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition(registry))
        for s in family.samples
    }


def assert_same_samples(batched: CollectorRegistry, direct: CollectorRegistry) -> None:
    """Same buckets and counts exactly; the sum up to float rounding (it is added per batch
    instead of per observation)."""
    got, want = samples(batched), samples(direct)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name


def test_batched_histogram_exposes_what_direct_observations_do() -> None:
    direct, batched = CollectorRegistry(), CollectorRegistry()
    plain = Histogram("t_seconds", "t", buckets=BUCKETS, registry=direct)
    wrapped = BatchedHistogram(
        Histogram("t_seconds", "t", buckets=BUCKETS, registry=batched), BUCKETS
    )
    for value in SAMPLES:
        plain.observe(value)
        wrapped.observe(value)
    assert "t_seconds_count 0.0" in exposition(batched)  # nothing until flushed
    wrapped.flush()
    assert_same_samples(batched, direct)
    # A second batch adds to the first, and an empty flush changes nothing.
    for value in SAMPLES[:3]:
        plain.observe(value)
        wrapped.observe(value)
    wrapped.flush()
    wrapped.flush()
    assert_same_samples(batched, direct)


def test_batched_counter_adds_up() -> None:
    registry = CollectorRegistry()
    counter = BatchedCounter(Counter("c", "c", registry=registry))
    for _ in range(3):
        counter.inc()
    counter.inc(2)
    counter.flush()
    counter.flush()
    assert "c_total 5.0" in exposition(registry)


def test_render_includes_every_batched_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    metrics = Metrics()
    assert metrics.batched
    metrics.count_request("allowed", "200")
    metrics.count_request("allowed", "200")
    metrics.count_request("missing", "401")
    metrics.cache_hits.inc()
    metrics.auth_seconds.observe(0.00003)
    metrics.upstream_seconds.observe(0.002)
    text = without_created(metrics.render().decode())
    assert 'authproxy_requests_total{outcome="allowed",status="200"} 2.0' in text
    assert 'authproxy_requests_total{outcome="missing",status="401"} 1.0' in text
    assert "authproxy_cache_hits_total 1.0" in text
    assert 'authproxy_auth_duration_seconds_bucket{le="5e-05"} 1.0' in text
    assert 'authproxy_auth_duration_seconds_bucket{le="2e-05"} 0.0' in text
    assert "authproxy_upstream_duration_seconds_count 1.0" in text
    # Rendering again does not count anything twice.
    assert without_created(metrics.render().decode()) == text


def test_workers_write_through(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """As a worker, every sample is in prometheus-client at once: a killed worker's files
    must already hold its counts."""
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    metrics = Metrics()
    assert not metrics.batched
    assert isinstance(metrics.cache_hits, Counter)
    assert isinstance(metrics.upstream_seconds, Histogram)
