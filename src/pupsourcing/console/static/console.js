// pupsourcing console: renders the JSON API into the page. Text only:
// every value goes through textContent, never parsed as markup.
"use strict";

const body = document.body;
// The path the console is served under ("" at the root of a server): every
// URL below starts with it, so the console also works mounted at /console.
const root = body.dataset.root || "";
const content = document.getElementById("content");
const statusLine = document.getElementById("status");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// An integer from the API: a number, or (beyond a JS number's 53 bits, see
// parse below) the JSON.rawJSON of its digits, which arithmetic, templates
// and String() refuse. raw() gives something String() writes exactly;
// big() a BigInt for arithmetic.
const raw = (n) => (n !== null && typeof n === "object" ? n.rawJSON : n);
const big = (n) => BigInt(raw(n));

const fmt = new Intl.NumberFormat();
const num = (n) => (n === null || n === undefined ? "–"
  : fmt.format(n !== null && typeof n === "object" ? big(n) : n));

function span(seconds) {
  const s = Math.max(0, seconds);
  if (s < 90) return `${Math.ceil(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${Math.round(s / 3600)} h`;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  const s = Math.max(0, seconds);
  if (s < 1) return "just now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 129600) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

// This page's path below the root path.
function here() {
  const path = location.pathname;
  return path.startsWith(root + "/") ? path.slice(root.length) + location.search : "/";
}

// JSON.parse, but an integer a JS number cannot hold exactly (a payload's
// 64-bit id, say) is kept as its source text, which JSON.stringify writes
// back as it was (where the browser has JSON.rawJSON; others round it).
const exactly = typeof JSON.rawJSON === "function"
  ? (key, value, context) =>
    typeof value === "number" && !Number.isSafeInteger(value) && context && /^-?\d+$/.test(context.source)
      ? JSON.rawJSON(context.source) : value
  : undefined;

function parse(text) {
  return JSON.parse(text, exactly);
}

async function api(path) {
  const response = await fetch(root + path, { headers: { Accept: "application/json" } });
  if (response.status === 401) { window.location.assign(root + "/login?next=" + encodeURIComponent(here())); }
  const data = await response.text().then(parse).catch(() => ({ error: response.statusText }));
  if (!response.ok) { const e = new Error(data.error || response.statusText); e.status = response.status; throw e; }
  return data;
}

function say(text, isError) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(isError));
}

function streamPath(e) {
  return streamUrl([e.bounded_context, e.aggregate_type, e.aggregate_id], false);
}

// The page (with `api`, the API path) of the stream with key `parts`, with
// query `extra`: /streams/BC/TYPE/ID, each part percent-encoded; or, when a
// part is "." or "..", which a browser drops from a path (as a dot
// segment, encoded or not), /stream?bounded_context=BC&aggregate_type=...
function streamUrl(parts, api, extra) {
  const prefix = api ? "/api/stream" : root + "/stream";
  const query = new URLSearchParams(extra || "");
  if (parts.some((part) => part === "." || part === "..")) {
    const [bounded_context, aggregate_type, aggregate_id] = parts;
    const key = new URLSearchParams({ bounded_context, aggregate_type, aggregate_id });
    for (const [name, value] of query) key.append(name, value);
    return prefix + "?" + key.toString();
  }
  const path = prefix + "s/" + parts.map(encodeURIComponent).join("/");
  return query.toString() ? path + "?" + query.toString() : path;
}

// JSON.stringify writes a negative zero as 0: the API's -0.0 (a float's
// sign of zero, which Python keeps) is written as such.
const signedZero = typeof JSON.rawJSON === "function"
  ? (key, value) => (Object.is(value, -0) ? JSON.rawJSON("-0.0") : value) : undefined;

function pretty(value) {
  return value === null || value === undefined ? "null" : JSON.stringify(value, signedZero, 2);
}

const HEX_SHOWN = 1024; // bytes of a binary payload shown; the API has them all
const utf8 = new TextDecoder("utf-8", { fatal: true });

// A payload or metadata as the API sends it: the JSON value, or
// {"base64": ...} of the stored bytes when JSON would not carry them as
// stored (not JSON, JSON a reader takes for other values): those are shown
// as the stored text, or as bytes in hex. Returns [label, text].
function shown(label, value) {
  const wrapped = value !== null && typeof value === "object" && !Array.isArray(value) &&
    Object.keys(value).length === 1 && typeof value.base64 === "string";
  if (!wrapped) return [label, pretty(value)];
  const bytes = Uint8Array.from(atob(value.base64), (c) => c.charCodeAt(0));
  try {
    const text = utf8.decode(bytes);
    if (!/[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text)) return [`${label} (stored text)`, text];
  } catch (e) { /* not UTF-8: bytes */ }
  const hex = Array.from(bytes.subarray(0, HEX_SHOWN), (b) => b.toString(16).padStart(2, "0")).join(" ");
  const more = bytes.length > HEX_SHOWN ? ` … (${num(bytes.length - HEX_SHOWN)} more bytes)` : "";
  return [`${label} (binary, ${num(bytes.length)} byte${bytes.length === 1 ? "" : "s"})`, hex + more];
}

// One event: a summary line, its fields, its payload and metadata as JSON text.
function eventItem(e, withAggregate) {
  const when = new Date(e.created_at);
  const summary = el("summary", {},
    el("span", { class: "meta", text: withAggregate ? `#${num(e.global_position)}` : `v${raw(e.aggregate_version)}` }),
    el("span", { class: "type", text: `${e.event_type} v${e.event_version}` }),
    withAggregate ? el("span", { text: `${e.bounded_context} / ${e.aggregate_type} / ${e.aggregate_id} v${raw(e.aggregate_version)}` }) : null,
    el("span", { class: "meta", text: withAggregate ? "" : `#${num(e.global_position)}` }),
    el("time", { class: "meta", datetime: e.created_at, text: when.toLocaleString() }));
  const fields = el("dl", { class: "fields" });
  const rows = [["event id", e.event_id], ["causation id", e.causation_id],
    ["correlation id", e.correlation_id], ["trace id", e.trace_id]];
  for (const [k, v] of rows) { if (v) fields.append(el("dt", { text: k }), el("dd", { text: v })); }
  if (withAggregate) {
    fields.append(el("dt", { text: "stream" }), el("dd", {}, el("a", { href: streamPath(e), text: "open the aggregate's stream" })));
  }
  const [payloadLabel, payload] = shown("payload", e.payload);
  const [metadataLabel, metadata] = shown("metadata", e.metadata);
  const details = el("details", { open: !withAggregate }, summary, fields,
    el("p", { class: "hint label", text: payloadLabel }),
    el("pre", { class: "payload", text: payload }),
    el("p", { class: "hint label", text: metadataLabel }),
    el("pre", { class: "metadata", text: metadata }));
  return el("li", { "data-position": raw(e.global_position) }, details);
}

// -- overview ---------------------------------------------------------------------

function sparkline(series) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark"); svg.setAttribute("width", "160"); svg.setAttribute("height", "30");
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", "events per second, last 5 minutes");
  if (series.length > 1) {
    const max = Math.max(...series, 1);
    const points = series.map((v, i) => `${(i / (series.length - 1)) * 158 + 1},${29 - (v / max) * 27}`);
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  }
  return svg;
}

function card(label, value, extra, note) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }),
    el("div", { class: "value", text: value }), note ? el("div", { class: "label", text: note }) : null,
    extra || null);
}

function rateCard(label, rate, window, watched, extra) {
  const note = watched < window ? `over the ${Math.round(watched)} s watched so far` : null;
  return card(label, rate === null ? "…" : num(rate), extra, note);
}

function lagCell(lag) {
  return el("td", { class: "num " + (big(lag) > 0n ? "lagging" : "caught-up"), text: num(lag) });
}

function renderOverview(data) {
  const rate = data.events_per_second;
  const cards = el("div", { class: "cards" },
    card("store head", num(data.head)),
    rateCard("events/s, last 10 s", rate["10s"], 10, rate.watched_seconds),
    rateCard("events/s, last minute", rate["1m"], 60, rate.watched_seconds),
    rateCard("events/s, last 5 min", rate["5m"], 300, rate.watched_seconds, sparkline(rate.series)));
  const table = el("table", {},
    el("caption", { class: "hint", text: `${data.projections.length} checkpoints; lag = store head − checkpoint` }),
    el("thead", {}, el("tr", {},
      ...["Projection", "Partition", "Checkpoint", "Lag", "Last update", "Dead letters", "Owner", "Lease"]
        .map((h, i) => el("th", { scope: "col", class: [2, 3, 5].includes(i) ? "num" : null, text: h })))));
  const tbody = el("tbody");
  const groups = new Map();
  for (const row of data.projections) {
    if (!groups.has(row.name)) groups.set(row.name, []);
    groups.get(row.name).push(row);
  }
  for (const [name, rows] of groups) {
    const partitioned = rows.some((r) => r.partition !== null);
    if (partitioned) {
      const low = rows.map((r) => big(r.checkpoint)).reduce((a, b) => (a < b ? a : b));
      const dead = rows.reduce((n, r) => n + (r.dead_letters || 0), 0);
      const ages = rows.map((r) => r.age_seconds).filter((a) => a !== null);
      tbody.append(el("tr", { class: "group" },
        el("th", { scope: "row", text: name }), el("td", { text: `${rows.length} of ${rows[0].total_partitions}` }),
        el("td", { class: "num", text: num(low) }), lagCell(big(data.head) - low),
        el("td", { text: ages.length ? ago(Math.min(...ages)) : "never" }),
        el("td", { class: "num" }, dead ? el("a", { href: root + "/dead-letters?projection=" + encodeURIComponent(name), text: num(dead) }) : "0"),
        el("td"), el("td")));
    }
    for (const r of rows) {
      const lease = r.lease_expires_in === null ? "" :
        r.lease_expires_in > 0 ? `expires in ${span(r.lease_expires_in)}` : `expired ${span(-r.lease_expires_in)} ago`;
      tbody.append(el("tr", { class: partitioned ? "part" : null },
        partitioned ? el("td", { text: r.checkpoint_name }) : el("th", { scope: "row", text: name }),
        el("td", { text: r.partition === null ? "–" : `${r.partition}` }),
        el("td", { class: "num", text: num(r.checkpoint) }), lagCell(r.lag),
        el("td", {}, r.updated_at ? el("time", { datetime: r.updated_at, text: ago(r.age_seconds) }) : "never"),
        el("td", { class: "num" }, r.dead_letters ? el("a", { href: root + "/dead-letters?projection=" + encodeURIComponent(name), text: num(r.dead_letters) }) : r.dead_letters === null ? "–" : "0"),
        el("td", { text: r.owner || "" }), el("td", { text: lease })));
    }
  }
  table.append(tbody);
  const parts = [cards, el("h2", { text: "Projections" })];
  parts.push(data.projections.length ? table : el("p", { text: "No projection checkpoints yet." }));
  // Redrawing must not take the keyboard focus away from a link in the table.
  const focused = content.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
  content.replaceChildren(...parts);
  if (focused) {
    const again = [...content.querySelectorAll("a[href]")].find((a) => a.getAttribute("href") === focused);
    if (again) again.focus();
  }
}

async function overview() {
  try {
    const data = await api("/api/overview");
    renderOverview(data);
    say(`Updated ${new Date().toLocaleTimeString()} · refreshes every 2 s`);
  } catch (e) { say(`Could not load: ${e.message}`, true); }
  setTimeout(overview, 2000);
}

// -- stream search ------------------------------------------------------------------

async function streams() {
  const form = document.getElementById("search");
  const params = new URLSearchParams(location.search);
  for (const name of ["q", "bounded_context", "aggregate_type"]) {
    const input = form.elements[name]; if (params.get(name)) input.value = params.get(name);
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    for (const name of ["q", "bounded_context", "aggregate_type"]) {
      if (form.elements[name].value) q.set(name, form.elements[name].value);
    }
    history.replaceState(null, "", root + "/streams?" + q.toString());
    search();
  });
  async function search() {
    const prefix = form.elements.q.value;
    if (!prefix) { say("Type an aggregate id, or the start of one."); return; }
    const q = new URLSearchParams({ prefix });
    if (form.elements.bounded_context.value) q.set("bounded_context", form.elements.bounded_context.value);
    if (form.elements.aggregate_type.value) q.set("aggregate_type", form.elements.aggregate_type.value);
    try {
      const found = await api("/api/aggregates?" + q.toString());
      say(found.length ? `${found.length} aggregate${found.length === 1 ? "" : "s"} found` : "No aggregate found.");
      const list = el("ul", { class: "results" });
      for (const a of found) {
        list.append(el("li", {}, el("a", { href: streamPath(a), text: `${a.bounded_context} / ${a.aggregate_type} / ${a.aggregate_id}` }),
          el("span", { class: "hint", text: ` (version ${num(a.version)})` })));
      }
      content.replaceChildren(list);
    } catch (e) { say(`Search failed: ${e.message}`, true); }
  }
  if (form.elements.q.value) search();
}

// -- one stream -----------------------------------------------------------------------

async function stream() {
  const key = [body.dataset.boundedContext, body.dataset.aggregateType, body.dataset.aggregateId];
  const form = document.getElementById("range");
  const params = new URLSearchParams(location.search);
  form.elements.from_version.value = params.get("from_version") || "";
  form.elements.to_version.value = params.get("to_version") || "";
  const list = el("ol", { class: "events", "aria-label": "events" });
  content.replaceChildren(el("p", { class: "hint", id: "version" }), list);
  let last = 0, version = 0, timer = null;
  const to = () => form.elements.to_version.value;
  function showVersion() {
    document.getElementById("version").textContent =
      `${body.dataset.boundedContext} / ${body.dataset.aggregateType} · version ${num(version)}` +
      (to() ? "" : " · new events appear here as they are appended");
  }
  async function load(fresh) {
    const q = new URLSearchParams();
    const from = fresh ? form.elements.from_version.value : String(last + 1);
    if (from) q.set("from_version", from);
    if (to()) q.set("to_version", to());
    try {
      const data = await api(streamUrl(key, true, q));
      version = data.version;
      if (fresh) list.replaceChildren();
      for (const e of data.events) {
        const item = eventItem(e, false);
        if (!fresh) item.classList.add("new");
        list.append(item);
        last = e.aggregate_version;
      }
      if (fresh && !data.events.length) say("No events in this range.");
      else if (fresh) say(`${data.events.length} event${data.events.length === 1 ? "" : "s"}`);
      else if (data.events.length) say(`${data.events.length} new event${data.events.length === 1 ? "" : "s"} at ${new Date().toLocaleTimeString()}`);
      showVersion();
    } catch (e) { say(e.status === 404 ? "This aggregate has no events." : `Could not load: ${e.message}`, e.status !== 404); }
    clearTimeout(timer);
    if (!to()) timer = setTimeout(() => load(false), 1000);
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const q = new URLSearchParams();
    if (form.elements.from_version.value) q.set("from_version", form.elements.from_version.value);
    if (to()) q.set("to_version", to());
    history.replaceState(null, "", streamUrl(key, false, q));
    last = Math.max(0, Number(form.elements.from_version.value || 1) - 1);
    load(true);
  });
  last = Math.max(0, Number(form.elements.from_version.value || 1) - 1);
  load(true);
}

// -- global log -----------------------------------------------------------------------

async function log() {
  const pageSize = 50;
  const params = new URLSearchParams(location.search);
  const before = params.get("before");
  const list = el("ol", { class: "events", "aria-label": "events, newest first" });
  const pager = el("div", { class: "pager" });
  const follow = el("input", { type: "checkbox", id: "follow", checked: !before });
  const controls = el("p", {}, follow, " ", el("label", { for: "follow", text: "Follow new events live" }));
  content.replaceChildren(controls, list, pager);
  let source = null;
  try {
    const page = await api(`/api/log?limit=${pageSize}` + (before ? `&before=${encodeURIComponent(before)}` : ""));
    for (const e of page) list.append(eventItem(e, true));
    const newest = page.length ? big(page[0].global_position) : before ? BigInt(before) - 1n : 0n;
    if (page.length === pageSize) {
      pager.append(el("a", { href: `${root}/log?before=${raw(page[page.length - 1].global_position)}`, text: "Older events →" }));
    }
    if (before) pager.prepend(el("a", { href: root + "/log", text: "← Newest" }));
    say(page.length ? `Events ${num(page[page.length - 1].global_position)} to ${num(newest)}` : "The store has no events yet.");
    function connect() {
      source = new EventSource(`${root}/api/events/live?after=${newest}`);
      source.addEventListener("event", (message) => {
        const e = parse(message.data);
        const item = eventItem(e, true); item.classList.add("new");
        list.prepend(item);
        while (list.children.length > 500) list.lastElementChild.remove();
        say(`Live · newest ${num(e.global_position)}`);
      });
      // The server says when it cannot read the database, and when it can again.
      source.addEventListener("status", (message) => {
        const error = parse(message.data).error;
        if (error) say(`Database unreachable (${error}); the feed resumes when it can be read…`, true);
        else say(`Live again · newest ${num(newestShown())}`);
      });
      let interrupted = false;
      source.onopen = () => { if (interrupted) say(`Live again · newest ${num(newestShown())}`); interrupted = false; };
      source.onerror = () => { interrupted = true; say("Live feed interrupted; reconnecting…", true); };
    }
    const newestShown = () => (list.firstElementChild ? list.firstElementChild.dataset.position : newest);
    follow.addEventListener("change", () => {
      if (follow.checked) { location.assign(root + "/log"); } else if (source) { source.close(); source = null; say("Not following."); }
    });
    if (follow.checked) connect();
  } catch (e) { say(`Could not load: ${e.message}`, true); }
}

// -- dead letters -----------------------------------------------------------------------

const DEAD_LETTERS_SHOWN = 1000; // the API's most

async function deadLetters() {
  const projection = new URLSearchParams(location.search).get("projection");
  try {
    const letters = await api(`/api/dead-letters?limit=${DEAD_LETTERS_SHOWN}` + (projection ? "&projection=" + encodeURIComponent(projection) : ""));
    const of = projection ? ` of ${projection}` : "";
    say(letters.length === DEAD_LETTERS_SHOWN
      ? `The first ${num(letters.length)} dead letters${of}; \`pupsourcing projections dead-letters\` lists every one.`
      : letters.length ? `${letters.length} dead letter${letters.length === 1 ? "" : "s"}${of}` : "No dead letters.");
    const table = el("table", {}, el("thead", {}, el("tr", {},
      ...["Checkpoint", "Position", "Attempts", "Failed", "Error"].map((h, i) => el("th", { scope: "col", class: [1, 2].includes(i) ? "num" : null, text: h })))));
    const tbody = el("tbody");
    for (const d of letters) {
      tbody.append(el("tr", {},
        el("td", { text: d.projection_name }),
        el("td", { class: "num" }, el("a", { href: `${root}/log?before=${big(d.global_position) + 1n}`, text: num(d.global_position) })),
        el("td", { class: "num", text: d.attempts }),
        el("td", {}, d.failed_at ? el("time", { datetime: d.failed_at, text: new Date(d.failed_at).toLocaleString() }) : "?"),
        el("td", {}, el("details", {}, el("summary", { text: `${d.error_type}: ${d.message.split("\n")[0]}` }), el("pre", { text: d.traceback })))));
    }
    table.append(tbody);
    content.replaceChildren(letters.length ? table : el("p"));
  } catch (e) { say(`Could not load: ${e.message}`, true); }
}

const views = { overview, streams, stream, log, "dead-letters": deadLetters };
(views[body.dataset.view] || (() => {}))();
