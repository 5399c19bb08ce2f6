"""GPU placement, checked on this CPU build with fake CUDA tensors (tests/fake_cuda.py): every stage's
frozen side is placed by the function its task uses, and one step of it runs with every tensor on the
device (a CPU tensor meeting a CUDA one raises). Frozen parts are in bf16, so casts are checked too."""

from __future__ import annotations

import pytest
import torch

from iap.cache.info import CacheConfig
from iap.cache.reader import CacheSource
from iap.cache.writer import compute_batch, precompute
from iap.config import TrainConfig
from iap.evaluation.heldout import AttentionFeatures, _pipeline
from iap.objective import EmptyPrompt, Teacher, make_objective
from iap.system.runtime import place
from iap.training.assembly import assemble, load
from iap.training.loop import batch_loss
from tests.fake_cuda import fake_cuda, on_cuda

OBJECTIVES = ["pivot", "separate", "embedding-mse", "eps-distill"]
SOURCES = ["live", "recompute", "store", "store-sampled"]


@pytest.fixture(scope="module")
def caches(local_run, tiny_dir, tmp_path_factory):
    from iap.models import load_base
    _, _, snapshot = local_run
    base, out = load_base(tiny_dir / "base"), str(tmp_path_factory.mktemp("caches"))
    return {policy: precompute(snapshot, lambda: base, base.fingerprint, out,
                               CacheConfig(policy=policy, positions=8, splits=["train"]), log=lambda _: None)
            for policy in SOURCES[1:]}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_a_training_step_of_every_objective_and_source_runs_on_cuda(objective, source, caches, base, encoder,
                                                                   small_source, tiny_dir):
    cfg = TrainConfig(objective=objective)
    g = torch.Generator().manual_seed(0)
    if source == "live":
        batch, empty = small_source.batch(torch.arange(4), g), EmptyPrompt.pair(base.encode_english([""]), encoder)
    else:  # read from disk as the train task does (the batch too: host work), then placed on the device
        loaded = load(caches[source], cfg, str(tiny_dir / "base"), str(tiny_dir / "zh_encoder"))
        batch = CacheSource(caches[source], "train", loaded.encoder.tokenize).batch(torch.arange(4), g)
    with fake_cuda() as runtime:
        if source == "live":
            objective_fn = make_objective(objective, Teacher(base.to(runtime)))
            model = encoder
        else:
            run = assemble(loaded, cfg, runtime, lambda: base.to(runtime))
            objective_fn, empty, model = run.objective, run.empty, run.encoder
        model.requires_grad_(False).to(runtime.device)  # as accelerator.prepare moves the trained encoder
        with torch.no_grad():
            loss = batch_loss(model, objective_fn, batch, runtime.device, empty, [1, 3])
    assert on_cuda(loss)


@pytest.mark.parametrize("policy", ["recompute", "store-sampled"])
def test_a_precompute_batch_runs_on_cuda_and_lands_in_host_memory(policy, base, small_source):
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    with fake_cuda() as runtime:
        base.to(runtime)
        teacher = Teacher(base) if policy != "recompute" else None
        tensors = compute_batch(base, teacher, pixels, ["a red circle", "a blue square"], ["k0", "k1"],
                                CacheConfig(policy=policy, positions=8))
    assert {t.device.type for t in tensors.values()} == {"cpu"}
    assert any(n.startswith("q.") for n in tensors) == (policy != "recompute")


def test_a_retrieval_batch_runs_on_cuda(base, small_source):
    latents, states = small_source.latents[:2], small_source.en_states[:6]  # host tensors, as evaluation has them
    with fake_cuda() as runtime:
        base.to(runtime)
        features = AttentionFeatures(base, Teacher(base), latents, positions=4)
        distances = features.distances(states[:3], states[3:])
    assert on_cuda(distances) and distances.shape == (3, 3)


def test_a_generation_step_runs_on_cuda(base, encoder):
    """The pipeline evaluation builds, up to one guided UNet call: prompt encoding with the Chinese encoder
    and the UNet on the device in one dtype. (The sampler's own step compares timesteps on the host, so
    it cannot run on fake tensors; it is diffusers' code, not placement.)"""
    with fake_cuda() as runtime:
        base.to(runtime)
        pipe = _pipeline(base, place(encoder.eval().requires_grad_(False), runtime))  # frozen, as _eval_encoder
        device = pipe._execution_device
        positive, negative = pipe.encode_prompt(["蓝色背景上的一个大红色圆形"], device, 1, True)
        latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)).to(device, positive.dtype)
        eps = pipe.unet(torch.cat([latents] * 2), torch.tensor(500, device=device),
                        encoder_hidden_states=torch.cat([negative, positive])).sample
    assert device == runtime.device and on_cuda(eps) and eps.dtype == runtime.dtype


def test_without_placement_the_check_fails(base, encoder, small_source):
    """The check can fail: the frozen side left on the CPU meets the batch on CUDA."""
    batch = small_source.batch(torch.arange(4), torch.Generator().manual_seed(0))
    with fake_cuda() as runtime, pytest.raises(RuntimeError, match="cuda|device"):
        encoder.requires_grad_(False).to(runtime.device)
        with torch.no_grad():
            batch_loss(encoder, make_objective("pivot", Teacher(base)), batch, runtime.device)


@pytest.fixture
def two_gpus(monkeypatch):
    """torch believes in 2 GPUs (what detect reads); nothing is allocated on them."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    for name in ("LOCAL_RANK", "IAP_GPU", "IAP_DEVICE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_process_takes_its_launchers_rank_else_its_task_runners_gpu(two_gpus):
    from iap.errors import IapError
    from iap.system.runtime import detect
    assert detect().device == torch.device("cuda", 0)
    two_gpus.setenv("IAP_GPU", "1")  # a process-pool or local Dask worker
    assert detect("bf16").device == torch.device("cuda", 1)
    two_gpus.setenv("LOCAL_RANK", "0")  # torchrun / accelerate launch decides first
    assert detect().device == torch.device("cuda", 0)
    two_gpus.setenv("LOCAL_RANK", "2")
    with pytest.raises(IapError, match="GPU 2, but only 2 are visible"):
        detect()
    two_gpus.setenv("LOCAL_RANK", "one")
    with pytest.raises(IapError, match="LOCAL_RANK='one'"):
        detect()
    two_gpus.setenv("IAP_DEVICE", "cpu")
    assert detect().device == torch.device("cpu")


def test_process_pool_workers_claim_distinct_gpus_while_they_live(tmp_path, monkeypatch):
    """Each worker takes the first GPU no living worker holds; with every GPU held, it shares one."""
    import os
    import tempfile

    import tasks.runners as runners
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(runners, "_CLAIMS", [])
    monkeypatch.setenv("IAP_GPU", "")  # restored after the claims below set it
    taken = []
    for _ in range(3):
        runners.claim_gpu(2)
        taken.append(os.environ["IAP_GPU"])
    assert taken == ["0", "1", str(os.getpid() % 2)]
    runners._CLAIMS[0].close()  # the worker on GPU 0 exits
    runners.claim_gpu(2)
    assert os.environ["IAP_GPU"] == "0"
    for handle in runners._CLAIMS:
        handle.close()
