"""Where everything lives in a home: every directory and file name of a home, of a
workflow and of an attempt. No other module spells one (tests/test_layout.py checks).

    <home>/layout.json                       version and shared settings (`spool.home`)
    <home>/coordinator/lease/<n>             the lease's entries (`spool.lease`)
    <home>/coordinator/lease.log             takeovers, depositions, operator breaks
    <home>/queues/<queue>/                   a task queue (its own layout below)
    <home>/completions/                      worker -> coordinator events (a queue)
    <home>/control/                          client -> coordinator requests (a queue)
    <home>/workers/<id>.hb                   a worker's heartbeat (`spool.liveness`)
    <home>/workers/<id>.dead                 ... once the coordinator declared it dead
    <home>/workers/logs/<id>.log             run-local's worker processes' output
    <home>/workflows/.new.<id>.<token>/      a submit in progress (renamed to <id> when whole)
    <home>/workflows/<id>/definition.msgpack CAS record, written once at submit
    <home>/workflows/<id>/state.msgpack      CAS record: the run state
    <home>/workflows/<id>/summary.msgpack    what listings read instead of whole states
    <home>/workflows/<id>/cancelled          marker: workers stop the workflow's tasks
    <home>/workflows/<id>/broken             marker: its state cannot be applied or written
                                             (why, as text); the coordinator leaves it alone
    <home>/workflows/<id>/kill/<idx>.<n>     marker: stop this attempt (timeouts)
    <home>/workflows/<id>/trace/spans.jsonl  the coordinator's spans
    <home>/workflows/<id>/tasks/<task>/<n>/  attempt n of a task (name encoded, `spool.names`)
        stdout.log  stderr.log  output.json  inputs.json
        logs/spans.jsonl  logs/assets.jsonl  logs/lineage.jsonl

    a queue (`spool.queue`):
        queue.json  priority.hint  ready/<ss>/  claimed/<worker>/  delayed/  dead/ (+ <name>.reason.json)

Paths in messages and states are relative to the home (`attempt_dir_rel`), so a home
mounted at different paths on different hosts works; `resolve` turns them back into
paths, refusing any that would leave the home.
"""

from __future__ import annotations

import os

from .names import encode_component

# ---------------------------------------------------------------------- the home
LAYOUT_FILE = "layout.json"
COORDINATOR_DIR = "coordinator"
LEASE_DIR = "lease"
LEASE_LOG = "lease.log"
QUEUES_DIR = "queues"
COMPLETIONS_DIR = "completions"
CONTROL_DIR = "control"
WORKERS_DIR = "workers"
WORKFLOWS_DIR = "workflows"
#: the subdirectories a new home is made with
HOME_SUBDIRS = (COORDINATOR_DIR, QUEUES_DIR, COMPLETIONS_DIR, CONTROL_DIR, WORKERS_DIR, WORKFLOWS_DIR)
HEARTBEAT_SUFFIX = ".hb"
DEAD_SUFFIX = ".dead"
WORKER_LOGS_DIR = "logs"

# ---------------------------------------------------------------------- a queue
QUEUE_META = "queue.json"
PRIORITY_HINT = "priority.hint"
READY_DIR = "ready"
CLAIMED_DIR = "claimed"
DELAYED_DIR = "delayed"
DEAD_DIR = "dead"
REASON_SUFFIX = ".reason.json"

# ------------------------------------------------------------------- a workflow
DEFINITION_FILE = "definition.msgpack"
STATE_FILE = "state.msgpack"
SUMMARY_FILE = "summary.msgpack"
CANCEL_MARKER = "cancelled"
BROKEN_MARKER = "broken"
KILL_DIR = "kill"
TASKS_DIR = "tasks"
TRACE_DIR = "trace"
STAGING_PREFIX = ".new."
REMOVING_PREFIX = ".gone."  # a purged workflow, renamed out of sight before it is deleted

# -------------------------------------------------------------------- an attempt
STDOUT_FILE = "stdout.log"
STDERR_FILE = "stderr.log"
OUTPUT_FILE = "output.json"
INPUTS_FILE = "inputs.json"
LOGS_DIR = "logs"
SPANS_FILE = "spans.jsonl"
ASSETS_FILE = "assets.jsonl"
LINEAGE_FILE = "lineage.jsonl"


# -------------------------------------------------------------------- functions
def dead_path(heartbeat_path: str) -> str:
    """Where a dead worker's heartbeat record is moved (`<id>.hb` -> `<id>.dead`)."""
    return heartbeat_path.removesuffix(HEARTBEAT_SUFFIX) + DEAD_SUFFIX


def worker_log(home_root: str, worker: str) -> str:
    return f"{home_root}/{WORKERS_DIR}/{WORKER_LOGS_DIR}/{worker}.log"


def workflow_dir(home_root: str, wf_id: str) -> str:
    return f"{home_root}/{WORKFLOWS_DIR}/{wf_id}"


def workflow_file(home_root: str, wf_id: str, name: str) -> str:
    """A record or marker of a workflow (`DEFINITION_FILE`, `STATE_FILE`, ...)."""
    return f"{home_root}/{WORKFLOWS_DIR}/{wf_id}/{name}"


def staging_dir(workflows_dir: str, wf_id: str, token: str) -> str:
    return f"{workflows_dir}/{STAGING_PREFIX}{wf_id}.{token}"


def removing_dir(workflows_dir: str, wf_id: str, token: str) -> str:
    return f"{workflows_dir}/{REMOVING_PREFIX}{wf_id}.{token}"


def cancel_marker(home_root: str, wf_id: str) -> str:
    """Exists once the workflow is cancelled: workers stop its tasks."""
    return f"{home_root}/{WORKFLOWS_DIR}/{wf_id}/{CANCEL_MARKER}"


def broken_marker(home_root: str, wf_id: str) -> str:
    """Exists once the coordinator gave up on a workflow it could not even fail (its
    state cannot be written): it skips the workflow from then on; `purge` removes it."""
    return f"{home_root}/{WORKFLOWS_DIR}/{wf_id}/{BROKEN_MARKER}"


def kill_marker(home_root: str, wf_id: str, idx: int, attempt: int) -> str:
    """Exists once this attempt must stop (the coordinator's timeout sweep)."""
    return f"{home_root}/{WORKFLOWS_DIR}/{wf_id}/{KILL_DIR}/{idx}.{attempt}"


def trace_file(workflow_dir: str) -> str:
    """The coordinator's spans of a workflow."""
    return f"{workflow_dir}/{TRACE_DIR}/{SPANS_FILE}"


def tasks_dir(workflow_dir: str) -> str:
    return f"{workflow_dir}/{TASKS_DIR}"


def task_dir_rel(wf_id: str, task: str) -> str:
    return f"{WORKFLOWS_DIR}/{wf_id}/{TASKS_DIR}/{encode_component(task)}"


def attempt_dir_rel(wf_id: str, task: str, attempt: int) -> str:
    """An attempt's directory, relative to the home (what messages and states carry)."""
    return f"{task_dir_rel(wf_id, task)}/{attempt}"


def attempt_dir(home_root: str, wf_id: str, task: str, attempt: int) -> str:
    return f"{home_root}/{attempt_dir_rel(wf_id, task, attempt)}"


def attempt_file(attempt_dir: str, name: str) -> str:
    """A file of an attempt (`OUTPUT_FILE`, `STDOUT_FILE`, ...)."""
    return f"{attempt_dir}/{name}"


def attempt_log(attempt_dir: str, name: str) -> str:
    """A file of an attempt's logs/ (`SPANS_FILE`, `ASSETS_FILE`, `LINEAGE_FILE`)."""
    return f"{attempt_dir}/{LOGS_DIR}/{name}"


def stays_inside(rel: str) -> bool:
    """Whether home-relative path `rel` (from a message or a state) stays in the home."""
    return not os.path.isabs(rel) and ".." not in rel.split("/")


def resolve(home_root: str, rel: str) -> str:
    """A home-relative path from a message or a state, refusing anything that would leave
    the home (ValueError)."""
    if not stays_inside(rel):
        raise ValueError(f"path {rel!r} in a message escapes the home")
    return f"{home_root}/{rel}"
