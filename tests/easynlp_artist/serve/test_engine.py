"""The continuous-batching engine on the embedded default model (real model, real threads)."""

import copy
import threading
import time

import pytest
import torch

from easynlp_artist.models.stage2 import decoding
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.serve.engine import (
    Cancelled,
    Engine,
    EngineConfig,
    ImageRequest,
    QueueFull,
    RequestTimeout,
    RowCache,
)

PROMPTS = ["一个红色的圆形", "蓝色的正方形", "绿色三角形", "一个黄色的圆"]


@pytest.fixture(scope="module")
def pipe():
    return ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_cache_rows_at_different_positions_match_separate_caches(pipe, dtype):
    """Rows at different positions in one step give each row's logits of its own plain cache (in
    bf16 too, where both caches keep fp32 keys and values, as decoding.cache_dtype says)."""
    gpt = copy.deepcopy(pipe.model.gpt).to(dtype)
    ids, know = pipe.encode_prompts(PROMPTS[:3])
    know = know.to("cpu", dtype)
    torch.manual_seed(0)
    extra = [0, 3, 7]  # row i has run `extra[i]` image tokens more than the prefill
    tokens = torch.randint(0, gpt.config.img_vocab_size, (3, 8))
    cache = RowCache(gpt, 4)
    expected = []
    with torch.no_grad():
        for r in range(3):  # the reference: each row alone, in decoding.py's own cache
            ref = decoding.new_cache(gpt, 1)
            gpt.prefill(ids[r : r + 1], know.index_select(torch.tensor([r])), ref)
            for t in range(extra[r]):
                gpt.step(tokens[r : r + 1, t : t + 1], ref)
            expected.append(gpt.step(tokens[r : r + 1, extra[r] : extra[r] + 1], ref))
            cache.window = (r, r + 1)
            gpt.prefill(ids[r : r + 1], know.index_select(torch.tensor([r])), cache)
            for t in range(extra[r]):
                gpt.step(tokens[r : r + 1, t : t + 1], cache)
        cache.window = (0, 3)
        assert cache.lengths[:3] == [gpt.config.text_len + e for e in extra]
        fed = torch.stack([tokens[r, extra[r]] for r in range(3)])[:, None]
        got = gpt.step(fed, cache)
    assert cache.k.dtype == ref.k.dtype == torch.float32
    tol = 1e-5 if dtype == torch.float32 else 0.05  # bf16: products in another order (eps 2**-8)
    torch.testing.assert_close(got.float(), torch.cat(expected).float(), rtol=tol, atol=tol)
    assert cache.lengths[:3] == [gpt.config.text_len + e + 1 for e in extra]


def test_busy_batch_gives_each_seeded_request_the_pipelines_codes(pipe):
    """Requests joining a running batch at different steps, with their own settings, each get the
    codes the pipeline gives for the same prompt, seed and settings."""
    engine = Engine(pipe, EngineConfig(max_batch_rows=24))
    try:
        requests = []
        for i in range(8):
            sampling = pipe.sampling.updated(guidance_scale=(1.0, 3.0)[i % 2], top_k=(None, 16)[i % 3 == 0],
                                             temperature=(1.0, 0.8)[i % 4 == 1])
            requests.append(ImageRequest(PROMPTS[i % 4], n=1 + i % 3, sampling=sampling, seed=100 + i))
        jobs = []
        for r in requests:
            jobs.append(engine.submit(r))
            time.sleep(0.002)  # later requests join a batch already running
        for job in jobs:
            job.wait(60)
        assert engine.peak_requests >= 3  # they did share the batch
        for r, job in zip(requests, jobs, strict=True):
            s = r.sampling
            out = pipe(r.prompt, num_images_per_prompt=r.n, generator=torch.Generator().manual_seed(r.seed),
                       top_k=s.top_k, top_p=s.top_p, temperature=s.temperature, guidance_scale=s.guidance_scale)
            assert torch.equal(job.codes.cpu(), out.codes.cpu()), r
            assert len(job.result) == r.n and all(png.startswith(b"\x89PNG") for png in job.result)
    finally:
        engine.close()


def test_partial_images_queue_full_and_cancel(pipe):
    engine = Engine(pipe, EngineConfig(max_batch_rows=2, max_queue=1))
    try:
        events = []
        seen_partial, proceed = threading.Event(), threading.Event()

        def listener(kind, *payload):  # runs in the scheduler thread: holding it holds the engine
            events.append(kind)
            if kind == "partial" and not seen_partial.is_set():
                seen_partial.set()
                proceed.wait(30)

        running = engine.submit(ImageRequest("红色的圆形", n=2, partial_images=2, seed=1), listener)
        assert seen_partial.wait(30)
        waiting = engine.submit(ImageRequest("蓝色的正方形", seed=2))  # the batch is full: it waits
        with pytest.raises(QueueFull, match="max_queue=1"):
            engine.submit(ImageRequest("绿色三角形", seed=3))
        running.cancel()
        proceed.set()
        with pytest.raises(Cancelled):
            running.wait(30)
        assert len(waiting.wait(30)) == 1  # the freed slots served the waiting request
        assert events.count("partial") >= 1 and events[-1] == "error"
        with pytest.raises(ValueError, match="max_batch_rows=2"):
            engine.submit(ImageRequest("x", n=3))
    finally:
        engine.close()


def test_a_request_past_its_timeout_leaves_at_the_next_step_boundary(pipe):
    """The scheduler is held (a slow step) past a running request's deadline: the request fails at the
    step boundary right after, naming request_timeout, with its rows already freed; the request
    sharing the batch runs on to the pipeline's codes. One waiting past its deadline fails too."""
    engine = Engine(pipe, EngineConfig(max_batch_rows=3))
    try:
        seen = {}

        def listener(kind, *payload):  # the scheduler thread: holding it holds every row
            if kind == "partial":
                seen["drawn"], seen["steps"] = late.drawn, engine.steps
                time.sleep(max(0.0, late.deadline - time.monotonic()) + 0.05)
            elif kind == "error":
                seen["rows"], seen["steps_at_error"] = engine._rows, engine.steps

        other = engine.submit(ImageRequest(PROMPTS[1], n=2, sampling=pipe.sampling, seed=4))
        late = engine.submit(ImageRequest(PROMPTS[0], seed=3, partial_images=1, timeout=1.0), listener)
        with pytest.raises(RequestTimeout, match=r"request_timeout=1 s \(32 of 64 codes drawn\)"):
            late.wait(30)
        assert seen["drawn"] == 32 and seen["steps_at_error"] == seen["steps"]  # no step ran after the deadline
        assert seen["rows"] == 2 and late.slots == []  # only the other request's rows are left
        out = pipe(PROMPTS[1], num_images_per_prompt=2, generator=torch.Generator().manual_seed(4))
        other.wait(30)
        assert torch.equal(other.codes.cpu(), out.codes.cpu())

        held = engine.submit(ImageRequest(PROMPTS[2], n=3, seed=5))  # takes every row
        queued = engine.submit(ImageRequest(PROMPTS[3], seed=6, timeout=0.05))
        with pytest.raises(RequestTimeout, match=r"request_timeout=0.05 s \(still waiting\)"):
            queued.wait(30)
        assert len(held.wait(30)) == 3
    finally:
        engine.close()


def test_jacobi_is_refused_and_int8_weights_are_honoured(pipe):
    """method=jacobi: the engine refuses to start (and a request asking for it is refused), naming the
    setting. weights=int8: the rows are decoded through decoding.INT8, so a seeded request gets the
    codes of the pipeline's int8 sampler, which are not those of the model's own weights."""
    defaults = pipe.sampling
    try:
        pipe.sampling = defaults.updated(method="jacobi")
        with pytest.raises(ValueError, match="method='jacobi' is not served.*method=sequential"):
            Engine(pipe)
        pipe.sampling = defaults
        engine = Engine(pipe, EngineConfig(max_batch_rows=4))
        try:
            with pytest.raises(ValueError, match="method='jacobi'"):
                engine.submit(ImageRequest("x", sampling=defaults.updated(method="jacobi")))
            with pytest.raises(ValueError, match="weights='int8'.*weights='model'"):
                engine.submit(ImageRequest("x", sampling=defaults.updated(weights="int8")))
        finally:
            engine.close()

        int8 = defaults.updated(weights="int8")
        pipe.sampling = int8
        engine = Engine(pipe, EngineConfig(max_batch_rows=4))
        try:
            jobs = [engine.submit(ImageRequest(p, n=2, sampling=int8, seed=11 + i)) for i, p in enumerate(PROMPTS[:2])]
            for job in jobs:
                job.wait(60)
        finally:
            engine.close()
        assert engine.peak_requests == 2
        for i, (p, job) in enumerate(zip(PROMPTS[:2], jobs, strict=True)):
            quantised = pipe(p, num_images_per_prompt=2, generator=torch.Generator().manual_seed(11 + i),
                             sampling=int8).codes
            assert torch.equal(job.codes.cpu(), quantised.cpu()), p
            full = pipe(p, num_images_per_prompt=2, generator=torch.Generator().manual_seed(11 + i),
                        sampling=defaults).codes
            assert not torch.equal(job.codes.cpu(), full.cpu()), p  # int8 was used: other codes
    finally:
        pipe.sampling = defaults


def test_the_batch_goes_on_while_the_decoder_works(pipe):
    """A finished request's VQGAN decode does not hold the batch: with the decoder thread held (inside
    the first request's "done" listener), a second request is prefilled and drawn to its last code;
    released, both finish, the second with the pipeline's codes."""
    engine = Engine(pipe, EngineConfig(max_batch_rows=4, idle_decoders=0))  # the second waits for the first
    held, release = threading.Event(), threading.Event()

    def hold(kind, *payload):
        if kind == "done":
            held.set()
            release.wait(60)

    try:
        first = engine.submit(ImageRequest(PROMPTS[0], seed=1), hold)
        assert held.wait(60)
        second = engine.submit(ImageRequest(PROMPTS[1], seed=2, sampling=pipe.sampling))
        deadline = time.monotonic() + 60
        while second.drawn < engine.img_len and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.drawn == engine.img_len and not second.finished.is_set()
        assert engine.stats()["decoding"] == 2 and not engine.idle
        release.set()
        assert len(first.wait(60)) == 1 and len(second.wait(60)) == 1
        out = pipe(PROMPTS[1], generator=torch.Generator().manual_seed(2))
        assert torch.equal(second.codes.cpu(), out.codes.cpu())
    finally:
        release.set()
        engine.close()
    assert engine.stats()["decoding"] == 0


def test_an_idle_decoder_decodes_only_while_no_row_is_sampled(pipe):
    """With one idle decoder: the first decoder is held on request A; B finishes while C waits for its
    slot (one row), so B is decoded only once C has left the batch, and by the idle decoder."""
    engine = Engine(pipe, EngineConfig(max_batch_rows=1, idle_decoders=1))
    jobs, heard, release, a_held = {}, [], threading.Event(), threading.Event()

    def listener(name):
        def hear(kind, *payload):
            if kind == "done":
                heard.append((name, threading.current_thread().name, jobs["c"].drawn))
                if name == "a":
                    a_held.set()
                    release.wait(60)
        return hear

    try:
        for name, prompt in zip("abc", PROMPTS, strict=False):
            jobs[name] = engine.submit(ImageRequest(prompt, seed=ord(name)), listener(name))
        assert a_held.wait(60)
        assert jobs["b"].finished.wait(60) and jobs["c"].finished.wait(60)  # while the first decoder is held
        assert [h[:2] for h in heard[1:]] == [("b", "artist-decoder-1"), ("c", "artist-decoder-1")]
        assert heard[1][2] == engine.img_len  # B's decode ended after C's last code: it began after it
        release.set()
        assert all(len(job.wait(60)) == 1 for job in jobs.values())
    finally:
        release.set()
        engine.close()


def test_requests_joining_together_share_one_prefill_and_keep_their_codes(pipe):
    """Requests that wait while the scheduler is busy join at one step boundary: one prefill per
    input shape (the number of entity slots), and each request still gets the pipeline's codes."""
    engine = Engine(pipe, EngineConfig(max_batch_rows=32, idle_decoders=0))
    held, release = threading.Event(), threading.Event()

    def hold(kind, *payload):
        if kind == "partial":  # the scheduler thread calls this: it stops until released
            held.set()
            release.wait(60)

    prompts = ["一个红色的圆形", "白色背景上的番茄", "一个绿色的正方形", "紫色的葡萄", "一个橙色的篮球"]
    shapes = [pipe.encode_prompts([p])[1].mask.shape[1] for p in prompts]
    assert max(shapes.count(e) for e in set(shapes)) >= 2  # some share a prefill
    try:
        first = engine.submit(ImageRequest(PROMPTS[0], seed=1, partial_images=1), hold)
        assert held.wait(60)
        requests = [ImageRequest(p, n=1 + i % 2, seed=20 + i, sampling=pipe.sampling.updated(
            guidance_scale=(1.0, 3.0)[i % 2 == 1], top_k=(None, 16)[i == 2])) for i, p in enumerate(prompts)]
        jobs = [engine.submit(r) for r in requests]
        release.set()
        first.wait(60)
        for job in jobs:
            job.wait(60)
        assert engine.prefills == 1 + len(set(shapes))
        for r, job in zip(requests, jobs, strict=True):
            s = r.sampling
            out = pipe(r.prompt, num_images_per_prompt=r.n, generator=torch.Generator().manual_seed(r.seed),
                       top_k=s.top_k, top_p=s.top_p, temperature=s.temperature, guidance_scale=s.guidance_scale)
            assert torch.equal(job.codes.cpu(), out.codes.cpu()), r
    finally:
        release.set()
        engine.close()
