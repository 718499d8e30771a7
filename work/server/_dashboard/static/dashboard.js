// anywork dashboard: follows the store's events and refreshes the page's live part in place.
"use strict";
(function () {
  var body = document.body;
  var base = body.dataset.base || "";
  var live = document.getElementById("live");
  if (!live) { return; }
  var jobId = body.dataset.job || null;
  var pending = null;
  var busy = false;
  var again = false;

  function refresh() {
    pending = null;
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, {
      headers: { "X-Dashboard-Fragment": "1" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (response) {
      if (response.redirected || response.status === 401) { window.location.reload(); return null; }
      return response.text();
    }).then(function (html) {
      if (html !== null) { live.innerHTML = html; body.dataset.refreshed = String(Date.now()); }
    }).catch(function () { /* the next event or tick tries again */ }).then(function () {
      busy = false;
      if (again) { again = false; schedule(); }
    });
  }

  function schedule() {
    // Many events in a burst become one refresh.
    if (pending === null) { pending = window.setTimeout(refresh, 250); }
  }

  function addEvent(data) {
    var list = document.getElementById("live-events");
    if (!list) { return; }
    var empty = list.querySelector(".empty");
    if (empty) { list.removeChild(empty); }
    var item = document.createElement("li");
    var time = document.createElement("time");
    time.textContent = data.at_text;
    item.appendChild(time);
    item.appendChild(document.createTextNode(" " + data.kind + " (status " + data.status + ", attempt " + data.attempt + ")"));
    list.appendChild(item);
  }

  function onEvent(message) {
    var data;
    try { data = JSON.parse(message.data); } catch (e) { return; }
    if (jobId !== null) {
      if (data.job_id !== jobId && data.kind !== "lost") { return; }
      addEvent(data);
    }
    schedule();
  }

  var kinds = ["enqueued", "started", "progress", "retrying", "waiting", "succeeded", "failed", "cancelled", "lost"];
  if (window.EventSource) {
    var source = new EventSource(base + "/events");
    kinds.forEach(function (kind) { source.addEventListener(kind, onEvent); });
    source.onopen = function () { body.dataset.live = "open"; };
    source.onerror = function () { body.dataset.live = "reconnecting"; };
  }
  // A slow refresh as well, for changes no event reports (and browsers without EventSource).
  // Heartbeats are no job events: the workers page always refreshes on this tick.
  window.setInterval(function () {
    if (body.dataset.live !== "open" || body.dataset.page === "workers") { schedule(); }
  }, 5000);
})();
