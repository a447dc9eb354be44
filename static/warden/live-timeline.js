// Live audit timeline: new events appear at the top without reload.
// Every pushed batch carries its first and last sequence number; a gap (a message Redis
// dropped) or a reconnect makes the page fetch what it missed from the
// server (PostgreSQL), so the timeline never shows a hole.
(function () {
  "use strict";
  const table = document.querySelector("table.timeline[data-live='on']");
  if (!table) return;
  const tbody = table.querySelector("#event-rows");
  const status = document.getElementById("live-status");
  const params = new URLSearchParams(window.location.search);
  params.delete("cursor");
  let lastSeq = null;
  let retry = 500;
  let attempts = 0;

  function newestCursor() {
    const row = tbody.querySelector("tr[data-cursor]");
    return row ? row.dataset.cursor : null;
  }

  function insert(html) {
    if (!html || !html.trim()) return;
    const holder = document.createElement("tbody");
    holder.innerHTML = html;
    const rows = Array.from(holder.querySelectorAll("tr[data-id]"));
    rows.reverse().forEach(function (row) {
      if (tbody.querySelector('tr[data-id="' + row.dataset.id + '"]')) return;
      row.classList.add("fresh");
      tbody.prepend(row);
    });
    if (rows.length) {
      const empty = tbody.querySelector("tr.empty-row");
      if (empty) empty.remove();
    }
  }

  async function catchUp() {
    const query = new URLSearchParams(params);
    const newest = newestCursor();
    if (newest) query.set("after", newest);
    query.set("limit", "200");
    const response = await fetch(table.dataset.url + "?" + query.toString(), {headers: {"HX-Request": "true"}});
    if (response.ok) insert(await response.text());
  }

  function connect() {
    attempts += 1;
    status.dataset.attempts = attempts;  // how many times it has tried: shown to tests and to whoever inspects
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + "/ws/audit/?" + params.toString());
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
      catchUp();
    };
    socket.onmessage = function (message) {
      const data = JSON.parse(message.data);
      const gap = lastSeq !== null && data.first !== lastSeq + 1;
      lastSeq = data.last;
      if (gap) {
        catchUp();
      } else {
        insert(data.html);
      }
    };
    socket.onclose = function (event) {
      lastSeq = null;
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
