// One approval request, live: when anyone decides it (or a co-approver adds their verdict, or it
// expires), its decision panel, status and timing are fetched again from the server and swapped in.
// A comment being typed survives the swap while the request still waits. Uses the queue's socket
// (/ws/approvals/), which sends only what this person may see; on every (re)connect the panel is
// fetched once, so a decision made before the socket was open is not missed.
(function () {
  "use strict";
  const panel = document.querySelector("#decision[data-live='on']");
  if (!panel || !window.htmx) return;
  let retry = 500;
  let kept = null;

  function comment() {
    return panel.querySelector("textarea[name=comment]");
  }

  panel.addEventListener("htmx:beforeSwap", function () {
    const typed = comment();
    kept = typed ? {value: typed.value, focused: document.activeElement === typed} : null;
  });
  panel.addEventListener("htmx:afterSwap", function () {
    const again = comment();
    if (again && kept && kept.value && !again.value) again.value = kept.value;
    if (again && kept && kept.focused) again.focus();
    kept = null;
  });

  function refresh() {
    return window.htmx.ajax("GET", panel.dataset.url, {target: "#decision", swap: "innerHTML"}).then(function () {
      document.body.dispatchEvent(new Event("approvals-changed"));  // the navigation's count
    });
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    const socket = new WebSocket(scheme + window.location.host + "/ws/approvals/");
    // A handshake that never finishes (a server stuck on a Redis that just came back) would hold the
    // browser's one connecting slot for this host: give up on it after 5 s and try again.
    const opening = setTimeout(function () {
      if (socket.readyState === WebSocket.CONNECTING) socket.close();
    }, 5000);
    socket.onopen = function () {
      clearTimeout(opening);
      retry = 500;
      refresh().then(function () { panel.dataset.connected = "yes"; });  // listening, and up to date
    };
    socket.onmessage = function (message) {
      const data = JSON.parse(message.data);
      if (data.id === panel.dataset.id && data.event !== "created") refresh();
    };
    socket.onclose = function (event) {
      delete panel.dataset.connected;
      if (event.code === 4403 || event.code === 4400) return;
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  connect();
})();
