"""Human formatting of durations, sizes and instants (renderers only; reports stay numeric)."""

from __future__ import annotations

from datetime import UTC, datetime


def fmt_seconds(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4m 05s``, ``2h 03m``; ``-`` for None."""
    if seconds is None:
        return "-"
    if seconds == 0:
        return "0 s"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1e-3:
        return f"{sign}{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{sign}{s * 1e3:.0f} ms"
    if s < 60.0:
        return f"{sign}{s:.2f} s" if s < 10 else f"{sign}{s:.1f} s"
    if s < 3600.0:
        m, rest = divmod(round(s), 60)
        return f"{sign}{m}m {rest:02d}s"
    h, rest = divmod(round(s), 3600)
    return f"{sign}{h}h {rest // 60:02d}m"


def fmt_bytes(n: int | None) -> str:
    """``512 B``, ``1.5 KiB``, ``3.2 GiB``; ``-`` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover - the loop always returns


def fmt_instant(epoch: float | None) -> str:
    """Epoch seconds as ``2027-01-15 08:00:00.123Z`` (UTC); ``-`` for None."""
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
