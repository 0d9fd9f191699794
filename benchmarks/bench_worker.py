"""Overhead of the worker API against the raw OpenTelemetry SDK.

Two comparisons, measured interleaved in one process so that machine
noise hits both sides alike:

* ``increment_counter`` against ``Counter.add`` with the same attributes
  (target: at most 1.3x);
* ``track_batch`` with record counts against the same four measurements
  made on raw instruments inside a raw span (target: at most 2x).

Each round times A then B (B then A on odd rounds) and keeps B/A; the
result is the median of those per-round ratios. All of the collector's
checks (name, kind, value, labels, cap) stay in the measured path.

    python benchmarks/bench_worker.py          # full run, enforces targets
    python benchmarks/bench_worker.py --quick  # short run, report only
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider

from otel_batchmon.collector import MetricsCollector
from otel_batchmon.instruments import spec
from otel_batchmon.tracking import track_batch

COUNTER_TARGET = 1.3
TRACK_BATCH_TARGET = 2.0


class _DropSpans(SpanProcessor):
    """Ends spans without exporting them, so the span cost is creation."""

    def on_end(self, span: ReadableSpan) -> None:
        return None


@dataclass(frozen=True)
class Result:
    """The outcome of one A/B comparison."""

    name: str
    ratio: float
    ratio_spread: tuple[float, float]
    baseline_ns: float
    candidate_ns: float
    target: float

    @property
    def met(self) -> bool:
        """Return whether the median ratio is within the target."""
        return self.ratio <= self.target


def compare(
    name: str,
    baseline: Callable[[], None],
    candidate: Callable[[], None],
    *,
    rounds: int,
    iterations: int,
    target: float,
) -> Result:
    """Time ``baseline`` and ``candidate`` alternately; median ratio."""
    for _ in range(iterations // 10 + 1):  # warm caches, register instruments
        baseline()
        candidate()
    ratios: list[float] = []
    baseline_times: list[float] = []
    candidate_times: list[float] = []
    for index in range(rounds):
        gc.collect()
        if index % 2 == 0:
            a = _time(baseline, iterations)
            b = _time(candidate, iterations)
        else:
            b = _time(candidate, iterations)
            a = _time(baseline, iterations)
        ratios.append(b / a)
        baseline_times.append(a / iterations)
        candidate_times.append(b / iterations)
    quartiles = statistics.quantiles(ratios, n=4)
    return Result(
        name,
        statistics.median(ratios),
        (quartiles[0], quartiles[2]),
        statistics.median(baseline_times),
        statistics.median(candidate_times),
        target,
    )


def _time(function: Callable[[], None], iterations: int) -> float:
    loop = range(iterations)
    start = time.perf_counter_ns()
    for _ in loop:
        function()
    return float(time.perf_counter_ns() - start)


def counter_case(
    meter_provider: MeterProvider,
) -> tuple[Callable[[], None], Callable[[], None]]:
    """Return raw ``Counter.add`` and ``increment_counter`` callables."""
    labels = {"store": "orders", "status": "completed"}
    counter = meter_provider.get_meter("bench.raw").create_counter("raw.hits")
    collector = MetricsCollector(meter_provider)

    def raw() -> None:
        counter.add(1, labels)

    def ours() -> None:
        collector.increment_counter("bench.hits", 1, labels)

    return raw, ours


def track_batch_case(
    meter_provider: MeterProvider, tracer_provider: TracerProvider
) -> tuple[Callable[[], None], Callable[[], None]]:
    """Return raw instruments plus a span, and ``track_batch``."""
    meter = meter_provider.get_meter("bench.raw")
    finished = meter.create_counter("raw.finished")
    duration = meter.create_histogram(
        "raw.duration",
        unit="s",
        explicit_bucket_boundaries_advisory=spec("batch.duration").buckets,
    )
    records = meter.create_counter("raw.records")
    tracer = tracer_provider.get_tracer("bench.raw")
    base = {"batch.store": "orders", "batch.kind": "import"}
    status = {**base, "batch.status": "completed", "batch.source": "worker"}
    ok = {**base, "batch.record.outcome": "ok", "batch.source": "worker"}
    bad = {**base, "batch.record.outcome": "failed", "batch.source": "worker"}
    tracker = track_batch(
        "import",
        store="orders",
        meter_provider=meter_provider,
        tracer_provider=tracer_provider,
    )

    def raw() -> None:
        start = time.monotonic()
        with tracer.start_as_current_span("batch import", attributes=base):
            pass
        elapsed = time.monotonic() - start
        finished.add(1, status)
        duration.record(elapsed, status)
        records.add(10, ok)
        records.add(1, bad)

    def ours() -> None:
        with tracker as run:
            run.add_records(ok=10, failed=1)

    return raw, ours


def main(argv: Sequence[str] | None = None) -> int:
    """Run both comparisons; exit 1 if a target is missed (not --quick)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="short run, report only"
    )
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (9 if args.quick else 31)
    iterations = args.iterations or (4000 if args.quick else 20000)

    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(_DropSpans())
    started = time.perf_counter()
    results = [
        compare(
            "increment_counter vs Counter.add",
            *counter_case(meter_provider),
            rounds=rounds,
            iterations=iterations,
            target=COUNTER_TARGET,
        ),
        compare(
            "track_batch vs raw instruments + span",
            *track_batch_case(meter_provider, tracer_provider),
            rounds=rounds,
            iterations=max(iterations // 10, 100),
            target=TRACK_BATCH_TARGET,
        ),
    ]
    meter_provider.shutdown()
    tracer_provider.shutdown()

    print(
        f"python {sys.version.split()[0]}, {rounds} rounds, "
        f"{time.perf_counter() - started:.1f} s"
    )
    for result in results:
        verdict = "ok" if result.met else "MISSED"
        print(
            f"{result.name:40} raw {result.baseline_ns / 1000:7.2f} us  "
            f"ours {result.candidate_ns / 1000:7.2f} us  "
            f"ratio {result.ratio:.3f} "
            f"[IQR {result.ratio_spread[0]:.2f}-{result.ratio_spread[1]:.2f}]"
            f" target <= {result.target} {verdict}"
        )
    if args.quick:
        print("--quick: targets reported, not enforced")
        return 0
    return 0 if all(result.met for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
