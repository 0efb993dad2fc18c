// facestream web view: plain DOM, no build. Live updates come from server-sent events (api/live).
"use strict";

const MAX_EVENTS = 200;
const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== null && value !== undefined) node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

// Every change carries the X-Facestream header: a cross-site page cannot send it without a CORS preflight.
async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (options.method && options.method !== "GET") headers["X-Facestream"] = "1";
  const response = await fetch(path, Object.assign({}, options, { headers, credentials: "same-origin" }));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) {
    const reason = body && (body.error || body.reason) ? (body.error || body.reason) : response.statusText;
    const error = new Error(reason);
    error.status = response.status;
    error.body = body;
    throw error;
  }
  return body;
}

function later(fn, ms) {
  let timer = null;
  return () => { if (timer === null) timer = setTimeout(() => { timer = null; fn(); }, ms); };
}

function clock(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds > 1e9) return new Date(seconds * 1000).toLocaleTimeString();
  const minutes = Math.floor(seconds / 60);
  return `${minutes}:${(seconds - minutes * 60).toFixed(2).padStart(5, "0")}`;
}

// ---------------------------------------------------------------------------------------------
// events

function describe(event) {
  const who = event.identity !== undefined && event.identity !== null ? ` ${event.identity}` : "";
  const distance = typeof event.distance === "number" ? ` (${event.distance.toFixed(2)})` : "";
  const track = event.track_id !== undefined ? ` track ${event.track_id}` : "";
  const frame = event.frame_index !== undefined ? ` frame ${event.frame_index}` : "";
  if (event.event === "access_decision") {
    return `${event.stream_id} ${event.decision || ""} ${event.identity || ""}${track} ${event.reason || ""}`;
  }
  if (event.event === "summary") {
    return `${event.stream_id} summary: ${Object.keys(event.identities || {}).join(", ") || "nobody"}`;
  }
  return `${clock(event.timestamp)} ${event.stream_id} ${event.event}${who}${distance}${track}${frame}`;
}

function addEvent(event, seq) {
  const list = $("#events");
  const classes = [event.event];
  if (event.identity === "unknown") classes.push("unknown");
  const item = element("li", {
    class: classes.join(" "), "data-seq": seq, "data-event": event.event, "data-identity": event.identity,
    "data-stream": event.stream_id, "data-track": event.track_id, "data-frame": event.frame_index,
    title: JSON.stringify(event),
  }, describe(event));
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// ---------------------------------------------------------------------------------------------
// streams and health

function renderStreams(ids) {
  const box = $("#streams");
  const none = $("#no-streams");
  if (none) none.hidden = ids.length > 0;
  for (const id of ids) {
    if (box.querySelector(`figure[data-stream="${CSS.escape(id)}"]`)) continue;
    const source = `api/streams/${encodeURIComponent(id)}/video`;
    box.append(element("figure", { "data-stream": id },
      element("img", { src: source, alt: `stream ${id}`, class: "stream" }), element("figcaption", {}, id)));
  }
}

function renderHealth(health) {
  const table = $("#health");
  table.replaceChildren();
  if (!health) {
    table.append(element("tr", {}, element("td", { class: "muted" }, "no health figures (yet)")));
    return;
  }
  table.append(element("tr", {}, ...["stage", "rate", "latency p50 / p99", "queue", "drops"].map((t) => element("th", {}, t))));
  for (const role of ["source", "detect", "embed", "sink"]) {
    const info = health.stages[role];
    if (!info) continue;
    const latency = info.latency ? `${Math.round(info.latency.p50_ms)} / ${Math.round(info.latency.p99_ms)} ms (${info.latency.name})` : "";
    const drops = Object.entries(info.drops || {}).map(([k, v]) => `${v} ${k}`).join(", ");
    const rate = typeof info.per_second === "number" ? `${info.per_second.toFixed(1)} ${info.unit}/s` : "";
    table.append(element("tr", { "data-stage": role },
      element("td", {}, `${role} ×${info.processes}`), element("td", {}, rate), element("td", {}, latency),
      element("td", {}, info.queue === undefined || info.queue === null ? "" : String(info.queue)),
      element("td", {}, drops)));
  }
  const streams = Object.entries(health.streams || {}).map(([id, s]) => {
    const parts = [];
    for (const key of ["processed", "read", "dropped", "resent", "waiting"]) {
      if (s[key] !== undefined) parts.push(`${s[key]} ${key}`);
    }
    return `${id}: ${parts.join(", ")}`;
  });
  const processes = (health.processes || []).filter((p) => !p.alive || p.restarts)
    .map((p) => `${p.name}: ${p.alive ? "" : "not running "}${p.restarts ? p.restarts + " restarts" : ""}`);
  $("#health-streams").textContent = streams.concat(processes).join(" · ");
}

// ---------------------------------------------------------------------------------------------
// unknown people

function trackKey(track) { return `${track.stream_id}/${track.track_id}`; }

async function loadUnknowns() {
  let listing;
  try { listing = await api("api/unknowns"); } catch (e) { return; }
  const box = $("#unknowns");
  // Keep what the user typed (and the focus) across re-renders: cards are matched by their tracks.
  const typed = new Map();
  let focused = null;
  for (const card of box.querySelectorAll(".unknown-card")) {
    const input = $("input.name", card);
    const keys = (card.dataset.tracks || "").split(" ");
    if (input && input.value) keys.forEach((k) => typed.set(k, input.value));
    if (input && document.activeElement === input) focused = keys;
  }
  box.replaceChildren();
  if (!listing.clusters.length) box.append(element("p", { class: "muted" }, "No unknown faces."));
  for (const cluster of listing.clusters) {
    const keys = cluster.tracks.map(trackKey);
    const visits = cluster.tracks.length;
    const thumbs = element("div", { class: "thumbs" });
    for (const track of cluster.tracks) {
      const title = `${track.stream_id} track ${track.track_id}, frames ${track.first_frame}-${track.last_frame}` +
        `${track.origin === "file" ? " (from the unknowns file)" : ""}; click to leave it out`;
      const attributes = { class: "snapshot", "data-track": trackKey(track), "data-stream": track.stream_id,
        "data-track-id": track.track_id, "data-first-frame": track.first_frame, "data-last-frame": track.last_frame,
        title, alt: title };
      const image = track.chip ? element("img", Object.assign({ src: track.chip }, attributes))
        : element("img", Object.assign({ src: "data:image/svg+xml," + encodeURIComponent(
          '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><rect width="64" height="64" fill="#ccc"/>' +
          '<text x="32" y="38" font-size="12" text-anchor="middle">no chip</text></svg>') }, attributes));
      image.addEventListener("click", () => image.classList.toggle("deselected"));
      thumbs.append(image);
    }
    const input = element("input", { type: "text", class: "name", placeholder: "name" });
    const message = element("div", { class: "message" });
    const button = element("button", { type: "button", class: "enrol" }, "Enrol");
    const card = element("div", { class: "card unknown-card", "data-id": cluster.id, "data-tracks": keys.join(" ") },
      element("h3", {}, `${cluster.label}`, element("span", { class: "muted" }, ` · ${visits} visit${visits === 1 ? "" : "s"}, ${cluster.faces} faces`)),
      thumbs, element("div", {}, input, " ", button), message);
    button.addEventListener("click", () => enrolUnknown(card, input, message, false));
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") enrolUnknown(card, input, message, false); });
    const previous = keys.map((k) => typed.get(k)).find((v) => v);
    if (previous) input.value = previous;
    box.append(card);
    if (focused && keys.some((k) => focused.includes(k))) input.focus();
  }
}

async function enrolUnknown(card, input, message, force) {
  const name = input.value.trim();
  if (!name) { message.textContent = "Type a name first."; message.className = "message error"; return; }
  const tracks = [...card.querySelectorAll("img.snapshot:not(.deselected)")]
    .map((img) => [img.dataset.stream, Number(img.dataset.trackId)]);
  if (!tracks.length) { message.textContent = "Every snapshot is left out."; message.className = "message error"; return; }
  message.textContent = "enrolling…"; message.className = "message";
  try {
    const result = await api("api/unknowns/enrol", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name, tracks, force }) });
    message.textContent = `${result.added} faces enrolled as ${result.name}`;
    input.value = "";
    $("#status").textContent = `enrolled ${result.name} (${result.added} faces)`;
    loadPeople();
  } catch (error) {
    if (error.status === 409 && !force && confirm(`${error.message}\nEnrol anyway?`)) {
      return enrolUnknown(card, input, message, true);
    }
    message.textContent = error.message; message.className = "message error";
  }
}

// ---------------------------------------------------------------------------------------------
// gallery

async function loadPeople() {
  let listing;
  try { listing = await api("api/people"); } catch (e) { return; }
  const box = $("#people");
  box.replaceChildren();
  if (!listing.people.length) box.append(element("p", { class: "muted" }, `Nobody enrolled in ${listing.gallery} yet.`));
  for (const person of listing.people) {
    const thumbs = element("div", { class: "thumbs" });
    for (const id of person.thumbnails.slice(-8)) {
      thumbs.append(element("img", { src: `api/thumbnails/${id}`, alt: `sample ${id}`, title: `sample ${id}` }));
    }
    if (!person.thumbnails.length) thumbs.append(element("span", { class: "muted" }, "no thumbnails (none was saved for these samples)"));
    const message = element("div", { class: "message" });
    const rename = element("button", { type: "button", class: "rename" }, "Rename");
    const remove = element("button", { type: "button", class: "delete" }, "Delete");
    rename.addEventListener("click", async () => {
      const name = prompt(`New name for ${person.name}`, person.name);
      if (!name || name === person.name) return;
      try { await api(`api/people/${encodeURIComponent(person.name)}/rename`, { method: "POST",
        headers: { "Content-Type": "application/json" }, body: JSON.stringify({ name }) }); loadPeople(); }
      catch (error) { message.textContent = error.message; message.className = "message error"; }
    });
    remove.addEventListener("click", async () => {
      if (!confirm(`Delete ${person.name} and all ${person.samples} samples?`)) return;
      try { await api(`api/people/${encodeURIComponent(person.name)}`, { method: "DELETE" }); loadPeople(); }
      catch (error) { message.textContent = error.message; message.className = "message error"; }
    });
    box.append(element("div", { class: "card person", "data-name": person.name },
      element("h3", {}, person.name), element("div", { class: "muted" }, `${person.samples} sample${person.samples === 1 ? "" : "s"}` +
        (person.negatives ? `, ${person.negatives} negatives` : "") + (person.threshold ? `, threshold ${person.threshold}` : "")),
      thumbs, element("div", {}, rename, " ", remove), message));
  }
}

async function uploadPhoto(event) {
  event.preventDefault();
  const name = $("#upload-name").value.trim();
  const file = $("#upload-file").files[0];
  const message = $("#upload-message");
  if (!name || !file) return;
  message.textContent = "enrolling… (the first photo loads the models)"; message.className = "message";
  try {
    const report = await api(`api/people/${encodeURIComponent(name)}/photos`, { method: "POST", body: file,
      headers: { "Content-Type": file.type || "application/octet-stream", "X-Filename": file.name } });
    message.textContent = report.reason;
    $("#upload-file").value = "";
    loadPeople();
  } catch (error) {
    message.textContent = error.message; message.className = "message error";
  }
}

// ---------------------------------------------------------------------------------------------
// live updates

function connect() {
  const status = $("#status");
  const source = new EventSource("api/live");
  const unknowns = later(loadUnknowns, 300);
  const people = later(loadPeople, 300);
  source.onopen = () => { status.textContent = "connected"; status.className = "muted"; };
  source.addEventListener("mode", (e) => {
    const pipeline = JSON.parse(e.data).pipeline;
    status.textContent = pipeline ? "live" : "gallery only: no pipeline attached";
    status.className = pipeline ? "ok" : "muted";
  });
  source.onerror = () => { status.textContent = "disconnected: retrying…"; status.className = "bad"; };
  source.addEventListener("fs-event", (e) => addEvent(JSON.parse(e.data), e.lastEventId));
  source.addEventListener("health", (e) => renderHealth(JSON.parse(e.data)));
  source.addEventListener("streams", (e) => renderStreams(JSON.parse(e.data)));
  source.addEventListener("unknowns", unknowns);
  source.addEventListener("gallery", () => { people(); unknowns(); });
}

$("#upload").addEventListener("submit", uploadPhoto);
loadPeople();
loadUnknowns();
connect();
