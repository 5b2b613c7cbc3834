// edgecls web page: pick or drop an image, POST it to /classify, draw the top-K as bars.
"use strict";

const $ = (id) => document.getElementById(id);
let previewUrl = null;

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function loadModelInfo() {
  try {
    const response = await fetch("/model");
    const info = await response.json();
    if (!info.success) throw new Error(info.error);
    const [h, w] = info.input_size;
    $("model-file").textContent = info.path;
    $("model-precision").textContent = (info.precision || "").toUpperCase();
    $("model-details").textContent =
      ` · ${info.backbone || info.kind} · ${info.num_classes} classes · input ${h}x${w} · ${info.preprocess.preset} preprocessing`;
    $("topk").max = info.num_classes;
    $("topk").value = Math.min(info.limits.default_topk, info.num_classes);
  } catch (err) {
    $("model-details").textContent = `could not read /model: ${err.message}`;
  }
}

function drawResults(predictions) {
  const list = $("results");
  list.replaceChildren();
  for (const { label, probability } of predictions) {
    const item = document.createElement("li");
    item.dataset.label = label;
    item.dataset.probability = String(probability);
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = label;
    name.title = label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(probability * 100).toFixed(1)}%`;
    track.appendChild(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${(probability * 100).toFixed(1)}%`;
    item.append(name, track, score);
    list.appendChild(item);
  }
}

let hasCatalog = false;

async function loadCatalogInfo() {
  try {
    const response = await fetch("/catalog");
    hasCatalog = response.ok && (await response.json()).success === true;
  } catch {
    hasCatalog = false;
  }
}

// the catalog view: nearest products (cosine) and thumbnails of the nearest catalog images
async function search(file) {
  const view = $("search-view");
  if (!hasCatalog) return;
  const body = new FormData();
  body.append("img", file, file.name);
  const topk = encodeURIComponent($("topk").value || "");
  const response = await fetch(`/search?topk=${topk}`, { method: "POST", body });
  const reply = await response.json();
  if (!reply.success) throw new Error(reply.error || `HTTP ${response.status}`);
  const products = $("products");
  products.replaceChildren();
  for (const { product, score } of reply.products) {
    const item = document.createElement("li");
    item.textContent = `${product} (${score.toFixed(3)})`;
    products.appendChild(item);
  }
  const matches = $("matches");
  matches.replaceChildren();
  for (const { product, score, url } of reply.nearest) {
    const item = document.createElement("li");
    const img = document.createElement("img");
    img.src = url;
    img.alt = product;
    const caption = document.createElement("span");
    caption.textContent = `${product} ${score.toFixed(3)}`;
    item.append(img, caption);
    matches.appendChild(item);
  }
  view.hidden = false;
}

async function classify(file) {
  showError("");
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  $("preview").src = previewUrl;  // drawn in sharp pixels when small (see #preview.small)
  $("file-name").textContent = file.name;
  $("output").hidden = false;
  $("results").replaceChildren();
  $("search-view").hidden = true;
  $("status").textContent = "classifying…";
  const body = new FormData();
  body.append("img", file, file.name);
  const topk = encodeURIComponent($("topk").value || "");
  try {
    const response = await fetch(`/classify?topk=${topk}`, { method: "POST", body });
    let reply;
    try {
      reply = await response.json();
    } catch {
      throw new Error(`the server answered ${response.status} without JSON`);
    }
    if (!reply.success) throw new Error(reply.error || `HTTP ${response.status}`);
    drawResults(reply.predictions);
    const best = reply.predictions[0];
    $("status").textContent = `${best.label} (${(best.probability * 100).toFixed(1)}%)`;
    await search(file);
  } catch (err) {
    $("status").textContent = "";
    $("output").hidden = true;  // no broken preview beside the error
    showError(err.message);
  }
}

function setup() {
  const zone = $("drop-zone");
  $("preview").addEventListener("load", (event) => {
    const img = event.target;
    img.classList.toggle("small", Math.max(img.naturalWidth, img.naturalHeight) < 128);
  });
  $("file-input").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) classify(file);
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    const [file] = event.dataTransfer.files;
    if (file) classify(file);
    else showError("drop an image file");
  });
  loadModelInfo();
  loadCatalogInfo();
}

document.addEventListener("DOMContentLoaded", setup);
