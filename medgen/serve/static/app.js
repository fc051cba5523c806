// medgen web page: plain JS, no external files. The API key lives in sessionStorage (this tab only).
"use strict";

const API = "/api/v1";
const KEY_NAME = "medgenApiKey";
const $ = (id) => document.getElementById(id);
let models = [];
let job = null;        // {job_id, status, ...} of the job shown
let pollTimer = null;
let objectUrls = [];

function apiKey() { return sessionStorage.getItem(KEY_NAME) || ""; }

function describe(detail) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => {
      const field = Array.isArray(d.loc) ? d.loc[d.loc.length - 1] + ": " : "";
      const allowed = d.allowed ? " (allowed: " + d.allowed.join(", ") + ")" : "";
      return field + d.msg + allowed;
    }).join("; ");
  }
  return JSON.stringify(detail);
}

async function api(path, options = {}) {
  const headers = Object.assign({"X-API-Key": apiKey()}, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, {headers}));
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try { message = describe((await response.json()).detail); } catch (e) { /* not JSON */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function fillSelect(select, values, labels) {
  select.replaceChildren(...values.map((v, i) => {
    const option = document.createElement("option");
    option.value = v;
    option.textContent = labels ? labels[i] : v;
    return option;
  }));
}

function showClasses() {
  const model = models.find((m) => m.name === $("bundle").value);
  if (!model) return;
  fillSelect($("class_label"), model.classes);
  const colour = model.channels === 3;
  $("model-kind").textContent = (colour ? "RGB colour" : "grey") + " images, "
    + model.image_size.join("×") + " px" + (model.dicom_iods && model.dicom_iods.length
      ? "; DICOM as " + model.dicom_iods.join(", ") : "");
  document.body.dataset.channels = String(model.channels || 1);
  fillSelect($("sampler"), model.samplers);
  const defaults = model.defaults || {};  // the bundle's own sampling settings (its inference.yaml)
  if (defaults.sampler) $("sampler").value = defaults.sampler;
  if (defaults.steps) $("steps").value = defaults.steps;
  if (defaults.guidance_scale !== undefined) $("guidance_scale").value = defaults.guidance_scale;
  if (defaults.guidance_interval) {  // the bundle guides only the steps whose noise level lies in it
    $("model-kind").textContent += "; guided at noise levels " + defaults.guidance_interval.join("–");
  }
  const names = {png: "PNG (zip)", dicom: "DICOM (zip)", nifti: "NIfTI (zip)"};
  fillSelect($("output_format"), model.output_formats, model.output_formats.map((f) => names[f] || f));
}

async function loadModels() {
  if (!apiKey()) { setStatus("Paste an API key first.", true); return; }
  try {
    const data = await (await api(API + "/models")).json();
    models = data.models.filter((m) => m.available !== false);
    const down = data.models.filter((m) => m.available === false).map((m) => m.name);
    fillSelect($("bundle"), models.map((m) => m.name),
               models.map((m) => m.name + (m.channels === 3 ? " (colour)" : "")
                                 + (m.description ? " — " + m.description : "")));
    $("num_images").max = Math.min(data.limits.max_images, 64);
    $("steps").max = data.limits.max_steps;
    showClasses();
    $("key-status").textContent = "key accepted";
    $("key-status").className = "muted";
    setStatus((models.length ? "" : "This server has no trained models.")
              + (down.length ? " Unavailable on this server: " + down.join(", ") + "." : ""), down.length > 0);
  } catch (e) {
    $("key-status").textContent = e.status === 401 ? "key rejected" : e.message;
    $("key-status").className = "error";
  }
}

function clearGallery() {
  objectUrls.forEach((u) => URL.revokeObjectURL(u));
  objectUrls = [];
  $("gallery").replaceChildren();
  $("download").disabled = true;
  delete document.body.dataset.gallery;
}

async function showGallery(jobId) {
  const images = await (await api(API + "/jobs/" + jobId + "/images")).json();
  for (const image of images) {
    const blob = await (await api(image.url)).blob();
    const url = URL.createObjectURL(blob);
    objectUrls.push(url);
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = url;
    img.alt = "synthetic " + image.class + " seed " + image.seed;
    const caption = document.createElement("figcaption");
    caption.textContent = image.class + " · seed " + image.seed;
    figure.append(img, caption);
    $("gallery").append(figure);
  }
  $("download").disabled = false;
  document.body.dataset.gallery = String(images.length);
}

function finish(state) {
  clearInterval(pollTimer);
  pollTimer = null;
  $("generate").disabled = false;
  $("cancel").disabled = true;
  document.body.dataset.jobStatus = state;
}

async function poll() {
  if (!job) return;
  let info;
  try {
    info = await (await api(job.status_url)).json();
  } catch (e) {
    setStatus(e.message, true);
    return;
  }
  $("progress").value = info.progress;
  document.body.dataset.jobStatus = info.status;
  if (info.status === "queued" || info.status === "running") {
    setStatus(info.status + " " + Math.round(info.progress) + "%" + (info.cancel_requested ? " (cancelling)" : ""));
    return;
  }
  clearInterval(pollTimer);
  if (info.status === "succeeded") {
    const seconds = info.metrics ? info.metrics.generation_seconds : "?";
    setStatus("done: " + info.metrics.images + " image(s) in " + seconds + " s");
    try { await showGallery(info.job_id); } catch (e) { setStatus(e.message, true); }
  } else if (info.status === "cancelled") {
    setStatus("cancelled");
  } else {
    setStatus("failed: " + (info.error || "unknown error") + (info.retryable ? " (retryable)" : ""), true);
  }
  finish(info.status);
}

async function generate(event) {
  event.preventDefault();
  clearGallery();
  const body = {
    bundle: $("bundle").value,
    class_label: $("class_label").value,
    num_images: Number($("num_images").value),
    seed: Number($("seed").value),
    steps: Number($("steps").value),
    sampler: $("sampler").value,
    guidance_scale: Number($("guidance_scale").value),
    output_format: $("output_format").value,
  };
  $("generate").disabled = true;
  $("progress").value = 0;
  document.body.dataset.jobStatus = "submitting";
  try {
    job = await (await api(API + "/generate", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    })).json();
  } catch (e) {
    setStatus(e.message, true);
    finish("rejected");
    return;
  }
  setStatus("queued (about " + job.estimated_time_seconds + " s)");
  $("cancel").disabled = false;
  pollTimer = setInterval(poll, 500);
}

async function cancel() {
  if (!job) return;
  try {
    await api(API + "/jobs/" + job.job_id, {method: "DELETE"});
    setStatus("cancelling…");
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function download() {
  if (!job) return;
  try {
    const response = await api(API + "/jobs/" + job.job_id + "/result");
    const match = /filename="?([^";]+)"?/.exec(response.headers.get("Content-Disposition") || "");
    const link = document.createElement("a");
    link.href = URL.createObjectURL(await response.blob());
    link.download = match ? match[1] : "medgen_" + job.job_id + ".zip";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (e) {
    setStatus(e.message, true);
  }
}

function saveKey() {
  const key = $("api-key").value.trim();
  if (key) sessionStorage.setItem(KEY_NAME, key); else sessionStorage.removeItem(KEY_NAME);
  $("api-key").value = "";
  loadModels();
}

$("save-key").addEventListener("click", saveKey);
$("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") { e.preventDefault(); saveKey(); } });
$("bundle").addEventListener("change", showClasses);
$("num_images").addEventListener("input", () => { $("num_images_out").textContent = $("num_images").value; });
$("generate-form").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
$("download").addEventListener("click", download);
if (apiKey()) loadModels();
