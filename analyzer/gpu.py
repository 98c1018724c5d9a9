"""Where a workflow's GPU time went: per (worker, GPU) lane, per task, per model.

Which attempts count: those whose root span lists GPUs (``tuiflow.gpus``), and those of a
model executor (`MODEL_EXECUTORS`) that ran without GPUs. The latter are drawn on their
worker's ``cpu`` lane (``gpu`` None), so the figures mean something on a laptop too; a
model run on CPU counts as one device in GPU-seconds.

Definitions (docs/analyzer.md repeats them; seconds throughout)
-----------------------------------------------------------------
- A **lane** is one GPU of one worker (or that worker's ``cpu`` lane). Its **window** runs
  from the first start to the last end of the attempts that held it (root spans).
- Within the window every instant is in exactly one state, the first that holds of:
  ``busy`` (an ``execute`` span of an attempt on the lane: generating; a merged batch's
  one span counts once), ``loading`` (a ``model load`` span), ``other`` (held by an
  attempt doing anything else: reading inputs, building prompts, post-processing, writing
  outputs), ``claimable`` (free while an attempt that needed this kind of lane, from a
  queue this worker took work from, was queued: from its ``ready_at`` to its start; the
  scheduler's fault), ``idle`` (free with nothing to do). The five add up to the window.
  ``claimable`` does not ask whether the waiting attempt would have fitted (one needing
  two GPUs waits "on" a lone free one too).
- ``load_share`` = loading / (loading + busy); None when both are 0.
- ``utilization`` = the mean of ``hw.gpu.utilization`` over the lane's execute spans that
  carry it, weighted by their duration; ``memory_peak_bytes`` = the largest
  ``hw.gpu.memory.usage``. Both None without NVML samples (always on the cpu lane).
- **GPU-seconds of an attempt** = (its model load + execute seconds) x its devices (its
  GPUs; 1 on the cpu lane). In a merged batch the shared spans (written once, under the
  first member) are split equally: each member gets the batch's load + execute / its size.
  The **batch size** is the number of attempts carrying the batch id in the trace when
  that is more than one, else ``tuiflow.batch.size``, else 1.
- **GPU-seconds of a task** = the sum over its attempts (retries cost GPU time too); of
  the workflow, the sum over its tasks.
- **Per model** (executor, model): calls (execute spans), loads (model load spans), their
  seconds (wall, not x devices), tokens = ``gen_ai.usage.output_tokens`` and images =
  ``tuiflow.images`` summed over the execute spans (a merged call's span holds the whole
  batch's), ``tokens_per_second`` = tokens / execute seconds, ``images_per_second`` likewise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

from pydantic import Field, SkipValidation

from .contract import (
    ATTR_BATCH_SIZE,
    ATTR_GENAI_INPUT_TOKENS,
    ATTR_GENAI_MODEL,
    ATTR_GENAI_OUTPUT_TOKENS,
    ATTR_GPU_MEMORY_USAGE,
    ATTR_GPU_UTILIZATION,
    ATTR_IMAGES,
    ATTR_MODEL,
    EXECUTE_SPAN,
    MODEL_EXECUTORS,
    MODEL_LOAD_SPAN,
)
from .lanes import (
    BUSY,
    CLAIMABLE,
    IDLE,
    LOADING,
    OTHER,
    Interval,
    LaneSegment,
    lane_segments,
    merge_intervals,
    state_seconds,
)
from .records import SpanRecord
from .stats import Frozen
from .trace import Attempt, Trace

#: executors that run a model in a worker's model host (their spans carry gen_ai.* and
#: tuiflow.model); the producers' list lives with the workers, this one must match it
#: what a lane without a GPU (a model run on CPU) is called
CPU_LANE = "cpu"
#: a worker id missing from a root span
UNKNOWN_WORKER = "?"

_Key = int  # an attempt's root span id


class GpuLane(Frozen):
    """One GPU of one worker over the workflow (``gpu`` None: the worker's cpu lane)."""

    worker: str
    gpu: int | None
    host: str | None
    attempts: int
    start: float
    end: float
    busy_seconds: float
    loading_seconds: float
    other_seconds: float
    idle_claimable_seconds: float
    idle_seconds: float
    load_share: float | None
    utilization: float | None
    memory_peak_bytes: int | None
    #: the window state by state, in time order (for drawing; left out of the JSON report)
    segments: SkipValidation[list[LaneSegment]] = Field(default=[], exclude=True)

    @property
    def label(self) -> str:
        """The GPU id, or `CPU_LANE`."""
        return CPU_LANE if self.gpu is None else str(self.gpu)

    @property
    def window_seconds(self) -> float:
        """Length of the lane's window."""
        return self.end - self.start


@dataclasses.dataclass(frozen=True, slots=True)
class TaskGpu:
    """GPU-seconds of one task (all its attempts), with its latest attempt's context.

    A plain dataclass, not a pydantic model like the other results: a big workflow has
    tens of thousands of these, and building them unvalidated costs a fifth as much.
    """

    task: str
    attempts: int
    worker: str | None
    executor: str | None
    model: str | None
    devices: int  # GPUs of the latest attempt (0: ran on CPU)
    batch_size: int  # of the latest attempt (1: not merged)
    load_seconds: float  # its share of model loads
    execute_seconds: float  # its share of generation
    gpu_seconds: float


class ModelGpu(Frozen):
    """What one model did over the workflow (executor + model)."""

    executor: str
    model: str
    attempts: int
    calls: int
    loads: int
    load_seconds: float
    execute_seconds: float
    load_share: float | None
    input_tokens: int | None
    output_tokens: int | None
    images: int | None
    tokens_per_second: float | None
    images_per_second: float | None


class GpuUsage(Frozen):
    """The GPU analysis of one workflow: lanes, tasks (most GPU-seconds first), models, totals."""

    lanes: list[GpuLane] = []
    tasks: SkipValidation[list[TaskGpu]] = []
    models: list[ModelGpu] = []
    gpu_seconds: float = 0.0
    busy_seconds: float = 0.0
    loading_seconds: float = 0.0
    other_seconds: float = 0.0
    idle_claimable_seconds: float = 0.0
    idle_seconds: float = 0.0
    load_share: float | None = None

    @property
    def empty(self) -> bool:
        """No attempt used a GPU or a model executor."""
        return not self.lanes


def uses_device(att: Attempt) -> bool:
    """Whether an attempt counts here: it held GPUs, or ran a model executor."""
    return bool(att.gpus) or att.executor in MODEL_EXECUTORS


def gpu_usage(trace: Trace) -> GpuUsage:
    """The GPU analysis of a trace (see the module for every definition).

    Parameters
    ----------
    trace:
        From `load_trace` / `build_trace`.

    Returns
    -------
    GpuUsage
        Empty (``empty`` True) when no attempt used a GPU or a model executor.
    """
    attempts = [a for a in trace.attempts if uses_device(a)]
    if not attempts:
        return GpuUsage()
    calls = _Calls(trace, attempts)
    lanes = _lanes(trace, attempts, calls)
    tasks = _tasks(attempts, calls)
    busy = math.fsum(lane.busy_seconds for lane in lanes)
    loading = math.fsum(lane.loading_seconds for lane in lanes)
    return GpuUsage(
        lanes=lanes,
        tasks=tasks,
        models=_models(attempts, calls),
        gpu_seconds=math.fsum(t.gpu_seconds for t in tasks),
        busy_seconds=busy,
        loading_seconds=loading,
        other_seconds=math.fsum(lane.other_seconds for lane in lanes),
        idle_claimable_seconds=math.fsum(lane.idle_claimable_seconds for lane in lanes),
        idle_seconds=math.fsum(lane.idle_seconds for lane in lanes),
        load_share=share(loading, busy),
    )


def share(loading: float, busy: float) -> float | None:
    """loading / (loading + busy); None when both are 0."""
    total = loading + busy
    return loading / total if total > 0 else None


# --- the spans of model calls ------------------------------------------------------------------


class _Own(NamedTuple):
    """An attempt's own model load and execute spans, and their summed seconds."""

    loads: list[SpanRecord]
    executes: list[SpanRecord]
    load_seconds: float
    execute_seconds: float


class _Calls:
    """Each attempt's load and execute spans, and its share of its batch's (memoised).

    The spans are found through the trace's index by name, by their parent: a root span
    (the producers write them as its direct children); only when some are nested deeper
    are the attempts' children searched, which at a million spans costs a pass over all.
    """

    def __init__(self, trace: Trace, attempts: list[Attempt]) -> None:
        self.trace = trace
        self._spans: dict[tuple[str, _Key], list[SpanRecord]] = {}
        self._own: dict[_Key, _Own] = {}
        self._model: dict[_Key, str | None] = {}
        roots = {a.root.span_id for a in trace.attempts}
        nested: set[int] = set()
        for name in (MODEL_LOAD_SPAN, EXECUTE_SPAN):
            for span in trace.by_name.get(name, ()):
                if span.parent_id in roots:
                    self._spans.setdefault((name, span.parent_id), []).append(span)
                elif span.parent_id is not None:
                    nested.add(span.span_id)
        if nested:
            for att in attempts:
                for span in att.children:
                    if span.span_id in nested:
                        self._spans.setdefault((span.name, att.root.span_id), []).append(span)

    def own(self, att: Attempt) -> _Own:
        """The attempt's own ``model load`` and ``execute`` spans (any depth)."""
        key = att.root.span_id
        found = self._own.get(key)
        if found is None:
            loads = self._spans.get((MODEL_LOAD_SPAN, key), [])
            executes = self._spans.get((EXECUTE_SPAN, key), [])
            found = self._own[key] = _Own(loads, executes, _seconds(loads), _seconds(executes))
        return found

    def batch_size(self, att: Attempt) -> int:
        """Members of the attempt's batch found in the trace (when more than one), else
        its ``tuiflow.batch.size``, else 1."""
        found = len(self.trace.batches.get(att.batch_id, ())) if att.batch_id else 0
        if found > 1:
            return found
        declared = att.root.attr(ATTR_BATCH_SIZE)
        if isinstance(declared, int) and not isinstance(declared, bool) and declared > 0:
            return declared
        return 1

    def members(self, att: Attempt) -> Sequence[Attempt]:
        """The attempts sharing its model call (itself alone when not merged)."""
        if att.batch_id is None:
            return (att,)
        return self.trace.batches.get(att.batch_id, ()) or (att,)

    def shares(self, att: Attempt) -> tuple[float, float]:
        """(load, execute) seconds that are the attempt's: its batch's, split equally."""
        if att.batch_id is None:
            own = self.own(att)
            load, execute = own.load_seconds, own.execute_seconds
        else:
            load = execute = 0.0
            for member in self.members(att):
                own = self.own(member)
                load += own.load_seconds
                execute += own.execute_seconds
        size = self.batch_size(att)
        return load / size, execute / size

    def model(self, att: Attempt) -> str | None:
        """The model of an attempt: its root's ``tuiflow.model``, else what its batch's
        spans name (``tuiflow.model`` on a load, ``gen_ai.request.model`` on a call)."""
        if att.model is not None:
            return att.model
        key = att.root.span_id
        if key not in self._model:
            self._model[key] = self._named_model(att)
        return self._model[key]

    def _named_model(self, att: Attempt) -> str | None:
        for member in self.members(att):
            own = self.own(member)
            for span in (*own.loads, *own.executes):
                name = span.attr(ATTR_MODEL) or span.attr(ATTR_GENAI_MODEL)
                if isinstance(name, str) and name:
                    return name
        return None


def _seconds(spans: Iterable[SpanRecord]) -> float:
    return math.fsum(s.duration for s in spans)


def _devices(att: Attempt) -> int:
    return len(att.gpus) or 1


# --- lanes ----------------------------------------------------------------------------------------


def _lanes(trace: Trace, attempts: list[Attempt], calls: _Calls) -> list[GpuLane]:
    by_lane: dict[tuple[str, int | None], list[Attempt]] = {}
    for att in attempts:
        if not att.ran:
            continue  # a decision never to run: no worker's time
        for gpu in att.gpus or (None,):
            by_lane.setdefault((att.worker or UNKNOWN_WORKER, gpu), []).append(att)
    served: dict[str, set[str | None]] = {}
    for att in trace.attempts:
        if att.ran:
            served.setdefault(att.worker or UNKNOWN_WORKER, set()).add(att.queue)
    waits = _Waits(attempts)
    lanes = []
    for (worker, gpu), held in sorted(by_lane.items(), key=lambda kv: _lane_order(kv[0])):
        queued = waits.union(gpu is not None, frozenset(served.get(worker, ())))
        lanes.append(_lane(worker, gpu, held, queued, calls))
    return lanes


class _Waits:
    """When work a lane could have taken was queued: per kind of lane (a GPU, or the cpu
    lane of model runs) and set of queues served, the union of the attempts' waits from
    ``ready_at`` to start (memoised: the workers of a pool share one set of queues)."""

    def __init__(self, attempts: list[Attempt]) -> None:
        self._by_queue: dict[tuple[bool, str | None], list[Interval]] = {}
        for a in attempts:
            if a.ready_at is not None and a.ready_at < a.start:
                self._by_queue.setdefault((bool(a.gpus), a.queue), []).append((a.ready_at, a.start))
        self._union: dict[tuple[bool, frozenset[str | None]], list[Interval]] = {}

    def union(self, gpu: bool, queues: frozenset[str | None]) -> list[Interval]:
        key = (gpu, queues)
        found = self._union.get(key)
        if found is None:
            waits = [iv for q in queues for iv in self._by_queue.get((gpu, q), ())]
            found = self._union[key] = merge_intervals(waits)
        return found


def _lane_order(key: tuple[str, int | None]) -> tuple[str, bool, int]:
    worker, gpu = key
    return (worker, gpu is None, gpu or 0)


def _lane(
    worker: str,
    gpu: int | None,
    held: list[Attempt],
    queued: list[Interval],
    calls: _Calls,
) -> GpuLane:
    """One lane from the attempts that held it and the waits of those that could have."""
    loads: list[SpanRecord] = []
    executes: list[tuple[Attempt, SpanRecord]] = []
    for att in held:
        own = calls.own(att)
        loads.extend(own.loads)
        executes.extend((att, s) for s in own.executes)
    roots = [a.root for a in held]
    start = min(r.start for r in roots)
    end = max(r.end for r in roots)
    segments = lane_segments(
        (start, end),
        busy=[(s.start, s.end) for _, s in executes],
        loading=[(s.start, s.end) for s in loads],
        held=[(r.start, r.end) for r in roots],
        waiting=queued,
    )
    seconds = state_seconds(segments)
    utilization, memory = _samples(gpu, executes)
    return GpuLane(
        worker=worker,
        gpu=gpu,
        host=next((a.host for a in held if a.host), None),
        attempts=len(held),
        start=start,
        end=max(start, end),
        busy_seconds=seconds[BUSY],
        loading_seconds=seconds[LOADING],
        other_seconds=seconds[OTHER],
        idle_claimable_seconds=seconds[CLAIMABLE],
        idle_seconds=seconds[IDLE],
        load_share=share(seconds[LOADING], seconds[BUSY]),
        utilization=utilization,
        memory_peak_bytes=memory,
        segments=segments,
    )


def _samples(gpu: int | None, executes: list[tuple[Attempt, SpanRecord]]) -> tuple[float | None, int | None]:
    """Duration-weighted mean utilisation and peak memory of one GPU over its calls."""
    if gpu is None:
        return None, None
    weighted = weight = 0.0
    peak: int | None = None
    for att, span in executes:
        index = att.gpus.index(gpu)
        util = _at(span.attr(ATTR_GPU_UTILIZATION), index)
        if util is not None:
            weighted += util * span.duration
            weight += span.duration
        mem = _at(span.attr(ATTR_GPU_MEMORY_USAGE), index)
        if mem is not None:
            peak = int(mem) if peak is None else max(peak, int(mem))
    return (weighted / weight if weight > 0 else None), peak


def _at(values: Any, index: int) -> float | None:
    """``values[index]`` when `values` is a list holding a number there."""
    if not isinstance(values, list) or index >= len(values):
        return None
    value = values[index]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# --- tasks and models -------------------------------------------------------------------------------


def _tasks(attempts: list[Attempt], calls: _Calls) -> list[TaskGpu]:
    by_task: dict[str, list[Attempt]] = {}
    for att in attempts:
        by_task.setdefault(att.task, []).append(att)
    rows = []
    for task, atts in by_task.items():
        load = execute = gpu_seconds = 0.0
        for att in atts:
            att_load, att_execute = calls.shares(att)
            load += att_load
            execute += att_execute
            gpu_seconds += (att_load + att_execute) * _devices(att)
        latest = atts[-1]
        rows.append(
            TaskGpu(
                task=task,
                attempts=len(atts),
                worker=latest.worker,
                executor=latest.executor,
                model=calls.model(latest),
                devices=len(latest.gpus),
                batch_size=calls.batch_size(latest),
                load_seconds=load,
                execute_seconds=execute,
                gpu_seconds=gpu_seconds,
            )
        )
    rows.sort(key=lambda r: (-r.gpu_seconds, r.task))
    return rows


def _models(attempts: list[Attempt], calls: _Calls) -> list[ModelGpu]:
    by_model: dict[tuple[str, str], list[Attempt]] = {}
    for att in attempts:
        if att.executor in MODEL_EXECUTORS:
            key = (att.executor, calls.model(att) or "unknown")
            by_model.setdefault(key, []).append(att)
    rows = []
    for (executor, model), atts in sorted(by_model.items()):
        loads = [s for a in atts for s in calls.own(a).loads]
        executes = [s for a in atts for s in calls.own(a).executes]
        load, execute = _seconds(loads), _seconds(executes)
        output_tokens = _total(executes, ATTR_GENAI_OUTPUT_TOKENS)
        images = _total(executes, ATTR_IMAGES)
        rows.append(
            ModelGpu(
                executor=executor,
                model=model,
                attempts=len(atts),
                calls=len(executes),
                loads=len(loads),
                load_seconds=load,
                execute_seconds=execute,
                load_share=share(load, execute),
                input_tokens=_total(executes, ATTR_GENAI_INPUT_TOKENS),
                output_tokens=output_tokens,
                images=images,
                tokens_per_second=_rate(output_tokens, execute),
                images_per_second=_rate(images, execute),
            )
        )
    return rows


def _total(spans: list[SpanRecord], key: str) -> int | None:
    """Sum of an integer attribute over spans; None when no span carries it."""
    values = [v for s in spans if isinstance(v := s.attr(key), int) and not isinstance(v, bool)]
    return sum(values) if values else None


def _rate(count: int | None, seconds: float) -> float | None:
    return count / seconds if count is not None and seconds > 0 else None
