"""The upload page of ``mambapro serve`` (``GET /``): one self-contained HTML document, inline
style and script only (no external script, style or font), to upload the modality images of a
query (one field per modality of the served model) and see the ranked gallery."""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

from mambapro.deploy.serve_options import MAX_K

if TYPE_CHECKING:
    from mambapro.deploy.serve import SearchService

__all__ = ["upload_page"]

_COUNTS = {2: "two", 3: "three", 4: "four"}


def upload_page(service: SearchService) -> str:
    """The upload page: one self-contained HTML document (inline style and script only)."""
    info = html.escape(
        f"{service.dataset}: {service.index.ntotal} gallery captures ({service.index.kind} index), "
        f"distance {service.cfg.test.distance}"
    )
    camid_hint = (
        f"0..{service.num_cameras - 1}, optional"
        if service.num_cameras is not None
        else "no camera embedding"
    )
    keys = service.modalities.keys
    inputs = "\n".join(f'<label>{m} <input type="file" name="{m}" accept="image/*"></label>' for m in keys)
    config = json.dumps({"modalities": list(keys), "k": service.options.k, "maxK": MAX_K})
    return _PAGE.format(
        info=info,
        count=_COUNTS.get(len(keys), str(len(keys))),
        inputs=inputs,
        k=service.options.k,
        max_k=MAX_K,
        camid_hint=html.escape(camid_hint),
        camid_disabled="" if service.num_cameras is not None else " disabled",
        config=config,
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mambapro search</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
form {{ display: flex; flex-wrap: wrap; gap: 1em; align-items: end; margin-bottom: 1em; }}
label {{ display: flex; flex-direction: column; font-size: 0.9em; }}
#status {{ margin: 0.5em 0; color: #555; }}
#status.error {{ color: #b00; }}
#results {{ display: flex; flex-wrap: wrap; gap: 0.6em; }}
.match {{ border: 3px solid #ccc; padding: 4px; text-align: center; font-size: 0.8em; }}
.match img {{ display: block; height: 96px; margin: 2px auto; }}
.query {{ border-color: #2860dc; }}
</style></head>
<body>
<h1>mambapro search</h1>
<p>{info}. Upload any non-empty subset of the {count} modality images of one capture; the
missing ones are zero-filled as in <code>mambapro test --missing</code>.</p>
<form id="query">
{inputs}
<label>k <input type="number" name="k" min="1" max="{max_k}" value="{k}"></label>
<label>camid ({camid_hint}) <input type="number" name="camid" min="0"{camid_disabled}></label>
<button type="submit">Search</button>
</form>
<div id="status"></div>
<div id="results"></div>
<script>
const CONFIG = {config};
const form = document.getElementById("query");
const status = document.getElementById("status");
const results = document.getElementById("results");
function cell(title, images, cls) {{
  const div = document.createElement("div");
  div.className = "match " + cls;
  const caption = document.createElement("div");
  caption.textContent = title;
  div.appendChild(caption);
  for (const src of images) {{
    const img = document.createElement("img");
    if (src) {{ img.src = src; }} else {{ img.alt = "missing"; }}
    div.appendChild(img);
  }}
  return div;
}}
form.addEventListener("submit", async (event) => {{
  event.preventDefault();
  const data = new FormData();
  const query = [];
  for (const m of CONFIG.modalities) {{
    const file = form.elements[m].files[0];
    if (file) {{ data.append(m, file); query.push(URL.createObjectURL(file)); }} else {{ query.push(null); }}
  }}
  for (const key of ["k", "camid"]) {{
    const value = form.elements[key].value;
    if (value !== "" && !form.elements[key].disabled) {{ data.append(key, value); }}
  }}
  status.className = ""; status.textContent = "searching ...";
  results.replaceChildren();
  const response = await fetch("/search", {{ method: "POST", body: data }});
  const answer = await response.json();
  if (!response.ok) {{
    status.className = "error"; status.textContent = response.status + ": " + answer.detail; return;
  }}
  status.textContent = "query " + answer.query.present + ": " + answer.matches.length +
    " matches in " + answer.took_ms + " ms" +
    (answer.warnings.length ? " (warning: " + answer.warnings.join("; ") + ")" : "");
  results.appendChild(cell("query", query, "query"));
  for (const m of answer.matches) {{
    const title = m.rank + ": id " + m.pid + ", d " + m.distance.toPrecision(3);
    results.appendChild(cell(title, CONFIG.modalities.map((x) => m.images[x]), ""));
  }}
}});
</script>
</body></html>
"""
