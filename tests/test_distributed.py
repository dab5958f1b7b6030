"""Several processes (gloo on the CPU) train the released global batch with the gradients of one process; the
global batch's shares; checkpoints and RNG states from bigger GPU machines load on smaller ones."""
from __future__ import annotations

import io
import multiprocessing
import os
import time
from contextlib import nullcontext
from pathlib import Path

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DistributedSampler

from data.registry import get_setting
from engine import train
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo, GlobalBatchSampler, rank_share

SETTINGS = ("sketchy/zeroshot1", "tuberlin/zeroshot", "quickdraw/zeroshot")
IMG = 32
TIMEOUT_S = 240            # a hang fails the test instead of blocking CI


# ----------------------------------------------------------------------------------------------- the global batch
def global_batch(setting_name: str, batch_size: int | None = None):
    """The setting's released global batch (or one of ``batch_size``: random images, labels, cid-mask rows) and one
    prior-noise row per image."""
    setting = get_setting(setting_name)
    n_sk, n_ph = setting.split_batch(batch_size or setting.batch_size)
    g = torch.Generator().manual_seed(len(setting_name))
    n = n_sk + n_ph
    x = torch.randn(n, 3, IMG, IMG, generator=g)
    y = torch.randint(0, setting.n_seen, (n,), generator=g)
    is_photo = torch.cat([torch.zeros(n_sk), torch.ones(n_ph)])
    cid_mask = torch.rand(setting.n_seen, 1000, generator=g) if setting.use_cid_mask else None
    noise = torch.randn(n, 320, generator=g)          # convnextv2_atto's feature width
    return setting, n_sk, n_ph, x, y, is_photo, cid_mask, noise


def step_gradients(setting_name: str, info: DistInfo, batch_size: int | None = None) -> dict[str, torch.Tensor]:
    """One bidirectional step of the trainer's objective on this process's share of the global batch: the
    student's (DDP, built as the trainer builds it) and the teacher head's gradients after the trainer's
    reductions, and the logged terms."""
    from losses import SBKAObjective
    from models import build_teacher

    setting, n_sk, n_ph, x, y, is_photo, cid_mask, noise = global_batch(setting_name, batch_size)
    sk, ph = rank_share(n_sk, info.world_size, info.rank), rank_share(n_ph, info.world_size, info.rank)
    ids = torch.cat([torch.arange(n_sk)[sk], n_sk + torch.arange(n_ph)[ph]])
    ids = ids[torch.randperm(len(ids), generator=torch.Generator().manual_seed(info.rank))]   # shuffled, as batches()
    share = train.BatchShare(images=n_sk + n_ph, photos=n_ph, world_size=info.world_size)

    real_randn = torch.randn

    def noise_of_these_images(shape, **kw):       # the prior's z: one fixed row per image, whichever process has it
        assert tuple(shape) == (len(ids), noise.shape[1])
        return noise[ids].to(kw.get("dtype") or torch.float32)

    student = train.initial_student("convnextv2_atto", setting.n_seen, None, 0.02, seed=0)
    torch.manual_seed(1)
    teacher = build_teacher("convnextv2_atto", None).eval()
    model = train.Trainer.distributed(SimpleNamespace(device=torch.device("cpu")), student) if info.enabled else student
    torch.randn = noise_of_these_images
    try:
        total, terms = train.step_losses(model, teacher, SBKAObjective(), x[ids], y[ids], is_photo[ids], cid_mask,
                                         True, nullcontext(), share)
    finally:
        torch.randn = real_randn
    total.backward()
    train.average_gradients(teacher.head_parameters(), info)
    logged = torch.stack([v.detach() for v in terms.values()])
    logged = train.all_reduce_sum(logged, info) / info.world_size
    grads = {f"student.{k}": p.grad for k, p in student.named_parameters()}
    grads |= {f"teacher.{k}": p.grad for k, p in teacher.named_parameters() if p.grad is not None}
    return {**grads, "terms": logged}


def missing_gradients_averaged(info: DistInfo) -> dict[str, torch.Tensor]:
    """average_gradients over float32 and bfloat16 parameters where the last process has no gradient for some of
    them (as if it had skipped that part of the model): every process ends with the mean, the missing ones as
    zeros, and no process waits."""
    g = torch.Generator().manual_seed(7)
    params = [torch.nn.Parameter(torch.zeros(shape, dtype=dtype)) for shape, dtype in
              (((3, 4), torch.float32), ((5,), torch.bfloat16), ((2, 2), torch.float32))]
    for i, p in enumerate(params):
        grads = [torch.randn(p.shape, generator=g).to(p.dtype) for _ in range(info.world_size)]
        if not (info.rank == info.world_size - 1 and i != 1):     # the last process: only the bf16 one
            p.grad = grads[info.rank].clone()
    train.average_gradients(params, info)
    return {f"avg.{i}": p.grad for i, p in enumerate(params)}


def expected_missing_gradients_average(world_size: int) -> dict[str, tuple[torch.Tensor, float]]:
    """The mean each process should hold, with the absolute tolerance its dtype allows: float32 sums are exact to
    rounding; a bfloat16 all-reduce rounds every partial sum of the ring to 8 bits (half a step of at most the sum
    of the magnitudes S, world_size - 1 times, then the division and the reference's own rounding): the mean is
    within 2**-9 * S * (W + 1) / W <= 2**-8 * S of the exact one."""
    g = torch.Generator().manual_seed(7)
    out = {}
    for i, (shape, dtype) in enumerate((((3, 4), torch.float32), ((5,), torch.bfloat16), ((2, 2), torch.float32))):
        grads = [torch.randn(shape, generator=g).to(dtype) for _ in range(world_size)]
        if i != 1:
            grads[-1] = torch.zeros(shape, dtype=dtype)
        stacked = torch.stack(grads).float()
        step = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -23
        atol = float(stacked.abs().sum(0).max()) * step + 1e-6
        out[f"avg.{i}"] = (stacked.sum(0).div(world_size).to(dtype), atol)
    return out


def _worker(rank: int, world_size: int, init_file: str, out: str, cases: list) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        info = DistInfo(rank, world_size, rank, world_size)
        results = {f"{name}/{batch}": step_gradients(name, info, batch) for name, batch in cases}
        results["average"] = missing_gradients_averaged(info)
        gathered = [None] * world_size
        dist.all_gather_object(gathered, results["average"])
        results["average_on_every_process"] = gathered
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def run_processes(world_size: int, tmp_path: Path, cases: list) -> dict:
    ctx = multiprocessing.get_context("spawn")
    out = tmp_path / f"grads_{world_size}.pt"
    procs = [ctx.Process(target=_worker, args=(r, world_size, str(tmp_path / f"init_{world_size}"), str(out), cases))
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + TIMEOUT_S
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, f"{len(hung)} of {world_size} processes still running after {TIMEOUT_S} s"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return torch.load(out, weights_only=True)   # tensors, floats, lists and dicts only


def assert_equal_gradients(ref: dict, got: dict, what: str) -> None:
    assert ref.keys() == got.keys() and any(k.startswith("teacher.") for k in ref)
    for key in ref:
        scale = ref[key].abs().max()
        assert scale > 0, key
        err = (got[key] - ref[key]).abs().max()
        assert err <= 2e-5 * scale, f"{what}, {key}: {err:.3g} vs {scale:.3g}"


def assert_missing_gradients_averaged(results: dict, world_size: int) -> None:
    expected = expected_missing_gradients_average(world_size)
    for mine in results["average_on_every_process"]:
        assert mine.keys() == expected.keys()
        for key, (want, atol) in expected.items():
            assert mine[key].dtype == want.dtype
            torch.testing.assert_close(mine[key], want, rtol=0, atol=atol)


def test_three_and_four_processes_give_one_process_gradients_for_every_setting(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cases = [(name, None) for name in SETTINGS]
    one = {f"{name}/None": step_gradients(name, DistInfo()) for name in SETTINGS}
    for world_size in (3, 4):
        many = run_processes(world_size, tmp_path, cases)
        for name in SETTINGS:
            n_sk, n_ph = get_setting(name).split_batch(get_setting(name).batch_size)
            assert world_size == 3 or n_sk % world_size or n_ph % world_size   # 4: uneven shares everywhere
            assert_equal_gradients(one[f"{name}/None"], many[f"{name}/None"], f"{name}, {world_size} processes")
        assert_missing_gradients_averaged(many, world_size)


def test_more_processes_than_sketches_give_one_process_gradients(tmp_path):
    """5 processes on a 4 + 8 batch: the fifth process has no sketch (its sketch share is empty), the last two one
    photo each; through the real model (DDP, the teacher on photos only, the head's averaging), the gradients
    are one process's; and a gradient missing on one process is averaged as zeros instead of leaving the others
    waiting."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n_sk, n_ph = get_setting("sketchy/zeroshot1").split_batch(12)
    assert (n_sk, n_ph) == (4, 8) and [len(range(n_sk)[rank_share(n_sk, 5, r)]) for r in range(5)][-1] == 0
    one = step_gradients("sketchy/zeroshot1", DistInfo(), 12)
    many = run_processes(5, tmp_path, [("sketchy/zeroshot1", 12)])
    assert_equal_gradients(one, many["sketchy/zeroshot1/12"], "5 processes, 4 + 8")
    assert_missing_gradients_averaged(many, 5)


def test_global_batch_shares():
    """One process draws DistributedSampler's released order; W processes split each global batch by one-image
    differences and together cover it exactly; a share may be empty."""
    released = list(torch.utils.data.BatchSampler(list(DistributedSampler(range(23), 1, 0, seed=5)), 7, False))
    one = GlobalBatchSampler(23, 7, 1, 0, seed=5)
    assert list(one) == released and one.global_sizes() == [7, 7, 7, 2] and len(one) == 4
    for world in (3, 4, 8):
        per_rank = [list(GlobalBatchSampler(23, 7, world, r, seed=5)) for r in range(world)]
        for step, batch in enumerate(released):
            shares = [per_rank[r][step] for r in range(world)]
            assert sum(shares, []) == batch
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert [len(range(2)[rank_share(2, 4, r)]) for r in range(4)] == [1, 1, 0, 0]


# ----------------------------------------------------------------------------------------------- other machines
def test_rng_state_with_more_cuda_states_than_devices_restores(monkeypatch):
    """A run saved on an 8-GPU machine resumes on a 2-GPU one (and on none): the extra states are skipped."""
    state = train.rng_state()
    state["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((int(s[0]), device)))
    train.set_rng_state(state)
    assert restored == [(0, 0), (1, 1)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train.set_rng_state(state)                                 # a CPU machine: CPU and Python states only
    assert len(restored) == 2


def test_checkpoint_saved_on_cuda_1_loads_on_cpu(tmp_path, monkeypatch):
    """Tensors saved from cuda:1 (the storage location is what torch.save records) load on a machine without
    that device; the trainer and the test scripts move them to their own device afterwards."""
    import torch.serialization as ser

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ckpt = {"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}
    monkeypatch.setattr(ser, "location_tag", lambda storage: "cuda:1")
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    monkeypatch.undo()
    path = tmp_path / "checkpoint.pth.tar"
    path.write_bytes(buffer.getvalue())
    assert b"cuda:1" in path.read_bytes()
    with pytest.raises(RuntimeError):                          # what an unmapped load does here
        torch.load(path, weights_only=True)
    loaded = load_checkpoint(path)
    assert loaded["state_dict"]["weight"].device.type == "cpu"
    again = torch.nn.Linear(3, 2)
    again.load_state_dict(loaded["state_dict"])
    opt2 = torch.optim.Adam(again.parameters())
    opt2.load_state_dict(loaded["optimizer"])
    assert torch.equal(again.weight, model.weight.detach())


def test_gpu_normalize_builds_mean_and_std_once_per_device(monkeypatch):
    """--gpu_normalize: the mean/std tensors are made once per device, not twice per batch (a host copy and a
    GPU synchronisation each on CUDA)."""
    import data.transforms as transforms

    made = []
    real_tensor = torch.tensor

    def counted(*a, **kw):
        made.append(kw.get("device"))
        return real_tensor(*a, **kw)

    monkeypatch.setattr(torch, "tensor", counted)
    transforms.normalization_tensors.cache_clear()
    batch = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    first = transforms.normalize_on_device(batch)
    for _ in range(3):
        assert torch.equal(transforms.normalize_on_device(batch), first)
    assert made == [torch.device("cpu")] * 2


@pytest.mark.parametrize("flag,info,message", [
    ("cuda:1", DistInfo(1, 4, 1, 4), r"--device cuda:1 under torchrun would put all 4 processes of this machine on "
                                      r"one GPU: give --device cuda"),
    ("cuda", DistInfo(3, 8, 3, 4), r"LOCAL_RANK=3 but this process sees 1 GPU\(s\).*--nproc_per_node 1.*"
                                   r"--gpus-per-node"),
    ("cuda:2", DistInfo(), r"--device cuda:2: this machine shows 1 GPU\(s\); use cuda:0..cuda:0"),
])
def test_device_choices_that_cannot_work_are_one_sentence(monkeypatch, flag, info, message):
    from utils.distributed import select_device
    from utils.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    with pytest.raises(UserError, match=message):
        select_device(flag, info)
    assert select_device("cuda", DistInfo(0, 4, 0, 4)) == torch.device("cuda", 0)


def test_resume_command_names_the_launch_it_came_from():
    import argparse

    from engine.runs import resume_command

    args = argparse.Namespace(savedir="checkpoint/q")
    one = resume_command("quickdraw", args, {}, DistInfo())
    node = resume_command("quickdraw", args, {"device": "cuda"}, DistInfo(0, 4, 0, 4))
    nodes = resume_command("quickdraw", args, {}, DistInfo(0, 8, 0, 4))
    assert one == "python train_quickdraw_ext.py --resume --savedir checkpoint/q"
    assert node == ("torchrun --standalone --nproc_per_node=4 train_quickdraw_ext.py --resume --savedir checkpoint/q "
                    "--device cuda")
    assert nodes.startswith("torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT "
                            "train_quickdraw_ext.py --resume") and "on every machine" in nodes


@pytest.mark.parametrize("bidirectional", [False, True])
def test_teacher_on_photos_only_gives_the_same_losses_and_gradients(bidirectional):
    """The trainer runs the teacher on a batch's photos only (the distillation terms use nothing else)."""
    from losses import SBKAObjective
    from models import build_teacher

    setting, n_sk, n_ph, x, y, is_photo, cid_mask, _ = global_batch("sketchy/zeroshot1")
    rows = torch.randperm(n_sk + n_ph, generator=torch.Generator().manual_seed(0))[:24]   # a shuffled batch
    x, y, is_photo = x[rows], y[rows], is_photo[rows]
    student = train.initial_student("convnextv2_atto", setting.n_seen, None, 0.02, seed=0)
    torch.manual_seed(1)
    teacher = build_teacher("convnextv2_atto", None).eval()
    results = []
    for photo_rows in (None, torch.nonzero(is_photo).squeeze(1)):
        student.zero_grad(set_to_none=True)
        teacher.zero_grad(set_to_none=True)
        torch.manual_seed(2)                                     # the same prior noise
        total, terms = train.step_losses(student, teacher, SBKAObjective(), x, y, is_photo, cid_mask,
                                         bidirectional, nullcontext(), photo_rows=photo_rows)
        total.backward()
        grads = {f"{who}.{k}": p.grad.clone() for who, model in (("student", student), ("teacher", teacher))
                 for k, p in model.named_parameters() if p.grad is not None}
        results.append(({k: v.detach() for k, v in terms.items()}, grads))
    (terms_all, grads_all), (terms_photos, grads_photos) = results
    assert terms_all.keys() == terms_photos.keys() and grads_all.keys() == grads_photos.keys()
    assert any(k.startswith("teacher.") for k in grads_all) == bidirectional
    for k in terms_all:
        torch.testing.assert_close(terms_photos[k], terms_all[k], rtol=1e-6, atol=1e-7)
    for k in grads_all:
        scale = grads_all[k].abs().max()
        assert (grads_photos[k] - grads_all[k]).abs().max() <= 1e-5 * scale + 1e-12, k
