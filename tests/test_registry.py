import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from iap.release.registry import Entry, GateConfig, Registry


def entry(cid: str, loss: float, top1: float = 0.9, base: str = "b1") -> Entry:
    return Entry(checkpoint_id=cid, checkpoint_url=f"/runs/{cid}", base="base", base_fingerprint=base,
                 metrics={"heldout_loss": loss, "retrieval_top1": top1})


def test_gating_promotes_only_improvements_and_records_reasons(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    assert reg.register(entry("a", 0.010)).status == "promoted"
    worse = reg.register(entry("b", 0.020))
    assert worse.status == "candidate" and "does not beat" in worse.reason and "a" in worse.reason
    assert reg.register(entry("c", 0.005, top1=0.1)).status == "rejected"  # below the retrieval floor
    better = reg.register(entry("d", 0.001))
    assert better.status == "promoted"
    assert reg.get("a").status == "candidate" and "superseded by d" in reg.get("a").reason
    assert reg.register(entry("e", 0.5, base="b2")).status == "promoted"  # per base model
    assert [e.checkpoint_id for e in reg.entries() if e.status == "promoted"] == ["d", "e"]
    assert reg.register(entry("x", 1.0), GateConfig(metric="retrieval_top1", lower_is_better=False,
                                                    floor_metric=None)).status == "candidate"


def test_registration_is_idempotent(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    first = reg.register(entry("a", 0.01))
    again = reg.register(entry("a", 0.02))
    assert again == first and len(reg.entries()) == 1


def test_concurrent_registrations_all_land(tmp_path):
    url = str(tmp_path / "reg")
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: Registry(url).register(entry(f"c{i}", 0.1 + i)), range(16)))
    script = ("import sys; from iap.release.registry import Registry, Entry; Registry(sys.argv[1]).register(Entry("
              "checkpoint_id=sys.argv[2], checkpoint_url='x', base='b', base_fingerprint='b1', metrics={}))")
    procs = [subprocess.Popen([sys.executable, "-c", script, url, f"p{i}"]) for i in range(4)]
    assert all(p.wait(60) == 0 for p in procs)
    assert {e.checkpoint_id for e in Registry(url).entries()} == {f"c{i}" for i in range(16)} | {f"p{i}" for i in range(4)}


def test_registry_on_s3(s3):
    reg = Registry("s3://iap-test/registry")
    reg.register(entry("a", 0.01))
    assert Registry("s3://iap-test/registry").get("a").status == "promoted"


@pytest.mark.parametrize(("zh", "en", "status", "reason"), [
    (0.90, 0.93, "promoted", "first checkpoint"),
    (0.80, 0.82, "rejected", "below the semantic floor"),
    (0.86, 0.95, "rejected", "more than 0.05 below the English"),
])
def test_semantic_gate_on_generated_images(tmp_path, zh, en, status, reason):
    gate = GateConfig(floor=0.5, semantic_metric="colour_accuracy", semantic_floor=0.85, semantic_gap=0.05)
    metrics = {"heldout_loss": 0.1, "retrieval_top1": 0.9, "colour_accuracy": zh, "teacher_en_colour_accuracy": en}
    entry = Registry(str(tmp_path / "reg")).register(
        Entry(checkpoint_id="c1", checkpoint_url="x", base="b", base_fingerprint="f", metrics=metrics), gate)
    assert entry.status == status and reason in entry.reason


def _race(url: str, n: int = 20) -> Registry:
    """n candidates of one base, then n threads at once: register n better ones, and promote each by hand."""
    import threading
    reg = Registry(url)
    for i in range(n):
        reg.register(entry(f"hand{i}", 1.0 + i, top1=0.0))  # rejected: below the floor
    start = threading.Barrier(2 * n)

    def go(i: int) -> None:
        start.wait()
        if i < n:
            Registry(url).register(entry(f"auto{i}", 0.5 - 0.01 * i))
        else:
            Registry(url).promote(f"hand{i - n}")
    with ThreadPoolExecutor(2 * n) as pool:
        list(pool.map(go, range(2 * n)))
    return reg


@pytest.mark.parametrize("trial", range(3))
def test_concurrent_promotions_leave_exactly_one_promoted(tmp_path, trial):
    reg = _race(str(tmp_path / "reg"))
    promoted = [e.checkpoint_id for e in reg.entries() if e.status == "promoted"]
    assert len(promoted) == 1, promoted
    assert not list((tmp_path / "reg").rglob("*.lock"))


def test_concurrent_promotions_on_s3_leave_exactly_one_promoted(s3):
    reg = _race("s3://iap-test/registry", n=4)
    assert [e.status for e in reg.entries()].count("promoted") == 1
