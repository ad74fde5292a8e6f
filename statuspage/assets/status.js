// The broker's status page: renders the snapshots /events streams (or, where
// that is not possible, /status.json polled once a second). Everything from
// the replica is put in the page as text, never as markup: router names and
// reasons come from the bucket, where anyone with NATS access can write;
// the replica has shown their control and bidirectional characters escaped.
"use strict";

(function () {
  const DASH = "—";
  let last = null;          // the last snapshot
  let offset = 0;           // replica clock minus this browser's, in ms
  let heard = 0;            // when the last snapshot arrived, by this browser's clock
  let polling = null;

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, v);
      else e[k] = v;
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(typeof c === "string" ? document.createTextNode(c) : c);
    }
    return e;
  }

  function two(n) { return String(n).padStart(2, "0"); }

  // A duration in ms as "1h 02m 03s", "4m 12s" or "12s".
  function span(ms) {
    let s = Math.max(0, Math.ceil(ms / 1000));
    const d = Math.floor(s / 86400); s -= d * 86400;
    const h = Math.floor(s / 3600); s -= h * 3600;
    const m = Math.floor(s / 60); s -= m * 60;
    if (d > 0) return d + "d " + two(h) + "h " + two(m) + "m";
    if (h > 0) return h + "h " + two(m) + "m " + two(s) + "s";
    if (m > 0) return m + "m " + two(s) + "s";
    return s + "s";
  }

  // An RFC 3339 time as "2026-11-25 14:32:21Z".
  function when(t) { return t ? t.replace("T", " ").replace(/\.\d+Z$/, "Z") : DASH; }

  // The replica's clock now.
  function now() { return Date.now() + offset; }

  function figure(v, label, format) {
    const known = v !== null && v !== undefined;
    return el("td", { class: "num" + (known ? "" : " unknown-figure"), "data-label": label }, known ? format(v) : DASH);
  }

  // tokensCell is a router's tokens in, out and cached, in a few
  // characters each.
  function tokensCell(t) {
    if (!t) return figure(null, "tokens", String);
    const short = n => n < 1e3 ? String(n) : n < 1e6 ? (n / 1e3).toFixed(1) + "k" : n < 1e9 ? (n / 1e6).toFixed(1) + "M" : (n / 1e9).toFixed(1) + "G";
    const td = figure(short(t.input) + " in · " + short(t.output) + " out · " + short(t.cached_input) + " cached", "tokens", String);
    if (t.unknown > 0) td.append(el("span", { class: "small" }, t.unknown + (t.unknown === 1 ? " call" : " calls") + " unknown"));
    return td;
  }

  function untilCell(r) {
    const td = el("td", { class: "until", "data-label": "until" });
    const until = r.until ? Date.parse(r.until) : null;
    switch (r.state) {
      case "enabled":
        if (r.rate_limited_until) {
          const reset = Date.parse(r.rate_limited_until);
          td.append(el("span", { class: "left" }, "waits for its rate-limit reset"));
          td.append(el("span", { class: "small" }, "none left; calls again at " + when(r.rate_limited_until) + ", in " + span(reset - now())));
          return td;
        }
        td.append(DASH);
        return td;
      case "probation":
        td.append(el("span", { class: "left" }, r.probe ? "probe out" : "waiting for a probe"));
        td.append(el("span", { class: "small" }, r.probe ? "the probe call is with " + r.probe : "the next call for the pool tries it"));
        if (until) td.append(el("span", { class: "small" }, "disable ended " + span(now() - until) + " ago"));
        break;
      default:
        if (until === null) {
          td.append(el("span", { class: "left" }, "until enabled by hand"));
        } else {
          td.append(el("span", { class: "left", "data-until": r.until }, span(until - now()) + " left"));
          td.append(el("span", { class: "small" }, "until " + when(r.until)));
        }
    }
    if (r.clamped) {
      td.append(el("span", { class: "small" }, el("span", { class: "clamped", title: "the record reaches further than the failure policy allows; every replica holds it to the longest disable" }, "clamped"),
        " record says " + (r.record_until ? when(r.record_until) : "until enabled by hand")));
    }
    return td;
  }

  function stateCell(r) {
    const td = el("td", { "data-label": "state" }, el("span", { class: "state " + r.state }, r.state));
    if (r.provisional) td.append(el("span", { class: "small" }, "announced by " + (r.by || "a replica") + "; not in the bucket yet"));
    if (r.since) td.append(el("span", { class: "small" }, "since " + when(r.since)));
    return td;
  }

  function reasonCell(r) {
    const td = el("td", { "data-label": "reason" }, r.reason || DASH);
    if (r.status !== null && r.status !== undefined) td.append(el("span", { class: "small" }, "status " + r.status));
    return td;
  }

  // shareCell is the router's share of the pool's recent choices: the
  // fleet's once the replicas share their counts, else this replica's.
  function shareCell(r) {
    const td = el("td", { class: "num", "data-label": "share" });
    const fleet = r.share !== null && r.share !== undefined;
    const share = fleet ? r.share : r.replica_share;
    if (share === null || share === undefined) {
      td.append(r.state === "enabled" ? "no calls" : DASH);
      return td;
    }
    td.append(Math.round(share * 100) + "%");
    if (!fleet) td.append(el("span", { class: "small" }, r.chosen + (r.chosen === 1 ? " call" : " calls")));
    const bar = el("span", { class: "bar" }, el("span", { class: "fill" }));
    bar.firstChild.style.width = Math.round(share * 100) + "%";
    td.append(bar);
    return td;
  }

  function windowText(c) {
    const who = c.scope || "this replica";
    return c.seconds > 0 ? who + ", last " + Math.round(c.seconds) + " s" : who + ", since it started";
  }

  function head(choices) {
    return el("thead", {}, el("tr", {},
      el("th", {}, "router"), el("th", {}, "state"), el("th", {}, "until"), el("th", {}, "reason"),
      el("th", {}, "by"), el("th", { class: "num" }, "level"), el("th", { class: "num" }, "tier"),
      el("th", { class: "num", title: "share of the pool's choices: " + windowText(choices) }, "share"),
      el("th", { class: "num" }, "in flight"), el("th", { class: "num" }, "latency"), el("th", { class: "num" }, "headroom"),
      el("th", { class: "num", title: "the fleet's calls reported within the failure-rate window, and the share that failed" }, "failed"),
      el("th", { class: "num", title: "the fleet's tokens since this replica started: input, output, cached input" }, "tokens"),
      el("th", { class: "num", title: "what the tokens cost at the router's price, since this replica started" }, "spend"),
      el("th", { class: "num", title: "sessions whose last call (on gecholog's transaction log) used the router, as this replica remembers them; and those heard moving to it and away from it since it started" }, "sessions")));
  }

  // affinityText says how a pool keeps a conversation on one router: the
  // header's name, never a value.
  function affinityText(a) {
    const by = a.session ? "gecholog's session header " + a.header : "header " + a.header;
    return "session affinity on " + by + ", load factor " + a.load_factor;
  }

  // sessionsText is a replica's (or the fleet's) session counts.
  function sessionsText(s) {
    return s.keyed + " keyed (" + s.spilled + " spilled) · " + s.no_key + " without a key";
  }

  // pool is one pool's rows: a heading row, then each router.
  function pool(p) {
    const body = el("tbody", { "data-ingress": p.ingress },
      el("tr", { class: "pool-head" }, el("th", { colSpan: 15 }, "pool ", el("code", {}, p.ingress),
        el("span", { class: "quiet" }, " · " + p.routers.length + (p.routers.length === 1 ? " router" : " routers")),
        p.affinity ? el("span", { class: "quiet affinity", title: "a keyed call goes to its session's router (the next in its order when that one is over its bound); a call without a key goes by the pool's strategy" },
          " · " + affinityText(p.affinity)) : null)));
    for (const r of p.routers) {
      body.append(el("tr", { "data-router": r.router, "data-state": r.state, "data-clamped": r.clamped ? "true" : "false" },
        el("td", { class: "router", "data-label": "router" }, r.router),
        stateCell(r), untilCell(r), reasonCell(r),
        el("td", { class: "by", "data-label": "by" }, r.by || DASH),
        figure(r.level, "level", String),
        figure(r.tier, "tier", String),
        shareCell(r),
        figure(r.in_flight, "in flight", String),
        figure(r.latency_ms, "latency", v => v.toFixed(0) + " ms"),
        figure(r.headroom, "headroom", v => Math.round(v * 100) + "%"),
        figure(r.failure_rate, "failed", v => Math.round(v * 100) + "% of " + r.calls),
        tokensCell(r.tokens),
        figure(r.spend, "spend", v => v === 0 ? "0" : v < 0.01 ? v.toPrecision(2) : v < 100 ? v.toFixed(2) : v.toFixed(0)),
        figure(r.sessions, "sessions", s => s.pinned + " pinned · " + s.moved_in + " in · " + s.moved_out + " out")));
    }
    return body;
  }

  // revisionText is the revision a replica runs, in words.
  function revisionText(rev) {
    return rev === 0 ? "revision 0 (its own settings)" : "revision " + rev;
  }

  // replicaRow is one replica of the fleet, its revision and whether it is
  // in step.
  function replicaRow(r) {
    const told = r.revision !== null && r.revision !== undefined;
    const state = el("td", { "data-label": "configuration" });
    if (!told) {
      state.append(el("span", { class: "quiet" }, "told no revision (a broker from before replicas told theirs)"));
    } else if (r.drift) {
      state.append(el("span", { class: "state disabled" }, "drift"), el("span", { class: "small drift" }, r.drift));
    } else {
      state.append(el("span", { class: "state enabled" }, "in step"));
    }
    return el("tr", { "data-replica": r.id, "data-revision": told ? String(r.revision) : "", "data-drift": r.drift ? "true" : "false" },
      el("td", { class: "replica", "data-label": "replica" }, r.id, r.this ? el("span", { class: "small" }, "this replica") : null),
      el("td", { class: "num", "data-label": "revision" }, told ? String(r.revision) : DASH),
      state,
      el("td", { class: "sessions", "data-label": "sessions" }, r.sessions ? sessionsText(r.sessions) : DASH));
  }

  function renderFleet(s) {
    const c = s.config || { revision: 0 };
    const config = document.getElementById("config");
    config.textContent = revisionText(c.revision) + (c.refused ? ", refusing a newer one" : "");
    config.className = c.refused ? "bad" : "";
    const f = s.fleet || { replicas: [], replicas_more: 0, drift: 0, summary: "" };
    document.getElementById("fleet").hidden = f.replicas.length === 0;
    const summary = document.getElementById("fleet-summary");
    summary.textContent = f.summary;
    summary.className = f.drift > 0 ? "notice" : "quiet";
    summary.dataset.drift = String(f.drift);
    document.getElementById("fleet-replicas").replaceChildren(...f.replicas.map(replicaRow));
    const more = document.getElementById("fleet-more");
    more.hidden = !(f.replicas_more > 0);
    more.textContent = "and " + f.replicas_more + " more replicas heard";
    // The session counts matter where a pool has affinity.
    const affine = (s.pools || []).some(p => p.affinity);
    const sessions = document.getElementById("sessions");
    sessions.parentElement.hidden = !affine;
    sessions.textContent = f.sessions ? sessionsText(f.sessions) + " (" + f.replicas.length + (f.replicas.length === 1 ? " replica" : " replicas") + ")" : "no replica tells them yet";
  }

  function render(s) {
    document.getElementById("replica").textContent = s.replica || "not known yet";
    const nats = document.getElementById("nats");
    nats.textContent = s.nats.connected ? "connected to " + s.nats.server : "not connected";
    nats.className = s.nats.connected ? "" : "bad";
    const modes = { ttl: "shared (bucket, ttl mode)", expiry: "shared (bucket, expiry mode)", local: "local to this replica" };
    document.getElementById("mode").textContent = modes[s.mode] || "not known yet";

    const notes = document.getElementById("notes");
    notes.replaceChildren(...s.notes.map(n => el("li", {}, n)));
    if (s.not_ready) notes.append(el("li", {}, "Not taking calls: " + s.not_ready + "."));
    if (s.config && s.config.refused) notes.append(el("li", {}, "This replica keeps " + revisionText(s.config.revision) + ": " + s.config.refused));
    if (s.config && s.config.note) notes.append(el("li", {}, s.config.note));
    renderFleet(s);

    document.getElementById("share").textContent = windowText(s.choices);
    const pools = document.getElementById("pools");
    if (!s.pools) {
      pools.replaceChildren(el("p", { class: "quiet" }, "The pools are not known yet."));
    } else {
      pools.replaceChildren(el("table", {}, head(s.choices), ...s.pools.map(pool)));
    }
    const unknown = document.getElementById("unknown");
    unknown.hidden = s.unknown_routers.length === 0;
    const list = document.getElementById("unknown-routers");
    list.replaceChildren(...s.unknown_routers.map(r => el("li", { "data-unknown": r }, el("code", {}, r))));
    if (s.unknown_more > 0) list.append(el("li", { class: "quiet" }, "and " + s.unknown_more + " more: broker status lists them"));
  }

  // tick redraws what the clock changes: the countdowns and the age of the
  // data, and says so when the replica has gone quiet.
  function tick() {
    if (!last) return;
    render(last);
    const age = Date.now() - heard;
    document.getElementById("updated").textContent = age < 1500 ? "live" : span(age) + " ago";
    const link = document.getElementById("link");
    if (age > 3000) {
      link.hidden = false;
      link.textContent = "No word from the replica since " + new Date(heard).toLocaleTimeString() +
        ": what is shown is what it last said, and the countdowns run on from there. Retrying…";
    } else {
      link.hidden = true;
    }
  }

  function take(s) {
    last = s;
    heard = Date.now();
    offset = Date.parse(s.at) - heard;
    tick();
  }

  function poll() {
    if (polling) return;
    const once = () => fetch("status.json", { cache: "no-store" }).then(r => r.json()).then(take).catch(() => {});
    once();
    polling = setInterval(once, 1000);
  }

  function start() {
    setInterval(tick, 1000);
    if (!window.EventSource) { poll(); return; }
    const es = new EventSource("events");
    es.onmessage = e => take(JSON.parse(e.data));
    // Nothing changed: the replica sends only its clock.
    es.addEventListener("at", e => { if (last) take(Object.assign(last, JSON.parse(e.data))); });
    // A stream refused (too many pages open) is not retried by the
    // browser; poll instead.
    es.onerror = () => { if (es.readyState === EventSource.CLOSED) poll(); };
  }

  start();
})();
