// sagsae browse: a static, offline feature browser. Data arrive as <script> files calling
// SAGSAE.manifest / SAGSAE.index / SAGSAE.chunk, so the site works from file:// with no server.
"use strict";
const SAGSAE = (() => {
  const state = { manifest: null, run: null, index: {}, chunks: {}, waiting: {}, sortKey: "fp", asc: false, query: "" };
  const $ = (sel) => document.querySelector(sel);
  const el = (tag, attrs = {}, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  };
  const fmt = (x, d = 3) => (x === 0 ? "0" : Math.abs(x) < 1e-3 ? x.toExponential(1) : x.toPrecision(d));
  const show = (t) => t.replace(/\n/g, "↵").replace(/\t/g, "→");  // keep a context on one line
  const load = (src) => document.body.append(el("script", { src }));

  function run() { return state.manifest.runs.find((r) => r.id === state.run); }
  function signed(rid) { return (state.index[rid] || []).some((r) => r.fm > 0); }

  function manifest(m) {
    state.manifest = m;
    const sel = $("#run");
    for (const r of m.runs) sel.append(el("option", { value: r.id, text: `${r.run} · ${r.hook} · ${r.model}` }));
    sel.addEventListener("change", () => { location.hash = `#${sel.value}`; });
    $("#search").addEventListener("input", (e) => { state.query = e.target.value.trim().toLowerCase(); renderIndex(); });
    for (const th of document.querySelectorAll("th[data-key]")) {
      th.addEventListener("click", () => {
        const k = th.dataset.key;
        state.asc = state.sortKey === k ? !state.asc : k === "i";
        state.sortKey = k;
        renderIndex();
      });
    }
    if (m.pairs) $("#pairs-link").hidden = false;
    window.addEventListener("hashchange", route);
    route();
  }

  function route() {
    const h = decodeURIComponent(location.hash.slice(1));
    if (h === "pairs" && state.manifest.pairs) { selectRun(state.manifest.pairs.a, () => renderPairs()); return; }
    const [rid, lat, j] = h.split("/");
    if (lat === "opposed" && state.manifest.runs.some((r) => r.id === rid)) { selectRun(rid, () => renderOpposed(rid)); return; }
    if (j !== undefined && j !== "" && state.manifest.runs.some((r) => r.id === rid)) {
      selectRun(rid, () => showPair(rid, Number(lat), Number(j)));
      return;
    }
    const target = state.manifest.runs.some((r) => r.id === rid) ? rid : state.manifest.runs[0].id;
    selectRun(target, () => { if (lat !== undefined && lat !== "") showLatent(target, Number(lat)); });
  }

  function selectRun(rid, then) {
    const fresh = state.run !== rid;
    state.run = rid;
    $("#run").value = rid;
    const r = run();
    $("#note").hidden = !r.note;
    $("#note").textContent = r.note;
    const opp = $("#opposed-link"), n = (r.opposed || []).length;
    opp.hidden = !n;
    opp.textContent = `opposed pairs (${n})`;
    opp.setAttribute("href", `#${rid}/opposed`);
    const go = () => { if (fresh) renderIndex(); then && then(); };
    if (state.index[rid]) go(); else { state.waiting[`i${rid}`] = go; load(`data/${rid}-index.js`); }
  }

  function index(x) {
    state.index[x.run] = x.rows;
    const cb = state.waiting[`i${x.run}`];
    delete state.waiting[`i${x.run}`];
    cb && cb();
  }

  function matches(r, q) {
    return !q || [...r.tp, ...r.tm, ...r.up, ...r.dn].some((t) => t.toLowerCase().includes(q));
  }

  function renderIndex() {
    const rows = state.index[state.run] || [];
    const live = rows.filter((r) => r.fp + r.fm > 0);
    const k = state.sortKey, s = state.asc ? 1 : -1;
    const shown = live.filter((r) => matches(r, state.query)).sort((a, b) => s * (a[k] - b[k]) || a.i - b.i);
    const body = $("#index tbody");
    body.replaceChildren();
    const frag = document.createDocumentFragment();
    for (const r of shown) {
      const toks = el("td");
      for (const t of r.tp) toks.append(el("span", { class: "tok", text: show(t) }));
      if (r.tm.length) toks.append(" / ");
      for (const t of r.tm) toks.append(el("span", { class: "tok", text: show(t) }));
      const tr = el("tr", { "data-latent": r.i }, el("td", { text: r.i }), el("td", { text: fmt(r.fp) }),
        el("td", { text: fmt(r.fm) }), el("td", { text: fmt(r.ms, 2) }), el("td", { text: fmt(r.mx) }),
        el("td", { text: fmt(r.lg) }), toks);
      tr.addEventListener("click", () => { location.hash = `#${state.run}/${r.i}`; });
      frag.append(tr);
    }
    body.append(frag);
    for (const th of document.querySelectorAll("th[data-key]")) {
      th.classList.toggle("sorted", th.dataset.key === k);
      th.classList.toggle("asc", th.dataset.key === k && state.asc);
    }
    const dead = rows.length - live.length;
    $("#summary").textContent = `${shown.length} of ${live.length} live latents shown` +
      (dead ? ` (${dead} dead not listed)` : "") + ` · ${run().tokens.toLocaleString()} held-out tokens`;
  }

  function withLatent(rid, lat, then) {
    const c = Math.floor(lat / state.manifest.chunk), key = `${rid}-${c}`;
    const draw = () => {
      const d = state.chunks[key][lat];
      if (d) then(d);
      else $("#detail").replaceChildren(el("p", { class: "hint", text: `Latent ${lat} is not in this site (see --latents).` }));
    };
    if (state.chunks[key]) draw(); else { state.waiting[`c${key}`] = draw; load(`data/${key}.js`); }
  }

  function showLatent(rid, lat) { withLatent(rid, lat, (d) => renderLatent(rid, lat, d)); }

  // an opposed pair of a one-signed SAE: its two latents side by side, as a bipolar latent's two signs
  function showPair(rid, i, j) {
    withLatent(rid, i, (di) => withLatent(rid, j, (dj) => {
      const r = run(), p = (r.opposed || []).find((q) => q.i === i && q.j === j);
      const box = el("div", { id: "pair", "data-run": rid, "data-i": i, "data-j": j });
      box.append(el("h2", { text: `Opposed pair ${i} / ${j}` }),
        el("p", { class: "muted", text: `${r.run} · ${r.variant} · decoder cosine ${p ? fmt(p.cos) : "?"} · co-firing ${p ? fmt(p.cofire) : "?"} of the rarer latent's firings — two latents for what one signed latent holds` }));
      const histMax = Math.max(1, ...di["+"].hist, ...dj["+"].hist);
      const a = side(rid, i, "+", di["+"], histMax), b = side(rid, j, "+", dj["+"], histMax);
      a.querySelector("h3").textContent = `latent ${i} (direction +w)`;
      b.querySelector("h3").textContent = `latent ${j} (direction ≈ −w)`;
      b.classList.replace("plus", "minus");
      box.append(el("div", { class: "sides" }, a, b));
      $("#detail").replaceChildren(box);
    }));
  }

  function renderOpposed(rid) {
    const r = run(), rows = r.opposed || [];
    const t = el("table", { id: "opposed" }, el("thead", {}, el("tr", {}, ...["pair", "cos", "freq i", "freq j", "co-firing"].map((h) => el("th", { text: h })))));
    const body = el("tbody");
    for (const p of rows) {
      body.append(el("tr", {}, el("td", {}, el("a", { href: `#${rid}/${p.i}/${p.j}`, text: `${p.i} / ${p.j}` })),
        el("td", { text: fmt(p.cos) }), el("td", { text: fmt(p.freq_i) }), el("td", { text: fmt(p.freq_j) }), el("td", { text: fmt(p.cofire) })));
    }
    t.append(body);
    $("#detail").replaceChildren(el("h2", { text: "Opposed pairs" }),
      el("p", { class: "muted", text: `${rows.length} pairs of latents whose decoder directions point nearly opposite ways and rarely fire together: the capacity a one-signed SAE spends on what one sign-aware latent holds.` }), t);
  }

  function chunk(x) {
    const key = `${x.run}-${x.chunk}`;
    state.chunks[key] = x.latents;
    const cb = state.waiting[`c${key}`];
    delete state.waiting[`c${key}`];
    cb && cb();
  }

  function histogram(h, cls, max) {
    const edges = state.manifest.hist_edges, w = 300, ht = 70, n = h.length, bw = w / n;
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "hist"); svg.setAttribute("viewBox", `0 0 ${w} ${ht + 14}`); svg.setAttribute("width", w);
    h.forEach((v, i) => {
      if (!v) return;
      const r = document.createElementNS(svg.namespaceURI, "rect");
      const hh = Math.max(1, (ht * Math.log1p(v)) / Math.log1p(max));
      r.setAttribute("x", i * bw + 0.5); r.setAttribute("width", bw - 1); r.setAttribute("y", ht - hh);
      r.setAttribute("height", hh); r.setAttribute("class", cls);
      const t = document.createElementNS(svg.namespaceURI, "title");
      const lo = i === 0 ? 0 : edges[i - 1], hi = i < edges.length ? edges[i] : Infinity;
      t.textContent = `|a| in [${fmt(lo)}, ${fmt(hi)}): ${v}`;
      r.append(t);
      svg.append(r);
    });
    for (const [x, anchor, label] of [[bw, "start", `${fmt(edges[0])}`], [w, "end", `${fmt(edges[edges.length - 1])} |a|`]]) {
      const t = document.createElementNS(svg.namespaceURI, "text");
      t.setAttribute("x", x); t.setAttribute("y", ht + 12); t.setAttribute("text-anchor", anchor); t.textContent = label;
      svg.append(t);
    }
    return svg;
  }

  function side(rid, lat, s, d, histMax) {
    const cls = s === "+" ? "plus" : "minus";
    const box = el("div", { class: `side ${cls}`, "data-sign": s });
    box.append(el("h3", { text: `${s} side` }),
      el("p", { class: "muted", text: `fires ${d.count.toLocaleString()}× (freq ${fmt(d.freq)}), mean |a| ${fmt(d.mean)}, max ${fmt(d.max)}` }),
      histogram(d.hist, cls, histMax));
    if (d.up.length || d.dn.length) {
      const list = (title, items) => {
        const ol = el("ol");
        for (const [t, v] of items) ol.append(el("li", {}, el("span", { class: "tok", text: show(t) }), ` ${v >= 0 ? "+" : ""}${fmt(v)}`));
        return el("div", {}, el("strong", { text: title }), ol);
      };
      box.append(el("div", { class: "logits" }, list("promotes", d.up), list("suppresses", d.dn)));
    }
    box.append(el("h4", { text: d.ctx.length ? `top ${d.ctx.length} contexts` : "no contexts" }));
    for (const c of d.ctx) {
      const m = el("mark", { class: "fire", text: show(c.tok), style: `--a: ${(0.15 + 0.85 * c.act / (d.max || 1)).toFixed(3)}` });
      box.append(el("div", { class: "ctx" }, el("span", { class: "act", text: fmt(c.act) }), show(c.left.join("")), m, show(c.right.join(""))));
    }
    return box;
  }

  function renderLatent(rid, lat, d) {
    const r = state.manifest.runs.find((x) => x.id === rid);
    const two = signed(rid);
    const box = el("div", { id: "latent", "data-run": rid, "data-latent": lat });
    box.append(el("h2", { text: `Latent ${lat}` }), el("p", { class: "muted", text: `${r.run} · ${r.variant} · width ${r.width} · ${r.hook}` + (two ? "" : " · one-signed architecture: + side only") }));
    const histMax = Math.max(1, ...d["+"].hist, ...(two ? d["-"].hist : []));
    const sides = el("div", { class: two ? "sides" : "sides one" }, side(rid, lat, "+", d["+"], histMax));
    if (two) sides.append(side(rid, lat, "-", d["-"], histMax));
    box.append(sides);
    $("#detail").replaceChildren(box);
    for (const tr of document.querySelectorAll("#index tbody tr")) tr.classList.toggle("current", Number(tr.dataset.latent) === lat);
  }

  function renderPairs() {
    const p = state.manifest.pairs, runs = state.manifest.runs;
    const name = (id) => runs.find((r) => r.id === id).run;
    const t = el("table", { id: "pairs" }, el("thead", {}, el("tr", {}, ...["A latent", "bipolarity", "B for +w", "cos", "B for −w", "cos"].map((h) => el("th", { text: h })))));
    const body = el("tbody");
    const link = (id, i) => el("a", { href: `#${id}/${i}`, text: String(i) });
    for (const r of p.rows) {
      body.append(el("tr", {}, el("td", {}, link(p.a, r.a_latent)), el("td", { text: fmt(r.minority_share, 2) }),
        el("td", {}, link(p.b, r.b_plus)), el("td", { text: fmt(r.cos_plus) }), el("td", {}, link(p.b, r.b_minus)), el("td", { text: fmt(r.cos_minus) })));
    }
    t.append(body);
    $("#detail").replaceChildren(el("h2", { text: "Decoder pairs" }),
      el("p", { class: "muted", text: `For each bipolar latent of ${name(p.a)}: the latents of ${name(p.b)} whose decoder directions best match its + and − directions — the pair a one-signed SAE needs for one signed latent.` }), t);
  }

  return { manifest, index, chunk };
})();
