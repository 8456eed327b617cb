"""What a quality engineer opens: the strip map (PNG) and the self-contained HTML page of one coil.

The map draws the coil length left to right and the strip width bottom to top, one panel per surface (top, bottom):
each camera's view as a pale band, its uninspected stretches (missing and rejected frames) hatched grey, defects
as boxes coloured by class (enlarged to stay visible on a coil thousands of times longer than wide), and each
periodic mark as a dashed line through its repeats, labelled with its pitch and roll. matplotlib is imported here
only (the Agg backend, no display). Called from the loop thread; the output is a pure function of the report.
"""

from __future__ import annotations

import base64
import html
import io
import time
from typing import Any

import numpy as np

from inspector.config import SURFACES, Config

CLASS_COLOURS = {1: "#d62728", 2: "#2ca02c", 3: "#1f77b4", 4: "#ff9f1c"}  # as in docs/overlays.jpg
CLASS_NAMES = {1: "class 1 (pits, spots)", 2: "class 2 (vertical marks)", 3: "class 3 (scratches, patches)",
               4: "class 4 (dark regions)"}


def strip_map(report: Any, cfg: Config) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    s = report.summary
    length_m = max(s["length_mm"], 1.0) / 1000
    fig = Figure(figsize=(16, 6.4), dpi=100)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, surface in zip(axes, SURFACES, strict=True):
        cams = {n: c for n, c in sorted(report.cameras.items()) if c["surface"] == surface}
        low = min((c["x0_mm"] for c in cams.values()), default=0.0)
        high = max((c["x1_mm"] for c in cams.values()), default=1600.0)
        for name, c in cams.items():
            ax.add_patch(Rectangle((0, c["x0_mm"]), length_m, c["x1_mm"] - c["x0_mm"], color="#eef1f4", zorder=0))
            ax.text(length_m * 1.003, (c["x0_mm"] + c["x1_mm"]) / 2, name, fontsize=7, va="center", clip_on=False)
            for a, b in s["gaps_mm"].get(name, []):
                ax.add_patch(Rectangle((a / 1000, c["x0_mm"]), (b - a) / 1000, c["x1_mm"] - c["x0_mm"],
                                       facecolor="#9aa0a6", alpha=0.55, hatch="///", edgecolor="#5f6368",
                                       linewidth=0, zorder=1))
        if not cams:
            ax.text(0.5, 0.5, f"no camera on the {surface} surface (line.cameras)", transform=ax.transAxes,
                    ha="center", va="center", color="#5f6368")
        mine = [d for d in report.defects if d.surface == surface]
        if mine:
            min_len, min_wid = length_m / 800, (high - low) / 90
            boxes = np.array([[d.y0 / 1000, d.y1 / 1000, d.x0, d.x1] for d in mine])
            centre_y, centre_x = boxes[:, :2].mean(1), boxes[:, 2:].mean(1)
            half_l = np.maximum(boxes[:, 1] - boxes[:, 0], min_len) / 2
            half_w = np.maximum(boxes[:, 3] - boxes[:, 2], min_wid) / 2
            verts = np.stack([np.stack([centre_y - half_l, centre_x - half_w], 1),
                              np.stack([centre_y + half_l, centre_x - half_w], 1),
                              np.stack([centre_y + half_l, centre_x + half_w], 1),
                              np.stack([centre_y - half_l, centre_x + half_w], 1)], 1)
            colours = [CLASS_COLOURS.get(d.class_id, "black") for d in mine]
            ax.add_collection(PolyCollection(verts, facecolors=colours, edgecolors=colours, linewidths=0.3,
                                             zorder=3))
        by_id = {d.id: d for d in report.defects}
        for f in report.findings:
            if f.surface != surface:
                continue
            pts = [by_id[i] for i in f.members]
            ax.plot([d.y_mm / 1000 for d in pts], [d.x_mm for d in pts], "--", color="black", linewidth=0.9,
                    marker="o", markersize=7, markerfacecolor="none", zorder=4)
            label = f"pitch {f.pitch_mm:.1f} mm" + (f", roll {f.roll}" if f.roll else ", no roll matches")
            ax.annotate(f"{label}, x{f.repeats}", (pts[0].y_mm / 1000, pts[0].x_mm), xytext=(4, 9),
                        textcoords="offset points", fontsize=8, zorder=5,
                        bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "black", "lw": 0.5})
        ax.set_xlim(0, length_m)
        ax.set_ylim(low - (high - low) * 0.03, high + (high - low) * 0.03)
        ax.set_ylabel(f"{surface} surface\nacross (mm)")
        ax.grid(True, axis="x", color="#d0d4d8", linewidth=0.5)
    axes[-1].set_xlabel("along the strip, from the head end (m)")
    handles = [Patch(color=CLASS_COLOURS[k], label=CLASS_NAMES[k]) for k in CLASS_COLOURS]
    handles.append(Patch(facecolor="#9aa0a6", hatch="///", edgecolor="#5f6368", label="uninspected"))
    fig.legend(handles=handles, loc="lower center", ncol=5, fontsize=8, frameon=False)
    counts = " ".join(f"{k}:{v}" for k, v in s["defects"].items())
    fig.suptitle(f"coil {s['coil']}: {s['length_mm'] / 1000:.1f} m, grade {s['grade']} ({s['decided_by']}); "
                 f"defects by class {counts}; periodic marks {len(s['periodic'])}", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.95, top=0.92, bottom=0.16, hspace=0.12)
    out = io.BytesIO()
    fig.savefig(out, format="png", metadata={"Software": None})
    return out.getvalue()


_CSS = """body{font-family:system-ui,Segoe UI,Roboto,sans-serif;margin:24px;color:#202124;max-width:1650px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px} .muted{color:#5f6368}
.grade{display:inline-block;padding:2px 12px;border-radius:12px;font-weight:600;color:white;background:#1a73e8}
.hold{background:#d93025} table{border-collapse:collapse;font-size:13px} th,td{padding:4px 10px;
border-bottom:1px solid #e0e0e0;text-align:right} th{background:#f1f3f4} td.l,th.l{text-align:left}
img{width:100%;border:1px solid #dadce0} .sw{display:inline-block;width:10px;height:10px;margin-right:6px}"""


def _table(head: list[str], rows: list[list[Any]], left: int = 1) -> str:
    def cell(tag: str, i: int, v: Any) -> str:
        return f"<{tag}{' class=l' if i < left else ''}>{v}</{tag}>"

    body = "".join("<tr>" + "".join(cell("td", i, v) for i, v in enumerate(r)) + "</tr>" for r in rows)
    return ("<table><tr>" + "".join(cell("th", i, html.escape(h)) for i, h in enumerate(head)) + "</tr>"
            + (body or f"<tr><td class=l colspan={len(head)}>none</td></tr>") + "</table>")


def page(doc: dict[str, Any], png: bytes) -> str:
    """The HTML page: grade and why, the map (inline), per-class table, periodic findings, coverage audit."""
    e = html.escape
    closed = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(doc["closed_ts"]))
    per100, largest = doc["measures"].get("per_100m", {}), doc["measures"].get("max_area_mm2", {})
    classes = [[f"<span class=sw style='background:{CLASS_COLOURS[int(k)]}'></span>{e(CLASS_NAMES[int(k)])}", n,
                "-" if per100.get(k) is None else f"{per100[k]:.1f}", f"{largest.get(k, 0):.0f}"]
               for k, n in doc["defects"].items()]
    marks = [[p["class_id"], e(p["surface"]), f"{p['x_mm']:.1f}", f"{p['pitch_mm']:.1f}",
              e(p["roll"]) if p["roll"] else "<i>no roll matches</i>", p["repeats"], p["missed"],
              f"{p['first_mm'] / 1000:.3f}"] for p in doc["periodic"]]
    audit = [[e(name), e(c["surface"]), f"{c['x0_mm']:.0f} - {c['x1_mm']:.0f}",
              doc["frames"].get(name, {}).get("ok", 0), doc["frames"].get(name, {}).get("rejected", 0),
              f"{100 * doc['coverage'].get(name, 0):.1f}%",
              ", ".join(f"{a / 1000:.3f}-{b / 1000:.3f} m" for a, b in doc["gaps_mm"].get(name, [])) or "none"]
             for name, c in sorted(doc["cameras"].items())]
    fields = doc["defect_fields"]
    top = sorted(doc["defect_rows"], key=lambda d: (-d[fields.index("area_mm2")], d[0]))[:20]
    biggest = [[d[0], d[1], e(d[2]), f"{(d[5] + d[6]) / 2000:.3f}", f"{(d[3] + d[4]) / 2:.0f}",
                f"{d[6] - d[5]:.0f}", f"{d[4] - d[3]:.0f}", f"{d[7]:.0f}", d[8], e(", ".join(d[9]))] for d in top]
    counters = (f"{doc['events']} events folded; {doc['late_events']} late (after the coil's deadline), "
                f"{doc['unknown_camera_events']} from cameras not in line.cameras, {doc['unplaced_events']} without "
                f"pos_mm, {doc['dropped_events']} not stored (coils.max_coil_bytes)")
    grade_class = "grade hold" if doc["grade"] == "hold" else "grade"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Coil {e(doc['coil'])}: grade {e(doc['grade'])}</title>
<style>{_CSS}</style></head><body>
<h1>Coil {e(doc['coil'])} <span class="{grade_class}">{e(doc['grade'])}</span></h1>
<div>{e(doc['decided_by'])}</div>
<div class=muted>length {doc['length_mm'] / 1000:.3f} m; closed {closed} by {e(doc['closed_by'])};
report entry {e(doc['report_id'])} on the coils stream</div>
<h2>Strip map</h2>
<img alt="strip map of coil {e(doc['coil'])}" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Defects per class</h2>
{_table(["class", "defects", "per 100 m", "largest (mm²)"], classes)}
<h2>Periodic marks</h2>
{_table(["class", "surface", "x (mm)", "pitch (mm)", "roll", "repeats", "missed", "first at (m)"], marks, 0)}
<h2>Coverage audit</h2>
{_table(["camera", "surface", "across (mm)", "ok frames", "rejected frames", "coverage", "uninspected"], audit, 2)}
<p class=muted>{e(counters)}</p>
<h2>Largest defects</h2>
{_table(["id", "class", "surface", "at (m)", "x (mm)", "length (mm)", "width (mm)", "area (mm²)", "parts",
         "cameras"], biggest, 0)}
</body></html>
"""
