/* Rendering one reasoning step, shared by the server page (app.js) and `arbitrage view` reports (report.js).
   A step is an object as records.StepRecord writes it (and as the `arbitrage` field of a streamed chunk says
   it, with the chunk's text): {index, author, escalated, text, stop, n_tokens, scores, draft, target, seconds,
   discarded_draft_tokens, speculation}; draft / target: the proposal NOT kept ({text, n_tokens}) or null. */
"use strict";

var Arb = (function () {
  var SCORE_NAMES = {
    router: "router \u0177", prm_draft: "PRM(draft)", prm_target: "PRM(target)", advantage: "advantage",
    judge: "judge", mean_logprob: "mean log-prob", min_logprob: "min log-prob",
    first_token_entropy: "first-token entropy", prm_target_mean: "PRM(target) mean", prm_target_max: "PRM(target) max"
  };

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function num(v) {
    if (typeof v !== "number" || !isFinite(v)) return String(v);
    if (v === 0 || Number.isInteger(v)) return String(v);
    var a = Math.abs(v);
    if (a >= 100) return v.toFixed(1);
    if (a >= 0.01) return v.toFixed(3);
    return v.toExponential(2);
  }

  function secs(s) {
    if (typeof s !== "number" || !isFinite(s)) return "";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
    return s.toFixed(2) + " s";
  }

  function scoreText(scores) {
    var parts = [];
    Object.keys(scores || {}).forEach(function (k) {
      var v = scores[k];
      if (v === null || v === undefined || typeof v === "object") return;
      parts.push((SCORE_NAMES[k] || k) + " " + (typeof v === "number" ? num(v) : String(v)));
    });
    return parts.join(" \u00b7 ");
  }

  function secondsText(seconds) {
    var parts = [];
    Object.keys(seconds || {}).forEach(function (k) {
      if (seconds[k]) parts.push(k + " " + secs(seconds[k]));
    });
    return parts.join(" \u00b7 ");
  }

  function badgeText(step) {
    if (step.author === "target") return step.escalated ? "escalated \u2192 target" : "target";
    return step.escalated ? "draft (escalated)" : "draft \u2713 kept";
  }

  function clean(text) {
    return String(text || "").replace(/\s+$/, "");
  }

  /* One step as a DOM element: coloured by who wrote it, marked draft-kept / escalated, with its scores, tokens
     and seconds; the discarded draft proposal (and an unkept target step) behind an expandable block and on
     hover. */
  function renderStep(step) {
    var kind = step.author === "target" ? "target" : "draft";
    var box = el("div", "step author-" + kind + (step.escalated ? " escalated" : " kept"));
    box.dataset.author = step.author;
    box.dataset.escalated = step.escalated ? "true" : "false";
    var head = el("div", "step-head");
    var badge = el("span", "badge badge-" + kind, badgeText(step));
    if (step.draft && step.author !== "draft") badge.title = "the draft proposed:\n" + clean(step.draft.text);
    head.appendChild(badge);
    head.appendChild(el("span", "step-no", "step " + ((step.index || 0) + 1)));
    var scores = scoreText(step.scores);
    if (scores) head.appendChild(el("span", "scores", scores));
    var meta = [];
    if (step.n_tokens !== undefined) meta.push(step.n_tokens + " tok");
    var st = secondsText(step.seconds);
    if (st) meta.push(st);
    var sp = step.speculation;
    if (sp && sp.proposed) meta.push("target kept " + sp.kept + "/" + sp.proposed + " draft tok, " +
                                     sp.target_forwards + " fwd");
    head.appendChild(el("span", "meta", meta.join(" \u00b7 ")));
    box.appendChild(head);
    box.appendChild(el("div", "step-text", clean(step.text)));
    [["draft", "discarded draft proposal"], ["target", "target's step, not kept"]].forEach(function (pair) {
      var p = step[pair[0]];
      if (!p || step.author === pair[0]) return;
      var d = el("details", "proposal proposal-" + pair[0]);
      d.appendChild(el("summary", null, pair[1] + (p.n_tokens ? " (" + p.n_tokens + " tok)" : "")));
      d.appendChild(el("div", "step-text", clean(p.text)));
      box.appendChild(d);
    });
    return box;
  }

  function legend() {
    var l = el("div", "legend");
    l.appendChild(el("span", "badge badge-draft", "draft \u2713 kept"));
    l.appendChild(el("span", null, "the small model's step was kept"));
    l.appendChild(el("span", "badge badge-target", "escalated \u2192 target"));
    l.appendChild(el("span", null, "the policy called the target to rewrite the step (expand to see the draft's)"));
    return l;
  }

  return {el: el, num: num, secs: secs, renderStep: renderStep, legend: legend, scoreText: scoreText};
})();
