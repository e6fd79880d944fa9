"""The web page served at ``GET /``: one self-contained HTML file (no build step, no external asset).

It streams ``POST /v1/images/generations`` (``stream: true``, ``partial_images: 2``) with ``fetch``
and shows the partial previews as they arrive, then the finished PNGs (each downloadable).
"""

PAGE = """<!doctype html>
<html lang="zh">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>ARTIST 文生图</title>
<style>
 body { font-family: system-ui, "Noto Sans CJK SC", sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; }
 form { display: grid; grid-template-columns: 10em 1fr; gap: .5em 1em; align-items: center; }
 textarea { font-size: 1.1em; min-height: 3em; }
 #gallery { display: flex; flex-wrap: wrap; gap: 1em; margin-top: 1.5em; }
 figure { margin: 0; text-align: center; }
 figure img { width: 192px; height: 192px; image-rendering: pixelated; border: 1px solid #ccc; }
 #status { margin-top: 1em; min-height: 1.5em; }
 #error { color: #b00020; white-space: pre-wrap; }
 progress { width: 100%; }
</style>
</head>
<body>
<h1>ARTIST 文生图</h1>
<form id="form">
 <label for="prompt">提示词 (prompt)</label><textarea id="prompt" required placeholder="一个红色的圆形"></textarea>
 <label for="negative">反向提示词 (negative)</label><input id="negative" placeholder="">
 <label for="n">数量 (n)</label><input id="n" type="number" min="1" max="10" value="2">
 <label for="seed">种子 (seed)</label><input id="seed" type="number" min="0" placeholder="random">
 <label for="guidance">引导 (guidance)</label><input id="guidance" type="number" min="0" step="0.5" placeholder="model default">
 <label for="apikey">API key</label><input id="apikey" type="password" placeholder="only if the server asks">
 <span></span><button id="go" type="submit">生成 (generate)</button>
</form>
<div id="status"><progress id="progress" max="3" value="0" hidden></progress><span id="phase"></span></div>
<div id="error" role="alert"></div>
<div id="gallery"></div>
<script>
const $ = (id) => document.getElementById(id);
function figures(n) {
  const g = $("gallery"); g.innerHTML = "";
  const out = [];
  for (let i = 0; i < n; i++) {
    const f = document.createElement("figure");
    const img = document.createElement("img"); img.alt = "image " + (i + 1);
    const a = document.createElement("a"); a.textContent = "PNG"; a.hidden = true;
    a.download = "artist-" + (i + 1) + ".png";
    f.append(img, document.createElement("br"), a); g.append(f); out.push({img, a});
  }
  return out;
}
$("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("error").textContent = ""; $("go").disabled = true;
  const n = parseInt($("n").value || "1", 10);
  const body = {prompt: $("prompt").value, n, stream: true, partial_images: 2, response_format: "b64_json"};
  if ($("negative").value) body.negative_prompt = $("negative").value;
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  if ($("guidance").value !== "") body.guidance_scale = parseFloat($("guidance").value);
  const headers = {"Content-Type": "application/json"};
  if ($("apikey").value) headers["Authorization"] = "Bearer " + $("apikey").value;
  const slots = figures(n);
  let partial = 0, finished = 0;
  $("progress").hidden = false; $("progress").value = 0; $("phase").textContent = " waiting…";
  try {
    const resp = await fetch("/v1/images/generations", {method: "POST", headers, body: JSON.stringify(body)});
    if (!resp.ok) {
      let msg = resp.status + " " + resp.statusText;
      try { msg = (await resp.json()).error.message; } catch (e) {}
      throw new Error(msg);
    }
    const reader = resp.body.getReader(); const dec = new TextDecoder(); let buf = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let cut;
      while ((cut = buf.indexOf("\\n\\n")) >= 0) {
        const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
        const line = block.split("\\n").find((l) => l.startsWith("data: "));
        if (!line) continue;
        const data = JSON.parse(line.slice(6));
        if (data.error) throw new Error(data.error.message);
        const src = "data:image/png;base64," + data.b64_json;
        if (data.type === "image_generation.partial_image") {
          const slot = slots[partial % n]; partial++;
          slot.img.src = src; slot.img.dataset.partial = "1";
          $("progress").value = data.partial_image_index + 1;
          $("phase").textContent = " preview " + (data.partial_image_index + 1);
        } else if (data.type === "image_generation.completed") {
          const slot = slots[finished]; finished++;
          slot.img.src = src; slot.img.dataset.final = "1";
          slot.a.href = src; slot.a.hidden = false;
        }
      }
    }
    $("progress").value = 3;
    $("phase").textContent = finished === n ? " done: " + n + " image(s)" : " stopped";
  } catch (e) {
    $("error").textContent = "Error: " + e.message;
    $("phase").textContent = "";
  } finally {
    $("go").disabled = false;
  }
});
</script>
</body>
</html>
"""
