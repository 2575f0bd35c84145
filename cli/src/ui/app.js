// The kappadb dashboard. State comes from /v1/ui/events (one snapshot a
// second), the log tail from /v1/events; every action is an API call the
// CLI makes too. Everything shown is built as DOM text, never as HTML:
// payloads come from other peers.
"use strict";

const $ = (id) => document.getElementById(id);
const TAIL_MAX = 50;
const forkIds = {}; // feed -> [id, id], from fork records in the tail
const rebuilds = {}; // view -> "running" | "done" | "failed: …"

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const k of kids) {
    if (k === null || k === undefined) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

const short = (id) => (id ? (id.length > 16 ? id.slice(0, 8) + "…" + id.slice(-4) : id) : "—");

function bytes(n) {
  if (n === null || n === undefined) return "—";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + u[i];
}

function ago(ms, now) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return new Date(ms).toLocaleString();
}

function duration(s) {
  const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
}

function pill(text, kind) { return el("span", { class: "pill " + (kind || "") }, text); }

function bar(fraction, busy) {
  const i = el("i");
  if (!busy) i.style.width = Math.round(Math.min(1, Math.max(0, fraction)) * 100) + "%";
  return el("span", { class: "bar" + (busy ? " busy" : "") }, i);
}

function dl(target, pairs) {
  target.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  let v = null;
  try { v = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error((v && v.error && v.error.message) || res.status + " " + res.statusText);
  return v;
}

function say(id, text, bad) {
  const m = $(id);
  m.textContent = text;
  m.className = "msg" + (bad ? " err" : "");
}

// ---- panels ----

function renderNode(s) {
  const n = s.node, st = s.status || {};
  $("headline").textContent = "feed " + short(n.feed) + " · up " + duration(n.uptime_s);
  dl($("node"), [
    ["Feed", el("code", {}, n.feed)],
    ["Peer id", el("code", {}, n.peer_id || "no node")],
    ["Network", el("code", {}, n.network || "—")],
    ["Listening", n.listen.length ? el("span", {}, ...n.listen.map((a) => el("div", { class: "mono" }, a))) : "—"],
    ["Version", n.version],
    ["Uptime", duration(n.uptime_s)],
    ["Own seq", String(st.own_seq ?? "—")],
    ["Appends", st.held ? pill("held: " + st.held, "warn") : st.own_forked_at ? pill("forked at " + st.own_forked_at, "off") : pill("open", "on")],
  ]);
}

function renderStorage(s) {
  const st = s.status || {};
  dl($("storage"), [
    ["Log", bytes(st.log_bytes)],
    ["On disk", bytes(st.disk_bytes)],
    ["Records", String(st.records ?? "—")],
    ["Entries", String(st.entries ?? "—")],
    ["Feeds", String(st.feeds ?? "—") + (st.forked_feeds ? " (" + st.forked_feeds + " forked)" : "")],
    ["Erased", bytes(st.erased_bytes) + " in " + (st.erased_entries ?? 0) + " entries"],
    ["Reclaimable", bytes(st.reclaimable_bytes)],
    ["Directory", el("code", {}, st.dir || "—")],
  ]);
  drawChart(s.rates || [], s.node.now_ms);
}

function drawChart(rates, now) {
  const c = $("chart");
  const w = (c.width = c.clientWidth * devicePixelRatio || 600);
  const h = (c.height = 140 * devicePixelRatio);
  const g = c.getContext("2d");
  g.clearRect(0, 0, w, h);
  const span = 300000, pad = 4 * devicePixelRatio;
  const max = Math.max(1, ...rates.map((r) => Math.max(r[1], r[2])));
  g.fillStyle = "#6b7280";
  g.font = 11 * devicePixelRatio + "px system-ui, sans-serif";
  g.fillText(max + "/s", pad, 12 * devicePixelRatio);
  for (const [idx, color] of [[1, "#2563eb"], [2, "#9333ea"]]) {
    g.strokeStyle = color;
    g.lineWidth = 1.5 * devicePixelRatio;
    g.beginPath();
    rates.forEach((r, i) => {
      const x = w - ((now - r[0]) / span) * w;
      const y = h - pad - (r[idx] / max) * (h - 2 * pad - 14 * devicePixelRatio);
      if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
    });
    g.stroke();
  }
}

// A sync under way: how much of what the peer announced has arrived (an
// indeterminate bar until it says how much is left), and the rate.
function syncing(p) {
  const total = p.sync_done + p.sync_left;
  const known = p.sync_left > 0 && total > 0;
  return el("span", {}, bar(known ? p.sync_done / total : 0, !known),
    " " + (known ? Math.round((100 * p.sync_done) / total) + "% · " : "") + p.rate.toFixed(1) + " entries/s");
}

function renderPeers(s) {
  const now = s.node.now_ms;
  const rows = s.peers.map((p) =>
    el("tr", { "data-peer": p.peer },
      el("td", {}, el("code", { title: p.peer }, short(p.peer)), p.feed ? el("div", { class: "muted mono" }, "feed " + short(p.feed)) : null),
      el("td", {}, p.connected ? pill("connected", "on") : pill("not connected", "off")),
      el("td", { class: "mono" }, p.addrs[0] || "—"),
      el("td", {}, p.last_sync ? ago(p.last_sync, now) : "never"),
      el("td", {}, p.pulled + " / " + p.served, el("div", { class: "muted" }, bytes(p.pulled_bytes) + " in")),
      el("td", {}, p.syncing ? syncing(p) : p.connected ? "in sync" : "—")));
  $("peers").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "no peers yet"))]));
}

function renderFeeds(s) {
  const now = s.node.now_ms;
  const forks = {};
  for (const f of s.forks || []) forks[f.feed] = f;
  const rows = s.feeds.map((f) => {
    let state = [];
    if (f.local) state.push(pill("this node", ""));
    if (f.forked) {
      const ids = (f.fork_proof && f.fork_proof.ids) || forkIds[f.feed];
      const from = forks[f.feed] && forks[f.feed].peer;
      state.push(pill("forked at seq " + f.fork_seq, "off"));
      state.push(el("div", { class: "muted mono" },
        ids ? "proof: " + short(ids[0]) + " ≠ " + short(ids[1]) : "two entries at seq " + f.fork_seq,
        from ? " (from " + short(from) + ")" : ""));
    }
    if (f.blocked) state.push(pill("blocked", "warn"));
    if (!state.length) state.push(pill("ok", "on"));
    const action = f.local ? "" : el("button", {
      class: "ghost", "data-block": f.feed,
      onclick: () => act("feed-msg", "POST", "/v1/feeds/" + f.feed + (f.blocked ? "/unblock" : "/block"), undefined,
        (f.blocked ? "unblocked " : "blocked ") + short(f.feed)),
    }, f.blocked ? "Unblock" : "Block");
    return el("tr", { "data-feed": f.feed },
      el("td", {}, el("code", { title: f.feed }, short(f.feed))),
      el("td", {}, String(f.seq)),
      el("td", {}, el("code", { title: f.head }, short(f.head))),
      el("td", {}, f.timestamp ? ago(f.timestamp, now) : "—"),
      el("td", {}, ...state),
      el("td", {}, action));
  });
  $("feeds").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "muted" }, "no entries yet"))]));
}

function renderViews(s) {
  const end = s.status ? s.status.log_bytes : 0;
  const rows = s.views.map((v) => {
    const r = rebuilds[v.name];
    let progress;
    if (v.rebuilding) {
      const total = v.checkpoint + v.lag || end || 1;
      const done = v.rebuild_checkpoint || 0;
      progress = el("span", { "data-progress": v.name }, bar(done / total, false), " " + Math.round((100 * done) / total) + "%");
    } else if (r === "running") {
      progress = el("span", { "data-progress": v.name }, bar(0, true), " starting");
    } else if (r === "done") {
      progress = el("span", { "data-progress": v.name, class: "done" }, bar(1, false), " done");
    } else if (r) {
      progress = el("span", { "data-progress": v.name, class: "msg err" }, r);
    } else {
      progress = el("span", { class: "muted" }, "—");
    }
    const records = v.lag_records ? v.lag_records.toLocaleString() + (v.lag_records_more ? "+" : "") + " records, " : "";
    const lag = v.lag ? records + bytes(v.lag) + " behind" + (v.lag_seconds ? " for " + duration(v.lag_seconds) : "") : "caught up";
    return el("tr", { "data-view": v.name },
      el("td", {}, el("strong", {}, v.name), el("div", { class: "muted" }, v.description)),
      el("td", {}, String(v.version)),
      el("td", {}, String(v.checkpoint)),
      el("td", {}, lag),
      el("td", {}, String(v.entries), v.skipped ? el("div", { class: "muted" }, v.skipped + " skipped") : null),
      el("td", {}, progress),
      el("td", {}, el("button", {
        class: "ghost", "data-rebuild": v.name, disabled: v.rebuilding || r === "running" ? "" : null,
        onclick: () => rebuild(v.name),
      }, "Rebuild")));
  });
  $("views").replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no views (a relay node)"))]));
}

let last = null;
function render(s) {
  last = s;
  renderNode(s);
  renderStorage(s);
  renderPeers(s);
  renderFeeds(s);
  renderViews(s);
}

// ---- actions ----

async function act(msg, method, path, body, done) {
  try {
    const v = await api(method, path, body);
    say(msg, typeof done === "function" ? done(v) : done);
    return v;
  } catch (e) {
    say(msg, e.message, true);
    return null;
  }
}

async function rebuild(name) {
  rebuilds[name] = "running";
  if (last) renderViews(last);
  try {
    const v = await api("POST", "/v1/views/" + encodeURIComponent(name) + "/rebuild");
    rebuilds[name] = "done";
    say("view-msg", "rebuilt " + name + ": " + (v.entries ?? "") + " entries");
  } catch (e) {
    rebuilds[name] = "failed: " + e.message;
  }
  if (last) renderViews(last);
}

$("peer-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act("peer-msg", "POST", "/v1/peers", { addr: $("peer-addr").value.trim() }, (v) => "connected to " + short(v.peer));
});

$("field-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  act("view-msg", "POST", "/v1/views", { name: $("field-name").value.trim(), field: $("field-pointer").value.trim() },
    (v) => "added " + v.name + " (" + v.entries + " entries)");
});

$("append-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  let payload;
  try { payload = JSON.parse($("append-json").value); } catch (e) { say("append-msg", "not JSON: " + e.message, true); return; }
  act("append-msg", "POST", "/v1/append", { payload }, (v) => "appended seq " + v.appended[0].seq);
});

$("kv-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    const v = await api("GET", "/v1/kv/get?key=" + encodeURIComponent($("kv-key").value));
    $("query-out").textContent = JSON.stringify(v, null, 2);
  } catch (e) { $("query-out").textContent = e.message; }
});

$("tl-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const t = $("tl-type").value.trim();
  try {
    const v = await api("GET", "/v1/timeline?limit=20" + (t ? "&type=" + encodeURIComponent(t) : ""));
    $("query-out").textContent = JSON.stringify(v, null, 2);
  } catch (e) { $("query-out").textContent = e.message; }
});

// ---- live tail ----

function tailItem(r, fresh) {
  if (r.kind === "fork") {
    forkIds[r.feed] = r.ids;
    return el("li", { class: fresh ? "new" : "", "data-offset": r.offset },
      el("div", { class: "meta" }, "@" + r.offset + " · ", pill("fork", "off"), " feed " + short(r.feed) + " seq " + r.seq),
      el("pre", {}, r.ids.join("\n")));
  }
  if (r.kind === "forget") {
    return el("li", { "data-offset": r.offset }, el("div", { class: "meta" }, "@" + r.offset + " · forgot feed " + short(r.feed)));
  }
  let body;
  if (r.payload_format === "json") body = JSON.stringify(r.payload, null, 2);
  else if (r.payload_format === "text") body = r.payload;
  else if (r.payload_format === "binary") body = "(binary) " + String(r.payload).slice(0, 200);
  else body = "(" + r.payload_format + ")";
  return el("li", { class: fresh ? "new" : "", "data-offset": r.offset },
    el("div", { class: "meta" }, "@" + r.offset + " · " + short(r.feed) + " #" + r.seq + " · " + new Date(r.timestamp).toLocaleTimeString()),
    el("pre", {}, body));
}

function addTail(r, fresh) {
  const list = $("tail");
  list.prepend(tailItem(r, fresh));
  while (list.children.length > TAIL_MAX) list.lastChild.remove();
}

async function startTail() {
  let since;
  try {
    const st = await api("GET", "/v1/status");
    const from = Math.max(0, st.log_bytes - 64 * 1024);
    const page = await api("GET", "/v1/log?since=" + from + "&limit=" + TAIL_MAX);
    // A page may stop before the end: go on from the end, the rest is old.
    for (const r of page.records.slice(-TAIL_MAX)) addTail(r, false);
    since = page.next === page.end ? page.end : st.log_bytes;
  } catch (_) {
    since = undefined;
  }
  const es = new EventSource("/v1/events" + (since !== undefined ? "?since=" + since : ""));
  es.addEventListener("record", (ev) => addTail(JSON.parse(ev.data), true));
}

// ---- state stream ----

function startState() {
  const es = new EventSource("/v1/ui/events");
  es.addEventListener("state", (ev) => {
    $("conn").textContent = "live";
    $("conn").className = "pill on";
    render(JSON.parse(ev.data));
  });
  es.onerror = () => {
    $("conn").textContent = "reconnecting…";
    $("conn").className = "pill off";
  };
}

startState();
startTail();
