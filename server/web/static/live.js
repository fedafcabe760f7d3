// lavamq web view: times in local time (UTC stays in the tooltip), and a job page's
// live parts over server-sent events. Console text is only ever set as textContent;
// the timeline and node table come as HTML the server rendered (and escaped).
"use strict";

function localTimes(root) {
  root.querySelectorAll("time[datetime]").forEach(function (el) {
    var d = new Date(el.getAttribute("datetime"));
    if (!isNaN(d)) { el.textContent = d.toLocaleString(); }
  });
}

function liveJob() {
  var conf = document.getElementById("job-live");
  if (!conf || !window.EventSource) { return; }
  var events = new EventSource(JSON.parse(conf.textContent).events);
  events.addEventListener("log", function (ev) {
    JSON.parse(ev.data).forEach(function (line) {
      var pre = document.querySelector('pre.console[data-node="' + line.node + '"]');
      if (!pre || pre.dataset.liveTail !== "yes") { return; }
      var span = document.createElement("span");
      span.className = "line " + line.cls;
      span.textContent = line.message;
      pre.appendChild(span);
      pre.appendChild(document.createTextNode("\n"));
      pre.scrollTop = pre.scrollHeight;
    });
  });
  ["timeline", "nodes"].forEach(function (part) {
    events.addEventListener(part, function (ev) {
      var box = document.querySelector('[data-live="' + part + '"]');
      if (box) { box.innerHTML = ev.data; localTimes(box); }
    });
  });
}

document.addEventListener("DOMContentLoaded", function () {
  localTimes(document);
  liveJob();
});
