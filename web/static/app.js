// The page: one digit (a test image or a drawing) attacked with the same attack and eps on each
// served model (POST /api/v1/attack, one call a model), each model's attacked image, perturbation
// and verdict side by side; one-click lessons from lessons.json (written by web/lessons.py from
// measurements). Plain JavaScript, no build step, nothing from elsewhere; paint.js draws.
"use strict";

const $ = (id) => document.getElementById(id);
const NAMES = { standard: "Standard", adversarial: "FGS-trained", pgd: "PGD-trained",
                ibp: "IBP-trained" };
const FOOLED = "fooled", RIGHT = "still right", WRONG = "the model was already wrong";
const state = { image: new Float32Array(SIDE * SIDE), seed: null, lesson: null, models: [],
                seeds: [], busy: false, again: false, retry: null };

class Unreachable extends Error {}

// the page's calls need no key: the server limits them per address (429 + Retry-After)
async function api(path, body) {
  for (;;) {
    let response, data;
    try {
      response = await fetch(path, body === undefined ? {}
        : { method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify(body) });
      data = await response.json();
    } catch (error) {
      throw new Unreachable(error.message);
    }
    if (response.status === 429) {
      const wait = Number(response.headers.get("Retry-After") || 1);
      await new Promise((done) => setTimeout(done, 1000 * wait));
      continue;
    }
    if (!response.ok) throw new Error(data.error);
    return data;
  }
}

// against the true label; for a drawn digit (truth null), against the model's own clean answer
function verdict(truth, before, after) {
  if (truth !== null && before !== truth) return WRONG;
  return after === (truth === null ? before : truth) ? RIGHT : FOOLED;
}

const pct = (p) => `${(100 * p).toFixed(1)}%`;

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function figure(className, caption) {
  const f = element("figure", className);
  const canvas = element("canvas");
  canvas.width = canvas.height = 112;
  f.append(canvas, element("figcaption", "", caption));
  return f;
}

function modelCard(m) {
  const card = element("article", "model");
  card.dataset.model = m.name;
  card.title = m.what;
  card.append(element("h3", "", NAMES[m.name] || m.name),
              element("p", "about", `accuracy: clean ${pct(m.clean)}, ` +
                                    `PGD-20 at eps ${m.eps}: ${pct(m.pgd20)}` +
                                    (m.certified ? `, certified ${pct(m.certified)}` : "")));
  const pair = element("div", "pair");
  pair.append(figure("adversarial", "attacked"), figure("perturbation", "perturbation"));
  card.append(pair, element("p", "reads", "-"), element("p", "verdict", "-"),
              element("p", "proof", "-"));
  return card;
}

function settings() {
  const attack = $("attack").value;
  return { seed: state.seed ? state.seed.index : null, attack, eps: Number($("eps").value),
           target: attack === "targeted_pgd" ? Number($("target").value) : null };
}

function show(shown, seed, image, answers) {
  paint($("original"), rows(image), grey);
  $("digit-caption").textContent = seed ? `test image ${seed.index}, true label ${seed.label}`
                                        : "drawn by you";
  const truth = seed ? seed.label : null;
  const said = answers.map((r, i) => {
    const m = state.models[i], card = document.querySelector(`[data-model="${m.name}"]`);
    paint(card.querySelector(".adversarial canvas"), r.adversarial, grey);
    paint(card.querySelector(".perturbation canvas"), r.perturbation, signed);
    const before = r.label_before, after = r.label_after;
    card.querySelector(".reads").textContent = `reads ${before} (${pct(r.probs_before[before])})` +
                                               ` → ${after} (${pct(r.probs_after[after])})`;
    const v = verdict(truth, before, after), out = card.querySelector(".verdict");
    out.textContent = v;
    out.dataset.verdict = v === FOOLED ? "fooled" : v === RIGHT ? "right" : "wrong";
    // the interval bounds' proof (nn/interval.py): no image within eps can change the reading
    const proof = card.querySelector(".proof");
    proof.textContent = r.certified ? `certified at this eps: no change within ${shown.eps.toFixed(2)} alters ${before}`
                                    : "not certified at this eps";
    proof.dataset.certified = String(r.certified);
    return `${NAMES[m.name] || m.name} ${v}` + (v === RIGHT ? "" : ` (reads ${after})`);
  });
  const what = $("attack").querySelector(`[value="${shown.attack}"]`).textContent.split(":")[0];
  $("summary").textContent = `${seed ? `Test digit ${seed.label}` : "Your drawing"}, ${what} at ` +
    `eps ${shown.eps.toFixed(2)}: ${said.join("; ")}.`;
  $("results").dataset.shown = JSON.stringify(shown);
}

// a blank drawing: nothing to attack yet
function waitForDrawing() {
  paint($("original"), rows(state.image), grey);
  $("digit-caption").textContent = "draw a digit in the black box";
  document.querySelectorAll(".model").forEach((card) => {
    paint(card.querySelector(".adversarial canvas"), rows(state.image), grey);
    paint(card.querySelector(".perturbation canvas"), rows(state.image), signed);
    card.querySelector(".reads").textContent = "-";
    const out = card.querySelector(".verdict");
    out.textContent = "-";
    delete out.dataset.verdict;
    card.querySelector(".proof").textContent = "-";
    delete card.querySelector(".proof").dataset.certified;
  });
  $("summary").textContent = "Draw a digit in the black box to attack it.";
  delete $("results").dataset.shown;
}

function setBusy(busy) {
  $("results").setAttribute("aria-busy", String(busy));
  clearTimeout(state.busyTimer);
  if (busy) state.busyTimer = setTimeout(() => $("results").classList.add("busy"), 150);
  else $("results").classList.remove("busy");
}

function setBanner(error) {
  $("banner").hidden = !error;
  $("results").classList.toggle("stale", Boolean(error));
  $("stale-note").hidden = !error;
  if (!error) return;
  $("banner-title").textContent = error instanceof Unreachable
    ? "The server cannot be reached." : "The attack failed.";
  $("banner-text").textContent = error instanceof Unreachable
    ? "The results below are from before and may not match the settings; trying again every 5 s."
    : `The server refused: ${error.message}`;
  if (error instanceof Unreachable && !state.retry) {
    state.retry = setTimeout(() => { state.retry = null; recompute(); }, 5000);
  }
}

// one round of attacks at a time; a change while one runs asks for one more with the latest
async function recompute() {
  if (!state.models.length) return start();
  if (state.busy) { state.again = true; return; }
  state.busy = true;
  setBusy(true);
  const shown = settings(), seed = state.seed, image = state.image.slice();
  if (!seed && !image.some((v) => v > 0)) {
    state.busy = false;
    setBusy(false);
    return waitForDrawing();
  }
  try {
    const body = { attack: shown.attack, eps: shown.eps, image: rows(image),
                   ...(shown.target === null ? {} : { target: shown.target }) };
    const answers = await Promise.all(state.models.map(
      (m) => api("/api/v1/attack", { ...body, model: m.name })));
    show(shown, seed, image, answers);
    setBanner(null);
  } catch (error) {
    setBanner(error);
  } finally {
    state.busy = false;
    setBusy(false);
    if (state.again) { state.again = false; recompute(); }
  }
}

// the drawing canvas shows state.image at 10x; drawing paints a soft round brush into it
function showDrawing() { paint($("draw"), rows(state.image), grey); }

function brush(event) {
  if (state.seed) chooseSeed(null);  // a seed drawn over is no longer that test image
  const box = $("draw").getBoundingClientRect();
  const x = (event.clientX - box.left) / box.width * SIDE;
  const y = (event.clientY - box.top) / box.height * SIDE;
  for (let r = 0; r < SIDE; r++) {
    for (let c = 0; c < SIDE; c++) {
      const ink = Math.max(0, Math.min(1, 1.6 - Math.hypot(c + 0.5 - x, r + 0.5 - y)));
      state.image[r * SIDE + c] = Math.max(state.image[r * SIDE + c], ink);
    }
  }
  showDrawing();
}

function chooseSeed(seed) {
  state.seed = seed;
  document.querySelectorAll(".seed").forEach((b) => {
    b.setAttribute("aria-pressed", String(seed !== null && Number(b.dataset.index) === seed.index));
  });
  if (seed) state.image = Float32Array.from(seed.image.flat());
  else state.image = new Float32Array(SIDE * SIDE);
  showDrawing();
}

function chooseLesson(lesson, button) {
  state.lesson = lesson;
  document.querySelectorAll("#lesson-buttons button").forEach((b) => {
    b.setAttribute("aria-pressed", String(b === button));
  });
  $("lessons").classList.remove("left");
  $("lesson-caption").textContent = lesson.caption;
  $("lesson-numbers").textContent = lesson.numbers;
  $("attack").value = lesson.attack;
  $("target").value = String(lesson.target ?? 0);
  $("target-row").hidden = lesson.attack !== "targeted_pgd";
  $("eps").value = lesson.eps;
  $("eps-value").textContent = Number(lesson.eps).toFixed(2);
  chooseSeed(state.seeds.find((s) => s.index === lesson.seed) || null);
  if (lesson.seed === null) $("drawing").scrollIntoView({ block: "nearest" });
  recompute();
}

// a setting changed by hand: the lesson's caption no longer describes what is shown (drawing
// is what the "drawn by you" lesson asks for)
function leaveLesson(drawn = false) {
  if (drawn && state.lesson && state.lesson.seed === null) return recompute();
  state.lesson = null;
  document.querySelectorAll("#lesson-buttons button").forEach((b) => {
    b.setAttribute("aria-pressed", "false");
  });
  $("lessons").classList.add("left");
  recompute();
}

function seedButton(s, first) {
  const wrong = s.read !== undefined && s.read !== s.label;
  const button = element("button", "seed" + (wrong ? " wrong" : ""));
  button.type = "button";
  button.dataset.index = s.index;
  button.setAttribute("aria-pressed", "false");
  button.setAttribute("aria-label", `test digit ${s.label}, image ${s.index}` +
                                    (wrong ? `, which the ${first} model reads as ${s.read}` : ""));
  const canvas = element("canvas");
  canvas.width = canvas.height = SIDE;
  paint(canvas, s.image, grey);
  button.append(canvas, element("span", "", String(s.label)));
  button.addEventListener("click", () => { chooseSeed(s); leaveLesson(); });
  return button;
}

async function lessons() {
  try {
    return await api("lessons.json");
  } catch (error) {
    return [];  // a server without the measured lessons: the page works without them
  }
}

async function start() {
  let info, seeds;
  try {
    info = await api("/api/v1/models");
    seeds = (await api("/api/v1/seeds")).seeds;
  } catch (error) {
    return setBanner(error);  // and tries again
  }
  const all = await lessons();
  info.models.forEach((m) => $("cards").append(modelCard(m)));
  for (let c = 0; c < 10; c++) $("target").append(new Option(c, c));
  const first = NAMES[info.models[0].name] || info.models[0].name;
  seeds.forEach((s) => $("seeds").append(seedButton(s, first.toLowerCase())));
  const wrong = seeds.find((s) => s.read !== undefined && s.read !== s.label);
  if (wrong) {
    $("seeds-hint").textContent = `The digit framed in red is a ${wrong.label} that the ` +
                                  `${first.toLowerCase()} model already reads as ${wrong.read}.`;
  }
  all.forEach((lesson) => {
    const button = element("button", "", lesson.title);
    button.type = "button";
    button.dataset.lesson = lesson.id;
    button.addEventListener("click", () => chooseLesson(lesson, button));
    $("lesson-buttons").append(button);
  });
  $("lessons").hidden = !all.length;
  Object.assign(state, { models: info.models, seeds });
  if (all.length) return chooseLesson(all[0], $("lesson-buttons").firstChild);
  if (seeds.length) chooseSeed(seeds[0]);
  recompute();
}

function wire() {
  let drawing = false;
  $("draw").addEventListener("pointerdown", (e) => { drawing = true; brush(e); });
  $("draw").addEventListener("pointermove", (e) => { if (drawing) brush(e); });
  window.addEventListener("pointerup", () => {
    if (drawing) { drawing = false; leaveLesson(true); }
  });
  $("clear").addEventListener("click", () => { chooseSeed(null); leaveLesson(true); });
  $("eps").addEventListener("input", () => {
    $("eps-value").textContent = Number($("eps").value).toFixed(2);
    leaveLesson();
  });
  $("attack").addEventListener("change", () => {
    $("target-row").hidden = $("attack").value !== "targeted_pgd";
    leaveLesson();
  });
  $("target").addEventListener("change", () => leaveLesson());
  $("retry").addEventListener("click", () => recompute());
}

wire();
start();
