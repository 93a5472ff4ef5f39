// The review page of `edgetile serve`: a queue of detections to confirm, reject or flag, the whole
// photo with its boxes, and an offline map of the searched area. Plain script, no build step: it
// talks only to the daemon that served it, with the token (if any) in the Authorization header, so
// images are fetched as bytes and shown through blob: URLs rather than by <img src> to the API.
// The same page serves `edgetile station` (GET /api/review/mode says which): there the queue lists
// finds (one person, the sightings of several photos and drones), the map colours each drone's
// photos and sightings and shows where each drone was last, and crops and photos that are still on
// a drone out of radio range are waited for instead of shown broken.
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
  const NO_DRONE_COLOUR = "#868e96"; // a drone the station has not described yet
  const PHOTO_RETRY_MS = 3000; // a photo still on a drone out of radio range is asked again this often

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
    // station mode only
    mode: "daemon", // "station" when the page is served by `edgetile station`
    drones: {}, // drone id -> {id, color, online, api, last} as the station sent it
    droneMarkers: {}, // drone id -> {lat, lon, label, online}: each drone's last known position on the map
    footprintDrones: {}, // station photo id -> drone id of each footprint drawn
    placeholder: null, // id of the find whose crop has not arrived, shown as its coordinates instead
    photoNote: "", // the photo view's one-line message while the photo cannot be fetched
    lastSplit: null, // {find, from} of the last split
  };
  window.edgetileReview = S;

  const $ = (sel) => document.querySelector(sel);
  const station = () => S.mode === "station";
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

  function forgetCrop(id) {
    const p = crops.get(id);
    if (!p) return;
    crops.delete(id);
    p.then(URL.revokeObjectURL, () => {});
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
    if (station()) findSummary(li.children[2], d);
    else li.children[2].textContent = baseName(d.image);
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

  // A find's drones as chips in their colours, and how many sightings it has.
  function findSummary(el, d) {
    const n = (d.sightings || []).length;
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `${n} sighting${n === 1 ? "" : "s"}`;
    el.replaceChildren(...(d.drones || []).map(chip), count);
  }

  function chip(droneId) {
    const c = document.createElement("span");
    c.className = "chip";
    c.dataset.drone = droneId;
    c.textContent = droneId;
    c.style.background = droneColour(droneId);
    return c;
  }

  function droneColour(id) {
    const d = S.drones[id];
    return d && d.color ? d.color : NO_DRONE_COLOUR;
  }

  function select(id, sighting = null) {
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
    const ahead = (x) => x.crop_ready !== false && cropUrl(x.id).catch(() => {});
    for (let k = 1; k <= PREFETCH && i >= 0 && i + k < S.items.length; k++) ahead(S.items[i + k]);
    if (i > 0) ahead(S.items[i - 1]);
    if (i >= S.items.length - PREFETCH * 4) loadMore().catch(fail);
    if (S.view === "photo" && d) showPhoto(d, sighting).catch(fail);
  }

  async function showCrop(d) {
    const img = $("#crop");
    $("#crop-empty").hidden = !!d;
    $("#crop-empty").textContent = station() ? "No find selected." : "No detection selected.";
    $("#crop-frame").classList.remove("waiting");
    S.placeholder = null;
    if (!d) {
      img.removeAttribute("src");
      S.shown = null;
      return;
    }
    if (station() && d.crop_ready === false) {
      cropPlaceholder(d);
      return;
    }
    let url;
    try {
      url = await cropUrl(d.id);
    } catch (e) {
      if (S.current === d.id && station() && (e.status === 404 || e.status === 502)) {
        cropPlaceholder(d);
      } else if (S.current === d.id) {
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

  // Station: the crop is still on a drone (out of radio range, or not fetched yet): where the person
  // is, instead of a broken image; the crop event of this find brings the picture.
  function cropPlaceholder(d) {
    if (S.current !== d.id) return;
    $("#crop").removeAttribute("src");
    $("#crop-frame").classList.add("waiting");
    const text = $("#crop-empty");
    text.hidden = false;
    text.textContent = `Crop not received yet from ${d.drone_id || "the drone"} · ${position(d)}`;
    S.placeholder = d.id;
    S.shown = null;
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
    if (station()) {
      add("sightings", "");
      const dd = dl.lastChild;
      findSummary(dd, d);
      dd.classList.add("find-summary");
      const seen = (d.sightings || []).map((x) => `${x.drone_id} ${shortTime(x.time)}`).join(", ");
      if (seen) dd.append(` · ${seen}`);
    }
    add("photo", d.image);
    add("time", d.time ? new Date(d.time).toLocaleString() : "–");
    add("score", d.score === null ? "drawn by an operator" : `${(d.score * 100).toFixed(1)}% ${d.class_name || ""}`);
    add("position", position(d));
    add("box", `${d.bbox.map((v) => Math.round(v)).join(", ")} px of ${d.photo_width}×${d.photo_height}`);
    if (!station()) add("source", `${d.source}${d.origin === "operator" ? " (operator-drawn)" : ""}`);
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
    // Station: a new sighting may have become the find's best (another crop), or its crop arrived.
    const newCrop = station() && had && (had.crop_ready !== d.crop_ready || cropKey(had) !== cropKey(d));
    if (changed && before && S.counts) {
      // counted here at once; the daemon's counts follow (other operators, new detections)
      S.counts[before] -= 1;
      S.counts[d.status] += 1;
      showCounts(S.counts);
    }
    const obj = remember(d);
    refreshRow(obj);
    if (S.current === d.id) showDetails(obj);
    if (newCrop) {
      forgetCrop(obj.id);
      if (S.current === obj.id) showCrop(obj);
    }
    if (station()) {
      if (groundMap) drawFind(obj);
      if (S.photo && photoMap) {
        for (const x of obj.sightings || []) if (x.outcome_id === S.photo.outcome_id) drawBox(obj, x.id, x.bbox);
      }
      restyleBoxes(obj);
      if (S.photo && S.photo.find === obj.id) showSightings(obj);
    } else {
      if (S.markers[d.id]) S.markers[d.id].status = obj.status;
      const marker = markerLayers.get(d.id);
      if (marker) marker.setStyle({ fillColor: COLOURS[obj.status] });
      const box = photoBoxes.get(d.id);
      if (box) {
        box.setStyle(boxStyle(obj));
        S.photo.boxes[d.id] = obj.status;
      }
    }
    if (changed) refreshCounts();
    return obj;
  }

  const cropKey = (d) => `${d.outcome_id}:${(d.bbox || []).join(",")}`;

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
    for (;;) {
      try {
        const r = await api("/api/review/events", { headers: { Accept: "text/event-stream" } });
        S.live = true;
        $("#live").dataset.live = "true";
        // What changed before this stream began (while away, or between the first page and now)
        // reaches the page through a resync; what changes from here on, through the stream.
        resync().catch(fail);
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
    else if (type === "crop") cropArrived(d);
    else if (type === "drone") droneChanged(d);
  }

  // Station: the crop of a find arrived from its drone; a placeholder on screen fills in.
  function cropArrived(d) {
    forgetCrop(d.id);
    if (byId.has(d.id)) apply(d);
    else arrived(d);
    const obj = byId.get(d.id);
    if (S.current === d.id) showCrop(obj);
  }

  function arrived(d) {
    if (byId.has(d.id)) {
      apply(d);
      return;
    }
    const obj = remember(d);
    refreshCounts();
    if (station()) {
      if (S.photo) for (const x of obj.sightings || []) if (x.outcome_id === S.photo.outcome_id) drawBox(obj, x.id, x.bbox);
    } else if (S.photo && S.photo.outcome_id === d.outcome_id) drawBox(obj);
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

  // After (re)connecting the live stream: the statuses of what the page holds, as the daemon has them
  // now, and what arrived before the stream began (while the page was away): the items the daemon
  // lists among those the page holds, or after them when the page holds the whole list.
  async function resync() {
    refreshCounts();
    if (station()) loadDrones().catch(fail);
    const held = new Set(S.items.map((d) => d.id));
    let left = held.size; // held items not met yet in the daemon's order
    let after = null;
    for (;;) {
      const page = await getJSON(`/api/review/detections?${query(S.filters, { limit: 1000, after })}`);
      for (const d of page.items) {
        if (held.has(d.id)) left -= 1;
        if (byId.has(d.id)) apply(d);
        else if (left > 0 || S.next === null) arrived(d);
      }
      if (page.next === null || (left <= 0 && S.next !== null)) break;
      after = page.next;
    }
  }

  // ---- photo view: the whole photo at full resolution, its boxes, drawing a missed person -----------

  let photoMap = null;
  let photoLayer = null;
  let photoUrl = null;
  let photoFrame = null; // station: the photo's outline while the photo itself is still on its drone
  const photoBoxes = new Map(); // id -> L.Rectangle (station: sighting id -> its box)
  const boxOwner = new Map(); // box id -> id of its detection (station: of the sighting's find)
  let ring = null;
  let drawMode = false;

  // CRS.Simple: one map unit per photo pixel at zoom 0; y grows down in pixels and up in latitude.
  const px = (x, y) => L.latLng(-y, x);

  function boxStyle(d, key = d.id) {
    const sel = S.photo && S.photo.selected === key;
    return {
      color: sel ? "#00e5ff" : COLOURS[d.status],
      weight: sel ? 4 : 2,
      fill: sel,
      fillOpacity: 0.08,
      dashArray: d.origin === "operator" ? "6 4" : null,
    };
  }

  // A box of the photo: a detection (daemon), or one sighting of a find (station: key = sighting id).
  function drawBox(d, key = d.id, bbox = d.bbox) {
    const [x1, y1, x2, y2] = bbox;
    let rect = photoBoxes.get(key);
    if (!rect) {
      rect = L.rectangle([px(x1, y1), px(x2, y2)], boxStyle(d, key)).addTo(photoMap);
      rect.on("click", () => {
        const owner = boxOwner.get(key);
        if (station() && S.photo.find === owner) highlight(key);
        else if (indexOf(owner) >= 0) select(owner, key);
        else highlight(key);
      });
      rect.bindTooltip(() => {
        const o = byId.get(boxOwner.get(key));
        const who = station() ? `${o.id} · ` : "";
        return `${who}${o.score === null ? "operator" : `${Math.round(o.score * 100)}%`} ${o.status}`;
      });
      photoBoxes.set(key, rect);
    }
    boxOwner.set(key, d.id); // a split gives a sighting's box to its new find
    S.photo.boxes[key] = d.status;
    rect.setStyle(boxStyle(d, key));
  }

  // Station: a find's decision recolours the boxes of all its sightings in the photo on screen.
  function restyleBoxes(find) {
    for (const [key, owner] of boxOwner) {
      if (owner !== find.id) continue;
      photoBoxes.get(key).setStyle(boxStyle(find, key));
      S.photo.boxes[key] = find.status;
    }
  }

  function highlight(id) {
    const before = S.photo.selected;
    S.photo.selected = id;
    for (const bid of [before, id]) {
      const r = bid && photoBoxes.get(bid);
      if (r) r.setStyle(boxStyle(byId.get(boxOwner.get(bid)), bid));
    }
    const r = photoBoxes.get(id);
    if (r) r.bringToFront();
    for (const li of document.querySelectorAll("#sighting-list li")) li.classList.toggle("selected", li.dataset.id === id);
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
      if (!S.photo || station() || !(drawMode || e.originalEvent.shiftKey)) return;
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
    if (e.key !== "Shift" || !photoMap || S.view !== "photo" || drawMode || station()) return;
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
  // Station: every find with a sighting in that photo.
  async function photoDetections(outcomeId) {
    const out = [];
    let after = null;
    const inPhoto = station()
      ? (x) => (x.sightings || []).some((y) => y.outcome_id === outcomeId)
      : (x) => x.outcome_id === outcomeId;
    for (;;) {
      const q = new URLSearchParams({ outcome_id: outcomeId, order: "time", limit: "1000", ...(after ? { after } : {}) });
      const page = await getJSON(`/api/review/detections?${q}`);
      out.push(...page.items.filter(inPhoto));
      if (page.next === null) return out;
      after = page.next;
    }
  }

  async function showPhoto(d, sighting = null) {
    if (station()) return showFindPhoto(d, sighting);
    setView("photo");
    ensurePhotoMap();
    if (!S.photo || S.photo.outcome_id !== d.outcome_id) {
      for (const r of photoBoxes.values()) r.remove();
      photoBoxes.clear();
      boxOwner.clear();
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

  // ---- station: a find's photos, one per sighting, and splitting a wrong grouping -------------------

  function bestSighting(find) {
    const all = find.sightings || [];
    const key = cropKey(find);
    return all.find((x) => cropKey(x) === key) || all[0];
  }

  // The photo of one sighting of a find (its best one unless another is asked for), with the boxes of
  // every find seen in that photo, and the find's sightings listed beside it.
  async function showFindPhoto(find, sightingId = null) {
    setView("photo");
    ensurePhotoMap();
    const s = (find.sightings || []).find((x) => x.id === sightingId) || bestSighting(find);
    if (!s) return;
    if (!S.photo || S.photo.outcome_id !== s.outcome_id) {
      for (const r of photoBoxes.values()) r.remove();
      photoBoxes.clear();
      boxOwner.clear();
      if (photoLayer) photoLayer.remove();
      if (photoUrl) URL.revokeObjectURL(photoUrl);
      photoLayer = null;
      photoUrl = null;
      const sameShot = s.outcome_id === find.outcome_id;
      const w = s.photo_width || (sameShot ? find.photo_width : null) || find.photo_width;
      const h = s.photo_height || (sameShot ? find.photo_height : null) || find.photo_height;
      const mine = { outcome_id: s.outcome_id, width: w, height: h, boxes: {}, selected: s.id, loaded: false };
      mine.find = find.id;
      mine.drone = s.drone_id;
      mine.image = false; // the photo itself drawn (it may still be on its drone)
      S.photo = mine;
      $("#photo-title").textContent = `${s.image} · ${s.drone_id} · ${w}×${h}`;
      photoNote("");
      const bounds = L.latLngBounds(px(0, h), px(w, 0));
      if (photoFrame) photoFrame.remove();
      photoFrame = L.rectangle(bounds, { color: "#868e96", weight: 1, dashArray: "6 6", fill: false, interactive: false }).addTo(photoMap);
      photoMap.invalidateSize();
      photoMap.fitBounds(bounds);
      photoMap.setMaxBounds(bounds.pad(0.5));
      stationPhoto(mine, s).catch(fail);
      const others = await photoDetections(s.outcome_id);
      if (S.photo !== mine) return;
      for (const f of [...others.map(remember), byId.get(find.id) || find]) {
        for (const x of f.sightings || []) if (x.outcome_id === s.outcome_id) drawBox(f, x.id, x.bbox);
      }
      mine.loaded = true;
    }
    S.photo.find = find.id;
    showSightings(find);
    highlight(s.id);
    const whole = L.latLngBounds(px(0, S.photo.height), px(S.photo.width, 0));
    const [x1, y1, x2, y2] = s.bbox;
    if (photoMap.getBoundsZoom(whole) >= -1) photoMap.fitBounds(whole);
    else photoMap.setView(px((x1 + x2) / 2, (y1 + y2) / 2), 0);
  }

  // The photo, fetched through the station from its drone: while the drone is out of radio range
  // (502) or the station cannot be reached, a one-line message says so and the photo is asked again.
  async function stationPhoto(mine, s) {
    for (;;) {
      let url;
      try {
        url = await blobUrl(`/images/${s.outcome_id}`);
      } catch (e) {
        if (S.photo !== mine) return;
        if (e instanceof HttpError && e.status !== 502) {
          photoNote(e.status === 410 ? `${baseName(s.image)}: its copy was removed (retention); boxes only` : e.message);
          return;
        }
        const why = e instanceof HttpError ? e.message : "the station does not answer";
        photoNote(`Photo not here yet: ${s.drone_id} is out of radio range; asking again every ${PHOTO_RETRY_MS / 1000} s.`, why);
        await sleep(PHOTO_RETRY_MS);
        if (S.photo !== mine) return;
        continue;
      }
      if (S.photo !== mine) {
        URL.revokeObjectURL(url);
        return;
      }
      // The size the photo really has: a sighting from another drone may have another camera.
      const probe = new Image();
      probe.src = url;
      await probe.decode();
      if (S.photo !== mine) {
        URL.revokeObjectURL(url);
        return;
      }
      mine.width = probe.naturalWidth;
      mine.height = probe.naturalHeight;
      photoNote("");
      if (photoFrame) photoFrame.remove();
      photoFrame = null;
      photoUrl = url;
      photoLayer = L.imageOverlay(url, L.latLngBounds(px(0, mine.height), px(mine.width, 0))).addTo(photoMap);
      photoLayer.bringToBack();
      mine.image = true;
      return;
    }
  }

  // One line over the photo; the station's own words (which address failed, and how) on hover.
  function photoNote(text, detail = "") {
    S.photoNote = text;
    const el = $("#photo-note");
    el.textContent = text;
    el.title = detail;
    el.hidden = !text;
  }

  function showSightings(find) {
    const all = find.sightings || [];
    $("#sightings-title").textContent = `${find.id}: ${all.length} sighting${all.length === 1 ? "" : "s"}`;
    const rows = all.map((x) => {
      const li = document.createElement("li");
      li.dataset.id = x.id;
      li.classList.toggle("selected", !!S.photo && S.photo.selected === x.id);
      const time = document.createElement("time");
      time.dateTime = x.time || "";
      time.textContent = shortTime(x.time);
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = x.score === null || x.score === undefined ? "" : `${Math.round(x.score * 100)}%`;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = baseName(x.image);
      li.append(chip(x.drone_id), time, score, name);
      if (all.length > 1) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "split";
        b.textContent = "Split";
        b.title = "not the same person: this sighting becomes a find of its own";
        b.addEventListener("click", (e) => {
          e.stopPropagation();
          split(find.id, x.id).catch(fail);
        });
        li.append(b);
      }
      li.addEventListener("click", () => showFindPhoto(byId.get(find.id) || find, x.id).catch(fail));
      return li;
    });
    $("#sighting-list").replaceChildren(...rows);
  }

  async function split(findId, sightingId) {
    const operator = await operatorName();
    const r = await api("/api/review/finds/split", { method: "POST", json: { sighting: sightingId, operator } });
    const { find, from } = await r.json();
    S.lastSplit = { find: find.id, from: from.id, sighting: sightingId };
    apply(from);
    arrived(find);
    refreshCounts();
    say(`Sighting ${sightingId} is now ${find.id}, apart from ${from.id}.`);
    const left = byId.get(from.id);
    if (S.photo && S.photo.find === findId) {
      const keep = (left.sightings || []).some((x) => x.id === S.photo.selected) ? S.photo.selected : null;
      await showFindPhoto(left, keep);
    }
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
        // Station: the photo is on a drone out of radio range (502) or the station is away; asked again.
        if (station() && (e.status === 502 || e instanceof TypeError)) {
          setTimeout(() => {
            this.state = "idle";
            if (groundMap && groundMap.getBounds().intersects(this.bounds)) this.load();
          }, PHOTO_RETRY_MS * 3);
        }
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
    if (station()) {
      drawFind(d);
      return;
    }
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

  function openFind(id, sighting = null) {
    const o = byId.get(id);
    if (indexOf(o.id) >= 0) select(o.id, sighting);
    else {
      S.current = o.id;
      showDetails(o);
      showCrop(o);
    }
    showPhoto(o, sighting).catch(fail);
  }

  const located = (x) => x.lat !== null && x.lat !== undefined;

  // Station: a find on the map: a ring in its status's colour at its combined position, and each
  // sighting a dot in its drone's colour joined to the ring, so a grouping of drones is seen at once.
  function drawFind(d) {
    const old = markerLayers.get(d.id);
    if (old) old.remove();
    markerLayers.delete(d.id);
    delete S.markers[d.id];
    const seen = (d.sightings || []).filter(located);
    if (!located(d) && !seen.length) return;
    const group = L.featureGroup();
    const sightings = {};
    if (located(d)) {
      // A dark halo under the status's ring: some drone colours are close to the status colours.
      L.circleMarker([d.lat, d.lon], { radius: 11, weight: 6, color: "#111", opacity: 0.75, fill: false, interactive: false }).addTo(group);
      L.circleMarker([d.lat, d.lon], { radius: 11, weight: 3, color: COLOURS[d.status], fillColor: COLOURS[d.status], fillOpacity: 0.15 })
        .bindTooltip(() => {
          const o = byId.get(d.id);
          return `${o.id} · ${(o.sightings || []).length} sightings · ${(o.drones || []).join(", ")} · ${Math.round(o.score * 100)}% · ${o.status}`;
        })
        .on("click", () => openFind(d.id))
        .addTo(group);
    }
    // The sightings over the ring (drawn in this order): the drones' dots stay visible inside it.
    for (const x of seen) {
      const colour = droneColour(x.drone_id);
      if (located(d)) {
        L.polyline([[d.lat, d.lon], [x.lat, x.lon]], { color: colour, weight: 2, opacity: 0.9, interactive: false }).addTo(group);
      }
    }
    for (const x of seen) {
      const colour = droneColour(x.drone_id);
      const score = x.score === null || x.score === undefined ? "" : ` · ${Math.round(x.score * 100)}%`;
      L.circleMarker([x.lat, x.lon], { radius: 5, weight: 1.5, color: "#fff", fillColor: colour, fillOpacity: 1 })
        .bindTooltip(`${x.drone_id} · ${shortTime(x.time)}${score}`)
        .on("click", () => openFind(d.id, x.id))
        .addTo(group);
      sightings[x.id] = { lat: x.lat, lon: x.lon, drone: x.drone_id, color: colour };
    }
    group.addTo(groundMap);
    markerLayers.set(d.id, group);
    S.markers[d.id] = { lat: d.lat, lon: d.lon, status: d.status, sightings };
  }

  // Station: each drone's last known position and time, updated by its `drone` events.
  const droneLayers = new Map(); // drone id -> L.Marker
  let droneLegend = null; // the legend's list of drones
  let droneClock = null;

  function parseTime(v) {
    if (v === null || v === undefined) return null;
    const t = typeof v === "number" ? new Date(v * 1000) : new Date(v);
    return Number.isNaN(t.getTime()) ? null : t;
  }

  function ago(t) {
    const s = Math.max(0, Math.round((Date.now() - t.getTime()) / 1000));
    if (s < 120) return `${s} s ago`;
    if (s < 7200) return `${Math.round(s / 60)} min ago`;
    return `${Math.round(s / 3600)} h ago`;
  }

  function droneLabel(drone) {
    const t = drone.last ? parseTime(drone.last.time) : null;
    const when = t ? ` · ${shortTime(t.toISOString())}, ${ago(t)}` : "";
    return `${drone.id}${when}${drone.online ? "" : " · offline"}`;
  }

  function drawDrone(drone) {
    let m = droneLayers.get(drone.id);
    if (!drone.last || !located(drone.last)) {
      if (m) m.remove();
      droneLayers.delete(drone.id);
      delete S.droneMarkers[drone.id];
      return;
    }
    const where = [drone.last.lat, drone.last.lon];
    const icon = L.divIcon({
      className: `drone-marker${drone.online ? "" : " offline"}`,
      html: `<span style="background:${droneColour(drone.id)}"></span>`,
      iconSize: [22, 22],
      iconAnchor: [11, 11],
    });
    const label = droneLabel(drone);
    if (!m) {
      m = L.marker(where, { icon, keyboard: false, zIndexOffset: 1000 }).addTo(groundMap);
      m.bindTooltip(label, { permanent: true, direction: "right", offset: [12, 0], className: "drone-label" });
      droneLayers.set(drone.id, m);
    } else {
      m.setLatLng(where);
      m.setIcon(icon);
      m.setTooltipContent(label);
    }
    S.droneMarkers[drone.id] = { lat: drone.last.lat, lon: drone.last.lon, label, online: !!drone.online, color: droneColour(drone.id) };
  }

  function showDroneLegend() {
    if (!droneLegend) return;
    const rows = Object.values(S.drones).map((drone) => {
      const li = document.createElement("li");
      li.dataset.drone = drone.id;
      const sw = document.createElement("i");
      sw.className = "drone-swatch";
      sw.style.background = droneColour(drone.id);
      const state = document.createElement("b");
      state.className = drone.online ? "online" : "offline";
      state.textContent = drone.online ? "online" : "offline";
      const t = drone.last ? parseTime(drone.last.time) : null;
      li.append(sw, `${drone.id} `, state, t ? ` · last ${shortTime(t.toISOString())}, ${ago(t)}` : " · no position yet");
      return li;
    });
    droneLegend.replaceChildren(...rows);
  }

  // "40 s ago" grows while the drone is silent.
  function tickDrones() {
    for (const drone of Object.values(S.drones)) {
      const m = droneLayers.get(drone.id);
      if (!m) continue;
      const label = droneLabel(drone);
      m.setTooltipContent(label);
      S.droneMarkers[drone.id].label = label;
    }
    showDroneLegend();
  }

  function droneChanged(drone) {
    const before = S.drones[drone.id];
    S.drones[drone.id] = drone;
    if (!before || before.color !== drone.color) recolourDrone(drone.id);
    if (!groundMap) return;
    drawDrone(drone);
    showDroneLegend();
    if (S.mapReady) refreshFootprints();
  }

  function recolourDrone(id) {
    const c = droneColour(id);
    for (const el of document.querySelectorAll(`.chip[data-drone="${CSS.escape(id)}"]`)) el.style.background = c;
    if (!groundMap) return;
    for (const f of footprintLayers.values()) if (f.drone === id) f.layer.setStyle({ color: c });
    for (const d of byId.values()) if ((d.drones || []).includes(id) && markerLayers.has(d.id)) drawFind(d);
  }

  async function loadDrones() {
    const data = await getJSON("/api/review/map");
    for (const drone of data.drones || []) droneChanged(drone);
    return data;
  }

  // New photos of a drone reach the map with its next `drone` event (at most one request a second).
  let footprintTimer = null;
  function refreshFootprints() {
    if (footprintTimer) return;
    footprintTimer = setTimeout(async () => {
      try {
        const data = await getJSON("/api/review/map");
        S.map = data;
        for (const p of data.photos) drawFootprint(p, data.legend || {});
        loadVisibleOverlays();
      } catch (e) {
        if (!(e instanceof TypeError)) fail(e);
      } finally {
        footprintTimer = null;
      }
    }, 1000);
  }

  const footprintLayers = new Map(); // outcome id -> {layer, drone}

  function drawFootprint(p, legend) {
    if (!p.footprint || footprintLayers.has(p.outcome_id)) return null;
    const bad = p.gsd_cm !== null && legend.max_gsd_cm_detectable && p.gsd_cm > legend.max_gsd_cm_detectable;
    const colour = station() ? droneColour(p.drone_id) : bad ? "#d9480f" : "#1c7ed6";
    const who = station() ? `${p.drone_id} · ` : "";
    const layer = L.polygon(p.footprint, {
      color: colour,
      weight: station() ? 2 : 1.5,
      dashArray: bad ? "5 4" : null,
      fill: true,
      fillOpacity: 0,
    })
      .bindTooltip(`${who}${baseName(p.image)}${p.gsd_cm !== null ? ` · ${p.gsd_cm.toFixed(1)} cm/px` : ""}${bad ? " · too coarse for a person" : ""}`)
      .addTo(groundMap);
    footprintLayers.set(p.outcome_id, { layer, drone: p.drone_id });
    const o = new FootprintImage(p.footprint, p.overlay);
    overlays.push(o.addTo(groundMap));
    S.footprints.push(p.outcome_id);
    if (station()) S.footprintDrones[p.outcome_id] = p.drone_id;
    return o.bounds;
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
    for (const p of data.photos) {
      const bounds = drawFootprint(p, legend);
      if (bounds) all.extend(bounds);
    }
    for (const t of data.tracks || []) {
      L.polyline(t.points, { color: "#7048e8", weight: 3, dashArray: "2 6" }).bindTooltip(`track ${t.id}`).addTo(groundMap);
      S.tracks += 1;
    }
    addLegend(data, legend);
    if (station()) {
      for (const drone of data.drones || []) droneChanged(drone);
      for (const drone of Object.values(S.drones)) drawDrone(drone);
      for (const m of droneLayers.values()) all.extend(m.getLatLng());
      showDroneLegend();
      droneClock = droneClock || setInterval(tickDrones, 1000);
    }
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
            `Dashed ${station() ? "" : "orange "}footprints are coarser: a person there may be missed.`
          : "The model's smallest detectable size is unknown.";
      div.innerHTML =
        `<div class="swatches">${swatches}</div>` +
        `<p><b>${data.photos.length}</b> photos, ground sampling distance ${range}.</p><p></p>`;
      div.lastChild.textContent = rule;
      if (station()) {
        // Rings are finds (in their status's colour); dots, lines and footprints are the drones'.
        div.firstChild.prepend("finds: ");
        droneLegend = L.DomUtil.create("ul", "drones", div);
        div.insertBefore(droneLegend, div.children[1]);
        const key = document.createElement("p");
        key.textContent =
          "Rings are finds, in their status's colour; dots are their sightings and outlines the photos, " +
          "in each drone's colour; a diamond is where a drone was last.";
        div.insertBefore(key, droneLegend.nextSibling);
      }
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
    d: () => S.view === "photo" && !station() && setDrawMode(!drawMode),
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

  // `edgetile station` answers {"mode": "station"}; a daemon older than the question answers 404.
  async function loadMode() {
    let mode = "daemon";
    try {
      mode = (await getJSON("/api/review/mode")).mode === "station" ? "station" : "daemon";
    } catch (e) {
      if (!(e instanceof HttpError && e.status === 404)) throw e;
    }
    S.mode = mode;
    document.body.dataset.mode = mode;
    if (mode === "station") {
      document.title = "edgetile station";
      $("header h1").textContent = "edgetile station";
      $("#filter-form").source.value = ""; // every find's source is the station
    }
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
    await loadMode();
    if (station()) await loadDrones();
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
