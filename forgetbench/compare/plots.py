"""E-versus-F plot of many tuning methods and the forgetting probe's F curves (matplotlib, rendered in memory so the
caller writes them atomically).

Labels of the E-versus-F plot are placed by :func:`place_labels`: deterministic, greedy, over candidate offsets around
each point, checked against the rendered size of every label, every marker and the axes, so no two labels overlap and
no label covers a marker (tests/test_report.py checks it on the default study's seven points).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

DPI = 150  # the figure's own dpi is the saved PNG's: what the placement measured is what is drawn
FONT_SIZE = 8  # labels, points
# Candidate offsets (points) from a point to its label, nearest ring first; in each ring, the directions in order.
DISTANCES = (3.0, 7.0, 12.0, 18.0, 26.0, 36.0, 48.0, 64.0)
DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
LEADER_FROM = 10.0  # a label this far (points) from its point or farther gets a thin line to it
PAD = 1.5  # pixels kept free around every label and marker


def _box(x0: float, y0: float, x1: float, y1: float, pad: float = 0.0) -> tuple[float, float, float, float]:
    return (x0 - pad, y0 - pad, x1 + pad, y1 + pad)


def overlap(a: Sequence[float], b: Sequence[float]) -> float:
    """Area two boxes ``(x0, y0, x1, y1)`` share (0 when they are apart or only touch).

    >>> overlap((0, 0, 2, 2), (1, 1, 3, 3)), overlap((0, 0, 1, 1), (1, 0, 2, 1))
    (1, 0)
    """
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0


def label_box(anchor: tuple[float, float], size: tuple[float, float], direction: tuple[int, int]
              ) -> tuple[float, float, float, float]:
    """The box of a label of ``size`` (w, h pixels) aligned at ``anchor`` away from its point in ``direction``: to
    the right of the anchor for dx > 0 (left-aligned), to its left for dx < 0, centred for 0; likewise above/below.

    >>> label_box((10, 10), (4, 2), (1, 1)), label_box((10, 10), (4, 2), (-1, 0))
    ((10, 10, 14, 12), (6, 9.0, 10, 11.0))
    """
    (x, y), (w, h), (dx, dy) = anchor, size, direction
    x0 = x if dx > 0 else x - w if dx < 0 else x - w / 2
    y0 = y if dy > 0 else y - h if dy < 0 else y - h / 2
    return (x0, y0, x0 + w, y0 + h)


def _alignment(direction: tuple[int, int]) -> tuple[str, str]:
    dx, dy = direction
    return ("left" if dx > 0 else "right" if dx < 0 else "center",
            "bottom" if dy > 0 else "top" if dy < 0 else "center")


def place_labels(ax, points: Mapping[str, tuple[float, float]], renderer, marker_radius: float,
                 avoid: Sequence[Sequence[float]] = ()) -> dict[str, tuple[tuple[float, float], tuple[int, int]]]:
    """For each named point (data coordinates), the offset in points of its label and its direction.

    Greedy and deterministic: the most crowded points choose first (then in the given order); each takes the first
    candidate (nearest ring first, :data:`DIRECTIONS` in order) whose box, measured with ``renderer`` at the font
    size the label is drawn with, stays inside the axes and meets no label placed so far and no marker (a square of
    ``marker_radius`` pixels around every point). A first pass also keeps clear of the boxes in ``avoid``
    (interval whiskers); a second pass drops that wish. A label that fits nowhere takes the candidate that overlaps
    least.
    """
    from matplotlib.text import Text

    scale = ax.figure.dpi / 72.0  # points -> pixels
    at = {name: tuple(ax.transData.transform(xy)) for name, xy in points.items()}
    markers = [_box(x - marker_radius, y - marker_radius, x + marker_radius, y + marker_radius, PAD)
               for x, y in at.values()]
    frame = ax.get_window_extent(renderer)
    inside = (frame.x0 + PAD, frame.y0 + PAD, frame.x1 - PAD, frame.y1 - PAD)
    sizes = {}
    for name in points:
        extent = Text(0, 0, name, fontsize=FONT_SIZE, figure=ax.figure).get_window_extent(renderer)
        sizes[name] = (extent.width, extent.height)
    near = 40 * scale
    crowd = {n: sum(1 for m in at if m != n and abs(at[m][0] - at[n][0]) < near and abs(at[m][1] - at[n][1]) < near)
             for n in at}
    order = sorted(points, key=lambda n: -crowd[n])  # stable: ties keep the given order
    placed: dict[str, tuple[float, float, float, float]] = {}
    chosen: dict[str, tuple[tuple[float, float], tuple[int, int]]] = {}
    for name in order:
        best = None
        for strict in (True, False):
            for distance in DISTANCES:
                for dx, dy in DIRECTIONS:
                    norm = (dx * dx + dy * dy) ** 0.5
                    offset = (dx * distance / norm, dy * distance / norm)
                    anchor = (at[name][0] + offset[0] * scale, at[name][1] + offset[1] * scale)
                    box = _box(*label_box(anchor, sizes[name], (dx, dy)), PAD)
                    outside = (max(0.0, inside[0] - box[0]) + max(0.0, box[2] - inside[2])
                               + max(0.0, inside[1] - box[1]) + max(0.0, box[3] - inside[3]))
                    cost = (sum(overlap(box, other) for other in placed.values())
                            + sum(overlap(box, m) for m in markers) + 1000.0 * outside)
                    if strict:
                        cost += sum(overlap(box, a) for a in avoid)
                    if best is None or cost < best[0]:
                        best = (cost, name, box, offset, (dx, dy))
                    if cost == 0:
                        break
                if best[0] == 0:
                    break
            if best[0] == 0:
                break
        _, _, box, offset, direction = best
        placed[name] = box
        chosen[name] = (offset, direction)
    return {name: chosen[name] for name in points}


def ef_figure(methods: Mapping[str, Mapping], front: list[str]):
    """The E-versus-F figure and its label artists ``{name: Annotation}``, laid out and labelled (for
    :func:`ef_plot` and for the tests that measure the labels)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(6, 4.5), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    whiskers = []
    marker_size = 6.0  # points (matplotlib's default), the diameter
    for name, m in methods.items():
        e, f = m["E"], m["F"]
        # Whiskers only where an interval exists; errorbar wants distances below/above the point.
        xerr = [[e - m["E_ci"][0]], [m["E_ci"][1] - e]] if m.get("E_ci") else None
        yerr = [[f - m["F_ci"][0]], [m["F_ci"][1] - f]] if m.get("F_ci") else None
        on_front = name in front
        ax.errorbar([e], [f], xerr=xerr, yerr=yerr, fmt="o", markersize=marker_size, capsize=3,
                    color="C0" if on_front else "C7", markerfacecolor="C0" if on_front else "white", zorder=3)
        whiskers.append((m.get("E_ci") or [e, e], m.get("F_ci") or [f, f], e, f))
    handles = []
    if len(front) > 1:
        pts = sorted((methods[n]["E"], methods[n]["F"]) for n in front)
        handles = ax.plot(*zip(*pts, strict=True), "--", color="C0", linewidth=1, label="Pareto front", zorder=2)
    ax.axhline(0, color="0.8", linewidth=0.8, zorder=1)
    ax.axvline(0, color="0.8", linewidth=0.8, zorder=1)
    ax.margins(0.15)
    ax.set_xlabel("E, specialization (points; higher is better)")
    ax.set_ylabel("F, forgetting (points; below 0 = forgot)")
    if handles:  # outside the axes: it never covers a point or a label
        fig.legend(handles=handles, loc="outside upper right", fontsize=FONT_SIZE, frameon=False)
    fig.canvas.draw()  # the constrained layout settles here; then it is frozen, so what is measured stays true
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    radius = marker_size / 2 * DPI / 72.0
    avoid = []
    for (e0, e1), (f0, f1), e, f in whiskers:  # thin boxes along each whisker, in pixels
        (x0, y), (x1, _) = ax.transData.transform([(e0, f), (e1, f)])
        (x, y0), (_, y1) = ax.transData.transform([(e, f0), (e, f1)])
        avoid += [(x0, y - 1, x1, y + 1), (x - 1, y0, x + 1, y1)]
    where = place_labels(ax, {n: (m["E"], m["F"]) for n, m in methods.items()}, renderer, radius, avoid)
    labels = {}
    for name, ((ox, oy), direction) in where.items():
        ha, va = _alignment(direction)
        far = (ox * ox + oy * oy) ** 0.5 >= LEADER_FROM
        labels[name] = ax.annotate(
            name, (methods[name]["E"], methods[name]["F"]), textcoords="offset points", xytext=(ox, oy), ha=ha,
            va=va, fontsize=FONT_SIZE, zorder=4,
            arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.6, "shrinkA": 0, "shrinkB": radius}
            if far else None)
    return fig, labels


def ef_plot(methods: Mapping[str, Mapping], front: list[str], formats: Sequence[str] = ("png", "svg")
            ) -> dict[str, bytes]:
    """``{"png": bytes, "svg": bytes}``: one point per method at (E, F) with interval whiskers; the Pareto front
    (higher E and higher F are better) is joined by a line and its points are filled.

    >>> out = ef_plot({"lora": {"E": 30.0, "F": -2.0, "E_ci": [25.0, 35.0], "F_ci": [-4.0, 0.0]}}, ["lora"])
    >>> out["png"][:4] == b"\\x89PNG" and b"<svg" in out["svg"]
    True
    """
    fig, _ = ef_figure(methods, front)
    return _save(fig, formats)


def _save(fig, formats: Sequence[str]) -> dict[str, bytes]:
    out = {}
    meta = {"png": {"Software": None}, "svg": {"Date": None}}  # no timestamps: same bytes per run
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=meta[fmt], dpi=DPI)
        out[fmt] = buf.getvalue()
    return out


def probe_plot(curves: Mapping[str, Sequence[Mapping]], budget: float | None = None) -> bytes:
    """PNG of the forgetting probe's F (points, against the step-0 probe) over training steps, one line per arm with
    its interval shaded where the probe logged one, and the budget's line at ``-budget``.

    >>> probe_plot({"lora": [{"step": 0, "F": 0.0, "F_ci": [0.0, 0.0]}, {"step": 5, "F": -3.0, "F_ci": None}]}, 2.0)[:4]
    b'\\x89PNG'
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, curve) in enumerate(curves.items()):
        rows = [r for r in curve if r.get("F") is not None]
        steps = [r["step"] for r in rows]
        ax.plot(steps, [r["F"] for r in rows], "o-", markersize=3, linewidth=1.2, color=f"C{i % 10}", label=name)
        shaded = [r for r in rows if r.get("F_ci")]
        if shaded:
            ax.fill_between([r["step"] for r in shaded], [r["F_ci"][0] for r in shaded],
                            [r["F_ci"][1] for r in shaded], color=f"C{i % 10}", alpha=0.15, linewidth=0)
    if budget is not None:
        ax.axhline(-budget, color="C3", linestyle=":", linewidth=1, label=f"budget -{budget:g}")
    ax.axhline(0, color="0.8", linewidth=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("probe F (points)")
    ax.legend(fontsize=FONT_SIZE, loc="best")
    return _save(fig, ("png",))["png"]
