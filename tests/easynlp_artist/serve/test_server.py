"""`easynlp --mode=serve` as a real process on loopback, driven by the official openai client and httpx.

Two servers: the embedded default model without auth (API shape, streaming, batching, seeded
results, validation), and a slower random-weight model (1024 image tokens, a few seconds an
image) with auth, two rows and a queue of one (429, cancel on disconnect, SIGTERM drain).
"""

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
from helpers.server_process import ServerProcess, free_port, until
from PIL import Image

from easynlp_artist.configuration import ArtistConfig
from easynlp_artist.modeling import ArtistModel
from easynlp_artist.models.stage1.vqgan import VQGANConfig
from easynlp_artist.pipeline import ArtistPipeline

MODEL = "artist-shapes-tiny-zh"
KEY = "sk-test-7c1d0e9f"
ADMIN = "admin-test-51b2"
DRAGON_FRUIT = [["火龙果", "颜色", "红色"], ["火龙果", "形状", "圆形"], ["火龙果", "类别", "水果"]]


def Server(tmp: Path, *flags: str, env: dict | None = None) -> ServerProcess:
    """One torch thread in the server: the kernels these tests compare pixels with."""
    return ServerProcess(tmp, *flags, env={"OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def slow_checkpoint(tmp):
    """A random-weight model whose images take seconds (1024 tokens), so a request can be caught running."""
    base = ArtistPipeline.from_pretrained(MODEL)
    vq = VQGANConfig(resolution=64, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                     z_channels=8, embed_dim=8, n_embed=64, norm_groups=4)
    cfg = ArtistConfig.build(vq, text_vocab_size=base.model.config.gpt.text_vocab_size, text_len=16,
                             n_layer=4, n_head=4, n_embd=128)
    torch.manual_seed(0)
    return ArtistPipeline(ArtistModel(cfg), base.tokenizer).save_pretrained(tmp / "slow")


@pytest.fixture(scope="module")
def servers(tmp, slow_checkpoint):
    # one torch thread in both processes: the same kernels, so the same pixels (decoding rounds
    # differently with another thread count)
    fast = Server(tmp, "--user_defined_parameters=max_batch_rows=24 num_threads=1", env={"ARTIST_ADMIN_KEY": ADMIN})
    slow = Server(tmp, f"--checkpoint_dir={slow_checkpoint}", "--user_defined_parameters=max_batch_rows=2 max_queue=1",
                  env={"ARTIST_API_KEY": KEY})
    try:
        fast.wait_ready()
        slow.wait_ready()
        yield fast, slow
    finally:
        fast.stop()
        slow.stop()


@pytest.fixture(scope="module")
def pipe():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield ArtistPipeline.from_pretrained(MODEL)
    torch.set_num_threads(threads)


def pixels(b64: str) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def test_openai_client_generate_and_seeded_result_equals_the_pipeline(servers, pipe):
    fast, _ = servers
    client = openai.OpenAI(base_url=fast.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [MODEL]
    result = client.images.generate(model=MODEL, prompt="一个红色的圆形", n=2, size="32x32",
                                    response_format="b64_json", extra_body={"seed": 7})
    assert len(result.data) == 2
    expected = pipe("一个红色的圆形", num_images_per_prompt=2, generator=torch.Generator().manual_seed(7)).images
    for got, want in zip(result.data, expected, strict=True):
        np.testing.assert_array_equal(pixels(got.b64_json), np.asarray(want))


def test_openai_client_streaming_partial_and_completed_events(servers):
    fast, _ = servers
    client = openai.OpenAI(base_url=fast.url + "/v1", api_key="unused", max_retries=0)
    events = list(client.images.generate(prompt="蓝色的正方形", stream=True, partial_images=2,
                                         extra_body={"seed": 3}))
    kinds = [e.type for e in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    first = pixels(events[0].b64_json)
    assert first.shape == (32, 32, 3) and (first[-8:] == 128).all()  # rows not generated yet are grey
    assert pixels(events[-1].b64_json).shape == (32, 32, 3) and events[-1].size == "32x32"


def test_concurrent_requests_share_one_batch_and_each_gets_its_own_images(servers, pipe):
    fast, _ = servers
    seeds = list(range(20, 26))
    results = {}

    def call(seed):
        r = httpx.post(fast.url + "/v1/images/generations", timeout=60,
                       json={"prompt": "绿色三角形", "n": 2, "seed": seed, "guidance_scale": 2.0})
        results[seed] = r

    threads = [threading.Thread(target=call, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fast.metric("artist_batch_requests_peak") >= 2  # served together, not one after another
    images = {}
    for seed in seeds:
        assert results[seed].status_code == 200, results[seed].text
        images[seed] = [pixels(d["b64_json"]) for d in results[seed].json()["data"]]
    assert len({im.tobytes() for ims in images.values() for im in ims}) == 2 * len(seeds)  # all different
    for seed in seeds[::3]:  # (all seeds against the pipeline: test_engine.py)
        want = pipe("绿色三角形", num_images_per_prompt=2, guidance_scale=2.0,
                    generator=torch.Generator().manual_seed(seed)).images
        for g, w in zip(images[seed], want, strict=True):
            np.testing.assert_array_equal(g, np.asarray(w))


@pytest.mark.parametrize("body, status, field", [
    ({"prompt": "x", "n": 0}, 422, "n"),
    ({"prompt": "x", "n": 11}, 422, "n"),
    ({"prompt": "x", "size": "256x256"}, 400, "size"),
    ({"prompt": "x", "colour": "red"}, 422, "colour"),
    ({"n": 1}, 422, "prompt"),
    ({"prompt": "x", "model": "dall-e-3"}, 400, "model"),
    ({"prompt": "x", "top_p": 1.5}, 422, "top_p"),
    ({"prompt": "x", "response_format": "url"}, 422, "response_format"),
])
def test_bad_requests_name_the_field(servers, body, status, field):
    fast, _ = servers
    r = httpx.post(fast.url + "/v1/images/generations", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


def test_bad_json_and_oversized_body(servers):
    fast, _ = servers
    r = httpx.post(fast.url + "/v1/images/generations", content=b'{"prompt": "x",',
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(fast.url + "/v1/images/generations", json={"prompt": "x" * 70000})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]
    assert httpx.get(fast.url + "/health").json() == {"status": "ok"}


def test_auth_is_off_by_default_and_on_with_a_key(servers):
    fast, slow = servers
    assert httpx.get(fast.url + "/v1/models").status_code == 200
    assert httpx.get(slow.url + "/v1/models").status_code == 401
    assert httpx.get(slow.url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = httpx.get(slow.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "slow"
    assert KEY not in slow.log.read_text()


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


def test_admin_teaches_and_forgets_an_entity_over_http(servers, pipe):
    fast, slow = servers
    url = fast.url + "/v1/entities"
    admin = {"Authorization": f"Bearer {ADMIN}"}

    def draw(seed=5):
        r = httpx.post(fast.url + "/v1/images/generations", json={"prompt": "一个火龙果", "seed": seed}, timeout=60)
        assert r.status_code == 200, r.text
        return pixels(r.json()["data"][0]["b64_json"])

    before = draw()
    assert httpx.post(url, json={"triples": DRAGON_FRUIT}).status_code == 401  # the API key is not enough
    assert httpx.post(url, json={"triples": DRAGON_FRUIT}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    off = httpx.post(slow.url + "/v1/entities", json={"triples": DRAGON_FRUIT}, headers={"Authorization": f"Bearer {KEY}"})
    assert off.status_code == 403 and "admin_key" in off.json()["error"]["message"]  # no admin key: editing is off
    bad = httpx.post(url, json={"triples": [["火龙果", "味道", "甜"]]}, headers=admin)
    assert bad.status_code == 422 and "味道" in bad.json()["error"]["message"], bad.text

    added = httpx.post(url, json={"triples": DRAGON_FRUIT}, headers=admin)
    assert added.status_code == 200, added.text
    assert added.json()["added"] == ["火龙果"]
    again = httpx.post(url, json={"triples": DRAGON_FRUIT}, headers=admin)
    assert again.status_code == 422 and "火龙果" in again.json()["error"]["message"]  # already known
    taught = draw()
    assert not np.array_equal(taught, before)  # the prompt now finds the entity and fuses its vector
    local = ArtistPipeline.from_pretrained(MODEL)
    local.add_entities([tuple(t) for t in DRAGON_FRUIT])
    np.testing.assert_array_equal(taught, np.asarray(local("一个火龙果", generator=torch.Generator().manual_seed(5)).images[0]))

    gone = httpx.delete(url + "/火龙果", headers=admin)
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    np.testing.assert_array_equal(draw(), before)
    assert httpx.delete(url + "/火龙果", headers=admin).status_code == 404


def test_web_page_in_a_real_browser(servers, tmp):
    """Debian's Chromium driven by Playwright: Chinese prompt, partial previews, PNGs of the model's size.
    SERVE_SCREENSHOT=docs/serve.png also writes the screenshot the docs show."""
    import shutil

    from playwright.sync_api import sync_playwright

    fast, _ = servers
    executable = shutil.which("chromium")
    assert executable, "Debian's chromium is needed (.ci/run installs it: apt-get install -y chromium)"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(fast.url + "/")
            page.fill("#prompt", "一个红色的圆形")
            page.fill("#n", "3")
            page.fill("#seed", "5")
            page.evaluate("""() => { window.previews = 0; new MutationObserver((ms) => { for (const m of ms)
                if (m.target.dataset && m.target.dataset.partial && !m.target.dataset.final) window.previews++; })
                .observe(document.getElementById("gallery"), {subtree: true, attributes: true,
                         attributeFilter: ["src"]}); }""")
            page.click("#go")
            page.wait_for_function("document.querySelectorAll('#gallery img[data-final]').length === 3",
                                   timeout=30000)
            assert page.evaluate("window.previews") >= 1  # a partial preview was shown before the final image
            assert page.text_content("#error") == ""
            assert "done: 3" in page.text_content("#phase")
            hrefs = page.eval_on_selector_all("#gallery a", "as => as.map((a) => a.href)")
            assert len(hrefs) == 3
            for href in hrefs:
                assert href.startswith("data:image/png;base64,")
                assert pixels(href.split(",", 1)[1]).shape == (32, 32, 3)
            shot = tmp / "serve.png"
            page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("SERVE_SCREENSHOT"):
                shutil.copyfile(shot, os.environ["SERVE_SCREENSHOT"])
            # an error is shown in the page
            page.fill("#prompt", "圆" * 600)
            page.click("#go")
            page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=10000)
            assert "max_prompt_chars=512" in page.text_content("#error")
        finally:
            browser.close()


def test_queue_full_429_disconnect_frees_rows_and_sigterm_drains(servers):
    _, slow = servers
    auth = {"Authorization": f"Bearer {KEY}"}
    url = slow.url + "/v1/images/generations"
    with httpx.Client(timeout=60, headers=auth) as a:
        # 1. a streamed request fills both rows; seen running by its first partial image
        with a.stream("POST", url, json={"prompt": "红色", "n": 2, "stream": True, "partial_images": 3}) as s:
            lines = s.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[6:])["type"] == "image_generation.partial_image"
            assert slow.metric("artist_running_rows") == 2
            # 2. the next request waits (the queue holds one), the one after is refused
            waiting = {}
            t = threading.Thread(target=lambda: waiting.setdefault(
                "r", httpx.post(url, json={"prompt": "蓝色"}, headers=auth, timeout=60)))
            t.start()
            assert until(lambda: slow.metric("artist_queue_depth") == 1)
            r = httpx.post(url, json={"prompt": "绿色"}, headers=auth)
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
        # 3. the streaming client went away: its two rows leave, the waiting request runs alone
        assert until(lambda: slow.metric("artist_running_rows") == 1, timeout=3)
        t.join(60)
        assert waiting["r"].status_code == 200 and len(waiting["r"].json()["data"]) == 1
        # 4. a plain (not streamed) request whose client goes away while it runs: its row leaves as well
        body = json.dumps({"prompt": "黄色"}).encode()
        with socket.create_connection(("127.0.0.1", slow.port)) as conn:
            conn.sendall(b"POST /v1/images/generations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            assert until(lambda: slow.metric("artist_running_rows") == 1)
        assert until(lambda: slow.metric('artist_requests_total{status="disconnected"}') == 1, timeout=3)
        assert until(lambda: slow.metric("artist_running_rows") == 0, timeout=3)
        # 5. SIGTERM while one runs: it still completes, new connections are refused, exit 0
        t = threading.Thread(target=lambda: waiting.update(
            r=httpx.post(url, json={"prompt": "蓝色"}, headers=auth, timeout=60)))
        t.start()
        assert until(lambda: slow.metric("artist_running_rows") == 1)
        slow.proc.send_signal(signal.SIGTERM)
        t.join(60)
        assert waiting["r"].status_code == 200 and len(waiting["r"].json()["data"]) == 1
        assert slow.proc.wait(30) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(slow.url + "/health", timeout=2)
    assert KEY not in slow.log.read_text()


def test_missing_server_packages_name_the_extra(tmp):
    """A real process where fastapi cannot be imported (a shadowing package that refuses)."""
    blocked = tmp / "blocked"
    (blocked / "fastapi").mkdir(parents=True)
    (blocked / "fastapi" / "__init__.py").write_text('raise ImportError("blocked by the test", name="fastapi")\n')
    env = {**os.environ, "PYTHONPATH": f"{blocked}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-m", "appzoo", "--app_name=text2image_artist", "--mode=serve",
                        f"--port={free_port()}"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert 'pip install "easynlp-artist[serve]"' in r.stderr and "fastapi" in r.stderr
