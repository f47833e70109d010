// Small conveniences on top of htmx. Every page works without this file.
(function () {
  "use strict";

  // "Select all" in the run table ticks every row on the page.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (!box.matches || !box.matches("[data-select-all]")) return;
    var form = box.closest("form");
    form.querySelectorAll("input.row-check").forEach(function (row) {
      row.checked = box.checked;
    });
  });

  // "Close" / "No" buttons of inline panels remove the panel.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-remove-closest]");
    if (!button) return;
    var panel = button.closest(button.getAttribute("data-remove-closest"));
    if (panel) panel.remove();
  });

  // A live section does not refresh under an operator who is typing in it,
  // or who has a traceback or a long output unfolded; it catches up afterwards.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var element = event.detail.elt;
    if (!element.hasAttribute || !element.hasAttribute("data-poll")) return;
    var focused = document.activeElement;
    var typing = focused && element.contains(focused) && focused.matches("input, textarea, select");
    var reading = element.querySelector(
      "details.traceback[open], details.json[open], details.step-more[open], details.payload[open], .edit-form"
    );
    if (typing || reading) event.preventDefault();
  });

  // Live parts of a page (data-live) do not poll while the tab is hidden; they also
  // listen for visibilitychange, so they catch up as soon as it is shown again.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var element = event.detail.elt;
    if (element.hasAttribute && element.hasAttribute("data-live") && document.hidden) {
      event.preventDefault();
    }
  });
})();
