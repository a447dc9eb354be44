// Live approval queue: requests appear as they are made and change as they are decided, by anyone,
// without a reload. On every (re)connect the rows are fetched again from the server (PostgreSQL),
// so nothing missed while disconnected stays missing.
(function () {
  "use strict";
  const table = document.querySelector("table.approvals[data-live='on']");
  if (!table) return;
  const tbody = table.querySelector("#approval-rows");
  const status = document.getElementById("live-status");
  const query = table.dataset.query || "";
  let retry = 500;

  function changed() {
    document.body.dispatchEvent(new Event("approvals-changed"));  // the navigation's count
  }

  async function reload() {
    const response = await fetch(table.dataset.url + "?" + query, {headers: {"HX-Request": "true"}});
    if (!response.ok) return;
    const focused = document.activeElement && tbody.contains(document.activeElement);
    if (!focused) {
      tbody.innerHTML = await response.text();
      if (window.htmx) window.htmx.process(tbody);
    }
  }

  function place(data) {
    const holder = document.createElement("tbody");
    holder.innerHTML = data.html;
    const row = holder.querySelector("tr[data-id]");
    const existing = tbody.querySelector('tr[data-id="' + data.id + '"]');
    if (!row) return;
    row.classList.add("fresh");
    if (existing) {
      if (data.event !== "created" && data.by) {
        const note = document.createElement("div");
        note.className = "muted small decided-note";
        note.textContent = "decided by " + data.by + " just now";
        const cell = row.querySelector("td.decision");
        if (cell && row.dataset.status !== "pending") cell.appendChild(note);
      }
      existing.replaceWith(row);
    } else if (data.event === "created") {
      const empty = tbody.querySelector("tr.empty-row");
      if (empty) empty.remove();
      tbody.appendChild(row);  // oldest first: the newest request goes last
    } else {
      return;
    }
    if (window.htmx) window.htmx.process(row);
    if (row.dataset.status !== "pending" && query.indexOf("status=pending") !== -1) {
      setTimeout(function () { row.remove(); }, 10000);  // the waiting queue keeps what still waits
    }
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + "/ws/approvals/?" + query);
    // A handshake that never finishes (a server stuck on a Redis that just came back) would hold the
    // browser's one connecting slot for this host: give up on it after 5 s and try again.
    const opening = setTimeout(function () {
      if (socket.readyState === WebSocket.CONNECTING) socket.close();
    }, 5000);
    socket.onopen = function () {
      clearTimeout(opening);
      status.textContent = "live";
      status.className = "badge ok";
      retry = 500;
      reload();
      changed();
    };
    socket.onmessage = function (message) {
      const data = JSON.parse(message.data);
      if (data.html) place(data);
      changed();
    };
    socket.onclose = function (event) {
      if (event.code === 4403 || event.code === 4400) {
        status.textContent = "not live";
        return;
      }
      status.textContent = "reconnecting…";
      status.className = "badge pending";
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  connect();
})();
