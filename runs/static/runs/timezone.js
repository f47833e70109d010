// The dashboard shows times in the viewer's zone: the server reads it from the "tz"
// cookie set here from the browser's own zone. When the cookie was missing or stale, the
// page was drawn in another zone, so it is loaded once more (only if the cookie took:
// a browser refusing cookies keeps UTC rather than reloading for ever).
(function () {
  "use strict";
  var zone;
  try {
    zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  } catch (error) {
    return;
  }
  if (!zone) return;
  var current = document.cookie.split("; ").filter(function (part) { return part.indexOf("tz=") === 0; })[0];
  // IANA names ("Asia/Tokyo", "Etc/GMT+5") hold only characters a cookie value may.
  if (!/^[A-Za-z0-9_+\/-]+$/.test(zone)) return;
  var wanted = "tz=" + zone;
  if (current === wanted) return;
  document.cookie = wanted + "; path=/; max-age=31536000; samesite=lax";
  var took = document.cookie.split("; ").indexOf(wanted) !== -1;
  if (!took) return;
  document.addEventListener("DOMContentLoaded", function () {
    if (document.querySelector("time[datetime]")) window.location.reload();
  });
})();
