"""The HTML report of a comparison (``forgetbench compare --html FILE``, and the study's report.html): one
self-contained page (no outside resources) that reads in a minute.

It opens with the recommendation and its rule, then a headline per arm (E, F, O with intervals, worded by what the
study can show), the E-versus-F plot, the forgetting probe's F curve per arm when the probe ran, the per-task table
(the columns of :data:`.columns.STATS`), the samples that flipped with a thumbnail where the sample log carries the
image, and the inputs. A caller adds its own parts (the study: how answer kinds moved, its provenance): see
:func:`render_html`.

Rendered with Jinja2 from ``templates/report.html.j2`` with autoescaping on, so every name, question and answer from
the runs is text, never markup; images are inlined as base64 PNG.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from forgetbench.compare import columns, plots, recommend, render, runs

SAMPLES_PER_TASK = 4  # forgotten (and learned) samples shown per arm, task and kind
THUMBNAIL = 64  # pixels
MAX_IMAGE_BYTES = 20_000_000  # a logged image file larger than this is not read for a thumbnail


def png_data_url(image, size: int = THUMBNAIL) -> str:
    """A PIL image as a small PNG data URL."""
    image = image.convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def media_thumbnail(source: object) -> str | None:
    """A thumbnail of an image lmms-eval logged under ``input_media`` (0.7.x: the document's image as a
    ``data:image/...;base64`` URL when its bytes were in the document, or a local path), re-encoded here as a small
    PNG; None for a URL (the report loads nothing from outside), a missing file or anything that is not an image.

    >>> media_thumbnail("https://example.org/a.png") is None, media_thumbnail("data:image/png;base64,!!") is None
    (True, True)
    """
    if not isinstance(source, str):
        return None
    try:
        from PIL import Image

        if source.startswith("data:image/"):
            header, _, data = source.partition(",")
            if ";base64" not in header:
                return None
            raw = base64.b64decode(data, validate=True)
        elif source.startswith(("http://", "https://", "file://")):
            return None
        else:
            path = Path(source)
            if not path.is_file() or path.stat().st_size > MAX_IMAGE_BYTES:
                return None
            raw = path.read_bytes()
        with Image.open(io.BytesIO(raw)) as image:
            return png_data_url(image)
    except Exception:  # noqa: BLE001 - a report without a thumbnail beats no report; the row still shows the text
        return None


def log_thumbnails(run_path: str | Path, task: str, doc_ids: set[int]) -> dict[int, str]:
    """Thumbnails of ``doc_ids`` of ``task`` from the run's sample log (its lines' ``input_media``)."""
    try:
        run = {"_file": runs.find_results_file(Path(run_path), "run")}
        path = runs.sample_log_path(run, task)
        lines = runs.read_regular(path, "run").splitlines() if path is not None and path.is_file() else []
    except Exception:  # noqa: BLE001 - the comparison read these runs already; a thumbnail is optional
        return {}
    found = {}
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("doc_id") in doc_ids and row["doc_id"] not in found:
            media = row.get("input_media")
            image = media_thumbnail(media[0]) if isinstance(media, list) and media else None
            if image:
                found[row["doc_id"]] = image
    return found


def shown_samples(forgotten: Sequence[Mapping], learned: Sequence[Mapping], pre: str | Path | None,
                  thumbnail: Callable[[str, int], str | None] | None = None) -> list[dict]:
    """The first :data:`SAMPLES_PER_TASK` forgotten and learned samples per arm and task, each with ``image``: the
    caller's ``thumbnail(task, doc_id)`` where it gives one, else the image the pre run's sample log carries."""
    samples = []
    count: dict[tuple, int] = {}
    for row in [*forgotten, *learned]:
        kind = row.get("kind", "forgotten")
        key = (row["method"], row["task"], kind)
        if count.get(key, 0) < SAMPLES_PER_TASK:
            count[key] = count.get(key, 0) + 1
            samples.append({**row, "kind": kind, "image": thumbnail(row["task"], row["doc_id"]) if thumbnail else None})
    missing: dict[str, set[int]] = {}
    for s in samples:
        if s["image"] is None:
            missing.setdefault(s["task"], set()).add(s["doc_id"])
    if pre is not None:
        for task, ids in missing.items():
            images = log_thumbnails(pre, task, ids)
            for s in samples:
                if s["task"] == task and s["image"] is None:
                    s["image"] = images.get(s["doc_id"])
    return samples


def kind_changes(kinds: Sequence[Mapping], judgements: Sequence[str]) -> list[dict]:
    """Answer kinds before and after, as changes: ``{task, arm, cells: [(kind, "0 → 37 (+37)", tone)]}`` from the
    study's ``[{task, pre: {kind: count}, arms: {arm: {kind: count}}}]``.

    >>> kind_changes([{"task": "t", "pre": {"correct": 10, "downstream_label": 0},
    ...                "arms": {"lora": {"correct": 4, "downstream_label": 37}}}],
    ...              ["correct", "downstream_label"])  # doctest: +NORMALIZE_WHITESPACE
    [{'task': 't', 'arm': 'lora', 'cells': [('correct', '10 → 4 (-6)', 'neg'),
                                            ('downstream_label', '0 → 37 (+37)', 'neg')]}]
    """
    rows = []
    for k in kinds:
        for arm, counts in k["arms"].items():
            cells = []
            for kind in judgements:
                before, after = k["pre"].get(kind, 0), counts.get(kind, 0)
                change = after - before
                good = change > 0 if kind == "correct" else change < 0
                tone = "" if change == 0 else "pos" if good else "neg"
                cells.append((kind, f"{before} → {after} ({change:+d})" if change else f"{before} → {after} (0)", tone))
            rows.append({"task": k["task"], "arm": arm, "cells": cells})
    return rows


def _number(value, digits: int = 1, sign: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{'+' if sign else ''}.{digits}f}"


def render_html(report: Mapping, forgotten: Sequence[Mapping] = (), learned: Sequence[Mapping] = (), *,
                title: str | None = None, scope: str | None = None,
                thumbnail: Callable[[str, int], str | None] | None = None, kinds: Sequence[Mapping] = (),
                judgements: Sequence[str] = (), provenance: str | None = None,
                notes: Mapping[str, Sequence[str]] | None = None) -> str:
    """The report of compare.json's ``report`` as one HTML page.

    ``title`` (default "forgetbench compare: PRE") names the page; ``scope`` is one line under the recommendation
    (default: the tasks of each role). A caller adds: ``thumbnail(task, doc_id)`` (a data URL, e.g. from its own
    copy of the documents), ``kinds`` with their ``judgements`` (answer kinds before and after each arm, shown as
    changes) and ``provenance``: HTML it rendered itself, escaped (a :class:`markupsafe.Markup`, or it is escaped
    here), placed in the provenance section; ``notes``: per arm, plain-text lines shown under its headline (the
    study's: "tuned elsewhere ...", what it trained on, replay that flatters F), escaped like every value.
    """
    from jinja2 import Environment, PackageLoader
    from markupsafe import Markup

    methods = render.methods_of(report)
    first = next(iter(methods.values()))
    roles = {role: [t for t, r in first["tasks"].items() if r["role"] == role] for role in ("downstream", "upstream")}
    pareto = report.get("pareto", list(methods))
    plot = plots.ef_plot(methods, pareto, formats=("png",))["png"]
    curves = {name: m["probe"]["curve"] for name, m in methods.items() if (m.get("probe") or {}).get("curve")}
    budget = (report.get("power") or {}).get("budget")
    probe = plots.probe_plot(curves, budget) if curves else None
    rows = [{"arm": name, "task": task, "cells": columns.html_cells(r)}
            for name, m in methods.items() for task, r in m["tasks"].items()]
    env = Environment(loader=PackageLoader("forgetbench.compare", "templates"), autoescape=True,
                      keep_trailing_newline=True)
    return env.get_template("report.html.j2").render(
        title=title or f"forgetbench compare: {report.get('pre')}",
        scope=scope or (f"Downstream (E): {', '.join(roles['downstream'])}. "
                        f"Upstream (F): {', '.join(roles['upstream'])}."),
        recommendation=report.get("recommendation") or recommend.recommend(
            methods, budget or 2.0, (report.get("bootstrap") or {}).get("confidence", 0.95)),
        methods=methods, pareto=pareto,
        sentences={name: render.arm_sentence(name, m) for name, m in methods.items()},
        bootstrap=report.get("bootstrap") or {}, power=report.get("power") or {},
        plot="data:image/png;base64," + base64.b64encode(plot).decode(),
        probe="data:image/png;base64," + base64.b64encode(probe).decode() if probe else None,
        probes={name: m["probe"] for name, m in methods.items() if m.get("probe")},
        header=columns.html_header(), rows=rows,
        kinds=kind_changes(kinds, judgements) if kinds else [], judgements=list(judgements),
        samples=shown_samples(forgotten, learned, report.get("pre"), thumbnail),
        pre=report.get("pre"), posts={name: m.get("post") for name, m in methods.items()},
        notes={name: list((notes or {}).get(name) or ()) for name in methods},
        provenance=provenance if isinstance(provenance, Markup) or provenance is None else Markup.escape(provenance),
        number=_number)
