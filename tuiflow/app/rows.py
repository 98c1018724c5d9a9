"""`RowsView`: a keyed, cursor-driven list drawn with Textual's Line API.

Only the rows on screen are turned into text, and each row's rendering is cached by its
data, so a list of 10,000 tasks scrolls and refreshes in milliseconds where a DataTable
takes seconds. Updates keep the cursor on the same *key* (the same task), never on the
same index: the cursor does not jump when rows above it change.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

_CACHE = 4096


class RowsView(ScrollView, can_focus=True):
    """Subclasses implement `format_row(data, width) -> Text` and may set `header`."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False, id="rows.up"),
        Binding("down,j", "cursor(1)", "Down", show=False, id="rows.down"),
        Binding("pageup,ctrl+b", "page(-1)", "Page up", show=False, id="rows.page_up"),
        Binding("pagedown,ctrl+f", "page(1)", "Page down", show=False, id="rows.page_down"),
        Binding("home,g", "jump(0)", "First", show=False, id="rows.first"),
        Binding("end,G", "jump(-1)", "Last", show=False, id="rows.last"),
        Binding("enter", "select", "Open", id="rows.select"),
    ]

    COMPONENT_CLASSES: ClassVar[set[str]] = {"rows--header", "rows--cursor"}

    DEFAULT_CSS = """
    RowsView {
        height: 1fr;
        & > .rows--header {
            text-style: bold;
            background: $panel;
            color: $foreground;
        }
        & > .rows--cursor {
            background: $block-cursor-blurred-background;
            color: $block-cursor-blurred-foreground;
            text-style: $block-cursor-blurred-text-style;
        }
        &:focus > .rows--cursor {
            background: $block-cursor-background;
            color: $block-cursor-foreground;
            text-style: $block-cursor-text-style;
        }
    }
    """

    class Selected(Message):
        def __init__(self, view: RowsView, key: Hashable, data: Any) -> None:
            super().__init__()
            self.view = view
            self.key = key
            self.data = data

    header: Text | None = None

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.keys: Sequence[Hashable] = []
        self.data: Sequence[Any] = []
        self.cursor = 0
        self._index: Mapping[Hashable, int] = {}
        self._cache: OrderedDict[tuple[Any, int, bool], Strip] = OrderedDict()
        self._width = 0

    # ----------------------------------------------------------------- data
    def set_rows(self, rows: Sequence[tuple[Hashable, Any]]) -> None:
        """Replace the rows (key, data); the cursor stays on its key when it still exists."""
        self.set_keyed([k for k, _ in rows], [d for _, d in rows])

    def set_keyed(
        self,
        keys: Sequence[Hashable],
        data: Sequence[Any],
        index: Mapping[Hashable, int] | None = None,
        *,
        repaint_all: bool = False,
    ) -> None:
        """Replace the rows by parallel sequences. `data` may be lazy (a sequence that
        builds a row when indexed): only rows on screen are ever asked for. `index`
        (key -> position) may be passed when the caller already has it.

        Only the lines whose row changed are repainted (a refresh of a live list usually
        changes a few lines or none); `repaint_all` when the drawing itself changed."""
        before = self._on_screen()
        top, cursor_line = self.scroll_offset.y, self.cursor - self.scroll_offset.y
        current = self.keys[self.cursor] if self.keys and self.cursor < len(self.keys) else None
        self.keys = keys
        self.data = data
        self._index = index if index is not None else {k: i for i, k in enumerate(keys)}
        position = self._index.get(current) if current is not None else None
        if position is not None:
            self.cursor = position
        else:
            self.cursor = min(self.cursor, max(0, len(self.keys) - 1))
        self._update_size()
        after = self._on_screen()
        if repaint_all or before is None or len(before) != len(after) or self.scroll_offset.y != top:
            self.refresh()
            return
        lines = {y for y, (old, new) in enumerate(zip(before, after, strict=True)) if old != new}
        if self.cursor - top != cursor_line:
            lines.update((cursor_line, self.cursor - top))
        offset = 1 if self.header is not None else 0
        width = self.size.width
        for y in lines:
            if 0 <= y < len(after):
                self.refresh(Region(0, y + offset, width, 1))

    def set_header(self, header: Text | None) -> None:
        if header == self.header:
            return
        shifted = (header is None) != (self.header is None)  # every row moves a line
        self.header = header
        if shifted:
            self._update_size()
            self.refresh()
        else:
            self.refresh(Region(0, 0, self.size.width, 1))

    def _on_screen(self) -> list[tuple[Hashable, Any]] | None:
        """The (key, row) of each line on screen now; None before the first layout."""
        if not self.size.height:
            return None
        top = self.scroll_offset.y
        end = min(len(self.keys), top + self.size.height - (1 if self.header is not None else 0))
        return [(self.keys[i], self.data[i]) for i in range(top, end)]

    def _update_size(self) -> None:
        extra = 1 if self.header is not None else 0
        self.virtual_size = Size(max(self._width, self.size.width), len(self.keys) + extra)

    def on_resize(self) -> None:
        self._update_size()

    @property
    def current(self) -> tuple[Hashable, Any] | None:
        if not self.keys:
            return None
        return self.keys[self.cursor], self.data[self.cursor]

    def select_key(self, key: Hashable) -> None:
        if key in self._index:
            self.cursor = self._index[key]
            self._scroll_to_cursor()
            self.refresh()

    # ----------------------------------------------------------- rendering
    def format_row(self, data: Any, width: int) -> Text:
        return Text(str(data))

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        if self.header is not None:
            if y == 0:
                header_style = base + self.get_component_rich_style("rows--header")
                return self._strip(self.header, width + scroll_x, header_style).crop_extend(
                    scroll_x, scroll_x + width, base
                )
            y -= 1
        index = scroll_y + y
        if index >= len(self.keys):
            return Strip.blank(width, base)
        data = self.data[index]
        selected = index == self.cursor
        key = (data, width + scroll_x, selected and self.has_focus)
        strip = self._cache.get(key)
        if strip is None:
            text = self.format_row(data, width + scroll_x)
            style = base + self.get_component_rich_style("rows--cursor") if selected else base
            strip = self._strip(text, width + scroll_x, style)
            self._cache[key] = strip
            if len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _strip(self, text: Text, width: int, style: Style) -> Strip:
        text = text.copy()
        text.no_wrap = True
        text.overflow = "ellipsis"
        text.truncate(width, overflow="ellipsis")
        segments = [
            Segment(s.text, style + s.style if s.style else style) for s in text.render(self.app.console)
        ]
        segments = [s for s in segments if s.text != "\n"]
        strip = Strip(segments)
        self._width = max(self._width, strip.cell_length)
        return strip.extend_cell_length(width, style)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # ------------------------------------------------------------- movement
    def _scroll_to_cursor(self) -> None:
        top = self.scroll_offset.y
        visible = self.size.height - (1 if self.header is not None else 0)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + visible:
            self.scroll_to(y=self.cursor - visible + 1, animate=False)

    def action_cursor(self, delta: int) -> None:
        if self.keys:
            self.cursor = max(0, min(len(self.keys) - 1, self.cursor + delta))
            self._scroll_to_cursor()
            self.refresh()

    def action_page(self, direction: int) -> None:
        self.action_cursor(direction * max(1, self.size.height - 2))

    def action_jump(self, where: int) -> None:
        if self.keys:
            self.cursor = 0 if where == 0 else len(self.keys) - 1
            self._scroll_to_cursor()
            self.refresh()

    def action_select(self) -> None:
        if self.current is not None:
            key, data = self.current
            self.post_message(self.Selected(self, key, data))

    def on_click(self, event: Any) -> None:
        row = event.y + self.scroll_offset.y - (1 if self.header is not None else 0)
        if 0 <= row < len(self.keys):
            if row == self.cursor and event.chain >= 2:
                self.action_select()
            self.cursor = row
            self.refresh()
