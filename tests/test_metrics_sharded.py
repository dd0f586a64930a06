"""metrics.fd under torchrun: two forked CPU ranks in one gloo group, a stub feature network.

sharded=True: each rank reads every other batch, the moments are all_reduced, and both ranks get
the value of one process over the whole sets. sharded=False inside the same group: each rank
reads everything and nothing is reduced (a stray all_reduce would double every count)."""
import datetime
import multiprocessing as mp
import traceback

import pytest
import torch
import torch.distributed as dist

from lab import metrics
from lab import feature_nets
from stand_ins import PooledConv

CTX = mp.get_context("fork")  # the children inherit the stub network and the monkeypatches


def _rank(rank, init_file, path, a, b, out):
    torch.set_num_threads(1)
    try:  # a failure is reported, not left for the parent to wait out; a lost peer times out in 20 s
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                                timeout=datetime.timedelta(seconds=20))
        stub = metrics._NETS[f"inception-{path}"]
        stub.seen = []
        sharded = metrics.fd(a, b, features="inception", inception_path=path, batch_size=2, sharded=True)
        seen_sharded, stub.seen = stub.seen, []
        whole = metrics.fd(a, b, features="inception", inception_path=path, batch_size=2)
        out.put((rank, sharded, seen_sharded, whole, stub.seen))
    except BaseException:  # noqa: BLE001 (reported to the parent)
        out.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_sharded_fd_on_two_gloo_ranks_equals_one_process(monkeypatch, tmp_path):
    stub = PooledConv(5, seed=4).eval()  # 5-d features
    stub.seen = []
    path = str(tmp_path / "stub_inception.pth")
    monkeypatch.setattr(feature_nets, "inception_fid", lambda p: stub)
    monkeypatch.setitem(metrics.FEATURE_DIMS, "inception", 5)
    monkeypatch.setitem(metrics._NETS, f"inception-{path}", stub)
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(9, 3, 4, 4, generator=g), torch.rand(7, 3, 4, 4, generator=g) ** 2
    with torch.no_grad():
        ref = metrics.fd_from_features(stub(a).flatten(1), stub(b).flatten(1))
    assert metrics.fd(a, b, features="inception", inception_path=path, batch_size=2, sharded=True)["value"] == \
        pytest.approx(ref["value"], rel=1e-9)  # no process group: sharded=True is one process over everything

    out = CTX.Queue()
    procs = [CTX.Process(target=_rank, args=(r, str(tmp_path / "init"), path, a, b, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        results = sorted((out.get(timeout=60) for _ in procs), key=lambda r: r[0])
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    assert [r[1] for r in results if r[1] == "error"] == [], [r[2] for r in results]
    assert [p.exitcode for p in procs] == [0, 0]
    # batches of 2: a = 9 images in batches [0,1] [2,3] [4,5] [6,7] [8]; b = 7 in [0,1] [2,3] [4,5] [6]
    assert [r[2] for r in results] == [[2, 2, 1, 2, 2], [2, 2, 2, 1]]  # rank 0: batches 0, 2, 4 of a; 0, 2 of b
    for rank, sharded, _, whole, seen_whole in results:
        for got in (sharded, whole):
            assert (got["name"], got["n_a"], got["n_b"], got["dim"]) == ("FID", 9, 7, 5)
            assert got["value"] == pytest.approx(ref["value"], rel=1e-9)
        assert seen_whole == [2, 2, 2, 2, 1, 2, 2, 2, 1]  # unsharded: every batch on every rank
