// ostq dashboard: the little script the pages use. No inline script anywhere (the CSP forbids
// it), no request outside this origin; text from the server is always set with textContent.
"use strict";

(function () {
  function count(n) {
    return Number(n).toLocaleString("en-US");
  }

  function duration(ms) {
    if (ms < 1000) return Math.round(ms) + "ms";
    var s = Math.floor(ms / 1000);
    if (s < 60) return (ms / 1000).toFixed(1) + "s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } }).then(
      function (response) {
        if (!response.ok) throw new Error(url + " answered " + response.status);
        return response.json();
      }
    );
  }

  // --- Overview: live throughput chart and live queue figures -------------------------------

  function liveOverview(svg) {
    var totalsUrl = svg.getAttribute("data-url");
    var overviewUrl = svg.getAttribute("data-overview");
    var intervalSelect = document.getElementById("live-interval");
    var toggle = document.getElementById("live-toggle");
    var status = document.getElementById("live-status");
    var samples = []; // {t, processed, failed}
    var rates = []; // {processed, failed} per second
    var maxPoints = 60;
    var timer = null;
    var paused = false;

    function draw() {
      var width = 600;
      var height = 160;
      var peak = 1;
      rates.forEach(function (r) {
        peak = Math.max(peak, r.processed, r.failed);
      });
      ["processed", "failed"].forEach(function (kind) {
        var line = svg.querySelector("polyline." + kind);
        var points = rates.map(function (r, i) {
          var x = rates.length > 1 ? (i * width) / (maxPoints - 1) : 0;
          var y = height - 4 - (r[kind] / peak) * (height - 12);
          return x.toFixed(1) + "," + y.toFixed(1);
        });
        line.setAttribute("points", points.join(" "));
      });
      var last = rates[rates.length - 1];
      if (last) {
        document.getElementById("live-processed").textContent = last.processed.toFixed(1);
        document.getElementById("live-failed").textContent = last.failed.toFixed(1);
      }
    }

    function sampleTotals() {
      return getJSON(totalsUrl).then(function (doc) {
        var sample = { t: doc.at_ms, processed: doc.processed, failed: doc.failed };
        var previous = samples[samples.length - 1];
        samples.push(sample);
        if (samples.length > 2) samples.shift();
        if (previous && sample.t > previous.t) {
          var seconds = (sample.t - previous.t) / 1000;
          rates.push({
            processed: Math.max(0, sample.processed - previous.processed) / seconds,
            failed: Math.max(0, sample.failed - previous.failed) / seconds,
          });
          if (rates.length > maxPoints) rates.shift();
          draw();
        }
      });
    }

    function setCell(row, field, text) {
      var cell = row.querySelector('[data-field="' + field + '"]');
      if (cell && cell.textContent !== text) cell.textContent = text;
    }

    function refreshQueues() {
      return getJSON(overviewUrl).then(function (doc) {
        var rows = document.querySelectorAll("#queues tr[data-queue]");
        rows.forEach(function (row) {
          var q = doc.queues[row.getAttribute("data-queue")];
          if (!q) return;
          ["pending", "active", "scheduled", "retry", "dead", "completed"].forEach(function (f) {
            setCell(row, f, count(q[f]));
          });
          setCell(row, "jobs_per_sec", q.jobs_per_sec == null ? "-" : q.jobs_per_sec.toFixed(1));
          setCell(
            row,
            "failure_rate",
            q.failure_rate == null ? "-" : (q.failure_rate * 100).toFixed(1) + "%"
          );
          var latency = "-";
          if (q.pending > 0) {
            latency = q.oldest_pending_age_ms == null ? "unknown" : duration(q.oldest_pending_age_ms);
          }
          setCell(row, "latency", latency);
          setCell(row, "workers", q.workers == null ? "-" : count(q.workers));
          var badge = row.querySelector('[data-field="paused"]');
          if (badge) badge.hidden = !q.paused;
        });
        // The workers card, refreshed with the table (it said 0 while the table said 1).
        var live = document.getElementById("workers-live");
        if (live && doc.workers) {
          if (live.textContent !== count(doc.workers.live)) live.textContent = count(doc.workers.live);
          var busy = document.getElementById("workers-busy");
          if (busy) busy.textContent = count(doc.workers.busy);
        }
        var alerts = document.getElementById("alerts");
        if (alerts) {
          var keep = document.getElementById("eviction-warning");
          while (alerts.firstChild) alerts.removeChild(alerts.firstChild);
          doc.alerts.forEach(function (alert) {
            var p = document.createElement("p");
            p.className = "banner " + (alert.kind === "memory_unchecked" ? "warning" : "error");
            p.setAttribute("role", "alert");
            p.textContent = alert.message;
            alerts.appendChild(p);
          });
          if (keep) alerts.appendChild(keep);
        }
      });
    }

    function tick() {
      if (paused) return;
      Promise.all([sampleTotals(), refreshQueues()])
        .then(function () {
          status.textContent =
            "Updated " + new Date().toLocaleTimeString() + ", every " + intervalSelect.value / 1000 + " s.";
        })
        .catch(function (err) {
          status.textContent = "Cannot read the figures: " + err.message;
        });
    }

    function restart() {
      if (timer) clearInterval(timer);
      timer = setInterval(tick, Number(intervalSelect.value));
    }

    intervalSelect.addEventListener("change", function () {
      samples = [];
      tick();
      restart();
    });
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.textContent = paused ? "Resume" : "Pause";
      if (!paused) {
        samples = [];
        tick();
      }
    });
    tick();
    restart();
  }

  // --- Queue page: select every job of the page -----------------------------------------------

  function selectAll(box) {
    box.addEventListener("change", function () {
      var form = box.closest("form");
      form.querySelectorAll('input[type="checkbox"][name="id"]').forEach(function (check) {
        check.checked = box.checked;
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var svg = document.getElementById("live-chart");
    if (svg) liveOverview(svg);
    var box = document.getElementById("select-all");
    if (box) selectAll(box);
  });
})();
