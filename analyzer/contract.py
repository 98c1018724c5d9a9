"""The span wire contract: names, kinds and attribute keys of tuiflow's spans.

Defined once here and imported by the producer (`workers`, the coordinator) and the
consumer (`analyzer`), so the two can never drift apart.

Files: every task attempt writes ``logs/spans.jsonl`` under its attempt directory
(``<home>/workflows/<wf_id>/tasks/<task>/<attempt>/logs/spans.jsonl``); the coordinator
writes ``<home>/workflows/<wf_id>/trace/spans.jsonl``. One line per span, exactly what
OpenTelemetry's ``ReadableSpan.to_json(indent=None)`` prints: ``context.trace_id`` and
``context.span_id`` / ``parent_id`` as ``0x``-prefixed hex, ``start_time`` / ``end_time``
as ISO-8601 UTC strings, ``status.status_code`` ``UNSET`` / ``OK`` / ``ERROR``.

The trace id of every span of a workflow is derived from the workflow id
(`trace_id_for`), so one workflow is one trace, across processes and hosts.

Span tree of one attempt::

    task                      root of the attempt; parent = the workflow span
      read upstream outputs   network: loading parents' outputs (bytes attribute)
      executor setup          compute: process start, imports, model load
      execute                 compute: the task's own work
      write outputs           network: the READY span; its end = data available to children
      post-process            compute: anything after the data is available

The coordinator writes the ``workflow`` span (submit -> end). An attempt that never
wrote its own root span still gets one, written by whoever saw it end: a zero-length
``task`` span with error status for a task that failed before it started (the worker
or the coordinator), and, for an attempt whose worker died, a ``task`` span from its
start to when the coordinator noticed, with ``tuiflow.outcome`` = ``lost``. A task
decided never to run (skipped by its condition, upstream_failed, cancelled before it was
queued) gets a zero-length ``task`` span from the coordinator at that moment, with that
outcome: every task of a workflow is in its trace.
"""

from __future__ import annotations

import enum
import hashlib


class SpanKind(enum.StrEnum):
    """What a child span's time counts as (attribute `ATTR_KIND`)."""

    COMPUTE = "compute"
    NETWORK = "network"
    MARKER = "marker"


# --- span names -----------------------------------------------------------------------
WORKFLOW_SPAN = "workflow"
TASK_SPAN = "task"
READ_INPUTS_SPAN = "read upstream outputs"
SETUP_SPAN = "executor setup"
EXECUTE_SPAN = "execute"
READY_SPAN = "write outputs"
POSTPROCESS_SPAN = "post-process"
MODEL_LOAD_SPAN = "model load"  # a model executor loading its model (only on a miss)
PROMPT_SPAN = "build prompts"  # a model executor rendering prompts (chat templates)

#: kind of each standard child span
SPAN_KINDS: dict[str, SpanKind] = {
    READ_INPUTS_SPAN: SpanKind.NETWORK,
    SETUP_SPAN: SpanKind.COMPUTE,
    EXECUTE_SPAN: SpanKind.COMPUTE,
    READY_SPAN: SpanKind.NETWORK,
    POSTPROCESS_SPAN: SpanKind.COMPUTE,
    MODEL_LOAD_SPAN: SpanKind.NETWORK,  # reading weights: storage, not compute
    PROMPT_SPAN: SpanKind.COMPUTE,
}

# --- attribute keys -------------------------------------------------------------------
ATTR_KIND = "tuiflow.kind"  # SpanKind of a child span
ATTR_WORKFLOW_ID = "tuiflow.workflow.id"
ATTR_WORKFLOW_NAME = "tuiflow.workflow.name"
ATTR_RUN_ID = "tuiflow.run.id"  # = workflow id; kept separate for per-run analytics
ATTR_TASK = "tuiflow.task"
ATTR_ATTEMPT = "tuiflow.attempt"  # int, 0-based
ATTR_DEPENDS_ON = "tuiflow.task.depends_on"  # list[str]: the task's direct dependencies
ATTR_READY_AT = "tuiflow.task.ready_at"  # float epoch seconds: when the coordinator queued it (0.0: unknown)
ATTR_WORKER = "tuiflow.worker"
ATTR_HOST = "host.name"
ATTR_QUEUE = "tuiflow.queue"
ATTR_GPUS = "tuiflow.gpus"  # list[int]: devices assigned
ATTR_EXECUTOR = "tuiflow.executor"
ATTR_MODEL = "tuiflow.model"
ATTR_BATCH_ID = "tuiflow.batch.id"  # merged execution: attempts that shared one GPU call
ATTR_BATCH_SIZE = "tuiflow.batch.size"  # int: how many attempts shared that call
ATTR_DATA_ID = "tuiflow.data.id"  # the data item this attempt produced
ATTR_BYTES = "tuiflow.bytes"  # payload bytes moved by a network span
ATTR_OUTCOME = "tuiflow.outcome"  # completed | failed | timeout | cancelled | lost | worker stopped
# | skipped | upstream_failed (NOT_RUN_OUTCOMES)
#: outcomes of a task that never ran at all: the coordinator records its decision (a
#: condition was false, a dependency failed) as a zero-length task span at that moment,
#: so that every task of a workflow is in its trace; no worker, no wait, no work
NOT_RUN_OUTCOMES = frozenset({"skipped", "upstream_failed"})
ATTR_ERROR = "tuiflow.error"  # short reason on error spans
ATTR_EXIT_CODE = "tuiflow.exit_code"
ATTR_MODEL_LOAD_SECONDS = "tuiflow.model.load_seconds"  # on the generation span: 0.0 on a warm hit
ATTR_WARM_HIT = "tuiflow.model.warm"  # bool: the model was already loaded in the slot's host
ATTR_IMAGES = "tuiflow.images"  # int: images a diffusers call made
ATTR_STEPS = "tuiflow.steps"  # int: its denoising steps
ATTR_ERROR_TYPE = "error.type"  # OTel: the class of a failure ("cuda_oom" for CUDA out of memory)
# OpenTelemetry hardware conventions, sampled through NVML while a model call runs on CUDA
# (absent without NVML): per GPU id, the mean utilisation (0..1) and the peak memory used (bytes)
ATTR_GPU_UTILIZATION = "hw.gpu.utilization"  # list[float], in the order of tuiflow.gpus
ATTR_GPU_MEMORY_USAGE = "hw.gpu.memory.usage"  # list[int], in the order of tuiflow.gpus
# OpenTelemetry GenAI semantic conventions (gen_ai.*) on a model executor's generation span
ATTR_GENAI_OPERATION = "gen_ai.operation.name"
ATTR_GENAI_MODEL = "gen_ai.request.model"
ATTR_GENAI_MAX_TOKENS = "gen_ai.request.max_tokens"
ATTR_GENAI_TEMPERATURE = "gen_ai.request.temperature"
ATTR_GENAI_TOP_P = "gen_ai.request.top_p"
ATTR_GENAI_SEED = "gen_ai.request.seed"
ATTR_GENAI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
ATTR_GENAI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
ATTR_GENAI_FINISH_REASONS = "gen_ai.response.finish_reasons"
# vLLM's request metrics (monotonic differences, seconds): first token after scheduling; per later token
ATTR_GENAI_TTFT = "gen_ai.server.time_to_first_token"
ATTR_GENAI_TPOT = "gen_ai.server.time_per_output_token"

#: the executors that run models in a worker's model hosts (their spans follow the GenAI
#: conventions above; `workers.models.merging` has their merge keys)
MODEL_EXECUTORS = frozenset({"transformers", "diffusers", "vllm"})

#: the "workflow context" every attempt's root span carries (no joins needed for analytics)
WORKFLOW_CONTEXT_KEYS = (
    ATTR_WORKFLOW_NAME,
    ATTR_RUN_ID,
    ATTR_TASK,
    ATTR_ATTEMPT,
    ATTR_EXECUTOR,
    ATTR_WORKER,
)

# --- files ------------------------------------------------------------------------------
# Where they lie is the home's layout (`spool.layout`): an attempt's logs/spans.jsonl,
# logs/assets.jsonl (rows: {"path", "bytes", "sha256", "owner", "task", "attempt",
# "data_id"}) and logs/lineage.jsonl (rows: {"data_id", "sources": [data ids], "task",
# "attempt"}); the coordinator's trace/spans.jsonl of a workflow.


def trace_id_for(workflow_id: str) -> int:
    """The 128-bit trace id of a workflow: a hash of its id (stable, never zero)."""
    value = int.from_bytes(hashlib.sha256(workflow_id.encode()).digest()[:16], "big")
    return value or 1


def format_trace_id(trace_id: int) -> str:
    """As OpenTelemetry's JSON writes it: ``0x`` + 32 hex digits."""
    return f"0x{trace_id:032x}"
