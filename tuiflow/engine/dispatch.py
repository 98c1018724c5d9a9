"""Queueing the attempts the run states decided: task messages, bundles, and what happens
to an attempt that cannot be queued.

Many tasks that became ready at once in one queue (a fan-out) travel in bundles: one
message of up to `bundle_max` task messages, so that a thousand short tasks cost a few
dozen message files rather than a thousand. Bundles are only made where they leave at
least `wire.BUNDLE_SPREAD` messages, so up to that many slots start at once; a worker hands
back what is left of a bundle when a task of it runs long (`workers.slots`). Model tasks
(`workers.models.merging`) that share a merge key travel together, whatever their number,
so that a worker can run them as merged batches. Delayed retries and other GPU tasks
always travel alone.

An attempt that cannot be queued (a template that fails, a message over the size limit)
fails as `setup`, with a closed error span, and does not spend a retry. A file system that
fails (full, read-only) fails no attempt: the coordinator waits until it works again.
"""

from __future__ import annotations

from collections.abc import Callable

from analyzer.contract import MODEL_EXECUTORS
from spool import DeposedError, SpoolError, SpoolQueue, StorageError, layout
from tuiflow.engine.expr import ExpressionError, MissingValue, Template, has_template, render_value, to_text
from tuiflow.engine.runstate import Action, Dispatch, RunState
from tuiflow.engine.spans import CoordinatorSpans, workflow_traceparent
from workers import wire
from workers.models.merging import merge_key
from workers.wire import Bundle, FailKind, TaskMessage


class Dispatcher:
    """Puts the task messages of `Dispatch` actions into their queues.

    Parameters:
        home_root: the home (inputs stored in files travel as paths in it).
        queue: the task queue of a name (the coordinator's, fenced by its lease).
        spans: where a setup failure's span goes.
        bundle_max: most tasks in one message (1: every task alone).
    """

    def __init__(
        self,
        home_root: str,
        queue: Callable[[str], SpoolQueue],
        spans: CoordinatorSpans,
        bundle_max: int = wire.BUNDLE_MAX,
    ):
        self.home_root = home_root
        self.queue = queue
        self.spans = spans
        self.bundle_max = bundle_max
        self.queued = 0  # task messages queued so far (bundle members counted one by one)

    def dispatch(self, wf_id: str, run: RunState, dispatches: list[Dispatch], now: float) -> list[Action]:
        """Queue the attempts; returns the actions of those that could not be queued.
        `now`: the coordinator's wall clock (the messages' `ready_at`)."""
        failed: list[Action] = []
        groups: dict[tuple[str, int], list[Dispatch]] = {}
        models: dict[tuple[str, int], list[Dispatch]] = {}
        for action in dispatches:
            t = run.definition.tasks[action.idx]
            if action.delay > 0:
                failed.extend(self._queue_tasks(wf_id, run, [action], 1, now, action.delay))
            elif t.executor in MODEL_EXECUTORS:
                models.setdefault((t.queue, t.priority), []).append(action)
            elif t.gpus:
                failed.extend(self._queue_tasks(wf_id, run, [action], 1, now))
            else:
                groups.setdefault((t.queue, t.priority), []).append(action)
        for actions in groups.values():
            size = wire.bundle_size(len(actions), self.bundle_max)
            failed.extend(self._queue_tasks(wf_id, run, actions, size, now))
        for actions in models.values():
            failed.extend(self._queue_mergeable(wf_id, run, actions, now))
        return failed

    def _queue_mergeable(
        self, wf_id: str, run: RunState, actions: list[Dispatch], now: float
    ) -> list[Action]:
        """Queue model tasks of one queue and priority: those of one merge key travel
        together, up to `bundle_max` to a message, for a worker to run as merged batches."""
        t = run.definition.tasks[actions[0].idx]
        failed: list[Action] = []
        by_key: dict[tuple | None, list[TaskMessage]] = {}
        for action in actions:  # rendered first: the key depends on the rendered `with`
            try:
                msg = self.message(wf_id, run, action.idx, action.attempt, now)
            except (ExpressionError, ValueError, TypeError) as e:
                failed.extend(self.not_queued(wf_id, run, action.idx, action.attempt, now, e))
                continue
            by_key.setdefault(merge_key(msg.executor, msg.spec, msg.gpus), []).append(msg)
        for key, messages in by_key.items():
            size = self.bundle_max if key is not None else 1
            for at in range(0, len(messages), size):
                failed.extend(self._put(wf_id, run, t.queue, t.priority, messages[at : at + size], now))
        return failed

    def _queue_tasks(
        self, wf_id: str, run: RunState, actions: list[Dispatch], size: int, now: float, delay: float = 0.0
    ) -> list[Action]:
        """Queue attempts of tasks of one queue and priority, `size` to a message."""
        t = run.definition.tasks[actions[0].idx]
        failed: list[Action] = []
        group: list[TaskMessage] = []
        # Messages are built as they are queued: a 100k fan-out never holds 100k of them.
        for k, action in enumerate(actions, 1):
            try:
                group.append(self.message(wf_id, run, action.idx, action.attempt, now))
            except (ExpressionError, ValueError, TypeError) as e:
                failed.extend(self.not_queued(wf_id, run, action.idx, action.attempt, now, e))
            if group and (len(group) == size or k == len(actions)):
                failed.extend(self._put(wf_id, run, t.queue, t.priority, group, now, delay))
                group = []
        return failed

    def _put(
        self,
        wf_id: str,
        run: RunState,
        queue: str,
        priority: int,
        messages: list[TaskMessage],
        now: float,
        delay: float = 0.0,
    ) -> list[Action]:
        first = messages[0]
        try:
            if len(messages) == 1:
                self.queue(queue).put(
                    first.to_wire(), priority=priority, msg_id=first.message_id, delay=delay
                )
            else:
                bundle = Bundle(tuple(messages))
                self.queue(queue).put(bundle.to_wire(), priority=priority, msg_id=bundle.message_id)
        except (DeposedError, StorageError):
            # The lease's fence refused the put (the coordinator stops), or the file system
            # failed (full, read-only: the coordinator waits and resumes from disk, where
            # the attempt is queued but its message missing, which repair puts right).
            raise
        except SpoolError as e:
            if len(messages) > 1:  # too large as one message, say: each on its own
                return [a for m in messages for a in self._put(wf_id, run, queue, priority, [m], now)]
            return self.not_queued(wf_id, run, first.idx, first.attempt, now, e)
        self.queued += len(messages)
        return []

    def not_queued(
        self, wf_id: str, run: RunState, idx: int, attempt: int, now: float, e: Exception
    ) -> list[Action]:
        """Fail an attempt that could not be queued (as `setup`: it spends no retry)."""
        error = f"could not start: {e}"
        self.spans.attempt_never_ran(wf_id, run, idx, attempt, now, "failed", error)
        return run.on_failed(idx, attempt, None, now, error=error, kind=FailKind.SETUP)

    def message(self, wf_id: str, run: RunState, idx: int, attempt: int, now: float) -> TaskMessage:
        """The task message of one attempt: templates rendered, inputs attached.

        Raises ExpressionError when a template fails (the attempt cannot start)."""
        d = run.definition
        t = d.tasks[idx]
        deps = d.deps[idx]
        inputs = None
        if deps:
            inputs = {}
            for dep in deps:
                name = d.tasks[dep].name
                if dep in run.output_refs:
                    inputs[name] = {"$ref": layout.resolve(self.home_root, run.output_refs[dep][0])}
                else:
                    inputs[name] = run.outputs.get(dep)
        return TaskMessage(
            wf=wf_id,
            idx=idx,
            task=t.name,
            attempt=attempt,
            executor=t.executor,
            # shared and never changed unless templated (then a rendered copy)
            spec=_rendered_spec(run, idx) if d.templated(idx) else t.spec,
            queue=t.queue,
            wf_name=d.name,
            base_dir=d.base_dir,
            timeout=t.timeout,
            gpus=t.gpus,
            deps=tuple(d.tasks[i].name for i in deps),
            inputs=inputs,
            ready_at=now,
            owner=d.owner,
            traceparent=workflow_traceparent(wf_id),
        )


def _rendered_spec(run: RunState, idx: int) -> dict:
    """A copy of task `idx`'s spec with its templates rendered from its inputs and params."""
    spec = dict(run.definition.tasks[idx].spec)
    env = run.env_for(idx)
    try:
        if "run" in spec:
            spec["run"] = Template(spec["run"]).render_command(env)
        if "argv" in spec:
            spec["argv"] = [to_text(Template(a).render(env)) if has_template(a) else a for a in spec["argv"]]
        for key in ("kwargs", "with"):
            if key in spec:
                spec[key] = render_value(spec[key], env)
        if "env" in spec:
            spec["env"] = {k: to_text(render_value(v, env)) for k, v in spec["env"].items()}
        if "cwd" in spec:
            spec["cwd"] = to_text(render_value(spec["cwd"], env))
    except MissingValue as e:
        raise ExpressionError(f"template refers to {e.path}, which does not exist") from None
    return spec
