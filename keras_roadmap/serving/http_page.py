"""The page ``keras-roadmap serve`` answers at ``/``: drop (or pick) an image, see its neighbours.

Self-contained (no script or style from elsewhere); it only calls ``POST /search`` and shows
thumbnails from ``GET /gallery/{id}``.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>keras-roadmap search</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
 #drop { border: 2px dashed #888; border-radius: 8px; padding: 2rem; text-align: center; cursor: pointer; }
 #drop.over { background: #eef; }
 #query img { max-height: 160px; margin: 1rem 0; }
 #results { display: flex; flex-wrap: wrap; gap: 1rem; }
 .hit { width: 170px; font-size: 0.8rem; word-break: break-all; }
 .hit img { width: 160px; height: 160px; object-fit: contain; background: #f4f4f4; }
 #status.error { color: #b00; }
</style>
</head>
<body>
<h1>keras-roadmap search</h1>
<div id="drop">Drop an image here, or click to choose one.
 <input id="file" type="file" accept="image/*" hidden></div>
<p>Neighbours: <input id="k" type="number" min="1" max="__MAX_K__" value="5"></p>
<p id="status"></p>
<div id="query"></div>
<div id="results"></div>
<script>
const drop = document.getElementById("drop"), input = document.getElementById("file");
const statusLine = document.getElementById("status"), results = document.getElementById("results");
drop.addEventListener("click", () => input.click());
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  if (e.dataTransfer.files.length) search(e.dataTransfer.files[0]);
});
input.addEventListener("change", () => { if (input.files.length) search(input.files[0]); });

function text(tag, value, cls) {
  const node = document.createElement(tag); node.textContent = value; if (cls) node.className = cls; return node;
}

async function search(file) {
  statusLine.className = ""; statusLine.textContent = "searching " + file.name + " ...";
  results.replaceChildren();
  const preview = document.createElement("img"); preview.src = URL.createObjectURL(file); preview.alt = "query";
  document.getElementById("query").replaceChildren(preview);
  const body = new FormData(); body.append("file", file);
  const k = encodeURIComponent(document.getElementById("k").value || "5");
  try {
    const response = await fetch("/search?k=" + k, { method: "POST", body });
    const answer = await response.json();
    if (!response.ok) { statusLine.className = "error"; statusLine.textContent = answer.error; return; }
    statusLine.textContent = answer.results.length + " neighbours of " + file.name;
    for (const hit of answer.results) {
      const card = document.createElement("div"); card.className = "hit"; card.dataset.id = hit.id;
      const image = document.createElement("img"); image.src = hit.thumbnail; image.alt = hit.path;
      card.append(image, text("div", "#" + hit.rank + " score " + hit.score.toFixed(4), "score"),
                  text("div", hit.label === null ? "(no class)" : "class " + hit.label, "label"),
                  text("div", hit.path, "path"));
      results.append(card);
    }
  } catch (err) {
    statusLine.className = "error"; statusLine.textContent = "request failed: " + err;
  }
}
</script>
</body>
</html>
"""
