// The review page of `edgetile serve`: a queue of detections to confirm, reject or flag, the whole
// photo with its boxes, and an offline map of the searched area. Plain script, no build step: it
// talks only to the daemon that served it, with the token (if any) in the Authorization header, so
// images are fetched as bytes and shown through blob: URLs rather than by <img src> to the API.
"use strict";

(() => {
  const STATUSES = ["unreviewed", "confirmed", "rejected", "flagged"];
  const COLOURS = { unreviewed: "#f2c200", confirmed: "#1a9e3f", rejected: "#8a8a8a", flagged: "#d6336c" };
  const PAGE = 200; // queue items per request: the first screen comes fast, the rest as the operator moves
  const PREFETCH = 10; // crops fetched ahead of the selection, so the next one shows at once
  const CROP_CACHE = 400;
  const OVERLAYS_AT_ONCE = 150; // downscaled photos drawn on the map; beyond that, outlines until zoomed in
  const KEY_TOKEN = "edgetile.token";
  const KEY_OPERATOR = "edgetile.operator";
  const KEY_FILTERS = "edgetile.filters";
  const KEY_PENDING = "edgetile.pending";

  // What the page holds, for the operator's scripts and for the browser tests.
  const S = {
    ready: false,
    view: "queue",
    filters: null,
    counts: null,
    items: [], // Detection objects of the queue, in its order
    next: null, // cursor of the queue's next page, null when all are loaded
    current: null, // id of the selected detection
    shown: null, // id of the crop on screen
    timing: { readyAt: 0, keyAt: 0, selectAt: 0, shownAt: 0, mapAskedAt: 0, mapReadyAt: 0, mapSettledAt: 0 },
    undo: [], // {id, status} to go back to, most recent last
    pending: [], // decisions not yet accepted by the daemon (daemon down, radio link lost)
    live: false,
    events: 0,
    photo: null, // {outcome_id, width, height, boxes: {id: Detection}, selected}
    lastOperatorBox: null,
    map: null, // {photos, tracks, legend, tiles} as the daemon sent it
    markers: {}, // detection id -> {lat, lon, status}
    footprints: [], // outcome ids drawn on the map
    overlaysLoaded: 0,
    tilesLoaded: 0, // background map tiles (--tiles) drawn
    tracks: 0,
    errors: [],
  };
  window.edgetileReview = S;

  const $ = (sel) => document.querySelector(sel);
  const byId = new Map(); // id -> Detection (queue items, photo boxes, map markers: one object each)
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  // ---- talking to the daemon ------------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, detail) {
      super(`HTTP ${status}: ${detail}`);
      this.status = status;
    }
  }

  let asking = null; // one token question at a time, however many requests were refused

  async function api(path, opts = {}) {
    for (;;) {
      const headers = new Headers(opts.headers || {});
      const token = sessionStorage.getItem(KEY_TOKEN);
      if (token) headers.set("Authorization", `Bearer ${token}`);
      if (opts.json !== undefined) headers.set("Content-Type", "application/json");
      const r = await fetch(path, {
        method: opts.method || "GET",
        headers,
        body: opts.json !== undefined ? JSON.stringify(opts.json) : undefined,
        cache: "no-store",
        credentials: "omit",
        signal: opts.signal,
      });
      if (r.status === 401) {
        await askToken(token ? "The daemon refused this token. Its token:" : null);
        continue;
      }
      if (!r.ok) {
        let detail = r.statusText;
        try {
          detail = (await r.json()).detail || detail;
        } catch (_) {
          // not JSON: the status text says enough
        }
        throw new HttpError(r.status, detail);
      }
      return r;
    }
  }

  const getJSON = async (path) => (await api(path)).json();

  function askToken(message) {
    if (!asking) {
      asking = ask(message || "This daemon needs its token (edgetile serve --token). Token:", "password")
        .then((t) => sessionStorage.setItem(KEY_TOKEN, t.trim()))
        .finally(() => (asking = null));
    }
    return asking;
  }

  function ask(text, type = "text", value = "") {
    const dlg = $("#ask");
    $("#ask-text").textContent = text;
    const input = $("#ask-input");
    input.type = type;
    input.value = value;
    $("#ask-error").textContent = "";
    return new Promise((resolve) => {
      const done = () => {
        if (!input.value.trim()) {
          dlg.showModal();
          return;
        }
        dlg.removeEventListener("close", done);
        resolve(input.value);
      };
      dlg.addEventListener("close", done);
      dlg.showModal();
      input.focus();
    });
  }

  async function operatorName() {
    let name = localStorage.getItem(KEY_OPERATOR);
    if (!name) {
      name = (await ask("Your name, written with each decision (asked once):")).trim().slice(0, 64);
      localStorage.setItem(KEY_OPERATOR, name);
      showOperator();
    }
    return name;
  }

  function showOperator() {
    $("#operator").textContent = `operator: ${localStorage.getItem(KEY_OPERATOR) || "–"}`;
  }

  function say(text, isError = false) {
    const m = $("#message");
    m.textContent = text;
    m.className = isError ? "error" : "";
    if (isError) S.errors.push(text);
  }

  // ---- images through blob: URLs ---------------------------------------------------------------

  const crops = new Map(); // id -> Promise<blob URL>, oldest first

  function cropUrl(id) {
    let p = crops.get(id);
    if (!p) {
      p = api(`/api/review/crops/${encodeURIComponent(id)}`)
        .then((r) => r.blob())
        .then((b) => URL.createObjectURL(b));
      p.catch(() => crops.delete(id));
      crops.set(id, p);
      while (crops.size > CROP_CACHE) {
        const [oldest, old] = crops.entries().next().value;
        if (oldest === S.current) break;
        crops.delete(oldest);
        old.then(URL.revokeObjectURL, () => {});
      }
    }
    return p;
  }

  async function blobUrl(path) {
    return URL.createObjectURL(await (await api(path)).blob());
  }

  // ---- filters and the queue --------------------------------------------------------------------

  function readFilters() {
    const f = $("#filter-form");
    return {
      status: [...f.querySelectorAll("input[name=status]:checked")].map((i) => i.value),
      min_score: f.min_score.value,
      max_score: f.max_score.value,
      source: f.source.value,
      order: f.order.value,
    };
  }

  function writeFilters(v) {
    const f = $("#filter-form");
    for (const i of f.querySelectorAll("input[name=status]")) i.checked = v.status.includes(i.value);
    f.min_score.value = v.min_score || "";
    f.max_score.value = v.max_score || "";
    f.source.value = v.source || "";
    f.order.value = v.order || "score";
  }

  function query(filters, extra = {}) {
    const q = new URLSearchParams();
    if (filters.status.length && filters.status.length < STATUSES.length) q.set("status", filters.status.join(","));
    for (const k of ["min_score", "max_score", "source", "order"]) if (filters[k]) q.set(k, filters[k]);
    for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined) q.set(k, v);
    return q.toString();
  }

  function matches(d, f) {
    if (f.status.length && !f.status.includes(d.status)) return false;
    if (f.source && d.source !== f.source) return false;
    const s = d.score; // an operator's box has none: the score range is the model's only
    if (s !== null && f.min_score !== "" && s < Number(f.min_score)) return false;
    if (s !== null && f.max_score !== "" && s > Number(f.max_score)) return false;
    return true;
  }

  function remember(d) {
    const had = byId.get(d.id);
    if (had) {
      Object.assign(had, d);
      return had;
    }
    byId.set(d.id, d);
    return d;
  }

  let loading = null;
  let generation = 0; // a filter change abandons the pages still arriving for the old filters

  async function loadQueue() {
    generation += 1;
    S.filters = readFilters();
    localStorage.setItem(KEY_FILTERS, JSON.stringify(S.filters));
    S.items = [];
    S.next = null;
    $("#queue-list").replaceChildren();
    loading = null;
    await loadMore(true);
    select(S.items.length ? S.items[0].id : null);
  }

  function loadMore(first = false) {
    if (loading) return loading;
    if (!first && S.next === null) return Promise.resolve();
    const gen = generation;
    loading = (async () => {
      try {
        const page = await getJSON(`/api/review/detections?${query(S.filters, { limit: PAGE, after: S.next })}`);
        if (gen !== generation) return;
        const have = new Set(S.items.map((x) => x.id)); // a live arrival may already be in the list
        const fresh = page.items.filter((d) => !have.has(d.id)).map(remember);
        S.items.push(...fresh);
        S.next = page.next;
        if (page.counts) showCounts(page.counts);
        appendRows(fresh);
      } finally {
        if (gen === generation) loading = null;
      }
    })();
    return loading;
  }

  function row(d) {
    const li = document.createElement("li");
    li.dataset.id = d.id;
    li.innerHTML = '<span class="dot"></span><span class="score"></span><span class="name"></span><time></time>';
    li.addEventListener("click", () => select(d.id));
    fillRow(li, d);
    return li;
  }

  function fillRow(li, d) {
    li.className = `${d.status}${d.id === S.current ? " selected" : ""}`;
    li.children[1].textContent = d.score === null ? "op" : `${Math.round(d.score * 100)}%`;
    li.children[2].textContent = baseName(d.image);
    li.children[3].textContent = shortTime(d.time);
    li.children[3].dateTime = d.time;
  }

  function appendRows(items) {
    const frag = document.createDocumentFragment();
    for (const d of items) frag.appendChild(row(d));
    $("#queue-list").appendChild(frag);
  }

  function rowOf(id) {
    return $("#queue-list").querySelector(`li[data-id="${CSS.escape(id)}"]`);
  }

  function refreshRow(d) {
    const li = rowOf(d.id);
    if (li) fillRow(li, d);
  }

  function indexOf(id) {
    return S.items.findIndex((d) => d.id === id);
  }

  function select(id) {
    const before = S.current ? rowOf(S.current) : null;
    if (before) before.classList.remove("selected");
    S.current = id;
    S.timing.selectAt = performance.now();
    const d = id ? byId.get(id) : null;
    const li = id ? rowOf(id) : null;
    if (li) {
      li.classList.add("selected");
      li.scrollIntoView({ block: "nearest" });
    }
    showDetails(d);
    showCrop(d);
    const i = indexOf(id);
    for (let k = 1; k <= PREFETCH && i >= 0 && i + k < S.items.length; k++) cropUrl(S.items[i + k].id).catch(() => {});
    if (i > 0) cropUrl(S.items[i - 1].id).catch(() => {});
    if (i >= S.items.length - PREFETCH * 4) loadMore().catch(fail);
    if (S.view === "photo" && d) showPhoto(d).catch(fail);
  }

  async function showCrop(d) {
    const img = $("#crop");
    $("#crop-empty").hidden = !!d;
    $("#crop-empty").textContent = "No detection selected.";
    if (!d) {
      img.removeAttribute("src");
      S.shown = null;
      return;
    }
    let url;
    try {
      url = await cropUrl(d.id);
    } catch (e) {
      if (S.current === d.id) {
        img.removeAttribute("src");
        $("#crop-empty").hidden = false;
        $("#crop-empty").textContent = e.status === 410 ? "The photo's copy was removed (retention)." : String(e.message);
      }
      return;
    }
    if (S.current !== d.id) return;
    img.src = url;
    try {
      await img.decode();
    } catch (_) {
      return; // replaced by a later selection before it decoded
    }
    if (S.current === d.id) {
      S.shown = d.id;
      S.timing.shownAt = performance.now();
    }
  }

  function showDetails(d) {
    const dl = $("#details");
    dl.replaceChildren();
    if (!d) return;
    const add = (term, value, cls) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      if (cls) dd.className = cls;
      dl.append(dt, dd);
    };
    add("status", d.decided_at ? `${d.status} by ${d.operator || "?"}, ${shortTime(d.decided_at)}` : d.status, d.status);
    add("photo", d.image);
    add("time", d.time ? new Date(d.time).toLocaleString() : "–");
    add("score", d.score === null ? "drawn by an operator" : `${(d.score * 100).toFixed(1)}% ${d.class_name || ""}`);
    add("position", position(d));
    add("box", `${d.bbox.map((v) => Math.round(v)).join(", ")} px of ${d.photo_width}×${d.photo_height}`);
    add("source", `${d.source}${d.origin === "operator" ? " (operator-drawn)" : ""}`);
    if (d.note) add("note", d.note);
    add("id", d.id);
  }

  function position(d) {
    if (d.lat === null || d.lat === undefined) return "not georeferenced";
    const err = d.error_m === null || d.error_m === undefined ? "" : ` ± ${Math.round(d.error_m)} m`;
    return `${d.lat.toFixed(6)}, ${d.lon.toFixed(6)}${err}`;
  }

  function move(step) {
    if (!S.items.length) return;
    const i = indexOf(S.current);
    const j = Math.min(Math.max(i + step, 0), S.items.length - 1);
    if (j !== i) select(S.items[j].id);
  }

  // ---- decisions ---------------------------------------------------------------------------------

  async function decide(status) {
    const d = S.current ? byId.get(S.current) : null;
    if (!d) return;
    const operator = await operatorName();
    S.undo.push({ id: d.id, status: d.status });
    move(1); // the next crop first: the operator's eyes move on while the decision is saved
    apply({ ...d, status, operator, decided_at: new Date().toISOString() });
    send({ id: d.id, status, operator });
  }

  async function undo() {
    const last = S.undo.pop();
    if (!last) {
      say("Nothing to undo.");
      return;
    }
    const operator = await operatorName();
    const d = byId.get(last.id);
    apply({ ...d, status: last.status, operator });
    send({ id: last.id, status: last.status, operator });
    select(last.id);
  }

  // Decisions go out in order and are retried until the daemon takes them, so a daemon restart or a
  // dropped radio link loses nothing the operator decided; they survive a reload in localStorage.
  function send(decision) {
    S.pending.push(decision);
    savePending();
    flush();
  }

  function savePending() {
    localStorage.setItem(KEY_PENDING, JSON.stringify(S.pending));
    const p = $("#pending");
    p.hidden = S.pending.length === 0;
    p.textContent = `${S.pending.length} decision${S.pending.length === 1 ? "" : "s"} not yet saved`;
  }

  let flushing = false;

  async function flush() {
    if (flushing) return;
    flushing = true;
    try {
      while (S.pending.length) {
        const decision = S.pending[0];
        try {
          const r = await api("/api/review/decisions", { method: "POST", json: decision });
          apply(await r.json());
        } catch (e) {
          if (e instanceof HttpError && e.status >= 400 && e.status < 500) {
            say(`Decision on ${decision.id} refused: ${e.message}`, true);
            resync().catch(fail); // the page showed it as taken: back to what the daemon holds
          } else {
            await sleep(1000); // the daemon is down or unreachable: keep the decision, try again
            continue;
          }
        }
        S.pending.shift();
        savePending();
      }
    } finally {
      flushing = false;
    }
    refreshCounts();
  }

  // One detection changed (a decision here or elsewhere, a new operator box): every view follows.
  function apply(d) {
    const had = byId.get(d.id);
    const before = had ? had.status : null;
    const changed = before !== d.status;
    if (changed && before && S.counts) {
      // counted here at once; the daemon's counts follow (other operators, new detections)
      S.counts[before] -= 1;
      S.counts[d.status] += 1;
      showCounts(S.counts);
    }
    const obj = remember(d);
    refreshRow(obj);
    if (S.current === d.id) showDetails(obj);
    if (S.markers[d.id]) S.markers[d.id].status = obj.status;
    const marker = markerLayers.get(d.id);
    if (marker) marker.setStyle({ fillColor: COLOURS[obj.status] });
    const box = photoBoxes.get(d.id);
    if (box) {
      box.setStyle(boxStyle(obj));
      S.photo.boxes[d.id] = obj.status;
    }
    if (changed) refreshCounts();
    return obj;
  }

  let countsTimer = null;

  function refreshCounts() {
    clearTimeout(countsTimer);
    countsTimer = setTimeout(async () => {
      try {
        showCounts(await getJSON("/api/review/counts"));
      } catch (e) {
        if (!(e instanceof TypeError)) fail(e);
      }
    }, 1000);
  }

  function showCounts(c) {
    S.counts = c;
    for (const s of STATUSES) $(`[data-count=${s}]`).textContent = c[s];
  }

  // ---- live: server-sent events read with fetch(), so the token travels in a header ----------------

  async function listen() {
    let connected = false;
    for (;;) {
      try {
        const r = await api("/api/review/events", { headers: { Accept: "text/event-stream" } });
        S.live = true;
        $("#live").dataset.live = "true";
        if (connected) resync().catch(fail); // events missed while away
        connected = true;
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, "\n");
          let end;
          while ((end = buf.indexOf("\n\n")) >= 0) {
            event(buf.slice(0, end));
            buf = buf.slice(end + 2);
          }
        }
      } catch (e) {
        if (e instanceof HttpError) say(`Live updates: ${e.message}`, true);
      }
      S.live = false;
      $("#live").dataset.live = "false";
      await sleep(1000);
    }
  }

  function event(block) {
    let type = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "data") data.push(value);
    }
    if (!data.length) return;
    const d = JSON.parse(data.join("\n"));
    S.events += 1;
    if (type === "decision") apply(d);
    else if (type === "detection") arrived(d);
  }

  function arrived(d) {
    if (byId.has(d.id)) {
      apply(d);
      return;
    }
    const obj = remember(d);
    refreshCounts();
    if (S.photo && S.photo.outcome_id === d.outcome_id) drawBox(obj);
    if (groundMap) addMarker(obj);
    if (!matches(obj, S.filters)) return;
    // Into the queue where it belongs, if that place is among the loaded items (else its page brings it).
    let at = S.items.length;
    if (S.filters.order === "score" && obj.score !== null) {
      const i = S.items.findIndex((x) => x.score === null || x.score < obj.score);
      if (i >= 0) at = i;
    }
    if (at === S.items.length && S.next !== null) return;
    S.items.splice(at, 0, obj);
    const list = $("#queue-list");
    list.insertBefore(row(obj), list.children[at] || null);
    if (!S.current) select(obj.id);
  }

  // After a reconnect: the statuses of what the page holds, as the daemon has them now.
  async function resync() {
    refreshCounts();
    let after = null;
    let seen = 0;
    while (seen < S.items.length) {
      const page = await getJSON(`/api/review/detections?${query(S.filters, { limit: 1000, after })}`);
      for (const d of page.items) if (byId.has(d.id)) apply(d);
      seen += page.items.length;
      if (page.next === null) break;
      after = page.next;
    }
  }

  // ---- photo view: the whole photo at full resolution, its boxes, drawing a missed person -----------

  let photoMap = null;
  let photoLayer = null;
  let photoUrl = null;
  const photoBoxes = new Map(); // id -> L.Rectangle
  let ring = null;
  let drawMode = false;

  // CRS.Simple: one map unit per photo pixel at zoom 0; y grows down in pixels and up in latitude.
  const px = (x, y) => L.latLng(-y, x);

  function boxStyle(d) {
    const sel = S.photo && S.photo.selected === d.id;
    return {
      color: sel ? "#00e5ff" : COLOURS[d.status],
      weight: sel ? 4 : 2,
      fill: sel,
      fillOpacity: 0.08,
      dashArray: d.origin === "operator" ? "6 4" : null,
    };
  }

  function drawBox(d) {
    const [x1, y1, x2, y2] = d.bbox;
    let rect = photoBoxes.get(d.id);
    if (!rect) {
      rect = L.rectangle([px(x1, y1), px(x2, y2)], boxStyle(d)).addTo(photoMap);
      rect.on("click", () => {
        if (indexOf(d.id) >= 0) select(d.id);
        else highlight(d.id);
      });
      rect.bindTooltip(() => `${d.score === null ? "operator" : `${Math.round(d.score * 100)}%`} ${d.status}`);
      photoBoxes.set(d.id, rect);
      S.photo.boxes[d.id] = d.status;
    }
    rect.setStyle(boxStyle(d));
  }

  function highlight(id) {
    const before = S.photo.selected;
    S.photo.selected = id;
    for (const bid of [before, id]) {
      const r = bid && photoBoxes.get(bid);
      if (r) r.setStyle(boxStyle(byId.get(bid)));
    }
    const r = photoBoxes.get(id);
    if (r) r.bringToFront();
    // A ring of constant screen size around the selected box, so a 10-pixel person is found at any zoom.
    if (ring) ring.remove();
    ring = r ? L.circleMarker(r.getBounds().getCenter(), { radius: 28, color: "#00e5ff", weight: 2, fill: false, interactive: false }).addTo(photoMap) : null;
  }

  function ensurePhotoMap() {
    if (photoMap) return;
    photoMap = L.map("photo-map", {
      crs: L.CRS.Simple,
      minZoom: -6,
      maxZoom: 4,
      zoomSnap: 0.25,
      boxZoom: false, // shift-drag draws a box instead
      keyboard: false, // the page's own keys
      attributionControl: false,
    });
    const container = photoMap.getContainer();
    let start = null;
    let rubber = null;
    photoMap.on("mousedown", (e) => {
      if (!S.photo || !(drawMode || e.originalEvent.shiftKey)) return;
      photoMap.dragging.disable();
      start = e.latlng;
      rubber = L.rectangle([start, start], { color: "#00e5ff", weight: 2, dashArray: "4 3" }).addTo(photoMap);
    });
    photoMap.on("mousemove", (e) => {
      if (rubber) rubber.setBounds(L.latLngBounds(start, e.latlng));
    });
    photoMap.on("mouseup", (e) => {
      if (!rubber) return;
      const b = L.latLngBounds(start, e.latlng);
      rubber.remove();
      rubber = null;
      setDrawMode(false);
      const { width: w, height: h } = S.photo;
      const clamp = (v, hi) => Math.min(Math.max(Math.round(v), 0), hi);
      const bbox = [clamp(b.getWest(), w), clamp(-b.getNorth(), h), clamp(b.getEast(), w), clamp(-b.getSouth(), h)];
      if (bbox[2] - bbox[0] < 2 || bbox[3] - bbox[1] < 2) return; // a click, not a box
      addOperatorBox(bbox).catch(fail);
    });
    container.addEventListener("contextmenu", (e) => e.preventDefault());
  }

  function setDrawMode(on) {
    drawMode = on;
    $("#draw-button").setAttribute("aria-pressed", String(on));
    if (!photoMap) return;
    photoMap.getContainer().classList.toggle("drawing", on);
    if (on) photoMap.dragging.disable();
    else photoMap.dragging.enable();
  }

  // Shift held over the photo: a drag draws a box instead of panning.
  function onShift(e) {
    if (e.key !== "Shift" || !photoMap || S.view !== "photo" || drawMode) return;
    if (e.type === "keydown") photoMap.dragging.disable();
    else photoMap.dragging.enable();
  }

  async function addOperatorBox(bbox) {
    const operator = await operatorName();
    const r = await api("/api/review/operator-boxes", {
      method: "POST",
      json: { outcome_id: S.photo.outcome_id, bbox, operator },
    });
    const d = remember(await r.json());
    S.lastOperatorBox = d;
    drawBox(d);
    highlight(d.id);
    if (groundMap) addMarker(d);
    if (matches(d, S.filters) && indexOf(d.id) < 0 && (S.filters.order === "time" ? S.next === null : true)) {
      S.items.push(d);
      appendRows([d]);
    }
    refreshCounts();
    say(`Box added on ${baseName(d.image)}: ${position(d)}`);
  }

  // Every detection of one photo; the pages are filtered here too, for a daemon without outcome_id.
  async function photoDetections(outcomeId) {
    const out = [];
    let after = null;
    for (;;) {
      const q = new URLSearchParams({ outcome_id: outcomeId, order: "time", limit: "1000", ...(after ? { after } : {}) });
      const page = await getJSON(`/api/review/detections?${q}`);
      out.push(...page.items.filter((x) => x.outcome_id === outcomeId));
      if (page.next === null) return out;
      after = page.next;
    }
  }

  async function showPhoto(d) {
    setView("photo");
    ensurePhotoMap();
    if (!S.photo || S.photo.outcome_id !== d.outcome_id) {
      for (const r of photoBoxes.values()) r.remove();
      photoBoxes.clear();
      if (photoLayer) photoLayer.remove();
      if (photoUrl) URL.revokeObjectURL(photoUrl);
      photoLayer = null;
      photoUrl = null;
      const w = d.photo_width;
      const h = d.photo_height;
      S.photo = { outcome_id: d.outcome_id, width: w, height: h, boxes: {}, selected: d.id, loaded: false };
      $("#photo-title").textContent = `${d.image} · ${w}×${h}`;
      const bounds = L.latLngBounds(px(0, h), px(w, 0));
      photoMap.invalidateSize();
      photoMap.fitBounds(bounds);
      photoMap.setMaxBounds(bounds.pad(0.5));
      const [url, boxes] = await Promise.all([
        blobUrl(`/images/${d.outcome_id}`).catch((e) => {
          say(e.status === 410 ? `${d.image}: its copy was removed (retention); boxes only` : e.message, true);
          return null;
        }),
        photoDetections(d.outcome_id),
      ]);
      if (!S.photo || S.photo.outcome_id !== d.outcome_id) {
        if (url) URL.revokeObjectURL(url);
        return;
      }
      if (url) {
        photoUrl = url;
        photoLayer = L.imageOverlay(url, bounds).addTo(photoMap);
        photoLayer.bringToBack();
      }
      for (const b of boxes) drawBox(remember(b));
      drawBox(d);
      S.photo.loaded = true;
    }
    highlight(d.id);
    // The whole photo when it fits at half its resolution or more; else the selected box at full
    // resolution (one photo pixel per screen pixel), the operator zooming out for the rest.
    const whole = L.latLngBounds(px(0, d.photo_height), px(d.photo_width, 0));
    const fit = photoMap.getBoundsZoom(whole);
    const [x1, y1, x2, y2] = d.bbox;
    if (fit >= -1) photoMap.fitBounds(whole);
    else photoMap.setView(px((x1 + x2) / 2, (y1 + y2) / 2), 0);
  }

  // ---- map view: footprints with their photos, detections, tracks, legend ---------------------------

  let groundMap = null;
  const markerLayers = new Map(); // id -> L.CircleMarker
  const overlays = []; // FootprintImage layers, loaded when in view

  // A photo drawn into its footprint's four corners. L.imageOverlay only stretches an image over a
  // lat/lon rectangle, and a footprint is a rotated (or, with a tilted camera, trapezoidal)
  // quadrilateral: this layer maps the image onto it with a CSS matrix3d homography, recomputed on
  // every zoom (and during the zoom animation), as Leaflet.ImageOverlay.Rotated does with an affine
  // transform; the homography also gets the fourth corner of an oblique photo right.
  const FootprintImage = L.Layer.extend({
    initialize(corners, path) {
      this._corners = corners.map((c) => L.latLng(c));
      this._path = path;
      this.bounds = L.latLngBounds(this._corners);
      this.state = "idle";
    },
    onAdd(map) {
      this._img = L.DomUtil.create("img", "footprint-image leaflet-zoom-animated");
      this._img.alt = "";
      map.getPane("photos").appendChild(this._img);
      if (this._url) this._show();
    },
    onRemove() {
      this._img.remove();
    },
    getEvents() {
      return { zoom: this._reset, viewreset: this._reset, zoomanim: this._animate };
    },
    async load() {
      if (this.state !== "idle") return;
      this.state = "loading";
      try {
        this._url = await blobUrl(this._path);
        this.state = "loaded";
        S.overlaysLoaded += 1;
        if (this._img) this._show();
      } catch (e) {
        this.state = "failed"; // the copy was removed (retention): the outline stays
      }
    },
    _show() {
      this._img.onload = () => this._reset();
      this._img.src = this._url;
    },
    _reset() {
      if (!this._map || !this._img.naturalWidth) return;
      this._place(this._corners.map((c) => this._map.latLngToLayerPoint(c)));
    },
    _animate(e) {
      if (!this._img.naturalWidth) return;
      this._place(this._corners.map((c) => this._map._latLngToNewLayerPoint(c, e.zoom, e.center)));
    },
    _place(p) {
      const w = this._img.naturalWidth;
      const h = this._img.naturalHeight;
      const m = squareToQuad(p);
      // pixels -> unit square -> layer points; CSS matrix3d is column-major
      const a = m[0] / w, b = m[1] / h, c = m[2], d = m[3] / w, e = m[4] / h, f = m[5], g = m[6] / w, k = m[7] / h;
      this._img.style.width = `${w}px`;
      this._img.style.height = `${h}px`;
      this._img.style.transform = `matrix3d(${[a, d, 0, g, b, e, 0, k, 0, 0, 1, 0, c, f, 0, 1].join(",")})`;
    },
  });

  // The projective map of the unit square (0,0) (1,0) (1,1) (0,1) onto the quadrilateral p0..p3
  // (Heckbert, "Fundamentals of texture mapping", 1989): [a b c d e f g h] with
  // X = (a u + b v + c) / (g u + h v + 1), Y = (d u + e v + f) / (g u + h v + 1).
  function squareToQuad(p) {
    const [x0, y0, x1, y1, x2, y2, x3, y3] = [p[0].x, p[0].y, p[1].x, p[1].y, p[2].x, p[2].y, p[3].x, p[3].y];
    const sx = x0 - x1 + x2 - x3;
    const sy = y0 - y1 + y2 - y3;
    let g = 0;
    let h = 0;
    if (Math.abs(sx) > 1e-9 || Math.abs(sy) > 1e-9) {
      const dx1 = x1 - x2, dx2 = x3 - x2, dy1 = y1 - y2, dy2 = y3 - y2;
      const det = dx1 * dy2 - dx2 * dy1;
      g = (sx * dy2 - dx2 * sy) / det;
      h = (dx1 * sy - sx * dy1) / det;
    }
    return [x1 - x0 + g * x1, x3 - x0 + h * x3, x0, y1 - y0 + g * y1, y3 - y0 + h * y3, y0, g, h];
  }

  const AuthTiles = L.TileLayer.extend({
    createTile(coords, done) {
      const img = document.createElement("img");
      img.alt = "";
      blobUrl(this.getTileUrl(coords))
        .then((url) => {
          img.onload = () => {
            URL.revokeObjectURL(url);
            S.tilesLoaded += 1;
            done(null, img);
          };
          img.src = url;
        })
        .catch((e) => done(e, img));
      return img;
    },
  });

  function markerStyle(d) {
    return { radius: 6, weight: 1.5, color: "#111", fillColor: COLOURS[d.status], fillOpacity: 0.95 };
  }

  function addMarker(d) {
    if (d.lat === null || d.lat === undefined || markerLayers.has(d.id)) return;
    const m = L.circleMarker([d.lat, d.lon], markerStyle(d)).addTo(groundMap);
    m.bindTooltip(() => {
      const o = byId.get(d.id);
      return `${baseName(o.image)} · ${o.score === null ? "operator" : `${Math.round(o.score * 100)}%`} · ${o.status}`;
    });
    m.on("click", () => {
      const o = byId.get(d.id);
      if (indexOf(o.id) >= 0) select(o.id);
      else {
        S.current = o.id;
        showDetails(o);
        showCrop(o);
      }
      showPhoto(o).catch(fail);
    });
    markerLayers.set(d.id, m);
    S.markers[d.id] = { lat: d.lat, lon: d.lon, status: d.status };
  }

  async function showMap() {
    setView("map");
    if (groundMap) {
      groundMap.invalidateSize();
      return;
    }
    S.timing.mapAskedAt = performance.now();
    groundMap = L.map("ground-map", { preferCanvas: true, zoomSnap: 0.5, maxZoom: 23, keyboard: false, attributionControl: false });
    groundMap.createPane("photos").style.zIndex = 350; // under the outlines and markers
    L.control.scale({ metric: true, imperial: false }).addTo(groundMap);
    // The markers come from the queue's pages and the footprints from the map's JSON; both are asked
    // at once, so the detections are on the map while the daemon still works out footprints and tracks.
    const asked = getJSON("/api/review/map");
    const all = L.latLngBounds([]);
    let after = null;
    for (;;) {
      const page = await getJSON(`/api/review/detections?${new URLSearchParams({ order: "time", limit: "1000", ...(after ? { after } : {}) })}`);
      for (const d of page.items) {
        addMarker(remember(d));
        if (d.lat !== null && d.lat !== undefined) all.extend([d.lat, d.lon]);
      }
      if (page.next === null) break;
      after = page.next;
    }
    if (all.isValid()) groundMap.fitBounds(all.pad(0.05));
    S.timing.mapMarkersAt = performance.now();
    const data = await asked;
    S.timing.mapDataAt = performance.now();
    S.map = data;
    if (data.tiles) new AuthTiles(data.tiles, { maxZoom: 23, maxNativeZoom: 19 }).addTo(groundMap);
    const legend = data.legend || {};
    const coarse = (p) => p.gsd_cm !== null && legend.max_gsd_cm_detectable && p.gsd_cm > legend.max_gsd_cm_detectable;
    for (const p of data.photos) {
      if (!p.footprint) continue;
      const bad = coarse(p);
      L.polygon(p.footprint, {
        color: bad ? "#d9480f" : "#1c7ed6",
        weight: 1.5,
        dashArray: bad ? "5 4" : null,
        fill: true,
        fillOpacity: 0,
      })
        .bindTooltip(`${baseName(p.image)}${p.gsd_cm !== null ? ` · ${p.gsd_cm.toFixed(1)} cm/px` : ""}${bad ? " · too coarse for a person" : ""}`)
        .addTo(groundMap);
      const o = new FootprintImage(p.footprint, p.overlay);
      overlays.push(o.addTo(groundMap));
      S.footprints.push(p.outcome_id);
      all.extend(o.bounds);
    }
    for (const t of data.tracks || []) {
      L.polyline(t.points, { color: "#7048e8", weight: 3, dashArray: "2 6" }).bindTooltip(`track ${t.id}`).addTo(groundMap);
      S.tracks += 1;
    }
    addLegend(data, legend);
    if (all.isValid()) groundMap.fitBounds(all.pad(0.05));
    else groundMap.setView([0, 0], 2);
    groundMap.on("moveend", loadVisibleOverlays);
    // When a pan or zoom has been drawn: the frame after the one that ended the move.
    groundMap.on("moveend", () => requestAnimationFrame(() => requestAnimationFrame(() => (S.timing.mapSettledAt = performance.now()))));
    loadVisibleOverlays();
    S.mapReady = true;
    S.timing.mapReadyAt = performance.now();
  }

  function loadVisibleOverlays() {
    const view = groundMap.getBounds();
    const visible = overlays.filter((o) => view.intersects(o.bounds));
    if (visible.length > OVERLAYS_AT_ONCE) return; // outlines only until the operator zooms in
    let running = 0;
    const queue = visible.filter((o) => o.state === "idle");
    const next = () => {
      while (running < 4 && queue.length) {
        running += 1;
        queue.shift().load().finally(() => {
          running -= 1;
          next();
        });
      }
    };
    next();
  }

  function addLegend(data, legend) {
    const gsd = data.photos.map((p) => p.gsd_cm).filter((v) => v !== null && v !== undefined);
    const control = L.control({ position: "bottomright" });
    control.onAdd = () => {
      const div = L.DomUtil.create("div", "legend");
      const swatches = STATUSES.map((s) => `<span><i style="background:${COLOURS[s]}"></i>${s}</span>`).join("");
      const range = gsd.length ? `${Math.min(...gsd).toFixed(1)}–${Math.max(...gsd).toFixed(1)} cm/px` : "unknown";
      const person = legend.person_m || 1.7;
      const rule =
        legend.max_gsd_cm_detectable && legend.model_min_px
          ? `A ${person} m person spans at least ${legend.model_min_px.toFixed(0)} px, the smallest the model detects, ` +
            `where the ground sampling distance is at most ${legend.max_gsd_cm_detectable.toFixed(1)} cm/px. ` +
            "Dashed orange footprints are coarser: a person there may be missed."
          : "The model's smallest detectable size is unknown.";
      div.innerHTML =
        `<div class="swatches">${swatches}</div>` +
        `<p><b>${data.photos.length}</b> photos, ground sampling distance ${range}.</p><p></p>`;
      div.lastChild.textContent = rule;
      L.DomEvent.disableClickPropagation(div);
      return div;
    };
    control.addTo(groundMap);
  }

  // ---- views, keys, buttons ---------------------------------------------------------------------

  function setView(v) {
    S.view = v;
    document.body.dataset.view = v;
    for (const b of document.querySelectorAll("#views button")) b.setAttribute("aria-current", String(b.dataset.view === v));
    if (v === "photo" && photoMap) photoMap.invalidateSize();
    if (v === "map" && groundMap) groundMap.invalidateSize();
  }

  function openPhoto() {
    const d = S.current && byId.get(S.current);
    if (d) showPhoto(d).catch(fail);
    else say("Select a detection first.");
  }

  function goTo(v) {
    if (v === "queue") setView("queue");
    else if (v === "photo") openPhoto();
    else showMap().catch(fail);
  }

  const KEYS = {
    j: () => move(1),
    ArrowDown: () => move(1),
    ArrowRight: () => move(1),
    k: () => move(-1),
    ArrowUp: () => move(-1),
    ArrowLeft: () => move(-1),
    c: () => decide("confirmed").catch(fail),
    r: () => decide("rejected").catch(fail),
    f: () => decide("flagged").catch(fail),
    u: () => undo().catch(fail),
    p: openPhoto,
    Enter: openPhoto,
    m: () => goTo("map"),
    1: () => goTo("queue"),
    2: () => goTo("photo"),
    3: () => goTo("map"),
    d: () => S.view === "photo" && setDrawMode(!drawMode),
    Escape: () => (drawMode ? setDrawMode(false) : setView("queue")),
    "?": () => $("#help").showModal(),
  };

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (document.querySelector("dialog[open]")) return;
    const t = e.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLSelectElement || t instanceof HTMLTextAreaElement) {
      if (e.key === "Escape") t.blur();
      return;
    }
    const action = KEYS[e.key];
    if (!action) return;
    e.preventDefault();
    S.timing.keyAt = performance.now();
    action();
  }

  async function exportFinds(name) {
    const url = await blobUrl(`/api/review/${name}`);
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function fail(e) {
    console.error(e);
    say(e instanceof HttpError ? e.message : `Error: ${e.message || e}`, true);
  }

  function baseName(p) {
    return String(p || "").split(/[\\/]/).pop();
  }

  function shortTime(iso) {
    if (!iso) return "";
    const t = new Date(iso);
    return t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  async function main() {
    document.addEventListener("keydown", onKey);
    document.addEventListener("keydown", onShift);
    document.addEventListener("keyup", onShift);
    for (const b of document.querySelectorAll("#views button")) b.addEventListener("click", () => goTo(b.dataset.view));
    const actions = { confirm: KEYS.c, reject: KEYS.r, flag: KEYS.f, undo: KEYS.u, photo: openPhoto };
    for (const b of document.querySelectorAll("[data-action]")) b.addEventListener("click", () => actions[b.dataset.action]());
    for (const b of document.querySelectorAll("[data-export]")) b.addEventListener("click", () => exportFinds(b.dataset.export).catch(fail));
    $("#draw-button").addEventListener("click", () => setDrawMode(!drawMode));
    $("#help-button").addEventListener("click", () => $("#help").showModal());
    $("#operator").addEventListener("click", async () => {
      localStorage.removeItem(KEY_OPERATOR);
      await operatorName();
    });
    const saved = localStorage.getItem(KEY_FILTERS);
    if (saved) writeFilters(JSON.parse(saved));
    $("#filter-form").addEventListener("change", () => loadQueue().catch(fail));
    $("#filter-form").addEventListener("submit", (e) => e.preventDefault());
    showOperator();
    setView("queue");
    S.pending = JSON.parse(localStorage.getItem(KEY_PENDING) || "[]");
    savePending();
    if (S.pending.length) flush();
    await loadQueue();
    refreshCounts();
    S.ready = true;
    S.timing.readyAt = performance.now();
    document.body.dataset.ready = "true";
    listen();
  }

  main().catch(fail);
})();
