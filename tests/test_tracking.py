"""track_batch as context manager and decorator, against the real SDK."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from opentelemetry.metrics import MeterProvider as APIMeterProvider
from opentelemetry.metrics import NoOpCounter, NoOpMeter, NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode, get_current_span

from otel_batchmon import _recording, tracking
from otel_batchmon.instruments import spec
from otel_batchmon.tracking import current_batch, track_batch
from otel_batchmon.version import __version__

Key = frozenset[tuple[str, Any]]
START = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)


def key(**attributes: Any) -> Key:
    """Build a point key; ``batch_status`` stands for ``batch.status``."""
    return frozenset((k.replace("_", "."), v) for k, v in attributes.items())


def points(reader: InMemoryMetricReader) -> dict[str, dict[Key, Any]]:
    """Flatten every point to {metric: {attributes: value or histogram}}."""
    flat: dict[str, dict[Key, Any]] = {}
    data = reader.get_metrics_data()
    for resource_metrics in data.resource_metrics if data else ():
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                series = flat.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    value = (
                        point.value
                        if isinstance(point, NumberDataPoint)
                        else point
                    )
                    attributes = point.attributes or {}
                    series[frozenset(attributes.items())] = value
    return flat


class Clock:
    """A frozen monotonic and wall clock that tests move by hand."""

    def __init__(self) -> None:
        self.monotonic = 1000.0
        self.utc = START

    def advance(self, seconds: float) -> None:
        self.monotonic += seconds
        self.utc += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    frozen = Clock()
    monkeypatch.setattr(tracking, "_now_monotonic", lambda: frozen.monotonic)
    monkeypatch.setattr(tracking, "_now_utc", lambda: frozen.utc)
    return frozen


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def meter_provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracer_provider(spans: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider


@pytest.fixture
def providers(
    meter_provider: MeterProvider, tracer_provider: TracerProvider
) -> dict[str, Any]:
    return {
        "meter_provider": meter_provider,
        "tracer_provider": tracer_provider,
    }


def only_span(spans: InMemorySpanExporter) -> ReadableSpan:
    (span,) = spans.get_finished_spans()
    return span


WORKER_IMPORT = {"batch_source": "worker", "batch_kind": "import"}


def test_completed_run_records_count_duration_and_records_once(
    clock: Clock, reader: InMemoryMetricReader, providers: dict[str, Any]
) -> None:
    with track_batch("import", store="orders", **providers) as run:
        clock.advance(42.5)
        run.add_records(ok=90, failed=4)
        run.add_records(ok=6)

    got = points(reader)
    done = key(**WORKER_IMPORT, batch_store="orders", batch_status="completed")
    assert got["batch.finished"] == {done: 1}
    assert got["batch.duration"][done].count == 1
    assert got["batch.duration"][done].sum == 42.5
    records = key(**WORKER_IMPORT, batch_store="orders")
    assert got["batch.records"] == {
        records | {("batch.record.outcome", "ok")}: 96,
        records | {("batch.record.outcome", "failed")}: 4,
    }
    assert "batch.queue.duration" not in got
    assert run.status == "completed"


def test_batch_id_is_on_the_span_and_never_on_a_metric(
    reader: InMemoryMetricReader,
    spans: InMemorySpanExporter,
    providers: dict[str, Any],
) -> None:
    with track_batch("import", batch_id="b-42", **providers) as run:
        run.set_records(total=10, failed=1)

    span = only_span(spans)
    assert span.name == "batch import"
    assert span.attributes is not None
    assert span.attributes["batch.id"] == "b-42"
    assert span.attributes["batch.status"] == "completed"
    assert span.attributes["batch.records.ok"] == 9
    assert span.status.status_code is StatusCode.UNSET
    for series in points(reader).values():
        for attributes in series:
            assert "batch.id" not in dict(attributes)


def test_exception_is_reraised_and_recorded_as_failed(
    reader: InMemoryMetricReader,
    spans: InMemorySpanExporter,
    providers: dict[str, Any],
) -> None:
    with (
        pytest.raises(KeyError, match="missing"),
        track_batch("import", **providers),
    ):
        raise KeyError("missing")

    failed = key(**WORKER_IMPORT, batch_status="failed")
    assert points(reader)["batch.finished"] == {failed: 1}
    span = only_span(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "KeyError: 'missing'"
    assert span.attributes is not None
    assert span.attributes["error.type"] == "KeyError"
    assert [event.name for event in span.events] == ["exception"]


def test_fail_marks_the_run_failed_without_an_exception(
    reader: InMemoryMetricReader,
    spans: InMemorySpanExporter,
    providers: dict[str, Any],
) -> None:
    with track_batch("import", **providers) as run:
        run.fail("upstream returned 0 rows")

    assert run.status == "failed"
    failed = key(**WORKER_IMPORT, batch_status="failed")
    assert points(reader)["batch.finished"] == {failed: 1}
    span = only_span(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "upstream returned 0 rows"
    assert span.events == ()


def test_sync_decorator_times_each_call_and_returns_its_value(
    clock: Clock, reader: InMemoryMetricReader, providers: dict[str, Any]
) -> None:
    @track_batch("import", **providers)
    def import_rows(rows: int) -> int:
        """Import rows."""
        clock.advance(3)
        run = current_batch()
        assert run is not None
        run.add_records(ok=rows)
        return rows * 2

    assert import_rows(5) == 10
    assert import_rows(7) == 14
    assert import_rows.__name__ == "import_rows"
    assert import_rows.__doc__ == "Import rows."

    got = points(reader)
    done = key(**WORKER_IMPORT, batch_status="completed")
    assert got["batch.finished"] == {done: 2}
    assert got["batch.duration"][done].sum == 6
    ok = key(**WORKER_IMPORT, batch_record_outcome="ok")
    assert got["batch.records"][ok] == 12


def test_async_decorator_records_failure_and_reraises(
    reader: InMemoryMetricReader,
    spans: InMemorySpanExporter,
    providers: dict[str, Any],
) -> None:
    @track_batch("import", **providers)
    async def import_rows(fail: bool) -> str:
        await asyncio.sleep(0)
        if fail:
            raise RuntimeError("database went away")
        return "done"

    assert asyncio.iscoroutinefunction(import_rows)
    assert asyncio.run(import_rows(False)) == "done"
    with pytest.raises(RuntimeError, match="went away"):
        asyncio.run(import_rows(True))

    assert points(reader)["batch.finished"] == {
        key(**WORKER_IMPORT, batch_status="completed"): 1,
        key(**WORKER_IMPORT, batch_status="failed"): 1,
    }
    codes = [span.status.status_code for span in spans.get_finished_spans()]
    assert codes == [StatusCode.UNSET, StatusCode.ERROR]


def test_async_context_manager_yields_the_current_run(
    reader: InMemoryMetricReader, providers: dict[str, Any]
) -> None:
    async def job() -> None:
        async with track_batch("import", **providers) as run:
            assert current_batch() is run
            await asyncio.sleep(0)
            run.add_records(failed=2)
        assert current_batch() is None

    asyncio.run(job())

    failed = key(**WORKER_IMPORT, batch_record_outcome="failed")
    assert points(reader)["batch.records"][failed] == 2


def test_concurrent_async_runs_keep_their_own_current_batch(
    reader: InMemoryMetricReader, providers: dict[str, Any]
) -> None:
    tracker = track_batch("import", **providers)

    @tracker
    async def job(ok: int) -> None:
        await asyncio.sleep(0)
        run = current_batch()
        assert run is not None
        run.add_records(ok=ok)

    async def main() -> None:
        await asyncio.gather(job(1), job(10), job(100))

    asyncio.run(main())

    ok = key(**WORKER_IMPORT, batch_record_outcome="ok")
    assert points(reader)["batch.records"][ok] == 111


def test_span_is_current_inside_the_run_and_restored_after(
    spans: InMemorySpanExporter, providers: dict[str, Any]
) -> None:
    before = get_current_span()
    with track_batch("import", **providers) as run:
        assert get_current_span() is run.span
        with track_batch("child", **providers) as child:
            assert current_batch() is child
        assert current_batch() is run
    assert get_current_span() is before
    assert current_batch() is None

    child_span, parent_span = spans.get_finished_spans()
    assert child_span.parent is not None
    assert child_span.parent.span_id == parent_span.context.span_id


@pytest.mark.parametrize(
    "queued_at",
    [
        START - timedelta(seconds=90),
        (START - timedelta(seconds=90)).replace(tzinfo=None),
        (START - timedelta(seconds=90)).astimezone(
            timezone(timedelta(hours=-5))
        ),
    ],
    ids=["utc", "naive-is-utc", "other-zone"],
)
def test_queue_duration_is_measured_from_queued_at(
    clock: Clock,
    reader: InMemoryMetricReader,
    providers: dict[str, Any],
    queued_at: datetime,
) -> None:
    with track_batch("import", queued_at=queued_at, **providers):
        clock.advance(10)

    queue = points(reader)["batch.queue.duration"][key(**WORKER_IMPORT)]
    assert (queue.count, queue.sum) == (1, 90)


def test_queued_at_in_the_future_is_dropped_with_a_warning(
    clock: Clock,
    reader: InMemoryMetricReader,
    providers: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    future = START + timedelta(hours=1)
    with track_batch("import", queued_at=future, **providers):
        pass

    got = points(reader)
    assert "batch.queue.duration" not in got
    assert got["batch.finished"]
    assert "in the future" in caplog.text


def test_histograms_use_the_catalogue_buckets(
    reader: InMemoryMetricReader, providers: dict[str, Any]
) -> None:
    with track_batch(queued_at=datetime.now(UTC), **providers):
        pass

    got = points(reader)
    for name in ("batch.duration", "batch.queue.duration"):
        (point,) = got[name].values()
        assert tuple(point.explicit_bounds) == spec(name).buckets


def test_bad_record_counts_warn_and_are_never_recorded_negative(
    reader: InMemoryMetricReader,
    providers: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with track_batch("import", **providers) as run:
        run.add_records(ok=-5, failed=2)
        run.add_records(ok="many")  # type: ignore[arg-type]
        run.add_records(ok=True)
        run.add_records(ok=3)

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("dropped record count" in r.getMessage() for r in warnings)
    ok = key(**WORKER_IMPORT, batch_record_outcome="ok")
    failed = key(**WORKER_IMPORT, batch_record_outcome="failed")
    assert points(reader)["batch.records"] == {ok: 3, failed: 2}


def test_failed_above_total_is_clamped_with_a_warning(
    reader: InMemoryMetricReader,
    providers: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with track_batch("import", **providers) as run:
        run.set_records(total=5, failed=8)

    assert "failed=8 exceeds total=5" in caplog.text
    ok = key(**WORKER_IMPORT, batch_record_outcome="ok")
    failed = key(**WORKER_IMPORT, batch_record_outcome="failed")
    assert points(reader)["batch.records"] == {ok: 0, failed: 5}


def test_kinds_beyond_the_cap_fold_to_other_with_one_warning(
    reader: InMemoryMetricReader,
    providers: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_recording, "MAX_KIND_SETS", 2)
    for kind in ("a", "b", "c", "d", "c"):
        with track_batch(kind, store="s", **providers):
            pass

    done = {"batch_source": "worker", "batch_status": "completed"}
    assert points(reader)["batch.finished"] == {
        key(**done, batch_store="s", batch_kind="a"): 1,
        key(**done, batch_store="s", batch_kind="b"): 1,
        key(**done, batch_store="_other", batch_kind="_other"): 3,
    }
    folds = [r for r in caplog.records if "reached its cap" in r.message]
    assert len(folds) == 1


def test_broken_meter_provider_never_reaches_the_caller(
    spans: InMemorySpanExporter,
    tracer_provider: TracerProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenMeterProvider(APIMeterProvider):
        def get_meter(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("exporter misconfigured")

    with track_batch(
        "import",
        meter_provider=BrokenMeterProvider(),
        tracer_provider=tracer_provider,
    ) as run:
        run.add_records(ok=1)
        result = "body ran"

    assert result == "body ran"
    assert run.status == "completed"
    assert "could not start telemetry" in caplog.text
    assert current_batch() is None


def test_global_providers_are_used_when_none_are_given() -> None:
    with track_batch("import") as run:
        run.add_records(ok=1)

    assert run.status == "completed"
    assert current_batch() is None


def test_generator_functions_are_rejected_at_decoration() -> None:
    def rows() -> Iterator[int]:
        yield 1

    with pytest.raises(TypeError, match=r"cannot decorate generator .*\.rows"):
        track_batch("import")(rows)


def test_exit_in_another_context_warns_instead_of_raising(
    reader: InMemoryMetricReader,
    providers: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = track_batch("import", **providers)
    entered = contextvars.copy_context()
    entered.run(tracker.__enter__)

    entered.copy().run(tracker.__exit__, None, None, None)

    assert "exited in another context" in caplog.text
    done = key(**WORKER_IMPORT, batch_status="completed")
    assert points(reader)["batch.finished"] == {done: 1}


def test_worker_and_monitor_share_one_instrument_per_metric(
    reader: InMemoryMetricReader,
    meter_provider: MeterProvider,
    providers: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = spec("batch.finished")
    monitor_meter = meter_provider.get_meter("otel_batchmon", __version__)
    store_side = monitor_meter.create_counter(
        entry.name, entry.unit, entry.description
    )
    store_side.add(4, {"batch.source": "store", "batch.status": "failed"})

    with track_batch(**providers):
        pass

    data = reader.get_metrics_data()
    assert data is not None
    (scope,) = data.resource_metrics[0].scope_metrics
    assert scope.scope.name == "otel_batchmon"
    assert points(reader)["batch.finished"] == {
        key(batch_source="store", batch_status="failed"): 4,
        key(batch_source="worker", batch_status="completed"): 1,
    }
    assert caplog.records == []


def test_queued_at_that_is_not_a_datetime_is_dropped_with_a_warning(
    reader: InMemoryMetricReader,
    providers: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with track_batch(queued_at="yesterday", **providers):  # type: ignore[arg-type]
        pass

    assert "batch.queue.duration" not in points(reader)
    assert "queued_at='yesterday' is not a datetime" in caplog.text


def test_invalid_total_drops_the_whole_set_records_call(
    reader: InMemoryMetricReader,
    providers: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with track_batch(**providers) as run:
        run.set_records(total=-1, failed=0)

    assert "dropped record count total=-1" in caplog.text
    assert "batch.records" not in points(reader)


def test_exit_without_entry_warns_and_records_nothing(
    reader: InMemoryMetricReader,
    providers: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    track_batch(**providers).__exit__(None, None, None)

    assert "exited without a matching entry" in caplog.text
    assert points(reader) == {}


def test_instrument_failing_at_exit_never_reaches_the_caller(
    spans: InMemorySpanExporter,
    tracer_provider: TracerProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    class ExplodingCounter(NoOpCounter):
        def add(self, *args: Any, **kwargs: Any) -> None:
            raise RuntimeError("exporter queue full")

    class ExplodingMeter(NoOpMeter):
        def create_counter(self, name: str, *args: Any, **kw: Any) -> Any:
            return ExplodingCounter(name)

    class ExplodingMeterProvider(NoOpMeterProvider):
        def get_meter(self, name: str, *args: Any, **kw: Any) -> Any:
            return ExplodingMeter(name)

    with track_batch(
        "import",
        meter_provider=ExplodingMeterProvider(),
        tracer_provider=tracer_provider,
    ) as run:
        pass

    assert run.status == "completed"
    assert "could not record telemetry" in caplog.text
    assert only_span(spans).attributes is not None
    assert current_batch() is None
