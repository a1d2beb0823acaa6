// cbir's page: plain JavaScript, no dependencies. Keys are always set with textContent or
// attributes (never innerHTML), so a key such as "<script>..." shows as text.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "cbir-api-token";
let thumbUrls = [];  // object URLs of the current grid, revoked when it is replaced

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, authHeaders());
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) {
    $("token-form").hidden = false;
  }
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) {
    throw new Error(body.error || ("HTTP " + response.status));
  }
  return body;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadStatus() {
  try {
    const info = await api("/api/info");
    const replicas = Object.values(info.live_replicas).reduce((a, b) => a + b, 0);
    const down = info.shards_without_replicas.length;
    $("status-shards").textContent = info.num_shards + (down ? " (" + down + " down)" : "");
    $("status-replicas").textContent = String(replicas);
    $("status-images").textContent = info.total_images.toLocaleString("en");
    $("status-version").textContent = info.index_version || "none";
    $("status-model").textContent = info.model;
  } catch (err) {
    $("status-shards").textContent = "unavailable";
  }
}

function showQuery(title, imageUrl) {
  $("query").hidden = false;
  $("query-title").textContent = title;
  const img = $("query-image");
  if (imageUrl) {
    img.src = imageUrl;
    img.alt = "the query image";
  } else {
    img.removeAttribute("src");
    img.alt = "";
  }
}

async function loadThumbnail(img, url) {
  // fetch (not <img src>) so the bearer token, when one is needed, goes along.
  const response = await fetch(url, { headers: authHeaders() });
  if (!response.ok) return;
  const objectUrl = URL.createObjectURL(await response.blob());
  thumbUrls.push(objectUrl);
  img.src = objectUrl;
}

function renderHit(hit) {
  const item = document.createElement("li");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "hit";
  button.dataset.imageId = hit.image_id_str;  // the exact id: JavaScript numbers round it
  button.setAttribute("aria-label", "More like " + hit.key);
  const img = document.createElement("img");
  img.alt = hit.key;
  const score = document.createElement("span");
  score.className = "score";
  score.textContent = hit.score.toFixed(3);
  const key = document.createElement("span");
  key.className = "key";
  key.textContent = hit.key;
  button.append(img, score, key);
  button.addEventListener("click", () => moreLikeThis(hit));
  item.append(button);
  loadThumbnail(img, hit.thumbnail_url);
  return item;
}

function render(answer) {
  thumbUrls.forEach((u) => URL.revokeObjectURL(u));
  thumbUrls = [];
  const banner = $("partial-banner");
  banner.hidden = !answer.partial;
  banner.textContent = answer.partial
    ? "Partial answer: shard(s) " + answer.failed_shards.join(", ") +
      " did not answer; their images are missing from these results."
    : "";
  $("timing").textContent = answer.hits.length + " results in " +
    answer.timing.total_ms.toFixed(0) + " ms (index " + answer.index_version + ")";
  $("results").replaceChildren(...answer.hits.map(renderHit));
}

function k() {
  const value = parseInt($("k-input").value, 10);
  return Number.isFinite(value) && value > 0 ? value : 12;
}

async function search(request) {
  showError("");
  $("results").setAttribute("aria-busy", "true");
  try {
    render(await api("/api/search", Object.assign({ method: "POST" }, request)));
  } catch (err) {
    $("results").replaceChildren();
    $("partial-banner").hidden = true;
    $("timing").textContent = "";
    showError(err.message);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

function searchFile(file) {
  if (!file) return;
  history.replaceState(null, "", location.pathname);
  showQuery("Images like " + (file.name || "the pasted image"), URL.createObjectURL(file));
  const form = new FormData();
  form.append("image", file);
  form.append("k", String(k()));
  search({ body: form });
}

function searchById(idString) {
  search({
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ image_id: idString, k: k(), exclude_query_image: true }),
  });
}

function moreLikeThis(hit) {
  showQuery("More like " + hit.key, null);
  // A link that reopens this query: ?image_id=<exact id string>.
  history.replaceState(null, "", "?image_id=" + encodeURIComponent(hit.image_id_str));
  searchById(hit.image_id_str);
  $("query").scrollIntoView({ block: "nearest" });
}

function searchFromAddress() {
  const id = new URLSearchParams(location.search).get("image_id");
  if (id && /^[0-9]{1,19}$/.test(id)) {
    showQuery("More like image " + id, null);
    searchById(id);
  }
}

function wireDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("dragging");
    searchFile(e.dataTransfer.files[0]);
  });
  zone.addEventListener("keydown", (e) => {
    if (e.target === zone && (e.key === "Enter" || e.key === " ")) {
      e.preventDefault();
      $("file-input").click();
    }
  });
  $("file-input").addEventListener("change", (e) => searchFile(e.target.files[0]));
  document.addEventListener("paste", (e) => {
    const item = Array.from(e.clipboardData.items).find((i) => i.type.startsWith("image/"));
    if (item) searchFile(item.getAsFile());
  });
}

function wireTokenForm() {
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-form").hidden = true;
    loadStatus();
  });
}

wireDropZone();
wireTokenForm();
loadStatus();
searchFromAddress();
