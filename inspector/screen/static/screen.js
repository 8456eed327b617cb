// The operator's screen: one EventSource on /events, each message the whole picture of the line (view.py's
// Snapshot); this file only draws it. Text goes in through textContent, never as HTML.
"use strict";
const COLOURS = {1: "#d62728", 2: "#2ca02c", 3: "#1f77b4", 4: "#ff9f1c"};
const NAMES = {1: "class 1 (pits, spots)", 2: "class 2 (vertical marks)", 3: "class 3 (scratches, patches)",
               4: "class 4 (dark regions)"};
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function clock(ts) {
  return ts ? new Date(ts * 1000).toLocaleTimeString() : "-";
}

function header(s) {
  $("line").textContent = s.line;
  const c = s.coil || {};
  $("coil-name").textContent = c.coil || "-";
  const g = $("coil-grade");
  g.textContent = c.grade || "-";
  g.className = "grade" + (c.grade === "hold" ? " hold" : "");
  g.title = c.decided_by || "";
  $("coil-length").textContent = c.length_mm ? `${(c.length_mm / 1000).toFixed(1)} m so far` : "";
  const w = $("workers");
  w.replaceChildren();
  if (!s.workers.length) w.append(el("span", "no worker", "notready"));
  for (const k of s.workers) {
    const fps = k.fps === null ? "-" : k.fps.toFixed(1);
    const t = `${k.name}: ${k.ready ? "ready" : "NOT READY"}, ${fps} fps, lag ${k.lag ?? "-"}`;
    w.append(el("span", t, k.ready ? "ready" : "notready"));
  }
  const err = $("error");
  err.hidden = !s.error;
  err.textContent = s.error ? `Reading the line failed: ${s.error} (the picture below is the last good one)` : "";
}

function alarms(s) {
  const ul = $("alarms");
  ul.replaceChildren();
  $("alarm-count").textContent = s.alarms.length;
  if (!s.alarms.length) ul.append(el("li", "none", "none"));
  for (const a of s.alarms) {
    const li = el("li", a.text);
    li.dataset.id = a.id;
    ul.append(li);
  }
  const log = $("alarm-log");
  log.replaceChildren();
  for (const t of s.alarm_log.slice(0, 12)) log.append(el("li", `${clock(t.ts)} ${t.state}: ${t.text}`));
}

const shown = {};
function previews(s) {
  const box = $("previews");
  for (const cam of s.cameras) {
    let fig = box.querySelector(`figure[data-camera="${CSS.escape(cam.name)}"]`);
    if (!fig) {
      fig = el("figure");
      fig.dataset.camera = cam.name;
      const img = el("img");
      img.alt = `latest frame of camera ${cam.name}`;
      img.dataset.camera = cam.name;
      fig.append(img, el("figcaption"));
      box.append(fig);
    }
    const p = cam.preview;
    const cap = fig.querySelector("figcaption");
    if (!p) {
      cap.textContent = `${cam.name}: no preview (camera silent, or previews off)`;
      continue;
    }
    const stamp = `${p.seq}-${p.ts}`;
    if (shown[cam.name] !== stamp) {
      shown[cam.name] = stamp;
      const img = fig.querySelector("img");
      img.src = `/preview?camera=${encodeURIComponent(cam.name)}&s=${encodeURIComponent(stamp)}`;
      img.dataset.stamp = stamp;
    }
    const where = p.coil ? `coil ${p.coil} at ${((p.pos_mm || 0) / 1000).toFixed(2)} m` : "no coil";
    const cls = p.classes.length ? `classes ${p.classes.join(", ")}` : "no defect";
    cap.textContent = `${cam.name} (${cam.surface || "?"}) seq ${p.seq}, ${clock(p.ts)}, ${where}, ${cls}`;
  }
}

function strip(s) {
  const cv = $("strip");
  const ctx = cv.getContext("2d");
  const W = cv.width, H = cv.height, left = 70, right = 90, gap = 26;
  ctx.clearRect(0, 0, W, H);
  const c = s.coil || {};
  const counts = c.defects ? Object.entries(c.defects).map(([k, v]) => `${k}:${v}`).join(" ") : "";
  $("coil-counts").textContent = c.coil ? `(defects by class ${counts}; periodic marks ${c.periodic.length})` : "";
  cv.dataset.boxes = c.boxes ? c.boxes.length : 0;
  cv.dataset.coil = c.coil || "";
  if (!c.coil) {
    ctx.fillStyle = "#9aa0a6";
    ctx.font = "16px sans-serif";
    ctx.fillText("no coil yet (the coils service has folded no event)", left, H / 2);
    return;
  }
  const length = Math.max(c.length_mm, 1);
  const panel = (H - gap * 3) / 2;
  const X = (mm) => left + (mm / length) * (W - left - right);
  c.surfaces.forEach((surface, si) => {
    const top = gap + si * (panel + gap);
    const cams = Object.entries(c.cameras).filter(([, p]) => p.surface === surface);
    const lo = Math.min(...cams.map(([, p]) => p.x0_mm), 0), hi = Math.max(...cams.map(([, p]) => p.x1_mm), 1600);
    const Y = (mm) => top + panel - ((mm - lo) / (hi - lo)) * panel;
    ctx.fillStyle = "#bdc1c6";
    ctx.font = "12px sans-serif";
    ctx.fillText(`${surface} surface`, 4, top + 12);
    for (const [name, p] of cams) {
      ctx.fillStyle = "#2b2f35";
      ctx.fillRect(X(0), Y(p.x1_mm), X(length) - X(0), Y(p.x0_mm) - Y(p.x1_mm));
      ctx.fillStyle = "#9aa0a6";
      ctx.fillText(name, X(length) + 6, (Y(p.x0_mm) + Y(p.x1_mm)) / 2 + 4);
      for (const [a, b] of c.gaps_mm[name] || []) {  // uninspected: shaded and hatched
        const x0 = X(a), x1 = X(b), y0 = Y(p.x1_mm), y1 = Y(p.x0_mm);
        ctx.fillStyle = "rgba(154,160,166,0.45)";
        ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
        ctx.strokeStyle = "rgba(95,99,104,0.9)";
        ctx.beginPath();
        for (let x = x0 - (y1 - y0); x < x1; x += 8) {
          ctx.moveTo(Math.max(x, x0), y1 - Math.max(0, x0 - x));
          ctx.lineTo(Math.min(x + (y1 - y0), x1), y0 + Math.max(0, x + (y1 - y0) - x1));
        }
        ctx.stroke();
      }
    }
    if (!cams.length) ctx.fillText(`no camera on the ${surface} surface`, left, top + panel / 2);
    for (const [cls, sIdx, x0, x1, y0, y1] of c.boxes) {
      if (sIdx !== si) continue;
      const w = Math.max(X(y1) - X(y0), 3), h = Math.max(Y(x0) - Y(x1), 3);
      ctx.fillStyle = COLOURS[cls] || "#fff";
      ctx.fillRect((X(y0) + X(y1)) / 2 - w / 2, (Y(x0) + Y(x1)) / 2 - h / 2, w, h);
    }
    for (const m of c.periodic) {
      if (m.surface !== surface) continue;
      ctx.strokeStyle = "#fff";
      ctx.setLineDash([5, 4]);
      ctx.beginPath();
      ctx.moveTo(X(m.first_mm), Y(m.x_mm));
      ctx.lineTo(X(m.first_mm + (m.repeats - 1) * m.pitch_mm), Y(m.x_mm));
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#fff";
      ctx.fillText(`pitch ${m.pitch_mm.toFixed(0)} mm${m.roll ? ", roll " + m.roll : ""} x${m.repeats}`,
                   X(m.first_mm), Y(m.x_mm) - 8);
    }
  });
  ctx.fillStyle = "#9aa0a6";
  for (let m = 0; m <= length / 1000; m += Math.max(1, Math.ceil(length / 10000))) {
    ctx.fillText(`${m} m`, X(m * 1000) - 8, H - 6);
  }
}

function defects(s) {
  const body = $("defects").querySelector("tbody");
  body.replaceChildren();
  for (const d of s.defects) {
    const tr = el("tr");
    const cls = el("td");
    const sw = el("span", null, "sw");
    sw.style.background = COLOURS[d.class_id] || "#fff";
    cls.append(sw, document.createTextNode(d.class_id));
    const ev = el("td");
    for (const path of d.evidence) {
      const img = el("img");
      img.src = "/evidence/" + path.split("/").map(encodeURIComponent).join("/");
      img.alt = `evidence crop of a class ${d.class_id} defect`;
      ev.append(img);
    }
    if (!d.evidence.length) ev.append(el("span", "-", "muted"));
    const at = d.pos_mm === null ? "-" : (d.pos_mm / 1000).toFixed(2);
    tr.append(el("td", clock(d.ts)), el("td", d.camera), cls, el("td", d.coil || "-"), el("td", at),
              el("td", d.area_px), ev);
    body.append(tr);
  }
}

function reports(s) {
  const body = $("reports").querySelector("tbody");
  body.replaceChildren();
  for (const r of s.reports) {
    const a = el("a", r.report);
    a.href = "/reports/" + encodeURIComponent(r.report);
    const link = el("td");
    link.append(a);
    const n = ["1", "2", "3", "4"].map((k) => r.defects[k] ?? 0).join("/");
    const tr = el("tr");
    tr.append(el("td", r.coil), el("td", r.grade), el("td", (r.length_mm / 1000).toFixed(1)), el("td", n), link);
    body.append(tr);
  }
}

function legend() {
  const box = $("legend");
  for (const k of [1, 2, 3, 4]) {
    const s = el("span");
    const sw = el("span", null, "sw");
    sw.style.background = COLOURS[k];
    s.append(sw, document.createTextNode(NAMES[k]));
    box.append(s);
  }
  const u = el("span");
  const sw = el("span", null, "sw");
  sw.style.background = "rgba(154,160,166,0.6)";
  u.append(sw, document.createTextNode("uninspected"));
  box.append(u);
}

function draw(s) {
  header(s);
  alarms(s);
  previews(s);
  strip(s);
  defects(s);
  reports(s);
  document.body.dataset.updated = s.ts;
}

legend();
const source = new EventSource("/events");
source.addEventListener("state", (e) => {
  $("conn").textContent = `live, ${new Date().toLocaleTimeString()}`;
  draw(JSON.parse(e.data));
});
source.onerror = () => { $("conn").textContent = "connection lost, reconnecting..."; };
