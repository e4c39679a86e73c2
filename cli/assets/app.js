// The dashboard's one script, served from the binary (the content security
// policy runs no inline script). It refreshes the parts of a page marked
// data-live every 2 seconds, and asks before a form marked data-confirm is
// sent. Every page works without it.
"use strict";

document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

async function refresh() {
  const live = document.querySelectorAll("[data-live]");
  if (live.length === 0 || document.hidden) return;
  try {
    const response = await fetch(window.location.href, { headers: { "Accept": "text/html" } });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const element of live) {
      const replacement = element.id && fresh.getElementById(element.id);
      if (replacement) element.replaceWith(replacement);
    }
  } catch (_) {
    // The server is restarting or gone: try again at the next tick.
  }
}

setInterval(refresh, 2000);
