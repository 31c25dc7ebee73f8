// The live feed: the node's event stream (relayed by /console/stream with the session
// cookie; the page never holds a token), rendered as text only, newest first, at most
// MAX_ROWS rows. No dependency, no inline script (the console's CSP forbids it).
const MAX_ROWS = 200;

function start() {
  const state = document.getElementById("feed-state");
  const body = document.getElementById("feed");
  const filters = document.getElementById("feed-filters");
  if (!state || !body || !filters) return;
  const prefix = state.dataset.prefix;
  const locale = state.dataset.lang === "fr" ? "fr-CA" : "en-CA";
  const dates = new Intl.DateTimeFormat(locale, {dateStyle: "medium", timeStyle: "medium", timeZone: "UTC"});
  const numbers = new Intl.NumberFormat(locale);
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(filters)) {
    if (typeof value === "string" && value !== "") params.set(name, value);
  }
  state.textContent = state.dataset.connecting;
  const source = new EventSource(`${prefix}/stream?${params}`);
  source.addEventListener("open", () => { state.textContent = state.dataset.live; });
  source.addEventListener("error", () => { state.textContent = state.dataset.lost; });
  source.addEventListener("observation", (event) => {
    let o;
    try { o = JSON.parse(event.data); } catch { return; }
    if (!o || typeof o.id !== "string" || !/^[0-9a-f]{64}$/.test(o.id)) return;
    const row = document.createElement("tr");
    row.dataset.id = o.id;
    const link = document.createElement("a");
    link.href = `${prefix}/observations/${o.id}`;
    const kind = document.createElement("code");
    kind.textContent = String(o.type ?? "");
    link.append(kind, " ", String(o.value ?? ""));
    const cells = [
      link,
      String(o.origin_name ?? String(o.origin ?? "").slice(0, 20)),
      "TLP:" + String(o.tlp ?? ""),
      typeof o.confidence === "number" ? numbers.format(o.confidence) : "—",
      typeof o.ts === "number" ? dates.format(new Date(o.ts)) + " UTC" : "—",
    ];
    for (const content of cells) {
      const cell = document.createElement("td");
      cell.append(content);
      row.append(cell);
    }
    if (o.retracted) row.classList.add("retracted");
    body.prepend(row);
    while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
  });
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", start);
} else {
  start();
}
