"""E-versus-F plot of many tuning methods (matplotlib, rendered in memory so the caller writes it atomically)."""

from __future__ import annotations

import io
from collections.abc import Mapping


def label_rows(methods: Mapping[str, Mapping], near: float = 0.03) -> dict[str, int]:
    """For each method, how many earlier methods sit within ``near`` of the axes' span from it: its label goes that
    many lines higher, so labels of (nearly) coincident points never overprint.

    >>> label_rows({"full": {"E": 50.0, "F": -10.0}, "full_st": {"E": 50.2, "F": -10.1}, "lora": {"E": 20.0, "F": 0.0}})
    {'full': 0, 'full_st': 1, 'lora': 0}
    """
    es, fs = [m["E"] for m in methods.values()], [m["F"] for m in methods.values()]
    span_e, span_f = (max(es) - min(es)) or 1.0, (max(fs) - min(fs)) or 1.0
    rows: dict[str, int] = {}
    for name, m in methods.items():
        rows[name] = sum(1 for other in rows if abs(methods[other]["E"] - m["E"]) <= near * span_e
                         and abs(methods[other]["F"] - m["F"]) <= near * span_f)
    return rows


def ef_plot(methods: Mapping[str, Mapping], front: list[str]) -> dict[str, bytes]:
    """``{"png": bytes, "svg": bytes}``: one point per method at (E, F) with interval whiskers; the Pareto front
    (higher E and higher F are better) is joined by a line and its points are filled.

    >>> out = ef_plot({"lora": {"E": 30.0, "F": -2.0, "E_ci": [25.0, 35.0], "F_ci": [-4.0, 0.0]}}, ["lora"])
    >>> out["png"][:4] == b"\\x89PNG" and b"<svg" in out["svg"]
    True
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.add_subplot()
    stacked = label_rows(methods)
    for name, m in methods.items():
        e, f = m["E"], m["F"]
        # Whiskers only where an interval exists; errorbar wants distances below/above the point.
        xerr = [[e - m["E_ci"][0]], [m["E_ci"][1] - e]] if m.get("E_ci") else None
        yerr = [[f - m["F_ci"][0]], [m["F_ci"][1] - f]] if m.get("F_ci") else None
        on_front = name in front
        ax.errorbar([e], [f], xerr=xerr, yerr=yerr, fmt="o", capsize=3, color="C0" if on_front else "C7",
                    markerfacecolor="C0" if on_front else "white", zorder=3)
        ax.annotate(name, (e, f), textcoords="offset points", xytext=(5, 5 + 10 * stacked[name]), fontsize=8)
    if len(front) > 1:
        pts = sorted((methods[n]["E"], methods[n]["F"]) for n in front)
        ax.plot(*zip(*pts, strict=True), "--", color="C0", linewidth=1, label="Pareto front", zorder=2)
        ax.legend(loc="best", fontsize=8)
    ax.axhline(0, color="0.8", linewidth=0.8, zorder=1)
    ax.axvline(0, color="0.8", linewidth=0.8, zorder=1)
    ax.set_xlabel("E, specialization (points; higher is better)")
    ax.set_ylabel("F, forgetting (points; below 0 = forgot)")
    out = {}
    for fmt, meta in (("png", {"Software": None}), ("svg", {"Date": None})):  # no timestamps: same bytes per run
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=meta, dpi=150)
        out[fmt] = buf.getvalue()
    return out
