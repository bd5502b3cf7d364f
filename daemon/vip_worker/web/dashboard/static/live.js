/* Live updates for the overview, the fleet page and the newest jobs (docs/dashboard.md#live).
   One EventSource on /dashboard/events; each "update" carries server-rendered HTML
   fragments keyed by element id, swapped in as they are. Without JavaScript (or
   EventSource) the pages stay as rendered: a reload shows the same figures. */
(function () {
  "use strict";
  var root = document.querySelector("[data-events]");
  var status = document.getElementById("live-status");
  if (!root || !window.EventSource) { return; }
  function say(text, state) {
    if (status) { status.textContent = text; status.setAttribute("data-state", state); }
  }
  var source = new EventSource(root.getAttribute("data-events"));
  source.addEventListener("open", function () { say("Live: updates as they come.", "open"); });
  source.addEventListener("update", function (event) {
    var data = JSON.parse(event.data);
    Object.keys(data.fragments).forEach(function (id) {
      var element = document.getElementById(id);
      if (element) { element.innerHTML = data.fragments[id]; }
    });
    root.setAttribute("data-live-at", data.at);
    say("Live: updated " + data.at.slice(11, 19) + " UTC.", "open");
  });
  source.addEventListener("error", function () {
    // EventSource reconnects by itself; a lost session ends in a reload to sign in.
    say("Live updates interrupted; reconnecting (or reload the page).", "error");
  });
}());
