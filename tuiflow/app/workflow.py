"""One workflow: its tasks, its DAG, and the analyses of its trace."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Footer, Header, Input, Static, TabbedContent, TabPane, Tree

from analyzer.fmt import fmt_rate, fmt_seconds, safe_text
from tuiflow.app.data import WorkflowSnapshot, dag_rows, load_workflow
from tuiflow.app.lists import DagView, TaskList, Timeline
from tuiflow.app.render import segment_bar, state_text, user_text
from tuiflow.app.rows import RowsView
from tuiflow.app.screen import LiveScreen, set_text

TRACE_TABS = ("critical", "queuing", "breakdown", "timeline", "lineage", "gpu")
#: what the GPU tab says for a workflow that used no GPU and no model executor
NO_GPU_MESSAGE = (
    "No GPU here: no task of this workflow held a GPU or ran a model executor "
    "({executors}).\n\nThis tab shows, per worker and GPU, the time spent "
    "generating, loading models, idle while work was queued and idle; GPU-seconds per task; "
    "and tokens/s and images/s per model, once tasks ask for `gpus:` or use a model executor."
)


@dataclasses.dataclass
class WorkflowData:
    snapshot: WorkflowSnapshot
    analysis: Any  # analyzer.Analysis, when a trace tab is shown
    timeline: list[Any] | None
    #: the task list's order (tasks tab) or the DAG's rows (dag tab), built off the UI
    #: thread for the filter / expanded groups in `made_for`
    tab: str = "tasks"
    rows: Any = None
    made_for: Any = None


class WorkflowScreen(LiveScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back", id="workflow.back"),
        Binding("slash", "filter", "Filter", id="workflow.filter"),
        Binding("c", "cancel", "Cancel", id="workflow.cancel"),
        Binding("R", "retry", "Retry failed", id="workflow.retry"),
        Binding("1", "tab('tasks')", "Tasks", show=False, id="workflow.tab_tasks"),
        Binding("2", "tab('dag')", "DAG", show=False, id="workflow.tab_dag"),
        Binding("3", "tab('critical')", "Critical path", show=False, id="workflow.tab_critical"),
        Binding("4", "tab('queuing')", "Queuing", show=False, id="workflow.tab_queuing"),
        Binding("5", "tab('breakdown')", "Breakdown", show=False, id="workflow.tab_breakdown"),
        Binding("6", "tab('timeline')", "Timeline", show=False, id="workflow.tab_timeline"),
        Binding("7", "tab('lineage')", "Lineage", show=False, id="workflow.tab_lineage"),
        Binding("8", "tab('gpu')", "GPU", show=False, id="workflow.tab_gpu"),
    ]

    def __init__(self, wf_id: str, tab: str = "tasks"):
        super().__init__(id=f"workflow-{wf_id}")
        self.wf_id = wf_id
        self.initial_tab = tab
        self._tab_for_load = tab
        self.snapshot: WorkflowSnapshot | None = None
        self._analysis_key: tuple[str, int] | None = None
        self._analysis: Any = None
        self._timeline: list[Any] | None = None
        self._lineage_for: Any = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=False)
        with Vertical(id="wf-top"):
            yield Static(id="wf-head")
            yield Static(id="wf-groups")
        with TabbedContent(id="wf-tabs", initial=self.initial_tab):
            with TabPane("Tasks", id="tasks"):
                yield Input(
                    placeholder="filter tasks by name (enter to apply, escape to clear)", id="task-filter"
                )
                yield Static(id="task-status")
                yield TaskList(id="task-list")
            with TabPane("DAG", id="dag"):
                yield DagView(id="dag-view")
            with TabPane("Critical path", id="critical"), VerticalScroll():
                yield Static(id="critical-view")
            with TabPane("Queuing", id="queuing"), VerticalScroll():
                yield Static(id="queuing-view")
            with TabPane("Breakdown", id="breakdown"), VerticalScroll():
                yield Static(id="breakdown-view")
            with TabPane("Timeline", id="timeline"):
                yield Timeline(id="timeline-view")
            with TabPane("Lineage", id="lineage"):
                yield Tree("lineage", id="lineage-view")
            with TabPane("GPU", id="gpu"), VerticalScroll():
                yield Static(id="gpu-view")
        yield Footer()

    def on_mount(self) -> None:
        self._task_list = self.query_one(TaskList)
        self._dag_view = self.query_one(DagView)
        self.query_one("#task-filter", Input).display = False
        self.query_one("#lineage-view", Tree).show_root = False
        super().on_mount()
        self.call_after_refresh(self._focus_tab)

    @property
    def active_tab(self) -> str:
        return self.query_one("#wf-tabs", TabbedContent).active or "tasks"

    # ------------------------------------------------------------------ data
    def load(self, now: float) -> WorkflowData:
        store = self.app.store  # type: ignore[attr-defined]
        snap = load_workflow(store, self.wf_id, now)
        tab = self._tab_for_load
        rows = made_for = None
        # the filter and the expanded groups are immutable values: reading them from this
        # thread sees either the old or the new one, and `show` redoes a stale one
        if tab == "tasks":
            made_for = self._task_list.filter
            rows = made_for.order(snap)
        elif tab == "dag":
            made_for = self._dag_view.expanded
            rows = dag_rows(snap, made_for)
        analysis = timeline = None
        if self._tab_for_load in TRACE_TABS:
            key = (snap.state, snap.version)
            if key == self._analysis_key and snap.state != "running":
                analysis, timeline = self._analysis, self._timeline
            else:
                from analyzer import analyze_workflow, timeline_rows

                analysis = analyze_workflow(store.dir(self.wf_id))
                timeline = timeline_rows(analysis.trace, critical=analysis.critical_tasks)
                self._analysis_key = key
        return WorkflowData(snap, analysis, timeline, tab, rows, made_for)

    def apply(self, data: WorkflowData) -> None:
        snap = data.snapshot
        self.snapshot = snap
        self.title = safe_text(f"{snap.name} · {snap.id}")
        set_text(self.query_one("#wf-head", Static), self._head(snap))
        set_text(self.query_one("#wf-groups", Static), self._groups(snap))
        tab = self.active_tab
        if tab == "tasks":
            self.query_one(TaskList).show(snap, data.rows if data.tab == "tasks" else None, data.made_for)
        elif tab == "dag":
            self.query_one(DagView).show(snap, data.rows if data.tab == "dag" else None, data.made_for)
        if data.analysis is not None:
            self._analysis, self._timeline = data.analysis, data.timeline
            self._show_trace(tab)

    def _head(self, snap: WorkflowSnapshot) -> Text:
        text = Text()
        text.append(f"{safe_text(snap.id)} ", style="bold")
        text.append(f"{safe_text(snap.name)}  ", style="bold cyan")
        text.append_text(state_text(snap.state))
        text.append("  ")
        text.append_text(segment_bar(snap.counts, snap.total, 40))
        text.append(f"  {snap.done}/{snap.total}")
        if snap.state == "running":
            text.append(f"  {fmt_rate(snap.rate)}  ETA {fmt_seconds(snap.eta)}", style="grey70")
        if snap.wall is not None:
            text.append(f"  wall {fmt_seconds(snap.wall)}", style="grey70")
        counts = "  ".join(f"{n} {s}" for s, n in snap.counts.items() if n)
        text.append(f"\n{counts}", style="grey62")
        return text

    @staticmethod
    def _groups(snap: WorkflowSnapshot) -> Text:
        text = Text()
        shown = [g for g in snap.groups if g.prefix != "(no group)"] or snap.groups
        if len(shown) <= 1 and snap.groups and snap.groups[0].prefix == "(no group)":
            return text
        for g in shown[:8]:
            done = sum(v for k, v in g.counts.items() if k not in ("pending", "ready", "running"))
            text.append(f"{safe_text(g.prefix) + '/':<18}", style="bold")
            text.append_text(segment_bar(g.counts, g.total, 30))
            text.append(f" {done}/{g.total}\n", style="grey70")
        if len(shown) > 8:
            text.append(f"… {len(shown) - 8} more groups\n", style="grey50")
        return text

    # ----------------------------------------------------------- trace tabs
    def _show_trace(self, tab: str) -> None:
        from analyzer import render

        analysis = self._analysis
        if analysis is None:
            return
        if not analysis.trace.tasks:
            message = Text("No spans yet: the trace fills in as attempts finish.", style="grey62")
            for view in ("#critical-view", "#queuing-view", "#breakdown-view", "#gpu-view"):
                self.query_one(view, Static).update(message)
            return
        if tab == "critical":
            self.query_one("#critical-view", Static).update(render(analysis, "critical-path"))
        elif tab == "queuing":
            self.query_one("#queuing-view", Static).update(render(analysis, "queuing"))
        elif tab == "breakdown":
            self.query_one("#breakdown-view", Static).update(Group(render(analysis, "e2e")))
        elif tab == "timeline" and self._timeline is not None:
            self.query_one(Timeline).show(self._timeline)
        elif tab == "lineage" and self._lineage_for is not analysis:
            self._fill_lineage(analysis)
        elif tab == "gpu":
            self.query_one("#gpu-view", Static).update(self._gpu_view(analysis))

    @staticmethod
    def _gpu_view(analysis: Any) -> Any:
        from analyzer.gpu import MODEL_EXECUTORS
        from analyzer.gpuview import render_gpu

        if analysis.gpu.empty:
            return Text(NO_GPU_MESSAGE.format(executors=", ".join(sorted(MODEL_EXECUTORS))), style="grey62")
        return render_gpu(analysis.gpu, limit=0)

    def _fill_lineage(self, analysis: Any) -> None:
        from analyzer import lineage_tree

        tree = self.query_one("#lineage-view", Tree)
        tree.clear()
        critical = analysis.critical_tasks
        roots = lineage_tree(analysis.lineage)
        if not roots:
            tree.root.add_leaf(
                Text("no lineage rows: tasks that produce outputs record them", style="grey62")
            )

        def add(parent: Any, node: Any, depth: int) -> None:
            label = user_text(node.data_id.split("/", 1)[-1], "bold" if node.task in critical else "")
            if node.task in critical:
                label.append("  ★ critical path", style="yellow")
            if node.mark:
                label.append(f"  ({safe_text(node.mark)})", style="grey50")
            branch = parent.add(label, expand=depth < 3) if node.children else parent.add_leaf(label)
            for child in node.children:
                add(branch, child, depth + 1)

        for root in roots:
            add(tree.root, root, 0)
        tree.root.expand()
        self._lineage_for = analysis

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._tab_for_load = event.pane.id or "tasks"
        self._focus_tab()
        if self.snapshot is not None:
            if self._tab_for_load == "tasks":
                self.query_one(TaskList).show(self.snapshot)
            elif self._tab_for_load == "dag":
                self.query_one(DagView).show(self.snapshot)
            elif self._analysis is not None:
                self._show_trace(self._tab_for_load)
        self.request_refresh()

    def _focus_tab(self) -> None:
        targets = {"tasks": TaskList, "dag": DagView, "timeline": Timeline}
        cls = targets.get(self.active_tab)
        if cls is not None:
            self.query_one(cls).focus()
        elif self.active_tab == "lineage":
            self.query_one("#lineage-view", Tree).focus()

    # --------------------------------------------------------------- actions
    def on_task_list_shown(self, event: TaskList.Shown) -> None:
        set_text(self.query_one("#task-status", Static), event.view.status(event.shown))

    def on_rows_view_selected(self, event: RowsView.Selected) -> None:
        if isinstance(event.view, TaskList | DagView):
            self.app.open_task(self.wf_id, event.key if isinstance(event.view, TaskList) else event.data[1])  # type: ignore[attr-defined]

    def action_back(self) -> None:
        box = self.query_one("#task-filter", Input)
        if box.display:
            box.value = ""
            box.display = False
            self.query_one(TaskList).set_filter("")
            self.query_one(TaskList).focus()
            return
        self.app.pop_screen()

    def action_filter(self) -> None:
        self.action_tab("tasks")
        box = self.query_one("#task-filter", Input)
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "task-filter":
            self.query_one(TaskList).set_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "task-filter":
            self.query_one(TaskList).focus()

    def action_tab(self, tab: str) -> None:
        self.query_one("#wf-tabs", TabbedContent).active = tab

    def action_cancel(self) -> None:
        self.app.confirm_cancel(self.wf_id)  # type: ignore[attr-defined]

    def action_retry(self) -> None:
        self.app.confirm_retry(self.wf_id)  # type: ignore[attr-defined]


__all__ = ["WorkflowScreen"]
