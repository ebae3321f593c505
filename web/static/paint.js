// Drawing 28x28 images on canvases, for app.js. Plain JavaScript, no build step.
"use strict";

const SIDE = 28;
// full colour in the perturbation panel: a change of PERTURBATION_SCALE (the eps slider's end)
const PERTURBATION_SCALE = 0.5;

// a flat array of SIDE * SIDE numbers as rows
function rows(flat) {
  return Array.from({ length: SIDE }, (_, r) => Array.from(flat.slice(r * SIDE, (r + 1) * SIDE)));
}

// draw a 28x28 array (rows of numbers) on a canvas; colour(v) -> [r, g, b]
function paint(canvas, image, colour) {
  const small = document.createElement("canvas");
  small.width = small.height = SIDE;
  const ctx = small.getContext("2d");
  const pixels = ctx.createImageData(SIDE, SIDE);
  image.flat().forEach((v, i) => pixels.data.set([...colour(v), 255], 4 * i));
  ctx.putImageData(pixels, 0, 0);
  const big = canvas.getContext("2d");
  big.imageSmoothingEnabled = false;
  big.drawImage(small, 0, 0, canvas.width, canvas.height);
}

const grey = (v) => [255 * v, 255 * v, 255 * v];

// white where nothing changed, red where a pixel brightens, blue where it darkens; full colour
// at a change of PERTURBATION_SCALE, so that the panel deepens as eps grows
function signed(v) {
  const fade = 255 * (1 - Math.min(1, Math.abs(v) / PERTURBATION_SCALE));
  return v > 0 ? [255, fade, fade] : [fade, fade, 255];
}
