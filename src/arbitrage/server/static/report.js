/* The page of an `arbitrage view` report (view.py inlines this file, steps.js and style.css into one HTML file):
   the run's (or each sweep point's) metrics, the sweep's plots, and every problem's steps coloured by who wrote
   them, filtered by outcome and by escalations. The data is the JSON in <script id="data">. */
"use strict";

(function () {
  var el = Arb.el;
  var DATA = JSON.parse(document.getElementById("data").textContent);
  var PAGE = 100;
  var view = {point: 0, outcome: "all", escalation: "all", onlyEscalated: false, search: "", shown: PAGE};
  var root = document.getElementById("report");

  function fmt(v) {
    if (v === null || v === undefined) return "\u2013";
    if (typeof v === "number") return Arb.num(v);
    if (typeof v === "boolean") return v ? "yes" : "no";
    return String(v);
  }

  function flatten(obj, prefix, out) {
    Object.keys(obj || {}).forEach(function (k) {
      var v = obj[k], name = prefix ? prefix + "." + k : k;
      if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, name, out);
      else out.push([name, Array.isArray(v) ? v.join(", ") : v]);
    });
    return out;
  }

  function pointLabel(p) {
    var m = p.metrics || {};
    return p.label + "  (acc " + fmt(m.accuracy) + ", " + Arb.secs(m.latency_s_mean) + ")";
  }

  function header() {
    var h = el("section", "report-head");
    h.appendChild(el("h2", null, DATA.kind === "sweep" ? "Sweep report" : "Run report"));
    var n = DATA.points.reduce(function (a, p) { return a + p.problems.length; }, 0);
    h.appendChild(el("div", "report-meta", DATA.source + " \u00b7 " + DATA.points.length + " point" +
                     (DATA.points.length === 1 ? "" : "s") + " \u00b7 " + n + " problems \u00b7 written " +
                     DATA.generated));
    return h;
  }

  var SWEEP_COLUMNS = [
    ["point", function (p) { return p.label; }], ["n", "n"], ["accuracy", "accuracy"], ["\u00b1se", "accuracy_se"],
    ["escalated", "escalation_rate"], ["latency", "latency_s_mean", Arb.secs], ["p50", "latency_s_p50", Arb.secs],
    ["target calls", "target_calls"], ["target tok", "target_tokens"], ["draft tok kept", "draft_tokens_accepted"],
    ["front", function (p) { return p.frontier ? "\u2605" : ""; }]
  ];

  function sweepTable() {
    var box = el("section");
    box.appendChild(el("h2", null, "Points"));
    var wrap = el("div", "scroll"), t = el("table", "grid points"), head = el("tr"), body = el("tbody");
    SWEEP_COLUMNS.forEach(function (c) { head.appendChild(el("th", null, c[0])); });
    var thead = el("thead");
    thead.appendChild(head);
    t.appendChild(thead);
    DATA.points.forEach(function (p, i) {
      var tr = el("tr", i === view.point ? "selected" : null);
      tr.dataset.point = i;
      SWEEP_COLUMNS.forEach(function (c) {
        var v = typeof c[1] === "function" ? c[1](p) : (p.metrics || {})[c[1]];
        tr.appendChild(el("td", null, c[2] && typeof v === "number" ? c[2](v) : fmt(v)));
      });
      tr.addEventListener("click", function () { select(i); });
      body.appendChild(tr);
    });
    t.appendChild(body);
    wrap.appendChild(t);
    box.appendChild(wrap);
    box.appendChild(el("div", "hint", "click a row (or use the point selector below) to see that point's problems; " +
                                      "\u2605: on its policy's accuracy/latency frontier"));
    return box;
  }

  function plots() {
    var box = el("section", "plots");
    box.appendChild(el("h2", null, "Plots"));
    DATA.plots.forEach(function (p) {
      var fig = el("figure");
      var img = el("img");
      img.src = p.src;
      img.alt = p.name;
      fig.appendChild(img);
      fig.appendChild(el("figcaption", "hint", p.name));
      box.appendChild(fig);
    });
    return box;
  }

  function textBlock(title, text) {
    var d = el("details");
    d.appendChild(el("summary", null, title));
    d.appendChild(el("pre", "text", text));
    return d;
  }

  function metricsTable(p) {
    var box = el("section", "metrics");
    box.appendChild(el("h2", null, "Metrics" + (DATA.kind === "sweep" ? " of " + p.label : "")));
    var grid = el("div", "kv-grid metrics-table");
    flatten(p.metrics, "", []).forEach(function (row) {
      var r = el("div", "kv-row");
      r.dataset.key = row[0];
      r.appendChild(el("span", "k", row[0]));
      r.appendChild(el("span", "v", /(^|\.)latency|_s(_mean)?$/.test(row[0]) && typeof row[1] === "number" ?
                                    fmt(row[1]) + " s" : fmt(row[1])));
      grid.appendChild(r);
    });
    box.appendChild(grid);
    return box;
  }

  function matches(pr) {
    if (view.outcome === "correct" && !pr.correct) return false;
    if (view.outcome === "wrong" && pr.correct) return false;
    var esc = pr.steps.some(function (s) { return s.escalated; });
    if (view.escalation === "with" && !esc) return false;
    if (view.escalation === "without" && esc) return false;
    if (view.search) {
      var q = view.search.toLowerCase();
      if ((pr.id + "\n" + pr.question).toLowerCase().indexOf(q) < 0) return false;
    }
    return true;
  }

  function problemCard(pr) {
    var card = el("article", "problem " + (pr.correct ? "is-correct" : "is-wrong"));
    card.dataset.id = pr.id;
    card.dataset.correct = pr.correct ? "true" : "false";
    var head = el("div", "problem-head");
    head.appendChild(el("span", "pid", pr.id));
    head.appendChild(el("span", "verdict " + (pr.correct ? "correct" : "wrong"), pr.correct ? "\u2713 correct" : "\u2717 wrong"));
    head.appendChild(el("span", null, "gold " + fmt(pr.gold) + " \u00b7 predicted " + fmt(pr.prediction)));
    var nEsc = pr.steps.filter(function (s) { return s.escalated; }).length;
    head.appendChild(el("span", null, pr.steps.length + " steps \u00b7 " + nEsc + " escalated"));
    var per = Object.keys(pr.seconds || {}).filter(function (k) { return pr.seconds[k]; })
      .map(function (k) { return k + " " + Arb.secs(pr.seconds[k]); });
    head.appendChild(el("span", null, "latency " + Arb.secs(pr.latency_s) + (per.length ? " (" + per.join(", ") + ")" : "")));
    head.appendChild(el("span", null, "finish " + pr.finish));
    card.appendChild(head);
    card.appendChild(el("div", "question", pr.question));
    var steps = el("div", "steps");
    pr.steps.forEach(function (s) {
      if (view.onlyEscalated && !s.escalated) return;
      steps.appendChild(Arb.renderStep(s));
    });
    card.appendChild(steps);
    return card;
  }

  function filters() {
    var f = el("div", "filters");
    function choice(label, key, options) {
      var l = el("label", null, label + " ");
      var s = el("select");
      s.id = "filter-" + key;
      options.forEach(function (o) {
        var opt = el("option", null, o[1]);
        opt.value = o[0];
        s.appendChild(opt);
      });
      s.value = view[key];
      s.addEventListener("change", function () { view[key] = s.value; view.shown = PAGE; renderProblems(); });
      l.appendChild(s);
      f.appendChild(l);
    }
    choice("outcome", "outcome", [["all", "all"], ["correct", "correct"], ["wrong", "wrong"]]);
    choice("problems", "escalation", [["all", "all"], ["with", "with an escalated step"],
                                      ["without", "without escalations"]]);
    var l = el("label"), cb = el("input");
    cb.type = "checkbox";
    cb.id = "filter-only-escalated";
    cb.checked = view.onlyEscalated;
    cb.addEventListener("change", function () { view.onlyEscalated = cb.checked; renderProblems(); });
    l.appendChild(cb);
    l.appendChild(document.createTextNode(" escalated steps only"));
    f.appendChild(l);
    var sl = el("label", null, "search "), si = el("input");
    si.type = "search";
    si.id = "filter-search";
    si.placeholder = "id or question";
    si.value = view.search;
    si.addEventListener("input", function () { view.search = si.value; view.shown = PAGE; renderProblems(); });
    sl.appendChild(si);
    f.appendChild(sl);
    f.appendChild(el("span", "hint", "")).id = "filter-count";
    return f;
  }

  var list;

  function renderProblems() {
    var p = DATA.points[view.point];
    list.textContent = "";
    var hits = p.problems.filter(matches);
    document.getElementById("filter-count").textContent = "showing " + Math.min(hits.length, view.shown) +
      " of " + hits.length + " matching (" + p.problems.length + " problems)";
    hits.slice(0, view.shown).forEach(function (pr) { list.appendChild(problemCard(pr)); });
    if (hits.length > view.shown) {
      var more = el("button", "more", "show " + Math.min(PAGE, hits.length - view.shown) + " more");
      more.addEventListener("click", function () { view.shown += PAGE; renderProblems(); });
      list.appendChild(more);
    }
    if (p.note) list.appendChild(el("div", "note", p.note));
  }

  var pointBox;

  function renderPoint() {
    var p = DATA.points[view.point];
    pointBox.textContent = "";
    document.body.dataset.point = p.label;
    pointBox.appendChild(metricsTable(p));
    var probs = el("section", "problems-box");
    probs.appendChild(el("h2", null, "Problems" + (DATA.kind === "sweep" ? " of " + p.label : "")));
    probs.appendChild(filters());
    probs.appendChild(Arb.legend());
    list = el("div", "problems");
    list.id = "problems";
    probs.appendChild(list);
    pointBox.appendChild(probs);
    renderProblems();
  }

  function select(i) {
    view.point = i;
    view.shown = PAGE;
    var sel = document.getElementById("point");
    if (sel) sel.value = String(i);
    Array.prototype.forEach.call(document.querySelectorAll("table.points tbody tr"), function (tr) {
      tr.classList.toggle("selected", +tr.dataset.point === i);
    });
    renderPoint();
  }

  function start() {
    root.appendChild(header());
    if (DATA.kind === "sweep") root.appendChild(sweepTable());
    if (DATA.plots.length) root.appendChild(plots());
    if (DATA.summary_text) root.appendChild(textBlock(DATA.summary_name, DATA.summary_text));
    if (DATA.kind === "sweep") {
      var bar = el("div", "filters point-bar"), l = el("label", null, "point "), s = el("select");
      s.id = "point";
      DATA.points.forEach(function (p, i) {
        var o = el("option", null, pointLabel(p));
        o.value = String(i);
        s.appendChild(o);
      });
      s.addEventListener("change", function () { select(+s.value); });
      l.appendChild(s);
      bar.appendChild(l);
      root.appendChild(bar);
    }
    pointBox = el("div", "point");
    root.appendChild(pointBox);
    var q = new URLSearchParams(window.location.search);
    var want = q.get("point"), first = 0;
    DATA.points.forEach(function (p, i) { if (p.label === want || p.dir === want) first = i; });
    select(first);
    document.body.dataset.state = "ready";
  }

  start();
})();
