// The optimlab dashboard's page: draws a study's state (optimlab.report.live.study_state) with Plotly and,
// live, polls the server's /api/state every `interval` seconds, updating counts and figures in place.
// In a report page the state is embedded (config.state) and only its figures are drawn.
"use strict";
(function () {
  const config = JSON.parse(document.getElementById("dashboard-config").textContent);
  const STATUSES = ["completed", "diverged", "running", "interrupted", "pending", "failed"];
  const plotConfig = {displaylogo: false, responsive: true};
  const view = {renders: 0, drawn: 0, state: null, task: 0, loadedAt: Date.now()};
  window.optimlabDashboard = view;  // what the page shows, for whoever looks (and the tests)

  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

  function num(v, digits = 4) {
    if (v === null || v === undefined || Number.isNaN(v)) return "-";
    if (typeof v !== "number") return String(v);
    if (Number.isInteger(v)) return String(v);
    if (v !== 0 && (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e5)) {
      return v.toExponential(digits - 1).replace(/\.?0+e/, "e");
    }
    return String(parseFloat(v.toPrecision(digits)));
  }
  const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "-");

  function row(cells, attrs = {}) {
    const tr = document.createElement("tr");
    for (const [k, v] of Object.entries(attrs)) tr.dataset[k] = v;
    for (const c of cells) {
      const td = document.createElement("td");
      const cell = c !== null && typeof c === "object" && !(c instanceof Node) ? c : {text: c};
      if (cell.node) td.appendChild(cell.node); else td.textContent = cell.text === undefined ? "" : cell.text;
      if (cell.cls) td.className = cell.cls;
      if (cell.status) td.dataset.status = cell.status;
      tr.appendChild(td);
    }
    return tr;
  }

  function table(id, head, rows, empty) {
    const t = $(id);
    if (!t) return;
    const thead = t.tHead, tbody = t.tBodies[0];
    thead.replaceChildren();
    const tr = document.createElement("tr");
    head.forEach((h, i) => {
      const th = document.createElement("th");
      th.textContent = h;
      if (i < (t.dataset.textColumns || 1)) th.className = "text";
      tr.appendChild(th);
    });
    thead.appendChild(tr);
    tbody.replaceChildren(...rows);
    if (!rows.length) {
      tbody.appendChild(row([{text: empty, cls: "empty text"}]));
      tbody.lastChild.firstChild.colSpan = head.length;
    }
  }

  function bar(counts, colours) {
    const span = document.createElement("span");
    span.className = "bar";
    let left = 0;
    for (const [status, colour] of colours) {
      const part = document.createElement("i");
      const width = counts.total ? (100 * counts[status]) / counts.total : 0;
      part.style.left = left + "%";
      part.style.width = width + "%";
      part.style.background = colour;
      left += width;
      span.appendChild(part);
    }
    return span;
  }
  const BAR = [["completed", "#2e7d32"], ["diverged", "#ef6c00"], ["failed", "#c62828"], ["running", "#1565c0"],
               ["interrupted", "#9e9e9e"]];

  function renderSummary(s) {
    if (!$("about")) return;
    const live = s.claims.filter((c) => c.live).length;
    const doing = live ? `training now: ${live} live claim${live > 1 ? "s" : ""}` : "no process is training it now";
    $("about").textContent = `${s.store} · ${s.runs} runs · ${doing} · last change to the store ${clock(s.updated)}` +
      ` · read ${clock(s.now)}, every ${config.interval} s`;
    const totals = $("totals");
    totals.replaceChildren();
    const add = (label, value, key) => {
      const span = document.createElement("span");
      const b = document.createElement("b");
      b.textContent = value;
      b.id = key;
      span.append(b, " " + label);
      totals.appendChild(span);
    };
    add(`of ${s.runs} done`, s.done, "count-done");
    for (const status of STATUSES) add(status, s.totals[status], "count-" + status);
  }

  function renderProgress(s) {
    const several = s.tasks.length > 1;
    const head = [...(several ? ["task"] : []), "optimizer", "done", ...STATUSES];
    $("progress").dataset.textColumns = several ? 2 : 1;
    const rows = [];
    for (const t of s.tasks) {
      for (const p of t.progress) {
        const done = document.createElement("span");
        done.append(bar(p, BAR), ` ${p.done}/${p.total}`);
        rows.push(row([...(several ? [{text: t.task, cls: "text"}] : []), {text: p.optimizer, cls: "text"},
                       {node: done, status: "done"}, ...STATUSES.map((st) => ({text: p[st], status: st}))],
                      {task: t.task === null ? "" : t.task, optimizer: p.optimizer}));
      }
    }
    const total = {...s.totals, total: s.runs};
    const done = document.createElement("span");
    done.append(bar(total, BAR), ` ${s.done}/${s.runs}`);
    rows.push(row([...(several ? [{text: "", cls: "text"}] : []), {text: "all", cls: "text"},
                   {node: done, status: "done"}, ...STATUSES.map((st) => ({text: s.totals[st], status: st}))],
                  {total: "yes"}));
    table("progress", head, rows, "no runs");
  }

  function renderTables(s) {
    table("claims", ["unit", "runs", "claimed by", "trained in", "since", "heartbeat", "state"],
          s.claims.map((c) => row([
      {text: c.unit, cls: "text"}, {text: c.runs.join("; "), cls: "text"}, `process ${c.pid} on ${c.host}`,
      c.workers.length ? c.workers.map((w) => (w === c.pid ? "itself" : `worker ${w}`)).join(", ") : "-",
      clock(c.since), `${Math.round(c.heartbeat_age)} s ago`,
      c.live ? {text: "live", cls: "live"} : {text: "dead: its process is gone or silent", cls: "dead"}],
      {unit: c.unit})), "no claim: nothing is being trained");
    table("workers", ["process", "claims", "finished", "held", "failed", "released", "died", "runs finished",
                      "first claim", "last heard", "now"], s.workers.map((w) => row([
      {text: `${w.pid} on ${w.host}`, cls: "text"}, w.claims, w.finished, w.held, w.failed, w.released, w.died,
      w.runs_finished, clock(w.first), clock(w.last), w.live ? {text: "training", cls: "live"} : "idle or gone"],
      {pid: w.pid})), "no process has claimed work yet");
    table("problems", ["run", "status", "attempts", "steps", "why"], s.problems.map((p) => row([
      {text: `${p.run}: ${p.label}`, cls: "text"}, {text: p.status, cls: p.status === "failed" ? "dead" : ""},
      p.attempts, p.steps, {text: p.why, cls: "text"}], {run: p.run, status: p.status})),
      "none so far");
  }

  function renderTaskChoice(s) {
    const where = $("task-choice");
    if (!where) return;
    if (s.tasks.length < 2) { where.replaceChildren(); return; }
    let select = where.querySelector("select");
    const names = s.tasks.map((t) => t.task);
    if (!select || select.dataset.names !== JSON.stringify(names)) {
      select = document.createElement("select");
      select.dataset.names = JSON.stringify(names);
      names.forEach((n, i) => select.add(new Option(`task ${n}`, String(i))));
      select.addEventListener("change", () => { view.task = Number(select.value); drawFigures(view.state); });
      where.replaceChildren("of ", select);
    }
    view.task = Math.min(view.task, names.length - 1);
    select.value = String(view.task);
  }

  function layout(title, x, y, extra = {}) {
    return {
      title: {text: title, font: {size: 14}, x: 0.01, xanchor: "left"}, hovermode: "closest", uirevision: `task-${view.task}`,
      margin: {l: 60, r: 10, t: 60, b: 45}, legend: {title: {text: "optimizer"}},
      xaxis: {title: {text: x}, ...(extra.x || {})}, yaxis: {title: {text: y}, ...(extra.y || {})},
      annotations: extra.empty ? [{text: extra.empty, showarrow: false, xref: "paper", yref: "paper", x: 0.5,
                                   y: 0.5, font: {color: "#888"}}] : [],
    };
  }

  function curves(s, t, key, label, log) {
    const seen = new Set();
    const data = t.curves.map((c) => {
      const first = !seen.has(c.optimizer);
      seen.add(c.optimizer);
      const name = esc(c.optimizer);
      return {
        type: "scatter", mode: "lines+markers", x: c.step, y: c[key], name: name, legendgroup: c.optimizer,
        showlegend: first, uid: `run-${c.run}-${key}`, marker: {size: 4}, connectgaps: false,
        line: {color: s.colours[c.optimizer], width: 1.5, dash: c.status === "diverged" ? "dot" : "solid"},
        hovertemplate: `<b>${name}</b><br>lr ${num(c.lr)} · seed ${c.seed} · run ${c.run} (${c.status})` +
          `<br>step %{x}<br>${esc(label)} %{y:.4g}<extra></extra>`,
      };
    });
    const values = t.curves.flatMap((c) => c[key]).filter((v) => v !== null);
    const logY = log && values.some((v) => v > 0);  // as the report's: a zero loss is left out
    return {data, layout: layout(`${label} of every run`, "step", label, {
      y: logY ? {type: "log", exponentformat: "power"} : {}, empty: values.length ? null : "no evaluation stored yet"})};
  }

  function sensitivity(s, t) {
    const data = [];
    const label = `final ${t.metric.label}`;
    for (const series of t.sensitivity) {
      const name = esc(series.optimizer), colour = s.colours[series.optimizer];
      const pts = series.points.filter((p) => p.mean !== null);
      data.push({
        type: "scatter", mode: "lines+markers", x: pts.map((p) => p.lr), y: pts.map((p) => p.mean), name: name,
        legendgroup: series.optimizer, uid: `sens-${series.optimizer}`, line: {color: colour}, marker: {size: 8},
        error_y: {type: "data", array: pts.map((p) => p.std || 0), visible: true, thickness: 1},
        customdata: pts.map((p) => [p.finished, p.seeds, p.diverged, p.std === null ? "" : ` ± ${num(p.std)}`]),
        hovertemplate: `<b>${name}</b><br>lr %{x:.3g}<br>mean ${esc(label)} %{y:.4g}%{customdata[3]}` +
          `<br>%{customdata[0]} of %{customdata[1]} seeds finished, %{customdata[2]} diverged<extra></extra>`,
      });
      const mine = t.finals.filter((f) => f.optimizer === series.optimizer && f.value !== null);
      data.push({
        type: "scatter", mode: "markers", x: mine.map((f) => f.lr), y: mine.map((f) => f.value), name: name,
        legendgroup: series.optimizer, showlegend: false, uid: `runs-${series.optimizer}`,
        marker: {color: colour, size: 5, opacity: 0.45, symbol: "circle-open"},
        customdata: mine.map((f) => [f.seed, f.run]),
        hovertemplate: `<b>${name}</b><br>lr %{x:.3g} · seed %{customdata[0]} · run %{customdata[1]}` +
          `<br>final ${esc(t.metric.label)} %{y:.4g}<extra></extra>`,
      });
    }
    const any = t.finals.some((f) => f.value !== null);
    return {data, layout: layout(`${label} against the learning rate`, "learning rate", label, {
      x: {type: "log", exponentformat: "power"}, empty: any ? null : "no run finished yet"})};
  }

  function draw(id, fig) {
    const el = $(id);
    if (el) Plotly.react(el, fig.data, fig.layout, plotConfig);
  }

  function drawFigures(s) {
    const t = s && (s.tasks[view.task] || s.tasks[0]);
    if (!t || !window.Plotly) return;  // Plotly still loading: drawn once it is there
    draw("fig-metric", curves(s, t, "metric", t.metric.label, !t.metric.higher));
    draw("fig-loss", curves(s, t, "loss", t.loss.label, true));
    draw("fig-sensitivity", sensitivity(s, t));
    view.drawn += 1;
    document.body.dataset.drawn = view.drawn;
  }

  function loadPlotly() {
    // after the first state: the counts show at once, the figures once Plotly's 4.8 MB are parsed
    if (window.Plotly || !config.plotly || view.plotlyAsked) return;
    view.plotlyAsked = true;
    const script = document.createElement("script");
    script.src = config.plotly;
    script.addEventListener("load", () => drawFigures(view.state));
    script.addEventListener("error", () => banner("Plotly's script could not be loaded: no figures"));
    document.head.appendChild(script);
  }

  function render(s) {
    const same = view.state !== null && s.version !== undefined && s.version === view.state.version;
    view.state = s;
    if (same) { renderSummary(s); return; }  // nothing new in the store: only the times move
    if ($("progress")) {
      renderSummary(s);
      renderProgress(s);
      renderTables(s);
    }
    renderTaskChoice(s);
    drawFigures(s);
    view.renders += 1;
    document.body.dataset.renders = view.renders;
  }

  function banner(text) {
    const b = $("banner");
    if (!b) return;
    b.textContent = text || "";
    b.className = text ? "shown" : "";
  }

  async function poll() {
    try {
      const response = await fetch(config.api, {cache: "no-store"});
      const s = await response.json();
      if (s.error) banner(`the store cannot be read now: ${s.error}`);
      else { banner(null); render(s); }
      loadPlotly();
    } catch (e) {
      banner(`the dashboard's server does not answer (stopped?): trying again every ${config.interval} s`);
    }
    setTimeout(poll, config.interval * 1000);
  }

  if (config.state) render(config.state);
  if (config.api) poll();
  else loadPlotly();
})();
