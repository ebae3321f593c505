// The page: a digit (a test image or a drawing) goes to POST /api/v1/attack with the chosen
// model, attack and eps; the answer is drawn as original | perturbation x10 | adversarial, with
// the probabilities of both images. Plain JavaScript, no build step, nothing from elsewhere.
"use strict";

const SIDE = 28;
const $ = (id) => document.getElementById(id);
const state = { image: new Float32Array(SIDE * SIDE), busy: false, again: false };

// the page's calls need no key: the server limits them per address (429 + Retry-After)
async function api(path, body) {
  for (;;) {
    const response = await fetch(path, body === undefined ? {}
      : { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify(body) });
    const data = await response.json();
    if (response.status === 429) {
      await new Promise((done) => setTimeout(done, 1000 * Number(response.headers.get("Retry-After") || 1)));
      continue;
    }
    if (!response.ok) throw new Error(data.error);
    return data;
  }
}

// draw a 28x28 array (rows of numbers) on a canvas; colour(v) -> [r, g, b]
function paint(canvas, rows, colour) {
  const small = document.createElement("canvas");
  small.width = small.height = SIDE;
  const ctx = small.getContext("2d");
  const pixels = ctx.createImageData(SIDE, SIDE);
  rows.flat().forEach((v, i) => {
    const [r, g, b] = colour(v);
    pixels.data.set([r, g, b, 255], 4 * i);
  });
  ctx.putImageData(pixels, 0, 0);
  const big = canvas.getContext("2d");
  big.imageSmoothingEnabled = false;
  big.drawImage(small, 0, 0, canvas.width, canvas.height);
}

const grey = (v) => [255 * v, 255 * v, 255 * v];
// the perturbation x10: red where a pixel brightens, blue where it darkens
const signed = (v) => {
  const m = Math.min(1, Math.abs(10 * v)) * 255;
  return v > 0 ? [m, 0, 0] : [0, 0, m];
};

function rows(flat) {
  return Array.from({ length: SIDE }, (_, r) => Array.from(flat.slice(r * SIDE, (r + 1) * SIDE)));
}

function bars(element, probs, other) {
  const top = probs.indexOf(Math.max(...probs));
  element.replaceChildren(...probs.flatMap((p, c) => {
    const label = document.createElement("span");
    label.textContent = c;
    const bar = document.createElement("div");
    bar.className = c === top ? "bar top" : "bar";
    bar.style.width = `${Math.max(100 * p, 0.5)}%`;
    const value = document.createElement("span");
    value.textContent = `${(100 * p).toFixed(1)}%`;
    return [label, bar, value];
  }));
}

function setLabel(element, label, probs, changed) {
  element.textContent = `${label} (${(100 * probs[label]).toFixed(1)}%)`;
  element.className = changed ? "changed" : "";
}

// one attack at a time; a change while one runs asks for one more run with the latest settings
async function recompute() {
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  try {
    const attack = $("attack").value;
    const body = { model: document.querySelector("input[name=model]:checked").value, attack,
                   eps: Number($("eps").value), image: rows(state.image) };
    if (attack === "targeted_pgd") body.target = Number($("target").value);
    const r = await api("/api/v1/attack", body);
    paint($("original"), rows(state.image), grey);
    paint($("perturbation"), r.perturbation, signed);
    paint($("adversarial"), r.adversarial, grey);
    setLabel($("label-before"), r.label_before, r.probs_before, false);
    setLabel($("label-after"), r.label_after, r.probs_after, r.label_after !== r.label_before);
    bars($("bars-before"), r.probs_before);
    bars($("bars-after"), r.probs_after);
    $("status").textContent = "";
  } catch (error) {
    $("status").textContent = error.message;
  } finally {
    state.busy = false;
    if (state.again) { state.again = false; recompute(); }
  }
}

// the drawing canvas shows state.image at 10x; drawing paints a soft round brush into it
function showDrawing() { paint($("draw"), rows(state.image), grey); }

function brush(event) {
  const box = $("draw").getBoundingClientRect();
  const x = (event.clientX - box.left) / box.width * SIDE;
  const y = (event.clientY - box.top) / box.height * SIDE;
  for (let r = 0; r < SIDE; r++) {
    for (let c = 0; c < SIDE; c++) {
      const d = Math.hypot(c + 0.5 - x, r + 0.5 - y);
      const ink = Math.max(0, Math.min(1, 1.6 - d));
      state.image[r * SIDE + c] = Math.max(state.image[r * SIDE + c], ink);
    }
  }
  showDrawing();
}

function useImage(flat) {
  state.image = Float32Array.from(flat);
  showDrawing();
  recompute();
}

async function start() {
  const info = await api("/api/v1/models");
  info.models.forEach((m, i) => {
    const label = document.createElement("label");
    const pct = (v) => `${(100 * v).toFixed(1)}%`;
    label.innerHTML = `<input type="radio" name="model" value="${m.name}"${i ? "" : " checked"}>
      <b>${m.name}</b>: ${m.what}; clean ${pct(m.clean)}, FGS ${pct(m.fgs)},
      PGD-20 ${pct(m.pgd20)}, worst case ${pct(m.robust)} (eps ${m.eps})`;
    $("models").append(label);
  });
  for (let c = 0; c < 10; c++) $("target").append(new Option(c, c));
  const seeds = (await api("/api/v1/seeds")).seeds;
  seeds.forEach((s, i) => {
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = SIDE;
    canvas.className = "seed" + (i === seeds.length - 1 ? " wrong" : "");
    canvas.title = `test image ${s.index}, label ${s.label}` +
      (i === seeds.length - 1 ? " (the first model gets it wrong)" : "");
    paint(canvas, s.image, grey);
    canvas.addEventListener("click", () => {
      document.querySelectorAll(".seed").forEach((e) => e.classList.remove("chosen"));
      canvas.classList.add("chosen");
      useImage(s.image.flat());
    });
    $("seeds").append(canvas);
  });
  let drawing = false;
  $("draw").addEventListener("pointerdown", (e) => { drawing = true; brush(e); });
  $("draw").addEventListener("pointermove", (e) => { if (drawing) brush(e); });
  window.addEventListener("pointerup", () => { if (drawing) { drawing = false; recompute(); } });
  $("clear").addEventListener("click", () => useImage(new Float32Array(SIDE * SIDE)));
  $("eps").addEventListener("input", () => {
    $("eps-value").textContent = Number($("eps").value).toFixed(2);
    recompute();
  });
  $("attack").addEventListener("change", () => {
    $("target-label").hidden = $("attack").value !== "targeted_pgd";
    recompute();
  });
  $("target").addEventListener("change", recompute);
  $("models").addEventListener("change", recompute);
  if (seeds.length) document.querySelector(".seed").click();
}

start().catch((error) => { $("status").textContent = error.message; });
