// prefsynth review: keyboard shortcuts on the pair page (a accept, f flip, x reject, j next, k previous).
// The only script the pages load (Content-Security-Policy: script-src 'self'); model output never runs.
document.documentElement.dataset.js = "on";
document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.target.closest("input, textarea, select")) return;
  const verdict = { a: "accept", f: "flip", x: "reject" }[event.key];
  const target = verdict ? document.getElementById("verdict-" + verdict)
    : document.querySelector({ j: "a[rel=next]", k: "a[rel=prev]" }[event.key] || "#none");
  if (target) { event.preventDefault(); target.click(); }
});
