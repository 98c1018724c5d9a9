"""A chaos harness: the real engine as separate OS processes, SIGKILLed at random, then checked.

It creates a home with fast liveness settings, writes two workflows (one that must end
``failed`` because one task always fails, and one that must end ``completed``), starts a
coordinator (``tuiflow coordinator --wait``) and W workers (``tuiflow worker``) as
processes of their own, submits the workflows with ``tuiflow submit``, and while they run
SIGKILLs a random worker or the coordinator at random moments spread over the run
(restarting whatever it killed at once: a new worker with a new id, a new coordinator that
takes the lease over). Optionally it also pauses processes with SIGSTOP/SIGCONT. Once
every workflow is terminal and the home has gone quiet it stops everything with SIGTERM
and checks the invariants:

* every task's final state and every workflow's state are what the definition implies,
  and every completed task's output is the one it computes;
* every (task, attempt) completion was applied exactly once (``completions_applied``
  equals the number of completed tasks) and no attempt number is impossible;
* every queue (task queues, completions, control) is empty: nothing ready, delayed,
  claimed or dead; no lock file or temp file is left anywhere in the home;
* every record decodes (layout, definitions, states, summaries, queue.json, heartbeats,
  lease entries) and the summaries agree with the states;
* every attempt of every task that became ready has a closed root span;
* every killed worker was declared dead, the lease was released, no process is left;
* no process crashed or logged a traceback, and the coordinator never had to re-queue a
  ready task whose message had vanished (ready-repair: a lost message).

Workers are stopped first (they drain); the coordinator gets a few seconds more to clean up
after a worker that stopped abnormally (it leaves its heartbeat to expire), then it stops.

Executions are counted from the root spans the workers wrote (at-least-once execution is
allowed under SIGKILL: a re-run is one more execution of a (task, attempt) that already ran).

``--faults none`` keeps the home on the local disk. The other modes put it on a
`latencyfs.py` FUSE passthrough of one source directory, mounted twice (two "NFS
clients"): the coordinator and ``tuiflow submit`` use mount A, the workers mount B. The
harness itself reads the source directory (the "server"), so its checks see no faults.
``fuse``: latency only; ``lost-reply`` / ``estale`` / ``negcache``: one fault; ``all``:
every fault. The home is created with faults off; they start before any process does.

    python tests/support/chaos.py --tasks 2000 --kills 20 --faults all [--home-dir DIR]
        [--workers 3] [--slots 2] [--seed N] [--pauses N] [--timeout S] [-v]

prints one summary line and exits 0 only when no invariant was violated (1 otherwise,
2 when the run could not be set up). The full report (every violation, the process logs'
tails) goes to ``<scratch>/chaos-report.txt`` and, with ``-v``, to stderr.

From Python: ``run_chaos(base_dir, tasks=..., kills=..., faults=...) -> ChaosResult``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:  # run as a script: the engine's packages live at the repo root
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from analyzer import contract as c  # noqa: E402
from analyzer.reader import SpanReader  # noqa: E402
from spool import Home, Settings  # noqa: E402
from spool.janitor import remove_stale_temps  # noqa: E402

LATENCYFS = ROOT / "tests" / "support" / "latencyfs.py"

#: liveness settings of the chaos home: a killed worker is judged dead within 1.5 s
CHAOS_SETTINGS = Settings(heartbeat_interval=0.2, dead_after=1.5, lease_ttl=2.0, poll_interval=0.05)

FAULT_MODES = ("none", "fuse", "lost-reply", "estale", "negcache", "all")
#: default fault rates (probability per operation; seconds for the negative cache)
LOST_REPLY_RATE = 0.01
# Linux retries an open that failed with ESTALE once by itself, so a rate of p per call to
# the file system is p * p per open(2): 0.1 makes ~1 % of the engine's opens fail.
ESTALE_RATE = 0.1
NEGATIVE_CACHE_S = 0.2
LATENCY_MS = 1.0

#: the fixed (non-fan-out) tasks of the two workflows
_MAIN_FIXED = 15
_CLEAN_FIXED = 7
MIN_TASKS = _MAIN_FIXED + _CLEAN_FIXED + 4

#: spool.atomic's temp names: .tmp.<host>.<pid>.<random>.<n>
_TEMP_RE = re.compile(r"\.tmp\..*\.(\d+)\.[0-9a-f]+\.\d+\Z")
_TERMINAL_TASK = frozenset({"completed", "failed", "skipped", "upstream_failed", "cancelled"})
_TERMINAL_WF = frozenset({"completed", "failed", "cancelled"})


class ChaosSetupError(RuntimeError):
    """The run could not be set up (no FUSE, a mount or a process that would not start)."""


# ------------------------------------------------------------------------------- results
@dataclasses.dataclass(frozen=True)
class Violation:
    kind: str
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"


@dataclasses.dataclass
class WorkflowOutcome:
    id: str
    name: str
    expected: str
    state: str | None
    tasks: int


@dataclasses.dataclass
class ChaosResult:
    tasks: int
    faults: str
    kills_requested: int
    seed: int | None = None
    worker_kills: int = 0
    coordinator_kills: int = 0
    pauses: int = 0
    elapsed: float = 0.0
    executions: int = 0
    reruns: int = 0
    lost_attempts: int = 0
    #: tasks a coordinator that took over queued for a predecessor stopped before it could
    takeover_requeues: int = 0
    duplicates_ignored: int = 0
    #: the longest time (s) the count of terminal tasks did not move while the run went on
    longest_stall: float = 0.0
    violations: list[Violation] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    workflows: list[WorkflowOutcome] = dataclasses.field(default_factory=list)
    fault_counts: dict[str, int] = dataclasses.field(default_factory=dict)
    home: str = ""
    scratch: str = ""
    report_path: str = ""
    log_tails: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def kills(self) -> int:
        return self.worker_kills + self.coordinator_kills

    @property
    def ok(self) -> bool:
        return not self.violations

    def violation_kinds(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.violations:
            out[v.kind] = out.get(v.kind, 0) + 1
        return out

    def summary_line(self) -> str:
        kills = f"{self.kills} kills ({self.worker_kills} workers, {self.coordinator_kills} coordinator)"
        if self.kills < self.kills_requested:
            kills += f" of {self.kills_requested} planned"
        if self.pauses:
            kills += f", {self.pauses} pauses"
        head = f"chaos: {self.tasks} tasks, {kills}, faults={self.faults}, seed {self.seed}"
        figures = (
            f"{self.executions} executions, {self.reruns} re-runs, {self.lost_attempts} lost attempts, "
            f"{self.takeover_requeues} queued after a takeover, longest stall {self.longest_stall:.1f} s"
        )
        if self.fault_counts:
            figures += ", injected " + " ".join(f"{k}={v}" for k, v in sorted(self.fault_counts.items()))
        if self.ok:
            return f"{head}: OK in {self.elapsed:.1f} s; {figures}; 0 violations"
        shown = []
        for v in self.violations[:6]:
            text = " ".join(v.message.split())
            shown.append(f"[{v.kind}] {text[:160]}{'...' if len(text) > 160 else ''}")
        more = f" (+{len(self.violations) - 6} more)" if len(self.violations) > 6 else ""
        kinds = ", ".join(f"{k} x{n}" for k, n in self.violation_kinds().items())
        line = (
            f"{head}: FAILED in {self.elapsed:.1f} s; {figures}; {len(self.violations)} violations "
            f"({kinds}): {' | '.join(shown)}{more}"
        )
        if self.report_path:
            line += f" (report: {self.report_path})"
        return line

    def report(self) -> str:
        lines = [self.summary_line(), ""]
        lines.append(f"home: {self.home}")
        lines.append(f"scratch (logs, workflows): {self.scratch}")
        for wf in self.workflows:
            lines.append(f"workflow {wf.id} {wf.name}: {wf.state} (expected {wf.expected}), {wf.tasks} tasks")
        lines.append(f"duplicates ignored by the coordinator: {self.duplicates_ignored}")
        if self.violations:
            lines += ["", f"{len(self.violations)} violations:"]
            lines += [f"  {v}" for v in self.violations]
        if self.warnings:
            lines += ["", f"{len(self.warnings)} warnings:"]
            lines += [f"  {w}" for w in self.warnings]
        if self.log_tails:
            lines += ["", "last lines of the process logs:"]
            for name, tail in self.log_tails.items():
                lines.append(f"--- {name}")
                lines.append(tail.rstrip())
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- workflows
TASKS_MODULE = '''\
"""Task functions of the chaos harness's workflows (written by tests/support/chaos.py)."""

import os
import time

import tuiflow


def work(i: int, ms: int) -> dict:
    time.sleep(ms / 1000)
    return {"i": i}


def flaky(fail_first: int) -> dict:
    attempt = int(os.environ["TUIFLOW_ATTEMPT"])
    if attempt < fail_first:
        raise RuntimeError(f"flaky: attempt {attempt} fails on purpose")
    return {"attempt": attempt}


def join() -> dict:
    outputs = tuiflow.upstream_outputs()
    values = [v.get("i") if isinstance(v, dict) else None for v in outputs.values()]
    return {"n": len(values), "sum": sum(v for v in values if isinstance(v, int)),
            "missing": sum(1 for v in values if not isinstance(v, int))}


def echo(value):
    return value
'''


@dataclasses.dataclass
class TaskPlan:
    """What the harness knows about one task (after foreach expansion)."""

    name: str
    deps: list[str]
    policy: str = "all"
    #: "ok" (completes when run), "fail" (always fails), "skip" (its condition is false)
    intrinsic: str = "ok"
    num_retries: int = 0
    #: the output it must end with when completed (None: not checked)
    output: Any = None
    #: completes only from this attempt on (the flaky task)
    min_attempt: int = 0


@dataclasses.dataclass
class WorkflowPlan:
    name: str
    path: Path
    tasks: dict[str, TaskPlan]
    expected_tasks: dict[str, str]
    expected_state: str


def _expected_states(tasks: dict[str, TaskPlan]) -> dict[str, str]:
    """Final state of every task implied by the definition (docs/semantics.md)."""
    out: dict[str, str] = {}
    remaining = list(tasks)
    while remaining:
        progressed = False
        for name in list(remaining):
            t = tasks[name]
            if any(d not in out for d in t.deps):
                continue
            dep_states = [out[d] for d in t.deps]
            bad = any(s in ("failed", "upstream_failed", "cancelled") for s in dep_states)
            done = [s == "completed" for s in dep_states]
            own = {"ok": "completed", "fail": "failed", "skip": "skipped"}[t.intrinsic]
            if not t.deps:
                state = own
            elif t.policy == "all":
                state = "upstream_failed" if bad else own if all(done) else "skipped"
            else:
                state = own if any(done) else "upstream_failed" if bad else "skipped"
            out[name] = state
            remaining.remove(name)
            progressed = True
        if not progressed:
            raise ValueError(f"cycle among {remaining}")
    return out


def _fan_sizes(n: int) -> tuple[int, int]:
    return n - n // 2, n // 2


def build_workflows(directory: Path, tasks: int, retries: int, task_ms: float = 100.0) -> list[WorkflowPlan]:
    """Write the two workflows (and their task module) into `directory`; `tasks` in all.
    A fan-out task sleeps 0.5 to 1.5 times `task_ms` milliseconds (by its index)."""
    if tasks < MIN_TASKS:
        raise ValueError(f"--tasks must be at least {MIN_TASKS}")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "chaos_tasks.py").write_text(TASKS_MODULE)
    fan = tasks - _MAIN_FIXED - _CLEAN_FIXED
    clean_fan = max(2, fan // 10)
    main_fan = fan - clean_fan
    plans = [
        _main_workflow(directory, main_fan, retries, task_ms),
        _clean_workflow(directory, clean_fan, retries, task_ms),
    ]
    assert sum(len(p.tasks) for p in plans) == tasks, [len(p.tasks) for p in plans]
    return plans


def _fan_out(
    prefix: str, n: int, retries: int, plans: dict[str, TaskPlan], root: str, task_ms: float
) -> list[dict]:
    """Two foreach groups under `prefix`: shell tasks and python tasks, each writing {"i": index}."""
    n_sh, n_py = _fan_sizes(n)
    specs = []
    if n_sh:
        specs.append(
            {
                "name": f"{prefix}/sh",
                "depends_on": [root],
                "foreach": {"range": n_sh},
                # a few ms of sleep, then the output (the index, shell-quoted by the template)
                "run": f"sleep {{{{ (index % 5 + 2) * {task_ms / 4000:g} }}}}; "
                + 'printf \'{"i": %s}\' {{ index }} > "$TUIFLOW_OUTPUT"',
            }
        )
    if n_py:
        specs.append(
            {
                "name": f"{prefix}/py",
                "depends_on": [root],
                "foreach": {"range": n_py},
                "call": "chaos_tasks:work",
                "kwargs": {"i": "{{ index }}", "ms": f"{{{{ (index % 5 + 2) * {task_ms / 4:g} }}}}"},
            }
        )
    for group, count in ((f"{prefix}/sh", n_sh), (f"{prefix}/py", n_py)):
        for i in range(count):
            name = f"{group}[{i}]"
            plans[name] = TaskPlan(name, [root], num_retries=retries, output={"i": i})
    return specs


def _sum_out(n: int) -> dict:
    n_sh, n_py = _fan_sizes(n)
    return {
        "n": n,
        "sum": n_sh * (n_sh - 1) // 2 + n_py * (n_py - 1) // 2,
        "missing": 0,
    }


def _main_workflow(directory: Path, fan: int, retries: int, task_ms: float) -> WorkflowPlan:
    """Ends failed: `doomed` always fails (its descendants end upstream_failed)."""
    plans: dict[str, TaskPlan] = {}
    fan_names: list[str] = []
    specs: list[dict] = [{"name": "root", "call": "chaos_tasks:echo", "kwargs": {"value": {"root": 1}}}]
    plans["root"] = TaskPlan("root", [], num_retries=retries, output={"root": 1})
    specs += _fan_out("fan", fan, retries, plans, "root", task_ms)
    fan_names = [n for n in plans if n.startswith("fan/")]
    groups = sorted({n.split("[")[0] for n in fan_names})
    specs.append({"name": "join", "depends_on": groups, "call": "chaos_tasks:join"})
    plans["join"] = TaskPlan("join", fan_names, num_retries=retries, output=_sum_out(fan))
    prev = "join"
    for k in range(5):
        name = f"chain/{k}"
        specs.append({"name": name, "depends_on": [prev], "call": "chaos_tasks:echo", "kwargs": {"value": k}})
        plans[name] = TaskPlan(name, [prev], num_retries=retries, output=k)
        prev = name
    specs += [
        # fails on attempts 0 and 1 (a lost attempt counts too), completes from attempt 2 on
        {"name": "flaky", "depends_on": ["root"], "call": "chaos_tasks:flaky", "kwargs": {"fail_first": 2}},
        {"name": "doomed", "depends_on": ["root"], "run": "echo doomed >&2; exit 3", "num_retries": 1},
        {"name": "doomed_child", "depends_on": ["doomed"], "run": "echo never"},
        {"name": "doomed_grandchild", "depends_on": ["doomed_child", "chain/4"], "run": "echo never"},
        {
            "name": "unwanted",
            "depends_on": ["join"],
            "condition": "inputs.join.n < 0",  # false: skipped
            "run": "echo never",
        },
        {"name": "after_unwanted", "depends_on": ["unwanted"], "run": "echo never"},
        {
            "name": "either",
            "depends_on": ["unwanted", "chain/4"],
            "dep_policy": "any",
            "call": "chaos_tasks:echo",
            "kwargs": {"value": "either"},
        },
        {
            "name": "final",
            "depends_on": ["either", "flaky"],
            "call": "chaos_tasks:echo",
            "kwargs": {"value": "{{ inputs.flaky.attempt >= 2 }}"},
        },
    ]
    plans["flaky"] = TaskPlan("flaky", ["root"], num_retries=retries, min_attempt=2)
    plans["doomed"] = TaskPlan("doomed", ["root"], intrinsic="fail", num_retries=1)
    plans["doomed_child"] = TaskPlan("doomed_child", ["doomed"], num_retries=retries)
    plans["doomed_grandchild"] = TaskPlan(
        "doomed_grandchild", ["doomed_child", "chain/4"], num_retries=retries
    )
    plans["unwanted"] = TaskPlan("unwanted", ["join"], intrinsic="skip", num_retries=retries)
    plans["after_unwanted"] = TaskPlan("after_unwanted", ["unwanted"], num_retries=retries)
    plans["either"] = TaskPlan(
        "either", ["unwanted", "chain/4"], policy="any", num_retries=retries, output="either"
    )
    plans["final"] = TaskPlan("final", ["either", "flaky"], num_retries=retries, output=True)
    assert len(plans) == _MAIN_FIXED + fan, (len(plans), fan)
    return _write(directory, "chaos-main", specs, plans, retries)


def _clean_workflow(directory: Path, fan: int, retries: int, task_ms: float) -> WorkflowPlan:
    """Ends completed."""
    plans: dict[str, TaskPlan] = {}
    specs: list[dict] = [{"name": "start", "run": "true"}]
    plans["start"] = TaskPlan("start", [], num_retries=retries)
    specs += _fan_out("wide", fan, retries, plans, "start", task_ms)
    fan_names = [n for n in plans if n.startswith("wide/")]
    groups = sorted({n.split("[")[0] for n in fan_names})
    specs.append({"name": "gather", "depends_on": groups, "call": "chaos_tasks:join"})
    plans["gather"] = TaskPlan("gather", fan_names, num_retries=retries, output=_sum_out(fan))
    prev = "gather"
    for k in range(3):
        name = f"steps/{k}"
        specs.append({"name": name, "depends_on": [prev], "run": f"echo step {k}"})
        plans[name] = TaskPlan(name, [prev], num_retries=retries)
        prev = name
    specs.append(
        {"name": "retried", "depends_on": ["start"], "call": "chaos_tasks:flaky", "kwargs": {"fail_first": 1}}
    )
    plans["retried"] = TaskPlan("retried", ["start"], num_retries=retries, min_attempt=1)
    specs.append({"name": "done", "depends_on": [prev, "retried"], "run": "echo done"})
    plans["done"] = TaskPlan("done", [prev, "retried"], num_retries=retries)
    assert len(plans) == _CLEAN_FIXED + fan, (len(plans), fan)
    return _write(directory, "chaos-clean", specs, plans, retries)


def _write(
    directory: Path, name: str, specs: list[dict], plans: dict[str, TaskPlan], retries: int
) -> WorkflowPlan:
    doc = {
        "name": name,
        "description": "written by tests/support/chaos.py",
        "defaults": {"num_retries": retries, "retry_backoff": 0.05},
        "tasks": specs,
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=200))
    expected = _expected_states(plans)
    bad = any(s in ("failed", "upstream_failed") for s in expected.values())
    return WorkflowPlan(name, path, plans, expected, "failed" if bad else "completed")


# -------------------------------------------------------------------------------- mounts
def fuse_unavailable() -> str | None:
    """Why a FUSE mount cannot be made here (None when it can); as tests/conftest.py."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (no FUSE in this kernel/container)"
    if not shutil.which("fusermount3"):
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as e:
        return f"mfusepy/libfuse3 unavailable: {e}"
    return None


def latencyfs_options() -> set[str]:
    """The options tests/support/latencyfs.py understands (read from its --help)."""
    r = subprocess.run(
        [sys.executable, str(LATENCYFS), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    return {w.strip("[],") for w in r.stdout.split() if w.startswith("--")}


def _fault_args(faults: str, rates: dict[str, float]) -> list[str]:
    args = ["--latency-ms", str(rates.get("latency_ms", LATENCY_MS))]
    if faults in ("lost-reply", "all"):
        args += ["--lost-reply", str(rates.get("lost_reply", LOST_REPLY_RATE))]
    if faults in ("estale", "all"):
        args += ["--estale", str(rates.get("estale", ESTALE_RATE))]
    if faults in ("negcache", "all"):
        args += ["--negative-cache", str(rates.get("negative_cache", NEGATIVE_CACHE_S))]
    return args


class Mounts:
    """Two latencyfs mounts (A, B) of one source directory: two "NFS clients"."""

    def __init__(self, base: Path, scratch: Path, faults: str, seed: int, rates: dict[str, float]):
        self.source = base / "source"
        self.mnt = {"a": base / "mnt-a", "b": base / "mnt-b"}
        self.scratch = scratch
        self.faults = faults
        self.off_file = scratch / "faults-off"
        self.audit = {k: scratch / f"latencyfs-{k}.audit" for k in self.mnt}
        self.logs = {k: scratch / f"latencyfs-{k}.log" for k in self.mnt}
        self.procs: dict[str, subprocess.Popen] = {}
        self.seed = seed
        self.rates = rates

    def start(self) -> None:
        reason = fuse_unavailable()
        if reason:
            raise ChaosSetupError(f"--faults {self.faults} needs FUSE: {reason}")
        args = _fault_args(self.faults, self.rates)
        known = latencyfs_options()
        if self.faults != "fuse":
            wanted = [a for a in args if a.startswith("--")] + ["--faults-off-file", "--audit", "--seed"]
            missing = [a for a in wanted if a not in known]
            if missing:
                raise ChaosSetupError(
                    f"{LATENCYFS} does not support {', '.join(missing)} yet (its --help lists "
                    f"{', '.join(sorted(known)) or 'nothing'}); use --faults none or fuse"
                )
            self.off_file.write_text("faults off while the home is created\n")
        self.source.mkdir(parents=True, exist_ok=True)
        for i, (key, mnt) in enumerate(self.mnt.items()):
            mnt.mkdir(parents=True, exist_ok=True)
            # the audit (every mutating operation, one line each) is evidence for the report
            extra = ["--audit", str(self.audit[key])] if "--audit" in known else []
            if self.faults != "fuse":
                extra += ["--faults-off-file", str(self.off_file), "--seed", str(self.seed * 2 + i)]
            log = open(self.logs[key], "w")  # noqa: SIM115 - closed once the process ends (stop)
            self.procs[key] = subprocess.Popen(
                [sys.executable, str(LATENCYFS), str(self.source), str(mnt), *args, *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
        deadline = time.monotonic() + 20
        for key, mnt in self.mnt.items():
            while not os.path.ismount(mnt):
                proc = self.procs[key]
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = _tail(self.logs[key], 1500)
                    self.stop()
                    raise ChaosSetupError(f"latencyfs mount {mnt} failed: {tail}")
                time.sleep(0.05)

    def faults_on(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.off_file.unlink()

    def faults_off(self) -> None:
        if self.faults != "fuse":
            self.off_file.write_text("faults off for the checks\n")

    def counts(self) -> dict[str, int]:
        """Injected faults by kind, summed over both mounts, from the audit files (best effort)."""
        out: dict[str, int] = {}
        for path in self.audit.values():
            try:
                text = path.read_text(errors="replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                kind = _audit_kind(line)
                if kind:
                    out[kind] = out.get(kind, 0) + 1
        return out

    def stop(self) -> None:
        for mnt in self.mnt.values():
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def _audit_kind(line: str) -> str | None:
    """The injected fault one audit line records (latencyfs ``--audit``: ``<time_ns> <tgid>
    <tid> <op> <path> [<path2>] <result>``): "lost-reply", "estale", or None."""
    fields = line.split()
    if len(fields) < 6:
        return None
    result = fields[-1]
    if result == "lost":
        return "lost-reply"
    if result == "ESTALE":
        return "estale"
    return None


# ----------------------------------------------------------------------------- processes
@dataclasses.dataclass
class Proc:
    role: str  # "coordinator" or "worker"
    name: str
    popen: subprocess.Popen
    log: Path
    started: float
    #: SIGKILLed or SIGTERMed by the harness: its exit is expected
    ended_by_us: bool = False
    paused_until: float | None = None
    worker_id: str | None = None
    killed: bool = False


class Fleet:
    """The coordinator and workers, as processes of their own (each its own session)."""

    def __init__(
        self,
        scratch: Path,
        coordinator_home: str,
        worker_home: str,
        *,
        workers: int,
        slots: int,
        token: str,
        standby: bool = False,
    ):
        self.scratch = scratch
        self.logs = scratch / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.coordinator_home = coordinator_home
        self.worker_home = worker_home
        self.n_workers = workers
        self.slots = slots
        self.standby = standby
        self.procs: list[Proc] = []
        self.counter = {"coordinator": 0, "worker": 0}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("TUIFLOW_")}
        self.env.update({"PYTHONUNBUFFERED": "1", "CHAOS_RUN_TOKEN": token})
        self.unexpected: list[tuple[Proc, int]] = []
        #: worker ids of workers the harness killed (their heartbeats must end as .dead)
        self.killed_worker_ids: list[str] = []

    def command(self, *args: str, home: str) -> list[str]:
        return [sys.executable, "-m", "tuiflow", *args, "--home", home]

    def _start(self, role: str) -> Proc:
        self.counter[role] += 1
        n = self.counter[role]
        name = f"{role}-{n}"
        log = self.logs / f"{name}.log"
        if role == "coordinator":
            cmd = self.command("coordinator", "--wait", home=self.coordinator_home)
            worker_id = None
        else:
            worker_id = f"chaos-w{n}-{secrets.token_hex(2)}"
            cmd = self.command(
                "worker",
                "--queue",
                "default",
                "--slots",
                str(self.slots),
                "--id",
                worker_id,
                home=self.worker_home,
            )
        f = open(log, "w")  # noqa: SIM115 - the child holds its own copy
        try:
            popen = subprocess.Popen(
                cmd,
                stdout=f,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.scratch,
                env=self.env,
                start_new_session=True,
            )
        finally:
            f.close()
        proc = Proc(role, name, popen, log, time.monotonic(), worker_id=worker_id)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        self._start("coordinator")
        if self.standby:
            self._start("coordinator")
        for _ in range(self.n_workers):
            self._start("worker")

    def live(self, role: str | None = None) -> list[Proc]:
        return [
            p for p in self.procs if p.popen.poll() is None and not p.ended_by_us and role in (None, p.role)
        ]

    def kill(self, proc: Proc) -> None:
        """SIGKILL `proc` (a paused one too) and start its replacement."""
        proc.ended_by_us = True
        proc.killed = True
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGKILL)
        if proc.paused_until is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGCONT)
            proc.paused_until = None
        proc.popen.wait(10)
        if proc.worker_id:
            self.killed_worker_ids.append(proc.worker_id)
        self._start(proc.role)

    def pause(self, proc: Proc, seconds: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGSTOP)
        proc.paused_until = time.monotonic() + seconds

    def tick(self) -> None:
        """Resume pauses that are due; replace processes that exited on their own."""
        now = time.monotonic()
        for proc in list(self.procs):
            if proc.paused_until is not None and now >= proc.paused_until:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGCONT)
                proc.paused_until = None
            if not proc.ended_by_us and proc.popen.poll() is not None:
                proc.ended_by_us = True  # noted once
                self.unexpected.append((proc, proc.popen.returncode))
                if proc.worker_id:
                    self.killed_worker_ids.append(proc.worker_id)  # its heartbeat stays behind too
                self._start(proc.role)

    def resume_all(self) -> None:
        for proc in self.procs:
            if proc.paused_until is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGCONT)
                proc.paused_until = None

    def stop(self, role: str, timeout: float = 20.0) -> list[str]:
        """SIGTERM every live process of `role` (workers drain); returns the names of those
        that had to be SIGKILLed after `timeout` seconds."""
        self.resume_all()
        stubborn = []
        group = self.live(role)
        for proc in group:
            proc.ended_by_us = True
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in group:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                stubborn.append(f"{proc.name} (pid {proc.popen.pid})")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(10)
        return stubborn

    def worker_ids(self) -> list[str]:
        return [p.worker_id for p in self.procs if p.worker_id]

    def kill_everything(self) -> None:
        """Last resort (an exception): SIGKILL every process group this fleet started."""
        for proc in self.procs:
            if proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGCONT)
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(10)

    def tails(self, chars: int = 1500) -> dict[str, str]:
        return {p.name: _tail(p.log, chars) for p in self.procs}


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chars))
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"<{e}>"


def leftover_processes(token: str) -> list[tuple[int, str]]:
    """Processes whose environment carries this run's token (descendants of the fleet)."""
    needle = f"CHAOS_RUN_TOKEN={token}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            if needle not in env.split(b"\0"):
                continue
            with open(f"/proc/{entry}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # a zombie waiting for its parent: dead
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out.append((int(entry), cmd))
    return out


# -------------------------------------------------------------------------------- checks
class Checker:
    """Reads a stopped home (through the source directory: no faults) and lists violations."""

    def __init__(
        self,
        home_root: str,
        violations: list[Violation],
        warnings: list[str],
        pids: dict[int, str] | None = None,
    ):
        self.root = home_root
        self.violations = violations
        self.warnings = warnings
        #: pid -> what the harness knows of that process ("worker-3, SIGKILLed")
        self.pids = pids or {}

    def owner(self, path: str) -> str:
        """Who left a temp or lock file: the pid in a temp name, or in a lock marker."""
        name = os.path.basename(path)
        m = _TEMP_RE.match(name)
        pid = int(m.group(1)) if m else None
        if pid is None and name.endswith(".lock"):
            with contextlib.suppress(OSError, ValueError):
                words = Path(path).read_text(errors="replace").split()
                pid = next(int(w) for w in words if w.isdigit())
        if pid is None:
            return "owner unknown"
        return f"pid {pid}: {self.pids.get(pid, 'not a fleet process')}"

    def bad(self, kind: str, message: str) -> None:
        self.violations.append(Violation(kind, message))

    # -- the whole tree
    def check_files(self) -> None:
        # What SIGKILLed writers left is the janitor's (the coordinator runs it at start and
        # every JANITOR_INTERVAL): run it now, then nothing may be left.
        remove_stale_temps([d for d, _, _ in os.walk(self.root)])
        locks, temps, hidden = [], [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in filenames + dirnames:
                rel = os.path.relpath(os.path.join(dirpath, name), self.root)
                if name.endswith(".lock"):
                    locks.append(f"{rel} ({self.owner(os.path.join(dirpath, name))})")
                elif name.startswith(".tmp."):
                    temps.append(f"{rel} ({self.owner(name)})")
                elif name.startswith(".fuse_hidden") or name.startswith(".nfs"):
                    hidden.append(rel)
                elif name.startswith(".") and name not in (".", ".."):
                    temps.append(rel)
        if locks:
            self.bad("lock-left", f"{len(locks)} lock file(s) left: {_few(locks)}")
        if temps:
            self.bad("temp-left", f"{len(temps)} temp/hidden file(s) left: {_few(temps)}")
        if hidden:
            self.warnings.append(f"{len(hidden)} silly-renamed file(s) left: {_few(hidden)}")

    # -- layout, queues
    def check_layout(self) -> Home | None:
        try:
            return Home.open(self.root, create=False)
        except Exception as e:
            self.bad("undecodable", f"layout.json: {type(e).__name__}: {e}")
            return None

    def queue_roots(self) -> list[str]:
        roots = [f"{self.root}/completions", f"{self.root}/control"]
        with contextlib.suppress(FileNotFoundError):
            roots += [f"{self.root}/queues/{n}" for n in sorted(os.listdir(f"{self.root}/queues"))]
        return roots

    def queue_contents(self, qroot: str) -> dict[str, list[str]]:
        """Non-dot entries of ready/*, delayed/, claimed/*/ and dead/ (read only)."""
        out: dict[str, list[str]] = {}

        def names(d: str) -> list[str]:
            try:
                return sorted(n for n in os.listdir(d) if not n.startswith("."))
            except (FileNotFoundError, NotADirectoryError):
                return []

        for shard in names(f"{qroot}/ready"):
            for n in names(f"{qroot}/ready/{shard}"):
                out.setdefault("ready", []).append(f"{shard}/{n}")
        for n in names(f"{qroot}/delayed"):
            out.setdefault("delayed", []).append(n)
        for w in names(f"{qroot}/claimed"):
            for n in names(f"{qroot}/claimed/{w}"):
                out.setdefault("claimed", []).append(f"{w}/{n}")
        for n in names(f"{qroot}/dead"):
            out.setdefault("dead", []).append(n)
        return out

    def check_queues(self) -> None:
        for qroot in self.queue_roots():
            rel = os.path.relpath(qroot, self.root)
            try:
                meta = json.loads(Path(qroot, "queue.json").read_bytes())
                if meta.get("version") != 1 or not isinstance(meta.get("shards"), int):
                    raise ValueError(f"unexpected content {meta!r}")
            except FileNotFoundError:
                continue  # never used
            except (OSError, ValueError) as e:
                self.bad("undecodable", f"{rel}/queue.json: {e}")
            for where, items in self.queue_contents(qroot).items():
                kind = "poison" if where == "dead" else "queue-not-empty"
                detail = ""
                if where == "dead":
                    reasons = []
                    for n in items:
                        if n.endswith(".reason.json"):
                            with contextlib.suppress(OSError, ValueError):
                                reasons.append(json.loads(Path(qroot, "dead", n).read_bytes()).get("reason"))
                    detail = f"; reasons: {_few([str(r) for r in reasons])}"
                self.bad(kind, f"{rel}/{where}/ holds {len(items)} entr(ies): {_few(items)}{detail}")

    # -- heartbeats, lease
    def check_heartbeats(self, killed: Iterable[str]) -> None:
        from spool.liveness import decode

        wdir = f"{self.root}/workers"
        try:
            names = sorted(os.listdir(wdir))
        except FileNotFoundError:
            names = []
        for name in names:
            if name.startswith("."):
                continue
            path = f"{wdir}/{name}"
            try:
                decode(Path(path).read_bytes(), path)
            except Exception as e:
                self.bad("undecodable", f"workers/{name}: {e}")
        present = set(names)
        for wid in killed:
            if f"{wid}.hb" in present:
                self.bad(
                    "worker-not-declared-dead",
                    f"worker {wid} was SIGKILLed but its heartbeat workers/{wid}.hb is still live "
                    "(the coordinator never declared it dead)",
                )
            elif f"{wid}.dead" not in present:
                self.warnings.append(
                    f"killed worker {wid} left no heartbeat record (killed before its first beat?)"
                )
        killed_set = set(killed)
        for name in names:
            if name.endswith(".hb") and name[:-3] not in killed_set:
                self.bad(
                    "heartbeat-left",
                    f"workers/{name}: the worker exited after SIGTERM but its heartbeat remains "
                    "(not removed, and never declared dead by the coordinator)",
                )

    def check_lease(self) -> None:
        from spool import lease as lease_mod
        from spool.lease import Lease

        ldir = f"{self.root}/coordinator/lease"
        try:
            entries = sorted(n for n in os.listdir(ldir) if not n.startswith("."))
        except FileNotFoundError:
            self.bad("lease", "coordinator/lease/ does not exist")
            return
        for n in entries:
            try:
                value = json.loads(Path(ldir, n).read_bytes())
                if not isinstance(value, dict):
                    raise ValueError("not an object")
            except (OSError, ValueError) as e:
                self.bad("undecodable", f"coordinator/lease/{n}: {e}")
        # The lease keeps some history below its head (spool.lease.KEEP; none in older layouts).
        keep = getattr(lease_mod, "KEEP", 0)
        if len(entries) > keep + 2:
            self.warnings.append(
                f"coordinator/lease/ holds {len(entries)} entries (at most {keep + 1} expected): {_few(entries)}"
            )
        try:
            info = Lease(ldir, "chaos-inspector").inspect()
        except Exception as e:
            self.bad("undecodable", f"lease inspect: {type(e).__name__}: {e}")
            return
        if info is not None and info.held:
            self.bad(
                "lease-held", f"the lease is still held by {info.holder} after every coordinator stopped"
            )

    # -- workflows
    def check_workflow(self, home: Home, wf_id: str, plan: WorkflowPlan, result: ChaosResult) -> None:
        from tuiflow.engine.runstate import STATE_NAMES
        from tuiflow.engine.store import WorkflowStore

        store = WorkflowStore(home)
        try:
            run, _version = store.load_run(wf_id)
        except Exception as e:
            self.bad("undecodable", f"workflow {wf_id} definition/state: {type(e).__name__}: {e}")
            result.workflows.append(
                WorkflowOutcome(wf_id, plan.name, plan.expected_state, None, len(plan.tasks))
            )
            return
        result.workflows.append(WorkflowOutcome(wf_id, plan.name, plan.expected_state, run.state, len(run)))
        result.duplicates_ignored += int(run.stats.get("duplicates_ignored", 0))
        wf = f"{plan.name} ({wf_id})"
        try:
            summary = store.summary(wf_id)
        except Exception as e:
            self.bad("undecodable", f"{wf} summary: {type(e).__name__}: {e}")
            summary = None
        if summary is None:
            self.bad("summary", f"{wf}: no summary record")
        elif summary.get("state") != run.state or summary.get("counts") != run.count_dict():
            self.bad(
                "summary-stale",
                f"{wf}: summary says {summary.get('state')} {summary.get('counts')}, "
                f"the state {run.state} {run.count_dict()}",
            )
        if run.state != plan.expected_state:
            self.bad("workflow-state", f"{wf} ended {run.state}, expected {plan.expected_state}")
        names = [t.name for t in run.definition.tasks]
        if set(names) != set(plan.tasks):
            self.bad("definition", f"{wf}: the stored definition's tasks differ from the plan")
            return
        wrong = []
        completed = 0
        for i, name in enumerate(names):
            state = STATE_NAMES[run.st[i]]
            completed += state == "completed"
            tp = plan.tasks[name]
            want = plan.expected_tasks[name]
            if state != want:
                wrong.append(
                    f"{name}: {state} (expected {want}; attempt {run.attempt[i]}, "
                    f"worker {run.worker.get(i)}, reason {run.reason.get(i)!r})"
                )
                continue
            if state == "completed" and tp.output is not None and run.output(i) != tp.output:
                self.bad("output", f"{wf} {name}: output {run.output(i)!r}, expected {tp.output!r}")
            budget = run.attempt[i] - run.retry_base.get(i, 0)
            if budget > tp.num_retries:
                self.bad(
                    "attempts",
                    f"{wf} {name}: attempt {run.attempt[i]} (retry base {run.retry_base.get(i, 0)}) "
                    f"exceeds num_retries {tp.num_retries}",
                )
            if state == "completed" and run.attempt[i] < tp.min_attempt:
                self.bad(
                    "attempts",
                    f"{wf} {name}: completed on attempt {run.attempt[i]}, but attempts < {tp.min_attempt} fail",
                )
            if state == "failed" and budget != tp.num_retries:
                self.bad(
                    "attempts",
                    f"{wf} {name}: failed on attempt {run.attempt[i]} with {tp.num_retries} retries allowed",
                )
        if wrong:
            self.bad("task-state", f"{wf}: {len(wrong)} task(s) in the wrong final state: {_few(wrong, 8)}")
        applied = int(run.stats.get("completions_applied", -1))
        if applied != completed:
            self.bad(
                "exactly-once",
                f"{wf}: completions_applied = {applied} but {completed} tasks completed "
                f"(stats {dict(run.stats)})",
            )
        self.check_spans(home, wf_id, wf, run, names, plan, result)

    def check_spans(
        self,
        home: Home,
        wf_id: str,
        wf: str,
        run: Any,
        names: list[str],
        plan: WorkflowPlan,
        result: ChaosResult,
    ) -> None:
        from tuiflow.engine.runstate import STATE_NAMES

        reader = SpanReader(roots_only=True)
        # (task, attempt) -> list of (writer is a worker, outcome, status, start, end)
        spans: dict[tuple[str, int], list[tuple[bool, str, str, float, float]]] = {}
        workflow_spans = []
        wf_dir = f"{home.workflows_dir}/{wf_id}"
        for rec in reader.iter_workflow(wf_dir):
            attrs = rec.attrs or {}
            if rec.name == c.WORKFLOW_SPAN:
                workflow_spans.append(attrs.get(c.ATTR_OUTCOME))
                continue
            if rec.name != c.TASK_SPAN:
                continue
            task, attempt = attrs.get(c.ATTR_TASK), attrs.get(c.ATTR_ATTEMPT)
            if not isinstance(task, str) or not isinstance(attempt, int):
                self.bad("span", f"{wf}: a task span without task/attempt attributes: {attrs}")
                continue
            writer = str(attrs.get(c.ATTR_WORKER, ""))
            by_worker = not writer.startswith("coordinator-")
            if not (rec.end and rec.end >= rec.start > 0):
                self.bad(
                    "span-open",
                    f"{wf} {task} attempt {attempt}: root span not closed ({rec.start}..{rec.end})",
                )
            spans.setdefault((task, attempt), []).append(
                (by_worker, str(attrs.get(c.ATTR_OUTCOME)), rec.status, rec.start, rec.end)
            )
        st = reader.stats
        if st.lines_skipped or st.files_unreadable:
            self.bad(
                "span-file",
                f"{wf}: {st.lines_skipped} unparsable span line(s), {st.files_unreadable} unreadable file(s): "
                f"{_few(st.examples)}",
            )
        if run.state in _TERMINAL_WF and not workflow_spans:
            self.bad("span-missing", f"{wf}: no workflow span")
        elif workflow_spans and run.state not in workflow_spans:
            self.bad("span", f"{wf}: workflow span outcome(s) {workflow_spans}, state {run.state}")
        if len(workflow_spans) > 1:
            self.warnings.append(f"{wf}: {len(workflow_spans)} workflow spans ({workflow_spans})")
        index = {n: i for i, n in enumerate(names)}
        missing, impossible, unapplied = [], [], []
        for (task, attempt), recs in spans.items():
            i = index.get(task)
            if i is None or attempt > run.attempt[i]:
                impossible.append(
                    f"{task} attempt {attempt} (state attempt {run.attempt[i] if i is not None else '-'})"
                )
                continue
            workers = [r for r in recs if r[0]]
            result.executions += len(workers)
            result.reruns += max(0, len(workers) - 1)
            lost = [r for r in recs if not r[0] and r[1] == "lost"]
            if lost:
                result.lost_attempts += 1
            if len(lost) > 1:
                self.warnings.append(f"{wf} {task} attempt {attempt}: {len(lost)} 'lost' spans")
            outcomes = {r[1] for r in recs}
            if attempt < run.attempt[i] and outcomes == {"completed"}:
                unapplied.append(f"{task} attempt {attempt}")
        for i, name in enumerate(names):
            state = STATE_NAMES[run.st[i]]
            if state not in ("completed", "failed") and not run.ready_at[i]:
                continue  # never became ready (skipped by condition, upstream_failed, pending)
            # the current attempt of a task still ready or running has not ended (a hang says so)
            ended = run.attempt[i] + 1 if state in _TERMINAL_TASK else run.attempt[i]
            for attempt in range(ended):
                recs = spans.get((name, attempt))
                if not recs:
                    missing.append(f"{name} attempt {attempt} (task {state}, attempt {run.attempt[i]})")
            recs = spans.get((name, run.attempt[i]), [])
            if state == "completed" and not any(r[0] and r[1] == "completed" for r in recs):
                self.bad(
                    "span",
                    f"{wf} {name}: completed on attempt {run.attempt[i]} but no worker span of that attempt "
                    f"says completed ({[r[1] for r in recs]})",
                )
            if state == "failed" and recs and all(r[1] == "completed" for r in recs):
                self.bad(
                    "span", f"{wf} {name}: failed, but every span of attempt {run.attempt[i]} says completed"
                )
        if missing:
            self.bad(
                "span-missing", f"{wf}: {len(missing)} attempt(s) without a root span: {_few(missing, 8)}"
            )
        if impossible:
            self.bad("span-impossible", f"{wf}: spans of attempts the state never had: {_few(impossible, 8)}")
        if unapplied:
            self.bad(
                "completion-lost",
                f"{wf}: attempt(s) that completed (no error or lost span) yet were retried: {_few(unapplied, 8)}",
            )
        for (task, attempt), recs in spans.items():
            i = index.get(task)
            if i is None:
                continue
            failed = [r for r in recs if r[0] and r[1] not in ("completed", "None")]
            tp = plan.tasks[task]
            if failed and tp.intrinsic == "ok" and not tp.min_attempt:
                self.warnings.append(
                    f"{wf} {task} attempt {attempt}: a task that cannot fail failed on a worker ({failed[0][1]})"
                )


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... (+{len(items) - n})" if len(items) > n else "")


# ---------------------------------------------------------------------------------- run
def _progress(store: Any, ids: list[str]) -> tuple[int, int, dict[str, str]]:
    """(terminal tasks, total tasks, wf id -> state) read from the state records."""
    done = total = 0
    states: dict[str, str] = {}
    for wf_id in ids:
        try:
            run, _ = store.load_run(wf_id)
        except Exception:
            continue
        counts = run.count_dict()
        total += len(run)
        done += sum(v for k, v in counts.items() if k in _TERMINAL_TASK)
        states[wf_id] = run.state
    return done, total, states


def _stuck_detail(store: Any, ids: list[str], fleet: Fleet) -> str:
    from tuiflow.engine.runstate import STATE_NAMES

    live_workers = {p.worker_id for p in fleet.live("worker")}
    parts = []
    for wf_id in ids:
        try:
            run, _ = store.load_run(wf_id)
        except Exception as e:
            parts.append(f"{wf_id}: unreadable ({e})")
            continue
        stuck = []
        for i, t in enumerate(run.definition.tasks):
            s = STATE_NAMES[run.st[i]]
            if s not in _TERMINAL_TASK:
                w = run.worker.get(i)
                alive = "" if w is None else (" (alive)" if w in live_workers else " (not alive)")
                stuck.append(f"{t.name} {s} attempt {run.attempt[i]} worker {w}{alive}")
        parts.append(f"{wf_id} {run.state} {run.count_dict()}: {_few(stuck, 8)}")
    return "; ".join(parts)


def _quiet(checker: Checker, home_root: str, killed: list[str]) -> bool:
    for qroot in checker.queue_roots():
        contents = checker.queue_contents(qroot)
        if any(k != "dead" for k in contents):
            return False
    return all(not os.path.exists(f"{home_root}/workers/{wid}.hb") for wid in killed)


def run_chaos(
    base_dir: str | os.PathLike[str] | None = None,
    *,
    tasks: int = 300,
    kills: int = 5,
    faults: str = "none",
    workers: int = 3,
    slots: int = 2,
    seed: int | None = None,
    pauses: int = 0,
    task_ms: float = 100.0,
    timeout: float | None = None,
    rates: dict[str, float] | None = None,
    log: Callable[[str], None] | None = None,
) -> ChaosResult:
    """Run the engine under chaos in `base_dir` (a fresh temp dir if None) and check it.

    Layout of `base_dir`: ``home/`` (faults none) or ``source/home`` seen through
    ``mnt-a/home`` and ``mnt-b/home`` (FUSE); ``scratch/`` holds the workflows, the
    process logs and the report. Raises ChaosSetupError when the run cannot be set up.
    """
    if faults not in FAULT_MODES:
        raise ValueError(f"faults must be one of {', '.join(FAULT_MODES)}")
    say = log or (lambda _msg: None)
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    base = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="tuiflow-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    base = base.resolve()
    scratch = base / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    retries = max(20, kills + pauses + 5)
    plans = build_workflows(scratch / "workflows", tasks, retries, task_ms)
    timeout = timeout if timeout is not None else 120 + tasks * 0.06 + kills * 4 + pauses * 4
    result = ChaosResult(tasks=tasks, faults=faults, kills_requested=kills, seed=seed, scratch=str(scratch))
    token = secrets.token_hex(8)

    mounts: Mounts | None = None
    if faults == "none":
        truth = coord_home = worker_home = str(base / "home")
        Home.open(truth, settings=CHAOS_SETTINGS)
    else:
        mounts = Mounts(base, scratch, faults, seed, rates or {})
        mounts.start()
        truth = str(mounts.source / "home")
        coord_home = str(mounts.mnt["a"] / "home")
        worker_home = str(mounts.mnt["b"] / "home")
    result.home = truth
    fleet = Fleet(
        scratch, coord_home, worker_home, workers=workers, slots=slots, token=token, standby=pauses > 0
    )
    t0 = time.monotonic()
    try:
        if mounts is not None:
            Home.open(coord_home, settings=CHAOS_SETTINGS)
            mounts.faults_on()
        say(f"chaos: seed {seed}, home {truth}, scratch {scratch}")
        wf_plans = _drive(fleet, plans, truth, coord_home, result, rng, kills, pauses, timeout, say)
    except BaseException:
        fleet.kill_everything()
        if mounts is not None:
            mounts.stop()
        raise
    try:
        # Workers first (they drain). One that stopped abnormally (it held something it
        # could not settle) leaves its heartbeat to expire, for the coordinator to clean up
        # after it: give the coordinator that time before it is stopped too.
        stubborn = fleet.stop("worker")
        quiet_deadline = time.monotonic() + max(10.0, CHAOS_SETTINGS.dead_after * 4)
        while time.monotonic() < quiet_deadline and any(
            os.path.exists(f"{truth}/workers/{wid}.hb") for wid in fleet.worker_ids()
        ):
            time.sleep(0.1)
        stubborn += fleet.stop("coordinator")
        if mounts is not None:
            mounts.faults_off()
            result.fault_counts = mounts.counts()
        if stubborn:
            result.violations.append(
                Violation("stop", f"did not stop within 20 s of SIGTERM (SIGKILLed): {', '.join(stubborn)}")
            )
        left = leftover_processes(token)
        grace = time.monotonic() + 5.0  # an executor may outlive its worker by a moment
        while left and time.monotonic() < grace:
            time.sleep(0.1)
            left = leftover_processes(token)
        if left:
            result.violations.append(
                Violation(
                    "orphan-process",
                    f"{len(left)} process(es) left behind: {_few([f'{p} {c}' for p, c in left])}",
                )
            )
            for pid, _ in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _check(truth, wf_plans, result, fleet)
        _scan_logs(fleet, result)
    finally:
        fleet.kill_everything()
        if mounts is not None:
            mounts.stop()
    result.elapsed = time.monotonic() - t0
    if not result.ok:
        result.log_tails = fleet.tails()
    report = scratch / "chaos-report.txt"
    report.write_text(result.report())
    result.report_path = str(report)
    return result


def _drive(
    fleet: Fleet,
    plans: list[WorkflowPlan],
    truth: str,
    submit_home: str,
    result: ChaosResult,
    rng: random.Random,
    kills: int,
    pauses: int,
    timeout: float,
    say: Callable[[str], None],
) -> dict[str, WorkflowPlan]:
    """Start the fleet, submit, kill and pause until every workflow is terminal (or the
    timeout: a "hang" violation), then wait for the home to go quiet. Returns id -> plan."""
    from tuiflow.engine.store import WorkflowStore

    fleet.start()
    ids: list[str] = []
    for plan in plans:
        for attempt in range(3):
            r = subprocess.run(
                fleet.command("submit", str(plan.path), home=submit_home),
                capture_output=True,
                text=True,
                cwd=fleet.scratch,
                env=fleet.env,
                timeout=120,
                check=False,
            )
            if r.returncode == 0 and r.stdout.strip():
                ids.append(r.stdout.strip().splitlines()[-1])
                break
            result.violations.append(
                Violation(
                    "submit",
                    f"submit of {plan.name} (try {attempt + 1}) failed ({r.returncode}): {r.stderr[-400:]}",
                )
            )
        else:
            raise ChaosSetupError(f"could not submit {plan.name}")
    wf_plans = dict(zip(ids, plans, strict=True))
    (fleet.scratch / "workflow-ids.json").write_text(json.dumps({k: v.name for k, v in wf_plans.items()}))
    say(f"chaos: submitted {', '.join(f'{p.name}={i}' for i, p in wf_plans.items())}")

    # Kills at random points of the progress, spread over the run; at least one of each
    # kind when there are two or more.
    roles = ["coordinator" if rng.random() < 0.3 else "worker" for _ in range(kills)]
    if kills >= 2:
        if "coordinator" not in roles:
            roles[rng.randrange(kills)] = "coordinator"
        if "worker" not in roles:
            roles[next(i for i, r in enumerate(roles) if r == "coordinator")] = "worker"
    kill_points = sorted(rng.uniform(0.02, 0.9) for _ in range(kills))
    pause_points = sorted(rng.uniform(0.02, 0.9) for _ in range(pauses))
    plan_kills = list(zip(kill_points, roles, strict=True))
    store = WorkflowStore(Home.open(truth, create=False))
    deadline = time.monotonic() + timeout
    last_action = 0.0
    min_gap = 0.25
    last_done, last_move = -1, time.monotonic()
    while True:
        fleet.tick()
        done, total, states = _progress(store, ids)
        now = time.monotonic()
        if done != last_done:
            last_done, last_move = done, now
        result.longest_stall = max(result.longest_stall, now - last_move)
        if len(states) == len(ids) and all(s in _TERMINAL_WF for s in states.values()):
            break
        frac = done / total if total else 0.0
        if now > deadline:
            result.violations.append(
                Violation(
                    "hang",
                    f"the workflows were not terminal after {timeout:.0f} s: {_stuck_detail(store, ids, fleet)}",
                )
            )
            return wf_plans
        if now - last_action >= min_gap:
            if plan_kills and frac >= plan_kills[0][0]:
                _, role = plan_kills.pop(0)
                victims = fleet.live(role)
                if victims:
                    victim = rng.choice(victims)
                    say(f"chaos: {done}/{total} done: SIGKILL {victim.name}")
                    fleet.kill(victim)
                    if role == "worker":
                        result.worker_kills += 1
                    else:
                        result.coordinator_kills += 1
                last_action = now
            elif pause_points and frac >= pause_points[0]:
                pause_points.pop(0)
                victims = [p for p in fleet.live() if p.paused_until is None]
                if victims:
                    victim = rng.choice(victims)
                    seconds = rng.uniform(0.3, 3.0)
                    say(f"chaos: {done}/{total} done: SIGSTOP {victim.name} for {seconds:.1f} s")
                    fleet.pause(victim, seconds)
                    result.pauses += 1
                last_action = now
        time.sleep(0.05)
    fleet.resume_all()
    # Let the home go quiet: killed workers declared dead (their claims handled), stale
    # duplicates run and acknowledged. A home that never goes quiet is reported by the checks.
    checker = Checker(truth, [], [])
    quiet_deadline = time.monotonic() + max(10.0, CHAOS_SETTINGS.dead_after * 4)
    while time.monotonic() < quiet_deadline and not _quiet(checker, truth, fleet.killed_worker_ids):
        fleet.tick()
        time.sleep(0.1)
    say("chaos: every workflow is terminal; stopping the fleet")
    return wf_plans


def _check(truth: str, wf_plans: dict[str, WorkflowPlan], result: ChaosResult, fleet: Fleet) -> None:
    pids = {
        p.popen.pid: f"{p.name}, {'SIGKILLed by the harness' if p.killed else 'stopped by SIGTERM'}"
        for p in fleet.procs
    }
    checker = Checker(truth, result.violations, result.warnings, pids)
    for proc, rc in fleet.unexpected:
        text = _tail(proc.log, 4000)
        deposed = proc.role == "coordinator" and any(
            m in text for m in ("lost the coordinator lease", "was taken over", "DeposedError")
        )
        msg = f"{proc.name} exited on its own with status {rc}: {' '.join(text[-600:].split())}"
        if deposed and result.pauses:
            result.warnings.append(msg)
        else:
            result.violations.append(Violation("crash", msg))
    home = checker.check_layout()
    if home is not None:
        for wf_id, plan in wf_plans.items():
            checker.check_workflow(home, wf_id, plan, result)
        try:
            others = sorted(set(os.listdir(home.workflows_dir)) - set(wf_plans))
        except FileNotFoundError:
            others = []
        if others:
            result.violations.append(
                Violation("extra-workflow", f"workflows nobody submitted successfully: {others}")
            )
    checker.check_queues()
    checker.check_heartbeats(fleet.killed_worker_ids)
    checker.check_lease()
    checker.check_files()


def _scan_logs(fleet: Fleet, result: ChaosResult) -> None:
    """Tracebacks in any process log are violations (with the exception line); ERROR
    lines are warnings."""
    for proc in fleet.procs:
        try:
            text = proc.log.read_text(errors="replace")
        except OSError:
            continue
        errors = [ln.strip() for ln in text.splitlines() if " ERROR " in ln]
        if errors:
            result.warnings.append(f"{proc.name}: {len(errors)} ERROR line(s): {_few(errors, 3)}")
        # Ready-repair found a ready task whose message was nowhere: a message was lost (the
        # repair re-queues it, after `repair_after` seconds of the task waiting for nothing).
        repaired = [ln.strip() for ln in text.splitlines() if "its message is missing" in ln]
        if repaired:
            result.violations.append(
                Violation("message-lost", f"{proc.name} had to re-queue {len(repaired)}: {_few(repaired, 3)}")
            )
        # A coordinator that took over queues what its predecessor decided (and wrote) but
        # did not queue before it was killed or deposed: the designed recovery, counted.
        result.takeover_requeues += sum("which did not queue it" in ln for ln in text.splitlines())
        if "Traceback (most recent call last)" not in text:
            continue
        blocks = text.split("Traceback (most recent call last):")[1:]
        lasts = []
        for b in blocks:
            lines = [ln for ln in b.splitlines() if ln.strip()]
            exc = next((ln for ln in lines if not ln.startswith(" ") and not ln.startswith("During")), "?")
            lasts.append(exc.strip()[:200])
        result.violations.append(
            Violation("traceback", f"{proc.name}: {len(blocks)} traceback(s): {_few(sorted(set(lasts)), 4)}")
        )


# ---------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Run the engine as real processes, SIGKILL them at random, check the invariants."
    )
    ap.add_argument("--tasks", type=int, default=300, help=f"tasks in all (two workflows; >= {MIN_TASKS})")
    ap.add_argument("--kills", type=int, default=5, help="SIGKILLs of a worker or the coordinator")
    ap.add_argument(
        "--faults", choices=FAULT_MODES, default="none", help="where the home lives / what is injected"
    )
    ap.add_argument("--home-dir", help="base directory (default: a new temp dir, removed when OK)")
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--seed", type=int)
    ap.add_argument(
        "--pauses", type=int, default=0, help="SIGSTOP/SIGCONT pauses of 0.3-3 s (adds a standby coordinator)"
    )
    ap.add_argument("--task-ms", type=float, default=100.0, help="mean sleep of a fan-out task (ms)")
    ap.add_argument("--timeout", type=float, help="seconds before the run counts as hung")
    ap.add_argument("--lost-reply", type=float, default=LOST_REPLY_RATE, help="lost-reply rate (FUSE)")
    ap.add_argument("--estale", type=float, default=ESTALE_RATE, help="ESTALE rate (FUSE)")
    ap.add_argument("--negative-cache", type=float, default=NEGATIVE_CACHE_S, help="seconds (FUSE)")
    ap.add_argument("--latency-ms", type=float, default=LATENCY_MS, help="per metadata op (FUSE)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir even when OK")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress and the full report on stderr")
    args = ap.parse_args(argv)
    base = Path(args.home_dir) if args.home_dir else Path(tempfile.mkdtemp(prefix="tuiflow-chaos-"))
    rates = {
        "lost_reply": args.lost_reply,
        "estale": args.estale,
        "negative_cache": args.negative_cache,
        "latency_ms": args.latency_ms,
    }
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if args.verbose else None
    try:
        result = run_chaos(
            base,
            tasks=args.tasks,
            kills=args.kills,
            faults=args.faults,
            workers=args.workers,
            slots=args.slots,
            seed=args.seed,
            pauses=args.pauses,
            task_ms=args.task_ms,
            timeout=args.timeout,
            rates=rates,
            log=say,
        )
    except (ChaosSetupError, ValueError) as e:
        print(f"chaos: cannot run: {e}", flush=True)
        if not args.home_dir and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        return 2
    if args.verbose:
        print(result.report(), file=sys.stderr, flush=True)
    print(result.summary_line(), flush=True)
    if result.ok and not args.home_dir and not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
