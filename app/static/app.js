// Sketch search page: a drawing pad (pointer events: mouse, touch and pen), the JSON API, a result grid.
// Strokes are kept as points on a 256 x 256 sheet (the datasets' sketch size) and re-rendered at any scale,
// so the PNG sent to the server has exactly the pen width chosen, whatever the screen.
"use strict";

const SHEET = 256;
const $ = (id) => document.getElementById(id);
const pad = $("pad");
const ctx = pad.getContext("2d");

// Exposed for scripts and the browser tests: what the page sent last and which answer it shows.
const state = window.sketchSearch = {
  strokes: [], current: null, upload: null, uploadImage: null,
  seq: 0, shown: 0, lastPng: null, lastMode: null, lastResponse: null, info: null,
};

// ------------------------------------------------------------------------------------------ drawing
function resizePad() {
  const ratio = window.devicePixelRatio || 1;
  const side = pad.clientWidth;
  pad.width = Math.round(side * ratio);
  pad.height = Math.round(side * ratio);
  render(ctx, pad.width / SHEET);
}

function render(target, scale) {
  target.save();
  target.setTransform(1, 0, 0, 1, 0, 0);
  target.fillStyle = "#fff";
  target.fillRect(0, 0, target.canvas.width, target.canvas.height);
  if (state.uploadImage) {   // the uploaded sketch, fitted into the sheet, under any strokes drawn on it
    const img = state.uploadImage;
    const f = Math.min(target.canvas.width / img.width, target.canvas.height / img.height);
    const w = img.width * f, h = img.height * f;
    target.drawImage(img, (target.canvas.width - w) / 2, (target.canvas.height - h) / 2, w, h);
  }
  target.scale(scale, scale);
  target.strokeStyle = "#000";
  target.fillStyle = "#000";
  target.lineCap = "round";
  target.lineJoin = "round";
  for (const s of state.current ? state.strokes.concat([state.current]) : state.strokes) {
    target.lineWidth = s.width;
    if (s.points.length === 1) {
      const [x, y] = s.points[0];
      target.beginPath();
      target.arc(x, y, s.width / 2, 0, 2 * Math.PI);
      target.fill();
      continue;
    }
    target.beginPath();
    target.moveTo(s.points[0][0], s.points[0][1]);
    for (const [x, y] of s.points.slice(1)) target.lineTo(x, y);
    target.stroke();
  }
  target.restore();
  $("hint").hidden = state.strokes.length > 0 || state.current !== null || state.uploadImage !== null;
}

function sheetPoint(ev) {
  const r = pad.getBoundingClientRect();
  return [(ev.clientX - r.left) * SHEET / r.width, (ev.clientY - r.top) * SHEET / r.height];
}

pad.addEventListener("pointerdown", (ev) => {
  if (ev.button !== 0 && ev.pointerType === "mouse") return;
  ev.preventDefault();
  pad.setPointerCapture(ev.pointerId);
  state.current = {width: Number($("pen").value), points: [sheetPoint(ev)], pointer: ev.pointerId};
  render(ctx, pad.width / SHEET);
});
pad.addEventListener("pointermove", (ev) => {
  if (!state.current || ev.pointerId !== state.current.pointer) return;
  const events = ev.getCoalescedEvents ? ev.getCoalescedEvents() : [ev];
  for (const e of (events.length ? events : [ev])) state.current.points.push(sheetPoint(e));
  render(ctx, pad.width / SHEET);
});
function endStroke(ev) {
  if (!state.current || ev.pointerId !== state.current.pointer) return;
  state.strokes.push({width: state.current.width, points: state.current.points});
  state.current = null;
  render(ctx, pad.width / SHEET);
  if ($("live").checked) search();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  if (state.strokes.length) state.strokes.pop();
  else clearAll();
  render(ctx, pad.width / SHEET);
  if ($("live").checked && hasQuery()) search();
}

function clearAll() {
  state.strokes = [];
  $("class").value = "";                 // "I drew" belonged to the cleared sketch
  state.upload = null;
  state.uploadImage = null;
  $("upload").value = "";
  render(ctx, pad.width / SHEET);
}

function hasQuery() { return state.strokes.length > 0 || state.upload !== null; }

function sheetPng() {
  const off = document.createElement("canvas");
  off.width = SHEET;
  off.height = SHEET;
  render(off.getContext("2d"), 1);
  return off.toDataURL("image/png");
}

// ------------------------------------------------------------------------------------------ searching
function searchUrl() {
  const params = new URLSearchParams({k: $("k").value || "20"});
  if ($("otm").checked) params.set("one_to_many", "1");
  if ($("class").value) params.set("class", $("class").value);
  return "/api/search?" + params.toString();
}

async function search() {
  const seq = ++state.seq;
  let body, headers = {};
  if (state.upload && state.strokes.length === 0) {     // the uploaded file itself, as a multipart form
    body = new FormData();
    body.append("file", state.upload, state.upload.name || "sketch.png");
    state.lastPng = null;
    state.lastMode = "upload";
  } else {                                             // the drawing, rendered on the 256 px sheet
    const png = sheetPng();
    body = await (await fetch(png)).blob();
    headers = {"Content-Type": "image/png"};
    state.lastPng = png;
    state.lastMode = "draw";
  }
  $("search").disabled = true;
  setStatus("searching…");
  let answer, ok;
  try {
    const resp = await fetch(searchUrl(), {method: "POST", body, headers});
    ok = resp.ok;
    answer = await resp.json().catch(() => ({error: `the server answered ${resp.status}`}));
  } catch (err) {
    ok = false;
    answer = {error: `the server cannot be reached (${err})`};
  }
  if (seq !== state.seq) return;                       // a newer search was started meanwhile
  $("search").disabled = false;
  state.lastResponse = answer;
  if (!ok) {
    setStatus(answer.error || "the search failed", true);
  } else {
    showResults(answer);
  }
  state.shown = seq;
  $("results").dataset.seq = String(seq);
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function showResults(answer) {
  const grid = $("results");
  grid.replaceChildren();
  const chosen = $("class").value;
  for (const r of answer.results) {
    const card = document.createElement("div");
    card.className = "card" + (chosen && r.label !== null ? (r.label === chosen ? " hit" : " miss") : "");
    card.dataset.index = String(r.index);
    card.dataset.rank = String(r.rank);
    card.title = r.path;
    const img = document.createElement("img");
    img.src = r.thumb;
    img.alt = r.label || r.path;
    img.loading = "lazy";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = `#${r.rank}`;
    const meta = document.createElement("div");
    meta.className = "meta";
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = r.label !== null ? r.label : r.path.split("/").pop();
    const dist = document.createElement("span");
    dist.className = "dist";
    dist.textContent = r.distance.toFixed(3);
    meta.append(label, dist);
    card.append(img, rank, meta);
    card.addEventListener("click", () => enlarge(r));
    grid.append(card);
  }
  $("empty").hidden = answer.results.length > 0;
  let text = `${answer.results.length} photos in ${answer.ms.toFixed(0)} ms` +
             (answer.one_to_many ? " · one-to-many" : " · Euclidean");
  if (answer.precision_at_k !== undefined) {
    text += ` · precision@${answer.k} for “${answer.class}”: ${answer.precision_at_k.toFixed(2)}`;
  }
  setStatus(text);
}

function enlarge(r) {
  $("lightbox-img").src = r.url;
  $("lightbox-caption").textContent = `#${r.rank} · ${r.label !== null ? r.label + " · " : ""}${r.path} · distance ${r.distance.toFixed(4)}`;
  $("lightbox").hidden = false;
}

// ------------------------------------------------------------------------------------------ set-up
async function loadInfo() {
  const info = state.info = await (await fetch("/api/info")).json();
  const g = info.gallery;
  $("about").textContent = `${info.model} (${info.img_size} px) · ${info.setting || "no setting"} · ` +
    `${g.size} ${g.kind === "zero" ? "unseen-class test photos" : "photos"} · ${info.device}`;
  $("gallery-classes").textContent = galleryClasses(g);
  $("pen").value = info.stroke_width;
  $("pen-value").textContent = info.stroke_width;
  $("k").max = info.max_k;
  $("k").value = info.default_k;
  if (g.labelled) {
    $("class-row").hidden = false;
    for (const name of g.classes) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = name;
      $("class").append(opt);
    }
  }
  const otm = info.one_to_many;
  if (otm) {
    $("otm-mk").textContent = `(M=${otm.M}, K=${otm.K})`;
    $("otm").disabled = otm.status !== "ready";
    $("otm-label").title = otm.status === "ready" ? "cluster matching at the run's selected (M, K)" : otm.status;
    if (otm.status === "fitting") setTimeout(loadOneToMany, 2000);
  } else {
    $("otm-label").classList.add("off");
    $("otm-label").title = `not offered: ${info.one_to_many_reason}`;
  }
}

// What the gallery can answer: a drawing of a class it does not hold still gets the nearest photos it has.
function galleryClasses(g) {
  if (!g.labelled) return `The gallery: ${g.size} photos of ${g.source}, without class names.`;
  const names = g.classes.join(", ");
  if (g.kind === "zero") {
    return `The gallery holds only the ${g.classes.length} unseen classes: ${names}. A drawing of any other ` +
      "class (a seen one, say) returns the nearest photos of these.";
  }
  return `The gallery's ${g.classes.length} classes: ${names}. A drawing of another class returns the nearest of these.`;
}

async function loadOneToMany() {
  const otm = (await (await fetch("/api/info")).json()).one_to_many;
  $("otm").disabled = otm.status !== "ready";
  $("otm-label").title = otm.status === "ready" ? "cluster matching at the run's selected (M, K)" : otm.status;
  if (otm.status === "fitting") setTimeout(loadOneToMany, 2000);
}

$("undo").addEventListener("click", undo);
$("clear").addEventListener("click", () => { clearAll(); setStatus(""); });
$("search").addEventListener("click", () => {
  if (!hasQuery()) { setStatus("the drawing is empty: draw something (or upload a sketch) first", true); return; }
  search();
});
$("pen").addEventListener("input", () => { $("pen-value").textContent = $("pen").value; });
$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  state.strokes = [];
  state.upload = file;
  const img = new Image();
  img.onload = () => { state.uploadImage = img; render(ctx, pad.width / SHEET); };
  img.src = URL.createObjectURL(file);
  search();
});
for (const id of ["otm", "class"]) $(id).addEventListener("change", () => { if (hasQuery()) search(); });
$("k").addEventListener("change", () => { if (hasQuery()) search(); });
$("lightbox").addEventListener("click", () => { $("lightbox").hidden = true; });
document.addEventListener("keydown", (ev) => {
  if (ev.key === "Escape") $("lightbox").hidden = true;
  if ((ev.ctrlKey || ev.metaKey) && ev.key === "z") { ev.preventDefault(); undo(); }
});
window.addEventListener("resize", () => resizePad());
resizePad();
loadInfo().catch((err) => setStatus(`cannot read /api/info (${err})`, true));
