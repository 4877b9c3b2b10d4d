// The panel's only script: no build step. Follows a document in flight and a bulk job's progress.
(function () {
  "use strict";

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.json(); });
  }

  // Document page: while the document is being worked on, poll its state; reload when it changes.
  var doc = document.getElementById("doc");
  if (doc && doc.dataset.watch) {
    var state = doc.dataset.state;
    var timer = setInterval(function () {
      getJSON("/api/documents/" + doc.dataset.id + "/status").then(function (s) {
        if (s.state !== state) {
          clearInterval(timer);
          var active = document.activeElement;
          if (!active || ["INPUT", "TEXTAREA", "SELECT"].indexOf(active.tagName) < 0 || !active.value) {
            window.location.reload();
          }
        }
      }).catch(function () { /* transient; try again next tick */ });
    }, 1000);
  }

  // Bulk job page: progress until the job finishes.
  var job = document.getElementById("job");
  if (job) {
    var done = function (st) { return st === "finished" || st === "failed"; };
    if (!done(job.dataset.state)) {
      var poll = setInterval(function () {
        getJSON("/api/jobs/" + job.dataset.job).then(function (j) {
          document.getElementById("job-progress").max = j.total || 1;
          document.getElementById("job-progress").value = j.done;
          ["state", "done", "total", "reprocessed", "skipped"].forEach(function (k) {
            document.getElementById("job-" + k).textContent = j[k];
          });
          var ul = document.getElementById("job-errors");
          ul.textContent = "";
          j.errors.forEach(function (e) { var li = document.createElement("li"); li.className = "err"; li.textContent = e; ul.appendChild(li); });
          job.dataset.state = j.state;
          if (done(j.state)) { clearInterval(poll); }
        }).catch(function () {});
      }, 700);
    }
  }

  // Times: the page says UTC; show them in the viewer's own zone, UTC on hover.
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function localTimes(root) {
    root.querySelectorAll("time[data-local]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (isNaN(d.getTime())) { return; }
      var text = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + pad(d.getHours()) + ":" + pad(d.getMinutes());
      if (t.dataset.local === "s") { text += ":" + pad(d.getSeconds()); }
      t.title = t.title || t.textContent;
      t.textContent = text;
      t.removeAttribute("data-local");
    });
    root.querySelectorAll("svg text[data-hour]").forEach(function (t) {
      var d = new Date(t.dataset.hour);
      if (!isNaN(d.getTime())) { t.textContent = pad(d.getHours()); }
    });
  }
  localTimes(document);

  // The overview refreshes its live part by itself (not while someone types in it).
  var live = document.getElementById("live");
  if (live && live.dataset.refresh) {
    setInterval(function () {
      var active = document.activeElement;
      if (active && live.contains(active) && ["INPUT", "TEXTAREA", "SELECT"].indexOf(active.tagName) >= 0) { return; }
      fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html", "X-Panel-Refresh": "1" } })
        .then(function (r) { if (!r.ok) { throw new Error(r.status); } return r.text(); })
        .then(function (html) {
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("live");
          if (fresh) { live.innerHTML = fresh.innerHTML; localTimes(live); }
          var banner = doc.getElementById("outage"), old = document.getElementById("outage");
          if (old && !banner) { old.remove(); }
          else if (banner && old) { old.innerHTML = banner.innerHTML; localTimes(old); }
          else if (banner) { document.querySelector("main").before(banner); localTimes(banner); }
        }).catch(function () { /* transient; next tick */ });
    }, Number(live.dataset.refresh) * 1000);
  }

  // Forms that change things ask once more when they say so.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (ev) { if (!window.confirm(f.dataset.confirm)) { ev.preventDefault(); } });
  });
})();
