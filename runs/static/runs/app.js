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

  // Confirmations: a form marked data-confirm holds a <dialog> with the question, any
  // warning and the reason field. Submitting opens it; "Yes" marks the form confirmed and
  // submits it again (htmx sends it then). Without this file the server asks instead.
  document.addEventListener(
    "submit",
    function (event) {
      var form = event.target;
      if (!form.matches || !form.matches("form[data-confirm]")) return;
      var confirmed = form.querySelector("input[name=confirmed]");
      if (confirmed && confirmed.value === "yes") return;
      var dialog = form.querySelector("dialog") || drawConfirmation(form);
      if (!dialog) return;
      event.preventDefault();
      event.stopPropagation();
      if (!dialog.open) dialog.showModal();
    },
    true
  );

  // A form that carries its question in data-question (the run list's row actions) gets its
  // dialog drawn from the page's one template; text goes in as text, never as markup.
  function drawConfirmation(form) {
    var template = document.getElementById("confirm-dialog-template");
    var question = form.getAttribute("data-question");
    if (!template || !question) return null;
    form.appendChild(template.content.cloneNode(true));
    var dialog = form.querySelector("dialog");
    dialog.setAttribute("aria-label", question);
    dialog.querySelector("h2").textContent = question;
    dialog.querySelector("[data-confirm-yes]").textContent = "Yes, " + (form.getAttribute("data-verb") || "do it");
    var warning = form.getAttribute("data-warning");
    if (warning) {
      var line = document.createElement("p");
      line.className = "warn code-warning";
      line.textContent = warning;
      dialog.querySelector("h2").after(line);
    }
    return dialog;
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-confirm-yes], [data-confirm-no]");
    if (!button) return;
    var form = button.closest("form");
    var dialog = button.closest("dialog");
    if (button.hasAttribute("data-confirm-no")) {
      dialog.close();
      return;
    }
    form.querySelector("input[name=confirmed]").value = "yes";
    dialog.close();
    form.requestSubmit();
  });

  // A confirmation the server drew after counting (the run list's bulk actions) opens at once.
  document.addEventListener("htmx:load", function (event) {
    var root = event.detail.elt;
    if (!root.querySelectorAll) return;
    var forms = Array.prototype.slice.call(root.querySelectorAll("form[data-confirm-open]"));
    if (root.matches("form[data-confirm-open]")) forms.push(root);
    forms.forEach(function (form) {
      var dialog = form.querySelector("dialog");
      if (dialog && !dialog.open) dialog.showModal();
    });
  });

  // A confirmation closed without "Yes" leaves its form unconfirmed for the next time.
  document.addEventListener(
    "close",
    function (event) {
      var dialog = event.target;
      if (!dialog.matches || !dialog.matches("form[data-confirm] dialog")) return;
      var form = dialog.closest("form");
      window.setTimeout(function () {
        var confirmed = form.querySelector("input[name=confirmed]");
        if (confirmed) confirmed.value = "";
      }, 0);
    },
    true
  );

  // A live section does not refresh under an operator who is typing in it,
  // or who has a traceback or a long output unfolded; it catches up afterwards.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var element = event.detail.elt;
    if (!element.hasAttribute || !element.hasAttribute("data-poll")) return;
    var focused = document.activeElement;
    var typing = focused && element.contains(focused) && focused.matches("input, textarea, select");
    // Details open from the start (data-keep-open: a final output, a failure) are not a sign of reading.
    var reading = element.querySelector(
      "details.traceback[open]:not([data-keep-open]), details.json[open]:not([data-keep-open]), details.step-more[open], details.payload[open], .edit-form, dialog[open]"
    );
    if (typing || reading) event.preventDefault();
  });

  // Collapse or expand every step output of a run page at once; the final output and a
  // failure (data-keep-open) stay open.
  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("[data-fold-steps]");
    if (!button) return;
    var open = button.getAttribute("data-fold-steps") === "open";
    document.querySelectorAll("ol.steps details.json").forEach(function (details) {
      if (open || !details.hasAttribute("data-keep-open")) details.open = open;
    });
  });

  // Jumping to a step unfolds its output.
  function unfoldStep(hash) {
    if (!/^#step-\d+$/.test(hash)) return;
    var step = document.getElementById(hash.slice(1));
    if (!step) return;
    step.querySelectorAll(":scope > details.json").forEach(function (details) { details.open = true; });
  }
  window.addEventListener("hashchange", function () { unfoldStep(window.location.hash); });
  document.addEventListener("DOMContentLoaded", function () { unfoldStep(window.location.hash); });

  // Live parts of a page (data-live) do not poll while the tab is hidden; they also
  // listen for visibilitychange, so they catch up as soon as it is shown again.
  document.addEventListener("htmx:beforeRequest", function (event) {
    var element = event.detail.elt;
    if (!element.hasAttribute || !element.hasAttribute("data-live")) return;
    // Nor while a confirmation is open: a refresh would redraw the form it belongs to.
    if (document.hidden || document.querySelector("dialog[open]")) event.preventDefault();
  });
})();
