// Kerve's try-it page: pick a model from GET /v1/models, send it an image (or a class,
// for a generator) through its task route, and draw the answer. No framework.
"use strict";

const TASK_NAMES = {
  classification: "Classification",
  segmentation: "Segmentation",
  captioning: "Captioning",
  denoising: "Denoising",
  upscaling: "Upscaling",
  generation: "Generation",
};
const RENDERERS = {
  classification: showClassification,
  segmentation: showSegmentation,
  captioning: showCaptioning,
  denoising: showDenoising,
  upscaling: showUpscaling,
  generation: showGeneration,
};

const state = {
  models: new Map(), // "name@version" -> {name, version, task, endpoint, labels}
  image: null, // {blob, name}: what an image task sends
};

const $ = (selector) => document.querySelector(selector);
const PENDING_REFRESH_MS = 10000;
const API_KEY_STORAGE = "kerve-api-key";

function element(tag, attributes = {}, ...children) {
  const made = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") made.className = value;
    else if (key === "style") made.style.cssText = value;
    else made.setAttribute(key, value);
  }
  made.append(...children);
  return made;
}

function pngUrl(png) {
  return "data:image/png;base64," + png.b64;
}

// ---- models ---------------------------------------------------------------

async function loadModels() {
  const select = $("#model");
  let listing;
  try {
    const response = await apiFetch("/v1/models");
    listing = await response.json();
    if (!response.ok) throw new Error(errorMessage(listing, response));
  } catch (error) {
    select.replaceChildren(element("option", {}, "no models"));
    showError("Could not list the models: " + error.message);
    return;
  }
  const previous = $("#model").value;
  state.models.clear();
  const groups = new Map();
  for (const model of listing.models) {
    for (const version of model.versions) {
      const endpoint = version.endpoints && version.endpoints.task;
      if (version.state !== "AVAILABLE" || !endpoint || !RENDERERS[version.task]) continue;
      const key = `${model.name}@${version.version}`;
      state.models.set(key, {
        name: model.name,
        version: version.version,
        task: version.task,
        endpoint,
        labels: version.labels || [],
        description: version.description || "",
      });
      if (!groups.has(version.task)) groups.set(version.task, []);
      groups.get(version.task).push(
        element("option", { value: key }, `${model.name} v${version.version}`),
      );
    }
  }
  const optgroups = [...groups.keys()].sort().map((task) =>
    element("optgroup", { label: TASK_NAMES[task] || task }, ...groups.get(task)),
  );
  select.replaceChildren(...optgroups);
  select.disabled = state.models.size === 0;
  $("#models-note").textContent = state.models.size
    ? ""
    : "No model version is AVAILABLE with a task route yet.";
  showPending(listing.models.filter((model) => model.pending));
  if (state.models.has(previous)) {
    select.value = previous; // a refresh keeps the model, and the answer on show
  } else {
    modelChanged();
  }
}

// Models still to come (the demo zoo training behind the server): listed, and the
// list of models is read again until they have all arrived.
function showPending(models) {
  $("#pending").replaceChildren(
    ...models.map((model) =>
      element("li", { "data-model": model.name }, element("b", {}, model.name), " ",
        model.pending.reason || "coming"),
    ),
  );
  $("#pending-block").hidden = models.length === 0;
  clearTimeout(state.refresh);
  // Read the list again while something is on its way (skipped or failed models are not).
  const coming = models.some((model) => (model.pending.reason || "").startsWith("demo zoo:"));
  if (coming) state.refresh = setTimeout(loadModels, PENDING_REFRESH_MS);
}

function selectedModel() {
  return state.models.get($("#model").value);
}

function modelChanged() {
  const model = selectedModel();
  const task = model ? model.task : null;
  document.body.dataset.task = task || "";
  $("#model-description").textContent = model ? model.description : "";
  for (const options of document.querySelectorAll(".task-options")) {
    options.hidden = options.dataset.task !== task;
  }
  $("#image-controls").hidden = !task || task === "generation";
  if (task === "generation") {
    $("#label").replaceChildren(
      ...model.labels.map((label) => element("option", { value: label }, label)),
    );
  }
  clearAnswer();
  updateRunButton();
}

function updateRunButton() {
  const model = selectedModel();
  $("#run").disabled = !model || (model.task !== "generation" && !state.image);
  $("#run").textContent = model && model.task === "generation" ? "Generate" : "Run";
}

// ---- the image to send ----------------------------------------------------

function setImage(blob, name) {
  state.image = { blob, name };
  const preview = $("#input-image");
  if (preview.src.startsWith("blob:")) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  $("#input-note").textContent = `${name} (${blob.type || "unknown type"}, ${formatBytes(blob.size)})`;
  $("#preview").hidden = false;
  clearAnswer();
  updateRunButton();
}

async function loadSample(name) {
  const response = await apiFetch(`/ui/samples/${name}.jpg`);
  setImage(await response.blob(), `${name}.jpg`);
}

// Gaussian noise (sigma 25 pixel levels) added in a canvas; the result is a PNG.
async function addNoise(sigma = 25) {
  const source = $("#input-image");
  if (!state.image) return showError("Choose an image first.");
  await source.decode();
  const canvas = element("canvas");
  canvas.width = source.naturalWidth;
  canvas.height = source.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(source, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const data = pixels.data;
  for (let i = 0; i < data.length; i += 4) {
    for (let channel = 0; channel < 3; channel++) {
      data[i + channel] += sigma * gaussian(); // a Uint8ClampedArray clamps to 0-255
    }
  }
  context.putImageData(pixels, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  setImage(blob, state.image.name.replace(/(\.[^.]*)?$/, "-noisy.png"));
}

// Half the width and height, drawn in a canvas: a small image to upscale, and the
// one before to compare the answer with. The result is a PNG.
async function shrink() {
  const source = $("#input-image");
  if (!state.image) return showError("Choose an image first.");
  await source.decode();
  const canvas = element("canvas");
  canvas.width = Math.max(1, Math.round(source.naturalWidth / 2));
  canvas.height = Math.max(1, Math.round(source.naturalHeight / 2));
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(source, 0, 0, canvas.width, canvas.height);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  setImage(blob, state.image.name.replace(/(\.[^.]*)?$/, "-half.png"));
}

function gaussian() {
  // Box-Muller: a standard normal value from two uniform ones.
  const u = 1 - Math.random();
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
}

// ---- requests -------------------------------------------------------------

// Every request the page makes carries the API key entered, if any (kept in localStorage);
// a server without keys ignores it.
function apiFetch(url, init = {}) {
  const key = $("#api-key").value.trim();
  const headers = new Headers(init.headers || {});
  if (key) headers.set("X-API-Key", key);
  return fetch(url, { ...init, headers });
}

function apiKeyChanged() {
  const key = $("#api-key").value.trim();
  try {
    if (key) localStorage.setItem(API_KEY_STORAGE, key);
    else localStorage.removeItem(API_KEY_STORAGE);
  } catch {
    // storage off (a private window): the key lasts as long as the page
  }
  $("#api-key").classList.remove("wanted");
  clearAnswer();
  loadModels();
}

// A 401: the key is missing or wrong. The field is marked and focused.
function apiKeyMessage() {
  const field = $("#api-key");
  field.classList.add("wanted");
  field.focus();
  return field.value.trim()
    ? "The server refused this API key: enter a valid one in the API key field."
    : "This server needs an API key: enter it in the API key field.";
}

function buildRequest(model) {
  if (model.task === "generation") {
    const body = { label: $("#label").value, count: Number($("#count").value) || 1 };
    if ($("#seed").value !== "") body.seed = Number($("#seed").value);
    return {
      url: model.endpoint,
      init: {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      },
    };
  }
  const query = new URLSearchParams();
  if (model.task === "classification" && $("#top-k").value !== "") {
    query.set("top_k", $("#top-k").value); // empty: the server's default
  }
  if (model.task === "captioning") query.set("beam_size", $("#beam-size").value);
  const url = query.toString() ? `${model.endpoint}?${query}` : model.endpoint;
  const blob = state.image.blob;
  return {
    url,
    init: {
      method: "POST",
      headers: { "Content-Type": blob.type || "application/octet-stream" },
      body: blob,
    },
  };
}

async function run() {
  const model = selectedModel();
  if (!model) return;
  const { url, init } = buildRequest(model);
  clearAnswer();
  $("#run").disabled = true;
  document.body.classList.add("busy");
  const started = performance.now();
  try {
    const response = await apiFetch(url, init);
    const text = await response.text();
    const elapsed = performance.now() - started;
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
    const answerer = body && body.model ? `${body.model} v${body.version}` : "";
    showMeta(`${init.method} ${url}`, response.status, elapsed, answerer);
    if (!response.ok) return showError(errorMessage(body, response, text));
    RENDERERS[model.task](body);
  } catch (error) {
    showError("The request failed: " + error.message);
  } finally {
    document.body.classList.remove("busy");
    updateRunButton();
  }
}

// Kerve's errors are {"error": {"code", "message"}}; the standard protocols' {"error": "..."}.
function errorMessage(body, response, text = "") {
  if (response.status === 401) return apiKeyMessage();
  const error = body && body.error;
  if (error && typeof error === "object" && error.message) return error.message;
  if (typeof error === "string") return error;
  return `${response.status} ${response.statusText} ${text}`.trim();
}

// ---- the answer -----------------------------------------------------------

function clearAnswer() {
  $("#result").replaceChildren();
  $("#meta").replaceChildren();
  $("#error").hidden = true;
  $("#error").textContent = "";
}

function showError(message) {
  $("#error").textContent = message;
  $("#error").hidden = false;
}

function showMeta(request, status, elapsed, answerer) {
  $("#meta").replaceChildren(
    element("span", { id: "latency", class: "latency" }, `${Math.round(elapsed)} ms`),
    element("span", { id: "answered-by" }, answerer),
    element("span", { class: "status" }, `HTTP ${status}`),
    element("code", { class: "request" }, request),
  );
}

function figure(image, ...caption) {
  return element("figure", {}, image, element("figcaption", {}, ...caption));
}

function showClassification(body) {
  const bars = body.predictions[0].map((prediction) => {
    const percent = (100 * prediction.score).toFixed(1);
    return element(
      "div",
      { class: "bar", "data-label": prediction.label, title: `class index ${prediction.index}` },
      element("span", { class: "label" }, prediction.label),
      element(
        "span",
        { class: "track" },
        element("span", { class: "fill", style: `width: ${percent}%` }),
      ),
      element("span", { class: "score" }, prediction.score.toFixed(3)),
    );
  });
  $("#result").replaceChildren(element("div", { class: "bars" }, ...bars));
}

// The PASCAL VOC colour map, as the service's mask palette (service/imaging.py).
function classColour(index) {
  const rgb = [0, 0, 0];
  for (let shift = 7, value = index; value > 0; shift--, value >>= 3) {
    for (let channel = 0; channel < 3; channel++) {
      rgb[channel] |= ((value >> channel) & 1) << shift;
    }
  }
  return `rgb(${rgb.join(", ")})`;
}

function showSegmentation(body) {
  const input = element("img", { class: "input", src: $("#input-image").src, alt: "input" });
  const mask = element("img", { class: "mask", src: pngUrl(body.mask), alt: "class mask" });
  mask.style.opacity = $("#opacity").value;
  const stack = element("div", { class: "stack" }, input, mask);
  const present = Object.entries(body.class_fractions).sort((a, b) => b[1] - a[1]);
  const legend = present.map(([label, fraction]) =>
    element(
      "li",
      { "data-label": label },
      element("span", { class: "swatch", style: `background: ${classColour(body.labels.indexOf(label))}` }),
      `${label} `,
      element("span", { class: "score" }, `${(100 * fraction).toFixed(1)}%`),
    ),
  );
  $("#result").replaceChildren(
    figure(stack, `mask ${body.width}×${body.height} over the image`),
    element("ul", { class: "legend" }, ...legend),
  );
}

function showCaptioning(body) {
  const best = body.captions[0];
  const items = (best.alternatives || []).map((alternative) =>
    element(
      "li",
      { class: "alternative" },
      alternative.caption,
      element("span", { class: "score" }, ` log p ${alternative.log_prob.toFixed(2)}`),
    ),
  );
  const parts = [
    element("p", { class: "caption" }, best.caption),
    element("p", { class: "score" }, `log p ${best.log_prob.toFixed(2)}${best.ended ? "" : " (cut at max_length)"}`),
  ];
  if (items.length) {
    parts.push(element("h3", {}, "Other beams"), element("ol", { class: "alternatives" }, ...items));
  }
  $("#result").replaceChildren(...parts);
}

function showDenoising(body) {
  const noisy = element("img", { class: "noisy", src: $("#input-image").src, alt: "sent" });
  const clean = element("img", { class: "denoised", src: pngUrl(body.image), alt: "denoised" });
  const sigma = body.sigma === null ? "" : `, sigma ${body.sigma.toFixed(1)}`;
  $("#result").replaceChildren(
    element(
      "div",
      { class: "pair" },
      figure(noisy, "sent"),
      figure(clean, `denoised ${body.width}×${body.height} ${body.mode}${sigma}, ${body.tiles} tiles`),
    ),
  );
}

// The image sent and the answer, shown at the same width: the sent one's pixels as blocks.
function showUpscaling(body) {
  const source = $("#input-image");
  const sent = element("img", { class: "low-res", src: source.src, alt: "sent" });
  const upscaled = element("img", { class: "upscaled", src: pngUrl(body.image), alt: "upscaled" });
  $("#result").replaceChildren(
    element(
      "div",
      { class: "pair" },
      figure(sent, `sent ${source.naturalWidth}×${source.naturalHeight}`),
      figure(
        upscaled,
        element("span", { class: "output-size" }, `upscaled ${body.scale}× to ${body.width}×${body.height}`),
        ` ${body.mode}, ${body.tiles} tiles`,
      ),
    ),
  );
}

function showGeneration(body) {
  const images = body.images.map((image) =>
    element("img", { src: pngUrl(image), alt: `${body.label}, seed ${image.seed}`, title: `seed ${image.seed}` }),
  );
  $("#result").replaceChildren(
    element("p", {}, `${body.images.length} × ${body.label} (class ${body.label_index}), seed ${body.seed}`),
    element("div", { class: "generated" }, ...images),
  );
}

function formatBytes(size) {
  return size < 1024 ? `${size} B` : `${(size / 1024).toFixed(1)} KiB`;
}

// ---- wiring ---------------------------------------------------------------

function start() {
  try {
    $("#api-key").value = localStorage.getItem(API_KEY_STORAGE) || "";
  } catch {
    // storage off: no key remembered
  }
  $("#api-key").addEventListener("change", apiKeyChanged);
  $("#model").addEventListener("change", modelChanged);
  $("#file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) setImage(file, file.name);
  });
  for (const button of document.querySelectorAll("button.sample")) {
    button.addEventListener("click", () => loadSample(button.dataset.sample));
  }
  $("#add-noise").addEventListener("click", () => addNoise(25));
  $("#shrink").addEventListener("click", shrink);
  $("#opacity").addEventListener("input", () => {
    const mask = $("#result img.mask");
    if (mask) mask.style.opacity = $("#opacity").value;
  });
  $("#run").addEventListener("click", run);
  loadModels();
}

start();
