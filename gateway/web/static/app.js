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

  // Forms that change things ask once more when they say so.
  document.querySelectorAll("form[data-confirm]").forEach(function (f) {
    f.addEventListener("submit", function (ev) { if (!window.confirm(f.dataset.confirm)) { ev.preventDefault(); } });
  });
})();
