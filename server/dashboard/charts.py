"""Chart geometry for the dashboard's server-rendered SVG (the templates draw it; no chart library, no JS).

Windows: 24 h in hourly bars, 7 days in 6-hour bars, 30 days in daily bars.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

WINDOWS = {"24h": (3600, 24), "7d": (6 * 3600, 28), "30d": (86400, 30)}  # name -> (bucket seconds, buckets)
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 640, 180, 48, 22, 10


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: int
    label: str


def window_start(window: str, now: datetime | None = None) -> tuple[datetime, int, int]:
    """The window's first bucket start (aligned to its bucket size, so bars are whole hours or days),
    bucket seconds and bucket count."""
    bucket_s, buckets = WINDOWS[window]
    now_s = (now or datetime.now(UTC)).timestamp()
    last_start = now_s - now_s % bucket_s
    return datetime.fromtimestamp(last_start - (buckets - 1) * bucket_s, UTC), bucket_s, buckets


def nice_max(value: int) -> int:
    """The axis' top: 1, 2 or 5 times a power of ten, at least `value` (and at least 1)."""
    top = 1
    while True:
        for step in (1, 2, 5):
            if top * step >= value:
                return top * step
        top *= 10


def short(value: float) -> str:
    """An axis label that fits the margin: 500, 2k, 1.5M."""
    for scale, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def column_chart(timeline: list[dict], field: str, bucket_s: int) -> dict:
    """Vertical bars over time, one per bucket, with the axis' top and a few time labels."""
    top = nice_max(max((b[field] for b in timeline), default=0))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    step = plot_w / max(len(timeline), 1)
    fmt = "%H:%M" if bucket_s < 86400 else "%b %d"
    bars, ticks = [], []
    every = max(len(timeline) // 6, 1)
    for i, bucket in enumerate(timeline):
        h = plot_h * bucket[field] / top
        when = datetime.fromtimestamp(bucket["start"], UTC)
        label = when.strftime("%Y-%m-%d %H:%M UTC")
        bars.append(Bar(LEFT + i * step + step * 0.1, TOP + plot_h - h, step * 0.8, h, bucket[field], label))
        if i % every == 0:
            ticks.append({"x": LEFT + i * step + step / 2, "label": when.strftime(fmt)})
    return {"width": WIDTH, "height": HEIGHT, "left": LEFT, "top": TOP, "bottom": TOP + plot_h, "right": WIDTH - 4,
            "max": short(top), "mid": short(top / 2), "bars": bars, "ticks": ticks, "total": sum(b[field] for b in timeline)}


def ranking(table: dict[str, dict], names: dict[str, str] | None = None) -> list[dict]:
    """Rows for horizontal bars (requests and tokens as a share of the largest), most requests first."""
    most_requests = max((v["requests"] for v in table.values()), default=0) or 1
    most_tokens = max((v["tokens"] for v in table.values()), default=0) or 1
    rows = [{"id": name, "name": (names or {}).get(name, name), **value,
             "requests_pct": round(100 * value["requests"] / most_requests, 1),
             "tokens_pct": round(100 * value["tokens"] / most_tokens, 1)} for name, value in table.items()]
    return sorted(rows, key=lambda r: (-r["requests"], -r["tokens"], r["name"]))
