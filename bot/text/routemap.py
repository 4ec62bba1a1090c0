"""The routing map as a picture (PNG for Telegram, PNG or SVG for `pbxbot map`),
drawn with matplotlib's Agg backend (no display, no Graphviz).

Five columns, one row per number (or per group of numbers): number -> the account
an INVITE for it is identified as -> context -> route -> destination. A row is red
when the doctor found an error about that number, orange for a warning; a dashed
first link means the call is bound to another account of the host (a misroute).
Nodes that rows share (an account, a context, a destination) are drawn once.

At most 24 rows (bot/routing/routemap.py decides), 1280 px wide: Telegram sends a
photo at 1280 px on its long side, so nothing here is scaled down on a phone.
Every label is plain text: mathtext is off, so `$` in a name is a dollar sign.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .i18n import t

if TYPE_CHECKING:  # the routing room makes the map; this one only draws it
    from matplotlib.text import Text

    from bot.routing.doctor import Severity
    from bot.routing.routemap import Lane, RoutingMap

WIDTH = 1280  # px
DPI = 100
ROW = 50  # px a row
TOP = 140  # title, counts, a note, column heads
BOTTOM = 64  # legend
COLUMNS = ("number", "account", "context", "route", "destination")
BOX_WS = (150, 170, 230, 240, 180)  # each column's boxes wide; 70 px between columns for the links
X = tuple(16 + sum(BOX_WS[:c]) + 70 * c for c in range(5))  # left edge of each column's boxes
BOX_H = 40
CHAR_PX = 9.0  # an average character at FONT, DejaVu Sans (Cyrillic and bold are wider)
FONT = 10.5  # points: 14.6 px at 100 dpi

COLOURS = {"E": "#d62728", "W": "#e67e00", "I": "#1f77b4", None: "#5b7f95"}
FILLS = {"E": "#fde3e3", "W": "#fff0db", "I": "#e3effa", None: "#f2f5f7"}


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Node:
    lines: tuple[str, str]
    lanes: list[int] = field(default_factory=list)
    severities: set[str | None] = field(default_factory=set)
    y: float = 0.0

    @property
    def severity(self) -> str | None:
        """The rows' severity when they all share it; a node shared by rows fine and
        in trouble is not the trouble (the links say which rows are)."""
        return next(iter(self.severities)) if len(self.severities) == 1 else None


def _sev(severity: Severity | None) -> str | None:
    return severity.value if severity is not None else None


def _labels(lane: Lane, lang: str) -> list[tuple[str, tuple[str, str]]]:
    """(node key, two lines) of each column for one row."""
    p = lane.paths[0]
    n = len(lane.paths)
    uid = f"lane:{id(lane)}"
    if lane.single:
        number = (p.login, p.phone)
    elif lane.rest:
        number = (t("map.rest", lang, n=n), t("map.hosts", lang, n=lane.count("host")))
    else:
        number = (t("map.numbers", lang, n=n), p.host)
    if p.disabled and lane.single:
        account = (f"{uid}", (p.login, t("map.disabled", lang)))
    elif (endpoint := lane.common("endpoint")) is not None and endpoint:
        login = lane.common("endpoint_login") or ""
        account = (f"acc:{endpoint}", (login, endpoint))
    else:
        account = (f"{uid}", (t("map.accounts", lang, n=lane.count("endpoint")), p.host))
    context = lane.common("context")
    if context is not None:
        ctx = (f"ctx:{context}", (context or "—", ""))
    else:
        ctx = (uid, (t("map.contexts", lang, n=lane.count("context")), ""))
    route_ids = {q.route_id for q in lane.paths}
    if route_ids == {None}:
        route = (f"none:{lane.common('outcome')}", (t("map.no_route", lang), ""))
    elif len(route_ids) == 1:
        did = p.did or t("map.any_did", lang)
        route = (f"route:{p.route_id}", (t("map.route", lang, id=p.route_id, did=did), p.route_name))
    else:
        route = (uid, (t("map.routes", lang, n=len(route_ids)), ""))
    outcome, destination = lane.common("outcome"), lane.common("destination")
    if outcome is not None and destination is not None:
        dest = (f"dest:{outcome}:{destination}", _destination(lane, outcome, lang))
    else:
        dest = (uid, (t("map.destinations", lang, n=lane.count("destination")), ""))
    return [(f"num:{id(lane)}", number), account, ctx, route, dest]


def _destination(lane: Lane, outcome: str, lang: str) -> tuple[str, str]:
    p = lane.paths[0]
    name, extension = p.destination_name, p.destination
    if outcome == "dial":
        return (name, extension if extension != name else "")
    if outcome == "default":
        return (t("map.default", lang), name or "—")
    if outcome == "no_account":
        return (t("map.not_accepted", lang), "")
    return (t("map.rejected", lang), "")


def _place(nodes: list[_Node], rows: int) -> None:
    """Each node at the middle of its rows, then pushed apart to one row each at least."""
    for node in nodes:
        node.y = sum(node.lanes) / len(node.lanes)
    nodes.sort(key=lambda node: node.y)
    floor = 0.0
    for node in nodes:
        node.y = max(node.y, floor)
        floor = node.y + 1
    ceiling = rows - 1.0
    for node in reversed(nodes):  # pushed past the last row: back up, keeping the spacing
        node.y = min(node.y, ceiling)
        ceiling = node.y - 1


def draw(rmap: RoutingMap, lang: str, *, fmt: str = "png") -> bytes:
    """The map as PNG or SVG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch, PathPatch
    from matplotlib.path import Path as MPath

    lanes = rmap.lanes()
    rows = max(len(lanes), 1)
    height = TOP + rows * ROW + BOTTOM
    columns: list[dict[str, _Node]] = [{} for _ in COLUMNS]
    routes: list[list[str]] = []  # each row's node key per column
    for i, lane in enumerate(lanes):
        keys = []
        for c, (key, lines) in enumerate(_labels(lane, lang)):
            node = columns[c].setdefault(key, _Node(lines))
            node.lanes.append(i)
            node.severities.add(_sev(lane.severity))
            keys.append(key)
        routes.append(keys)
    for column in columns:
        _place(list(column.values()), rows)

    def y_of(row: float) -> float:
        return TOP + row * ROW + ROW / 2

    # a Figure of its own, not pyplot's: nothing global, so two maps may be drawn at once (threads)
    fig = Figure(figsize=(WIDTH / DPI, height / DPI), dpi=DPI)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, WIDTH)
    ax.set_ylim(height, 0)
    ax.axis("off")

    def text(x: float, y: float, value: str, **style: Any) -> Text:
        return ax.text(x, y, value, parse_math=False, **style)  # a name's `$` stays a dollar sign

    text(20, 30, t("map.title", lang, pbx=rmap.pbx), fontsize=15, weight="bold", va="center")
    counts = t(
        "map.counts",
        lang,
        numbers=len(rmap.paths),
        errors=sum(1 for f in rmap.findings if f.severity.value == "E"),
        warnings=sum(1 for f in rmap.findings if f.severity.value == "W"),
    )
    text(20, 62, counts, fontsize=FONT + 1, va="center", color="#333333")
    for c, name in enumerate(COLUMNS):
        text(X[c] + 4, TOP - 20, t(f"map.col.{name}", lang), fontsize=FONT, weight="bold", color="#555555")

    # links first, boxes over them; problems drawn last so they stay on top
    order = sorted(range(len(lanes)), key=lambda i: -_rank(_sev(lanes[i].severity)))
    for i in order:
        lane = lanes[i]
        colour = COLOURS[_sev(lane.severity)]
        width = 2.2 if lane.severity is not None else 1.4
        for c in range(len(COLUMNS) - 1):
            a, b = columns[c][routes[i][c]], columns[c + 1][routes[i][c + 1]]
            x0, x1 = X[c] + BOX_WS[c], X[c + 1]
            y0, y1 = y_of(a.y), y_of(b.y)
            mid = (x0 + x1) / 2
            path = MPath(
                [(x0, y0), (mid, y0), (mid, y1), (x1, y1)],
                [MPath.MOVETO, MPath.CURVE4, MPath.CURVE4, MPath.CURVE4],
            )
            dashed = c == 0 and any(p.bound_elsewhere for p in lane.paths)
            ax.add_patch(
                PathPatch(
                    path,
                    fill=False,
                    edgecolor=colour,
                    linewidth=width,
                    linestyle=(0, (4, 3)) if dashed else "-",
                    alpha=0.9 if lane.severity is not None else 0.55,
                )
            )
    for c, column in enumerate(columns):
        for node in column.values():
            y = y_of(node.y)
            ax.add_patch(
                FancyBboxPatch(
                    (X[c], y - BOX_H / 2),
                    BOX_WS[c],
                    BOX_H,
                    boxstyle="round,pad=0,rounding_size=6",
                    facecolor=FILLS[node.severity],
                    edgecolor=COLOURS[node.severity],
                    linewidth=1.6 if node.severity else 1.0,
                )
            )
            chars = int((BOX_WS[c] - 14) / CHAR_PX)
            first, second = _clip(node.lines[0], chars), _clip(node.lines[1], int(chars * 1.15))
            strong = "bold" if c == 0 or node.severity == "E" else "normal"
            if second:
                text(X[c] + 8, y - 9, first, fontsize=FONT, va="center", weight=strong)
                text(X[c] + 8, y + 10, second, fontsize=FONT - 1.5, va="center", color="#444444")
            else:
                text(X[c] + 8, y, first, fontsize=FONT, va="center", weight=strong)

    legend_y = height - BOTTOM / 2
    x = 20.0
    renderer = canvas.get_renderer()  # measures the legend's labels
    items: list[tuple[str | None, str, Any]] = [
        ("E", "map.legend.error", "-"),
        ("W", "map.legend.warning", "-"),
        (None, "map.legend.ok", "-"),
        ("dash", "map.legend.collision", (0, (4, 3))),
    ]
    for sev, key, style in items:
        colour = "#555555" if sev == "dash" else COLOURS[sev]
        ax.plot([x, x + 28], [legend_y, legend_y], color=colour, linewidth=2.4, linestyle=style)
        label = text(x + 36, legend_y, t(key, lang), fontsize=FONT - 0.5, va="center")
        x += 36 + label.get_window_extent(renderer).width + 28
    if rmap.summarised:
        shown = sum(1 for lane in lanes if lane.single and lane.severity is not None)
        note = t("map.summarised", lang, shown=shown, n=len(rmap.paths))
        text(20, 86, note, fontsize=FONT - 0.5, va="center", color="#555555", style="italic")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=DPI, metadata=_metadata(fmt))
    return buffer.getvalue()


def _metadata(fmt: str) -> dict[str, str | None]:
    """No creation date in the file: one map, one file."""
    return {"Date": None} if fmt == "svg" else {}


def _rank(severity: str | None) -> int:
    return {"E": 0, "W": 1, "I": 2, None: 3}[severity]
