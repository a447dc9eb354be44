// A form in a dialog that came back from the server with errors is rendered with the dialog `open`.
// Show it as the modal it was (centred, over a backdrop, in view) and put the cursor on the first
// field in error, instead of leaving it in the page's flow below the fold.
document.addEventListener("DOMContentLoaded", function () {
  "use strict";
  document.querySelectorAll("dialog[open]").forEach(function (dialog) {
    dialog.close();
    dialog.showModal();
    const wrong = Array.from(dialog.querySelectorAll("input, textarea, select")).find(function (field) {
      const next = field.nextElementSibling;
      return next !== null && next.classList.contains("error");
    });
    if (wrong) wrong.focus();
  });
});
