// Live runs. The runs list and a run's page listen on a websocket that says only which run changed;
// they then fetch the part of the page that shows it, over HTTP, with the viewer's own permissions.
// Many changes in a burst make one fetch (never two at once); every (re)connect fetches once, so
// nothing that happened while disconnected is missed.
(function () {
  "use strict";
  const list = document.querySelector("table.runs[data-live='on']");
  const page = document.getElementById("run-live");
  const target = list ? list.querySelector("#run-rows") : page;
  if (!target) return;
  const status = document.getElementById("live-status");
  const url = list ? list.dataset.url + "?" + (list.dataset.query || "") : page.dataset.url;
  const path = list ? "/ws/runs/" : "/ws/runs/" + page.dataset.id + "/";
  let fetching = false, again = false, retry = 500;

  async function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    try {
      const response = await fetch(url, {headers: {"HX-Request": "true"}, credentials: "same-origin"});
      if (response.ok) {
        const html = await response.text();
        if (html !== target.dataset.last) {
          target.innerHTML = html;
          target.dataset.last = html;
          if (window.htmx) window.htmx.process(target);
        }
      }
    } finally {
      fetching = false;
      if (again) { again = false; setTimeout(refresh, 250); }
    }
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + path);
    // A handshake that never finishes (a server stuck on a Redis that just came back) would hold the
    // browser's one connecting slot for this host: give up on it after 5 s and try again.
    const opening = setTimeout(function () {
      if (socket.readyState === WebSocket.CONNECTING) socket.close();
    }, 5000);
    socket.onopen = function () {
      clearTimeout(opening);
      retry = 500;
      status.textContent = "live";
      status.className = "badge ok";
      refresh().then(function () { target.dataset.connected = "yes"; });  // listening, and up to date
    };
    socket.onmessage = function () { refresh(); };
    socket.onclose = function (event) {
      delete target.dataset.connected;
      if (event.code === 4403 || event.code === 4404) {
        status.textContent = "not live";
        status.className = "badge";
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
