/* The page `arbitrage serve` answers GET / with: asks /v1/models which policies this server runs, then streams
   a question's answer step by step through POST /v1/completions (stream: true, the API any client uses) and
   shows each step coloured by who wrote it (steps.js), then the usage.
   Query string: ?q=QUESTION&policy=NAME&threshold=TAU&max_steps=N&autorun=1 fills the form (and runs it). */
"use strict";

(function () {
  var $ = function (id) { return document.getElementById(id); };
  var el = Arb.el;
  var state = {model: null, policies: {}, running: false};

  function setState(s, message) {
    document.body.dataset.state = s;
    if (message !== undefined) $("status").textContent = message;
  }

  function policyChanged() {
    var p = state.policies[$("policy").value];
    var box = $("threshold-box"), input = $("threshold");
    $("policy-summary").textContent = p ? p.summary : "";
    if (!p || !p.threshold_range) {
      input.disabled = true;
      input.value = "";
      box.classList.add("off");
      $("range").textContent = "(none)";
      return;
    }
    var lo = p.threshold_range[0], hi = p.threshold_range[1];
    input.disabled = false;
    box.classList.remove("off");
    input.min = lo;
    input.max = hi;
    input.step = (hi - lo) / 100;
    $("range").textContent = "in [" + lo + ", " + hi + "]";
    if (input.value === "" || +input.value < lo || +input.value > hi) {
      input.value = p.default_threshold;
    }
  }

  function loadModels() {
    return fetch("v1/models").then(function (r) { return r.json(); }).then(function (body) {
      var m = body.data[0];
      state.model = m.id;
      $("model").textContent = "model " + m.id + " \u00b7 default policy " + m.policy;
      var select = $("policy");
      (m.policies || []).forEach(function (p) {
        state.policies[p.name] = p;
        var o = el("option", null, p.name);
        o.value = p.name;
        select.appendChild(o);
      });
      if (m.default_policy) {
        select.value = m.default_policy.name;
        if (m.default_policy.threshold !== null) $("threshold").value = m.default_policy.threshold;
      }
      policyChanged();
    });
  }

  function usageRow(table, name, value) {
    var tr = el("tr");
    tr.appendChild(el("th", null, name));
    tr.appendChild(el("td", null, value));
    table.appendChild(tr);
  }

  function showUsage(usage, finish, wall) {
    var box = $("usage");
    box.hidden = false;
    box.textContent = "";
    box.appendChild(el("h2", null, "Usage"));
    var t = el("table", "kv");
    usageRow(t, "steps", usage.steps);
    usageRow(t, "escalated steps", usage.escalated_steps + (usage.steps ? " (" +
             Math.round(100 * usage.escalated_steps / usage.steps) + "%)" : ""));
    usageRow(t, "draft tokens", usage.draft_tokens + " (" + usage.discarded_draft_tokens + " discarded)");
    usageRow(t, "target tokens", usage.target_tokens);
    usageRow(t, "prompt / completion tokens", usage.prompt_tokens + " / " + usage.completion_tokens);
    if (usage.speculation) {
      var s = usage.speculation;
      usageRow(t, "speculation", "target kept " + s.kept + "/" + s.proposed + " of the draft's tokens, " +
               s.target_forwards + " target forwards");
    }
    if (finish) {
      usageRow(t, "finish", finish.finish);
      usageRow(t, "latency (server)", Arb.secs(finish.latency_s));
      var per = Object.keys(finish.seconds || {}).map(function (k) { return k + " " + Arb.secs(finish.seconds[k]); });
      if (per.length) usageRow(t, "seconds per model", per.join(" \u00b7 "));
    }
    if (wall !== null) usageRow(t, "latency (this page)", Arb.secs(wall));
    box.appendChild(t);
  }

  function fail(message) {
    var box = el("div", "error", message);
    $("steps").appendChild(box);
    setState("error", "error");
  }

  function run(event) {
    if (event) event.preventDefault();
    if (state.running) return;
    var question = $("question").value.replace(/\s+$/, "");
    if (!question) { $("question").focus(); return; }
    var body = {model: state.model, prompt: question + "\n\n", stream: true,
                stream_options: {include_usage: true}, policy: $("policy").value};
    var p = state.policies[body.policy];
    if (p && p.threshold_range && $("threshold").value !== "") body.threshold = +$("threshold").value;
    if ($("max-steps").value !== "") body.max_steps = +$("max-steps").value;
    $("steps").textContent = "";
    $("usage").hidden = true;
    state.running = true;
    $("run").disabled = true;
    setState("running", "running\u2026");
    var t0 = performance.now(), nSteps = 0, finish = null, usage = null, buffer = "";

    function handle(obj) {
      if (obj.error) { fail(obj.error.message); return; }
      if (obj.usage) usage = obj.usage;
      var c = obj.choices && obj.choices[0];
      if (!c) return;
      if (c.finish_reason === null && obj.arbitrage) {
        var step = Object.assign({}, obj.arbitrage, {text: c.text});
        $("steps").appendChild(Arb.renderStep(step));
        nSteps += 1;
        $("status").textContent = "running\u2026 " + nSteps + " step" + (nSteps === 1 ? "" : "s");
      } else if (c.finish_reason !== null) {
        finish = obj.arbitrage || {finish: c.finish_reason};
      }
    }

    function done() {
      state.running = false;
      $("run").disabled = false;
      if (document.body.dataset.state === "error") return;
      var wall = (performance.now() - t0) / 1000;
      if (usage) showUsage(usage, finish, wall);
      setState("done", "done: " + nSteps + " steps" + (finish ? ", " + finish.finish : ""));
    }

    fetch("v1/completions", {method: "POST", headers: {"Content-Type": "application/json"},
                             body: JSON.stringify(body)}).then(function (r) {
      if (!r.ok) {
        return r.json().then(function (e) { fail((e.error && e.error.message) || ("HTTP " + r.status)); },
                             function () { fail("HTTP " + r.status); });
      }
      var reader = r.body.getReader(), decoder = new TextDecoder();
      function pump() {
        return reader.read().then(function (part) {
          if (part.done) { done(); return; }
          buffer += decoder.decode(part.value, {stream: true});
          var events = buffer.split("\n\n");
          buffer = events.pop();
          events.forEach(function (ev) {
            ev.split("\n").forEach(function (line) {
              if (line.indexOf("data: ") !== 0) return;
              var data = line.slice(6);
              if (data === "[DONE]") return;
              handle(JSON.parse(data));
            });
          });
          return pump();
        });
      }
      return pump();
    }).catch(function (e) { fail(String(e)); }).then(function () {
      state.running = false;
      $("run").disabled = false;
    });
  }

  function start() {
    $("legend").appendChild(Arb.legend());
    $("ask").addEventListener("submit", run);
    $("policy").addEventListener("change", policyChanged);
    var q = new URLSearchParams(window.location.search);
    loadModels().then(function () {
      if (q.get("q")) $("question").value = q.get("q");
      if (q.get("policy") && state.policies[q.get("policy")]) {
        $("policy").value = q.get("policy");
        policyChanged();
      }
      if (q.get("threshold") !== null && !$("threshold").disabled) $("threshold").value = q.get("threshold");
      if (q.get("max_steps")) $("max-steps").value = q.get("max_steps");
      setState("ready", "");
      if (q.get("autorun") === "1") run();
    }).catch(function (e) { fail("could not read /v1/models: " + e); });
  }

  start();
})();
