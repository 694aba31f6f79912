// The imgsim search page: plain ES modules against the gateway's REST API, no build step.
// Everything shown from the API goes through textContent, never as HTML.

const API = "/api/v1";
const KEY_STORAGE = "imgsim.apiKey";
const IMAGE_FILE = /\.(jpe?g|png|webp|gif|bmp)$/i;
const UPLOADS_AT_ONCE = 4;
const THUMBNAIL = 256;

const $ = (id) => document.getElementById(id);
let queryImage = null; // {file, dataUrl} of the image query, or null
let thumbnails = []; // object URLs of the shown results, revoked on the next render

class ApiError extends Error {
  constructor(status, code, message) {
    super(`${message} (${code}, HTTP ${status})`);
    this.status = status;
    this.code = code;
  }
}

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

async function api(path, { json, form, method } = {}) {
  const headers = {};
  if (apiKey()) headers["X-API-Key"] = apiKey();
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  const response = await fetch(API + path, { method: method || (body ? "POST" : "GET"), headers, body });
  if (!response.ok) throw await apiError(response);
  return response;
}

async function apiError(response) {
  try {
    const body = await response.json();
    if (body && body.error) return new ApiError(response.status, body.error.code, body.error.message);
  } catch { /* not JSON: fall through */ }
  return new ApiError(response.status, "http_error", response.statusText || "request failed");
}

// Ids may hold slashes (folders); each segment is encoded on its own.
function imagePath(imageId) {
  return "/images/" + imageId.split("/").map(encodeURIComponent).join("/");
}

// -- API key ------------------------------------------------------------------------------

function setupKey() {
  const input = $("api-key");
  input.value = apiKey();
  showKeyState();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) sessionStorage.setItem(KEY_STORAGE, input.value);
    else sessionStorage.removeItem(KEY_STORAGE);
    showKeyState();
    refreshStatus();
  });
}

function showKeyState() {
  $("key-state").textContent = apiKey() ? "key kept for this tab" : "";
}

// -- status -------------------------------------------------------------------------------

function formatRate(n) {
  return `${n.toFixed(1)}/s`;
}

function formatDuration(seconds) {
  if (seconds < 90) return `${Math.ceil(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

async function refreshStatus() {
  const out = (name, text) => { document.querySelector(`[data-stat="${name}"]`).textContent = text; };
  try {
    const stats = await (await api("/stats")).json();
    const lag = Object.values(stats.consumer_lag).reduce((sum, t) => sum + t.lag, 0);
    out("indexed", stats.indexed_images.toLocaleString());
    out("rate", `${formatRate(stats.images_in_per_s)} in, ${formatRate(stats.images_out_per_s)} out`);
    out("lag", `${lag.toLocaleString()} records`);
    const rate = stats.images_out_per_s;
    out("eta", lag === 0 ? "caught up" : rate > 0 ? formatDuration(lag / rate) : "waiting for a rate");
    out("dead", stats.dead_letters.toLocaleString());
    $("status-error").textContent = "";
  } catch (error) {
    $("status-error").textContent = `Status unavailable: ${error.message}`;
  }
}

// -- search -------------------------------------------------------------------------------

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function setQueryImage(file) {
  const dataUrl = await readDataUrl(file);
  queryImage = { file, dataUrl };
  const preview = $("query-preview");
  preview.src = dataUrl;
  preview.alt = `Query image: ${file.name || "pasted image"}`;
  preview.hidden = false;
  $("query-text").value = "";
}

function clearQuery() {
  queryImage = null;
  const preview = $("query-preview");
  preview.hidden = true;
  preview.removeAttribute("src");
  $("query-file").value = "";
  $("query-text").value = "";
}

function addFilterRow() {
  const row = $("filter-row").content.firstElementChild.cloneNode(true);
  row.querySelector(".f-remove").addEventListener("click", () => row.remove());
  $("filter-rows").append(row);
  row.querySelector(".f-key").focus();
}

// A typed value: numbers and true/false as JSON, anything else as text.
function typed(text) {
  const value = text.trim();
  if (value === "true" || value === "false") return value === "true";
  if (value !== "" && !Number.isNaN(Number(value))) return Number(value);
  return value;
}

function readFilter() {
  const filter = {};
  for (const row of document.querySelectorAll(".filter-row")) {
    const key = row.querySelector(".f-key").value.trim();
    const op = row.querySelector(".f-op").value;
    const raw = row.querySelector(".f-value").value;
    if (!key) continue;
    if (op === "eq") filter[key] = typed(raw);
    else if (op === "any") filter[key] = raw.split(",").map(typed);
    else filter[key] = { ...(typeof filter[key] === "object" && !Array.isArray(filter[key]) ? filter[key] : {}), [op]: Number(raw) };
  }
  return Object.keys(filter).length ? filter : null;
}

function searchOptions() {
  const options = { top_k: Number($("top-k").value) || 10 };
  const threshold = $("threshold").value;
  if (threshold !== "") options.threshold = Number(threshold);
  const filter = readFilter();
  if (filter) options.filter = filter;
  return options;
}

async function runSearch(path, body, description) {
  $("search-error").textContent = "";
  $("search-state").textContent = `Searching ${description}…`;
  try {
    const answer = await (await api(path, { json: { ...body, ...searchOptions() } })).json();
    render(answer.results);
    const cached = answer.cached ? ", cached" : "";
    $("search-state").textContent =
      `${answer.results.length} results ${description} in ${Math.round(answer.took_ms)} ms${cached}`;
  } catch (error) {
    $("search-state").textContent = "";
    $("search-error").textContent = error.message;
  }
}

function search(event) {
  event.preventDefault();
  const text = $("query-text").value;
  if (queryImage) return runSearch("/search", { image_data: queryImage.dataUrl }, "by image");
  if (text.trim()) return runSearch("/search/text", { query: text }, `for “${text}”`);
  $("search-error").textContent = "Give an image or a text to search for.";
}

function moreLikeThis(imageId) {
  clearQuery();
  runSearch("/search/similar", { image_id: imageId }, `like ${imageId}`);
  $("results-title").focus();
}

function render(results) {
  thumbnails.forEach((url) => URL.revokeObjectURL(url));
  thumbnails = [];
  const list = $("results");
  list.replaceChildren(...results.map(card));
}

function card(hit) {
  const item = $("result-card").content.firstElementChild.cloneNode(true);
  item.querySelector(".id").textContent = hit.image_id;
  item.querySelector(".score").textContent = `score ${hit.score.toFixed(3)}`;
  const metadata = hit.metadata && Object.keys(hit.metadata).length ? hit.metadata : null;
  if (metadata) item.querySelector("pre").textContent = JSON.stringify(metadata, null, 2);
  else item.querySelector("details").remove();
  const more = item.querySelector(".more");
  more.setAttribute("aria-label", `More like ${hit.image_id}`);
  more.addEventListener("click", () => moreLikeThis(hit.image_id));
  const open = item.querySelector(".thumb");
  open.setAttribute("aria-label", `Open ${hit.image_id}`);
  open.addEventListener("click", () => openOriginal(hit.image_id));
  loadThumbnail(item.querySelector("img"), hit.image_id);
  return item;
}

async function loadThumbnail(img, imageId) {
  img.alt = imageId;
  try {
    const blob = await (await api(`${imagePath(imageId)}/content?size=${THUMBNAIL}`)).blob();
    const url = URL.createObjectURL(blob);
    thumbnails.push(url);
    img.src = url;
  } catch (error) {
    img.alt = `${imageId}: no thumbnail (${error.message})`;
  }
}

async function openOriginal(imageId) {
  const tab = window.open("", "_blank");
  try {
    const blob = await (await api(`${imagePath(imageId)}/content`)).blob();
    const url = URL.createObjectURL(blob);
    if (tab) tab.location = url;
  } catch (error) {
    if (tab) tab.close();
    $("search-error").textContent = `${imageId}: ${error.message}`;
  }
}

// -- indexing -----------------------------------------------------------------------------

async function filesOf(dataTransfer) {
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry());
  if (!entries.length || entries.some((entry) => !entry)) return [...dataTransfer.files].map((f) => [f.name, f]);
  const found = [];
  async function walk(entry, prefix) {
    if (entry.isFile) {
      found.push([prefix + entry.name, await new Promise((ok, fail) => entry.file(ok, fail))]);
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) { // readEntries answers at most 100 entries a call
        const batch = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!batch.length) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  }
  for (const entry of entries) await walk(entry, "");
  return found;
}

async function indexFiles(named) {
  const errors = $("index-errors");
  const progress = $("index-progress");
  const state = $("index-state");
  let metadata;
  try {
    metadata = JSON.parse($("index-metadata").value || "{}");
    if (typeof metadata !== "object" || Array.isArray(metadata) || metadata === null) throw new Error("not an object");
  } catch (error) {
    state.textContent = `The metadata must be a JSON object: ${error.message}`;
    return;
  }
  const images = named.filter(([name]) => IMAGE_FILE.test(name) && !name.split("/").pop().startsWith("."));
  const skipped = named.length - images.length;
  const notes = $("index-notes");
  errors.replaceChildren();
  notes.replaceChildren();
  progress.max = Math.max(images.length, 1);
  progress.value = 0;
  let accepted = 0;
  let failed = 0;
  let present = 0;
  const report = (done) => {
    const parts = [`${accepted} of ${images.length} accepted`];
    if (failed) parts.push(`${failed} refused`);
    if (present) parts.push(`${present} already present under another id`);
    if (skipped) parts.push(`${skipped} skipped (not images)`);
    state.textContent = parts.join(", ") + (done ? ". Done." : "…");
  };
  report(false);
  const queue = images.slice();
  async function worker() {
    for (let next = queue.shift(); next; next = queue.shift()) {
      const [name, file] = next;
      const form = new FormData();
      form.append("file", file, name.split("/").pop());
      form.append("image_id", name);
      form.append("metadata", JSON.stringify(metadata));
      try {
        const answer = await (await api("/images?check_duplicates=true", { form })).json();
        accepted += 1;
        if (answer.duplicate_of && answer.duplicate_of.length) {
          present += 1;
          const line = document.createElement("li");
          line.textContent = `${name}: already present as ${answer.duplicate_of.join(", ")}`;
          notes.append(line);
        }
      } catch (error) {
        failed += 1;
        const line = document.createElement("li");
        line.textContent = `${name}: ${error.message}`;
        errors.append(line);
      }
      progress.value = accepted + failed;
      report(false);
    }
  }
  await Promise.all(Array.from({ length: UPLOADS_AT_ONCE }, worker));
  report(true);
  refreshStatus();
}

function fromInput(input) {
  return [...input.files].map((file) => [file.webkitRelativePath || file.name, file]);
}

// -- wiring -------------------------------------------------------------------------------

function dropZone(zone, onDrop) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    onDrop(event.dataTransfer);
  });
}

function setup() {
  setupKey();
  $("search-form").addEventListener("submit", search);
  $("clear-query").addEventListener("click", clearQuery);
  $("add-filter").addEventListener("click", addFilterRow);
  $("query-file").addEventListener("change", (event) => {
    if (event.target.files[0]) setQueryImage(event.target.files[0]);
  });
  $("query-text").addEventListener("input", () => {
    if ($("query-text").value && queryImage) { queryImage = null; $("query-preview").hidden = true; }
  });
  dropZone($("query-drop"), (transfer) => { if (transfer.files[0]) setQueryImage(transfer.files[0]); });
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) { event.preventDefault(); setQueryImage(file); }
  });
  dropZone($("index-drop"), async (transfer) => indexFiles(await filesOf(transfer)));
  $("index-files").addEventListener("change", (event) => indexFiles(fromInput(event.target)));
  $("index-folder").addEventListener("change", (event) => indexFiles(fromInput(event.target)));
  for (const zone of [$("query-drop"), $("index-drop")]) {
    zone.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); zone.querySelector("input[type=file]").click(); }
    });
  }
  refreshStatus();
  setInterval(refreshStatus, 5000);
}

setup();
