"""VQGAN decoders in child processes (serve/decoders.py): real child processes, real signals."""

import copy
import logging
import os
import signal
import time

import pytest
import torch
from helpers.server_process import until

from easynlp_artist.models.stage1.vqgan import VQGAN, VQGANConfig
from easynlp_artist.pipeline import ArtistPipeline
from easynlp_artist.serve.decoders import (
    DecoderProcessError,
    DecoderStartError,
    ProcessDecoder,
    decode_pngs,
    shared_memory_shortfall,
)
from easynlp_artist.serve.engine import Engine, EngineConfig, ImageRequest


@pytest.fixture(scope="module")
def pipe():
    return ArtistPipeline.from_pretrained("artist-shapes-tiny-zh")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (ended, not yet reaped by its parent, the forkserver) has ended too
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_decoder_process_gives_this_processs_pngs_and_survives_a_bad_request_and_signals(pipe):
    vqgan = pipe.model.vqgan
    codes = torch.randint(vqgan.config.n_embed, (3, pipe.model.config.gpt.img_len), generator=torch.Generator().manual_seed(0))
    decoder = ProcessDecoder(vqgan, torch.get_num_threads(), "test-decoder")
    try:
        assert decoder(codes) == decode_pngs(vqgan, codes)  # the same weights, kernels and threads: the same bytes
        pid = decoder.pid
        with pytest.raises(DecoderProcessError, match="test-decoder: .*Error"):  # codes past the codebook
            decoder(torch.full((1, codes.shape[1]), vqgan.config.n_embed + 5))
        # a terminal's Ctrl-C and a group-wide SIGTERM reach the child too: it goes on (the server stops it)
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        assert decoder(codes[:1]) == decode_pngs(vqgan, codes[:1])
        assert decoder.pid == pid and _alive(pid)
    finally:
        decoder.close()
    assert until(lambda: not _alive(pid))


def test_a_vqgan_of_more_tensors_than_a_process_starts_with_decodes_in_its_child():
    """A process starts with at most 256 file descriptors, one per shared tensor; the ARTIST-base
    VQGAN has 343 (its server failed to load with the model passed at the child's start)."""
    torch.manual_seed(0)
    vqgan = VQGAN(VQGANConfig(resolution=16, ch=8, ch_mult=(1, 1, 2), num_res_blocks=6, attn_resolutions=(),
                              z_channels=8, embed_dim=8, n_embed=32, norm_groups=4)).eval()
    assert len(vqgan.state_dict()) > 256
    codes = torch.randint(32, (2, 16), generator=torch.Generator().manual_seed(1))
    decoder = ProcessDecoder(vqgan, 1, "many-tensors")
    try:
        assert decoder(codes) == decode_pngs(vqgan, codes)
    finally:
        decoder.close()


def test_a_killed_decoder_process_fails_only_its_request_and_is_started_again(pipe, caplog):
    """SIGKILL to the engine's decoder process between requests, then during one: the request being
    decoded fails naming the process, every other request gets its images, from a new process."""
    engine = Engine(pipe, EngineConfig(idle_decoders=0, decode_processes=True))
    try:
        (process,) = engine.decode_processes
        first = engine.submit(ImageRequest("一个红色的圆形", seed=1))
        pngs = first.wait(60)
        assert pngs == decode_pngs(pipe.model.vqgan, first.codes)
        old = process.pid
        os.kill(old, signal.SIGKILL)
        assert until(lambda: not _alive(old))
        with caplog.at_level(logging.WARNING, logger="easynlp_artist.serve.decoders"):
            second = engine.submit(ImageRequest("蓝色的正方形", seed=2))
            assert second.wait(60) == decode_pngs(pipe.model.vqgan, second.codes)
        assert process.pid != old and f"pid {old}) ended with exit code -9; starting it again" in caplog.text
        # killed while it decodes: that request fails (its error names the process), the next one is served
        os.kill(process.pid, signal.SIGSTOP)  # the child takes the codes but answers nothing
        third = engine.submit(ImageRequest("绿色三角形", seed=3))
        assert until(lambda: third.drawn == engine.img_len and not engine._decodes)  # handed to the decoder
        time.sleep(0.3)  # the decoder thread has sent the codes and waits for the answer
        os.kill(process.pid, signal.SIGKILL)
        with pytest.raises(DecoderProcessError, match="ended with exit code -9"):
            third.wait(60)
        fourth = engine.submit(ImageRequest("一个黄色的圆", seed=4))
        assert fourth.wait(60) == decode_pngs(pipe.model.vqgan, fourth.codes)
        pids = [process.pid]
    finally:
        engine.close()
    assert until(lambda: not any(_alive(p) for p in pids))  # close() ends the children


class ChildRefusingVQGAN(VQGAN):
    """Unpickles in this process only: its decoder process ends before it is ready (as one whose
    parent's unguarded main script is run again in the child would)."""

    parent = None  # the test's process id, set there only (a child imports this module afresh)

    def __setstate__(self, state):
        if os.getpid() != ChildRefusingVQGAN.parent:
            raise RuntimeError("refused in the child")
        super().__setstate__(state)


def test_a_decoder_process_that_cannot_start_hands_its_requests_to_its_thread(pipe, caplog):
    ChildRefusingVQGAN.parent = os.getpid()
    vqgan = ChildRefusingVQGAN(pipe.model.vqgan.config)
    vqgan.load_state_dict(pipe.model.vqgan.state_dict())
    vqgan.eval()  # as the pipeline's (a VQGAN in training mode decodes ~1e-5 apart: a pixel may round differently)
    decoder = ProcessDecoder(vqgan, 1, "refused")
    with pytest.raises(DecoderStartError, match="before it was ready"):
        decoder(torch.zeros(1, 64, dtype=torch.long))
    decoder.close()
    model = copy.copy(pipe.model)  # the same model with this VQGAN
    model._modules = {**pipe.model._modules, "vqgan": vqgan}
    shim = copy.copy(pipe)
    shim.model = model
    engine = Engine(shim, EngineConfig(idle_decoders=0, decode_processes=True))
    try:
        with caplog.at_level(logging.ERROR, logger="easynlp_artist.serve.engine"):
            job = engine.submit(ImageRequest("一个红色的圆形", seed=1))
            assert job.wait(60) == decode_pngs(pipe.model.vqgan, job.codes)  # decoded here, not lost
            again = engine.submit(ImageRequest("蓝色的正方形", seed=2))
            assert again.wait(60) == decode_pngs(pipe.model.vqgan, again.codes)
        assert "before it was ready" in caplog.text and "if __name__" in caplog.text
        assert caplog.text.count("decodes in the server's process from now on") == 1
    finally:
        engine.close()


def test_too_little_shared_memory_keeps_decodes_in_the_server(pipe, monkeypatch, caplog):
    """A container's /dev/shm (64 MB by default in Docker) smaller than the VQGAN: by default the
    engine decodes in its own process, and asking for child processes names the shortfall. The
    folder's free space is faked (os.statvfs): a small /dev/shm cannot be mounted without privileges."""
    vqgan = copy.deepcopy(pipe.model.vqgan)  # not yet shared
    need = sum(t.numel() * t.element_size() for t in vqgan.state_dict().values())
    real = os.statvfs

    def small(path):
        st = real(path)
        if path != "/dev/shm":
            return st
        return os.statvfs_result((st.f_bsize, 4096, st.f_blocks, 1, 1, *tuple(st)[5:]))

    monkeypatch.setattr(os, "statvfs", small)
    assert "/dev/shm has 0 MiB free" in shared_memory_shortfall(vqgan)
    assert f"needs {need / 2**20:.0f} MiB" in shared_memory_shortfall(vqgan)
    model = copy.copy(pipe.model)
    model._modules = {**pipe.model._modules, "vqgan": vqgan}
    shim = copy.copy(pipe)
    shim.model = model
    with pytest.raises(ValueError, match=r"decode_processes=true: /dev/shm has 0 MiB free.*--shm-size"):
        Engine(shim, EngineConfig(decode_processes=True))
    with caplog.at_level(logging.WARNING, logger="easynlp_artist.serve.engine"):
        engine = Engine(shim, EngineConfig(idle_decoders=0))
    try:
        assert engine.decode_processes == [None] and "decoding in the server's process: /dev/shm" in caplog.text
        job = engine.submit(ImageRequest("一个红色的圆形", seed=1))
        assert job.wait(60) == decode_pngs(vqgan, job.codes)
        assert not any(t.is_shared() for t in vqgan.state_dict().values())  # nothing was moved there
    finally:
        engine.close()
