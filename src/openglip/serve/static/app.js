// The OpenGLIP page: pick or drop an image, type a prompt, POST it to /v1/detect, draw the boxes on a canvas
// laid over the image and list them in a table. Plain JS, no dependencies, works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const input = $("image-input"), dropZone = $("drop-zone"), dropText = $("drop-text");
const promptBox = $("prompt"), threshold = $("threshold"), thresholdValue = $("threshold-value");
const button = $("detect"), statusLine = $("status"), preview = $("preview"), overlay = $("overlay");
const tableBody = document.querySelector("#detections tbody");

let file = null;       // the chosen image
let result = null;     // the last /v1/detect answer
let busy = false;

function setStatus(text, state) {
  statusLine.textContent = text;
  statusLine.dataset.state = state;
}

// a distinct, stable colour per phrase index (the same golden-ratio hue steps as openglip.visualize)
function colour(label) {
  const hue = ((label * 0.618033988749895) % 1) * 360;
  return `hsl(${hue.toFixed(1)}, 85%, 50%)`;
}

function chooseFile(chosen) {
  if (!chosen) return;
  if (chosen.type && !chosen.type.startsWith("image/")) {
    setStatus(`${chosen.name} is not an image`, "error");
    return;
  }
  file = chosen;
  result = null;
  dropText.textContent = chosen.name;
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(chosen);
  renderTable();
  button.disabled = false;
  setStatus("Type a prompt and press Detect.", "ready");
}

function drawBoxes() {
  const ctx = overlay.getContext("2d");
  const width = preview.clientWidth, height = preview.clientHeight;
  const dpr = window.devicePixelRatio || 1;
  overlay.width = Math.round(width * dpr);
  overlay.height = Math.round(height * dpr);
  overlay.style.width = `${width}px`;
  overlay.style.height = `${height}px`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  if (!result || !width) return;
  const sx = width / result.image.width, sy = height / result.image.height;
  ctx.font = "13px system-ui, sans-serif";
  ctx.lineWidth = 2;
  for (const det of result.detections) {
    const [x1, y1, x2, y2] = det.box;
    const c = colour(det.label);
    ctx.strokeStyle = c;
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    const text = `${det.phrase} ${det.score.toFixed(2)}`;
    const tw = ctx.measureText(text).width + 6;
    const ty = Math.max(0, y1 * sy - 17);
    ctx.fillStyle = c;
    ctx.fillRect(x1 * sx, ty, tw, 17);
    ctx.fillStyle = "#000";
    ctx.fillText(text, x1 * sx + 3, ty + 13);
  }
}

function renderTable() {
  tableBody.replaceChildren();
  if (!result) return;
  result.detections.forEach((det, i) => {
    const row = document.createElement("tr");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = colour(det.label);
    const phrase = document.createElement("td");
    phrase.append(swatch, document.createTextNode(det.phrase));   // text, never HTML
    const cells = [String(i + 1), null, det.score.toFixed(3), ...det.box.map((v) => v.toFixed(1))];
    cells.forEach((value) => {
      if (value === null) { row.append(phrase); return; }
      const td = document.createElement("td");
      td.textContent = value;
      row.append(td);
    });
    tableBody.append(row);
  });
}

async function detect() {
  if (!file || busy) return;
  busy = true;
  button.disabled = true;
  setStatus("Detecting…", "busy");
  const form = new FormData();
  form.append("image", file, file.name || "image");
  form.append("prompt", promptBox.value);
  form.append("threshold", threshold.value);
  try {
    const response = await fetch("/v1/detect", { method: "POST", body: form });
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON: reported below */ }
    if (!response.ok) {
      result = null;
      const why = body && body.error ? `${body.error}: ${body.detail}` : `HTTP ${response.status}`;
      setStatus(`Error ${response.status}: ${why}`, "error");
    } else {
      result = body;
      const n = result.detections.length;
      const t = result.timing;
      setStatus(`${n} detection${n === 1 ? "" : "s"} in ${t.total_ms.toFixed(0)} ms (batch of ${t.batch_size}).`, "done");
    }
  } catch (err) {
    result = null;
    setStatus(`Error: the server did not answer (${err})`, "error");
  } finally {
    busy = false;
    button.disabled = !file;
    renderTable();
    drawBoxes();
  }
}

input.addEventListener("change", () => chooseFile(input.files[0]));
for (const name of ["dragenter", "dragover"]) {
  dropZone.addEventListener(name, (e) => { e.preventDefault(); dropZone.classList.add("dragging"); });
}
for (const name of ["dragleave", "drop"]) {
  dropZone.addEventListener(name, (e) => { e.preventDefault(); dropZone.classList.remove("dragging"); });
}
dropZone.addEventListener("drop", (e) => chooseFile(e.dataTransfer.files[0]));
$("controls").addEventListener("submit", (e) => { e.preventDefault(); detect(); });
threshold.addEventListener("input", () => { thresholdValue.textContent = Number(threshold.value).toFixed(2); });
threshold.addEventListener("change", () => { if (result) detect(); });   // re-run with the new threshold
preview.addEventListener("load", drawBoxes);
window.addEventListener("resize", drawBoxes);

fetch("/v1/health")
  .then((r) => r.json())
  .then((h) => {
    $("model-info").textContent = `model ${h.model} on ${h.device}, batches of up to ${h.max_batch}`;
    threshold.value = h.default_threshold;
    thresholdValue.textContent = Number(h.default_threshold).toFixed(2);
  })
  .catch(() => { $("model-info").textContent = "server not reachable"; });
