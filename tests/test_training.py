"""The trainer: phases, resume, non-finite stop, torchrun, and each train script end to end."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data.registry import QUICKDRAW_AUTHORS_NAMES, resolve_paths
from engine import train
from engine.flags import build_train_parser, choose_setting
from engine.train import Trainer, build_data, initial_student, main, seed_epoch
from tests.fixtures import make_tree
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo
from utils.errors import UserError
from utils.run_files import ARGS_FILE, BEST_CHECKPOINT_FILE, LAST_CHECKPOINT_FILE, LOG_FILE

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "convnextv2_atto", "--pretrained", "none", "--img_size", "32", "--batch_size", "12",
        "--workers", "0", "--device", "cpu"]


def _args(data_root, savedir, *extra, dataset="sketchy"):
    argv = ["--data_root", str(data_root), "--savedir", str(savedir), *TINY, *extra]
    setting = choose_setting(dataset, argv)
    return build_train_parser(setting, dataset).parse_args(argv), setting


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module):
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_warmup_leaves_teacher_and_bidirectional_moves_only_its_head(tree, tmp_path):
    args, setting = _args(tree, tmp_path / "run", "--epochs", "2", "--warmup_epochs", "1", "--no_figures")
    trainer = Trainer(args, setting, DistInfo(), torch.device("cpu"))
    t0, s0 = _snapshot(trainer.teacher), _snapshot(trainer.student_module)
    trainer.set_lr(0)
    trainer.train_one_epoch(0)
    assert _changed(t0, trainer.teacher) == set()
    assert _changed(s0, trainer.student_module)  # the student learned
    trainer.train_one_epoch(1)
    assert _changed(t0, trainer.teacher) == {"backbone.head.fc.weight", "backbone.head.fc.bias"}


def _run(tree, savedir, *extra):
    main("sketchy", ["--data_root", str(tree), "--savedir", str(savedir), *TINY, "--no_figures", "--seed", "3",
                     "--warmup_epochs", "1", *extra])


def test_resume_gives_the_same_weights_as_a_straight_run(tree, tmp_path):
    _run(tree, tmp_path / "straight", "--epochs", "2")
    # a run killed during epoch 1: only the state saved at the end of epoch 0 exists
    part = tmp_path / "part"
    args, setting = _args(tree, part, "--epochs", "2", "--warmup_epochs", "1", "--no_figures", "--seed", "3")
    trainer = Trainer(args, setting, DistInfo(), torch.device("cpu"))
    part.mkdir()
    seed_epoch(3, 0, 0)
    trainer.sketch_sampler.set_epoch(0)
    trainer.photo_sampler.set_epoch(0)
    trainer.set_lr(0)
    trainer.train_one_epoch(0)
    trainer.save(0, trainer.validate())
    assert load_checkpoint(part / LAST_CHECKPOINT_FILE)["epoch"] == 1
    _run(tree, part, "--epochs", "2", "--resume")
    a = load_checkpoint(tmp_path / "straight" / LAST_CHECKPOINT_FILE)
    b = load_checkpoint(part / LAST_CHECKPOINT_FILE)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-5, atol=1e-6)
    for k in a["teacher_head"]:
        torch.testing.assert_close(a["teacher_head"][k], b["teacher_head"][k], rtol=1e-5, atol=1e-6)
    log = [json.loads(line) for line in (part / LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]  # the resumed run logs from epoch 1 on


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tree, tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_lr_at = train.lr_at
    monkeypatch.setattr(train, "lr_at", lambda base, epoch, *a: 1e37 if epoch >= 1 else real_lr_at(base, epoch, *a))
    with pytest.raises(UserError, match=r"non-finite loss at epoch 1, step \d+ .*was kept"):
        _run(tree, run, "--epochs", "3")
    assert load_checkpoint(run / LAST_CHECKPOINT_FILE)["epoch"] == 1    # the state after epoch 0, the last good one


def test_finite_watch_names_the_first_bad_step_when_checked_later(tmp_path):
    """On CUDA the loss is checked every few steps; the message still names the first bad step and its terms."""
    watch = train.FiniteWatch(tmp_path / LAST_CHECKPOINT_FILE)
    for step, value in enumerate([1.0, 2.0, float("nan"), float("inf"), 3.0]):
        total = torch.tensor(value)
        watch.record(step, total, {"loss_ce": total * 2, "loss_kd": torch.tensor(0.5)})
        if step == 1:
            watch.check(7)                                   # nothing bad yet: no error
    with pytest.raises(UserError, match=r"non-finite loss at epoch 7, step 2 \(loss_ce=nan, loss_kd=0.5\)"):
        watch.check(7)


def test_resume_refuses_a_different_model(tree, tmp_path):
    run = tmp_path / "run"
    _run(tree, run, "--epochs", "1")
    with pytest.raises(UserError, match=r"--img_size 40 \(the run has 32\)"):
        _run(tree, run, "--epochs", "2", "--resume", "--img_size", "40")


def test_ablation_flags_reach_the_total_the_checkpoint_and_resume(tree, tmp_path):
    run = tmp_path / "run"
    _run(tree, run, "--epochs", "1", "--warmup_epochs", "0", "--prior_weight", "0", "--semantic_bias", "0",
         "--max_steps_per_epoch", "2")
    record = json.loads((run / LOG_FILE).read_text().splitlines()[0])
    without_prior = record["loss_ce"] + record["loss_kd"] + record["loss_reverse"]
    assert record["loss_total"] == pytest.approx(without_prior, rel=1e-6)
    assert record["loss_total"] != pytest.approx(without_prior + 0.1 * record["loss_prior"], rel=1e-6)
    args = load_checkpoint(run / LAST_CHECKPOINT_FILE)["args"]
    assert args["prior_weight"] == 0.0 and args["semantic_bias"] == 0.0
    with pytest.raises(UserError, match=r"--prior_weight 0.1 \(the run has 0.0\)"):
        _run(tree, run, "--epochs", "2", "--resume", "--prior_weight", "0.1")


def _script(name, *argv, env_extra=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(ROOT / name), *argv], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


@pytest.mark.parametrize("script,layout,extra", [
    ("train_sketchy_ext.py", "sketchy", []),
    ("train_sketchy_ext.py", "sketchy", ["--zero_version", "zeroshot2"]),
    ("train_tuberlin_ext.py", "tuberlin", ["--batch_size", "20"]),
    ("train_quickdraw_ext.py", "quickdraw_authors", ["--batch_size", "20"]),
])
def test_train_script_end_to_end(tmp_path, script, layout, extra):
    split_dir = "zeroshot2" if "zeroshot2" in extra else None
    quickdraw = layout.startswith("quickdraw")
    make_tree(tmp_path / "data", layout, split_dir=split_dir, test_list=not quickdraw,
              cid_mask=not quickdraw, sketches=10, photos=10)
    run = tmp_path / "run"
    argv = ["--data_root", str(tmp_path / "data"), "--savedir", str(run), *TINY, "--epochs", "2",
            "--warmup_epochs", "1", "--max_steps_per_epoch", "2", "--no_figures", *extra]
    res = _script(script, *argv)
    assert res.returncode == 0, res.stderr
    assert (run / LAST_CHECKPOINT_FILE).is_file() and (run / "model_best.pth.tar").is_file()
    log = [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]
    assert [r["phase"] for r in log] == ["warmup", "bidirectional"]
    assert all(r["steps"] == 2 and r["images_per_s"] > 0 for r in log)
    assert log[1]["loss_reverse"] is not None and log[0]["loss_reverse"] is None
    ckpt = load_checkpoint(run / LAST_CHECKPOINT_FILE)
    assert {"epoch", "state_dict", "best_acc1", "optimizer", "optimizer_1", "rng", "config"} <= set(ckpt)
    if quickdraw:   # the released QuickDraw run: no validation, the last epoch is model_best
        assert "validation: none (--val_fraction 0)" in res.stdout
        assert load_checkpoint(run / "model_best.pth.tar")["epoch"] == 2


@pytest.mark.parametrize("problem,pattern", [
    ("no_dataset", r"^error: dataset folder .*Sketchy does not exist: create it"),
    ("bad_line", r"^error: .*sketch_tx_000000000000_ready_filelist_train\.txt, line 2: expected"),
    ("corrupt_image", r"^error: image .* cannot be decoded \(.*line \d+\): not an image"),
    ("bad_flag", r"--zero_version 'zeroshot9' is not one of zeroshot1, zeroshot2"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, problem, pattern):
    data = tmp_path / "data"
    if problem != "no_dataset":
        split = make_tree(data, "sketchy")
        lst = split / "sketch_tx_000000000000_ready_filelist_train.txt"
        lines = lst.read_text().splitlines()
        if problem == "bad_line":
            lst.write_text("\n".join([lines[0], "no-label-here.png"] + lines[2:]) + "\n")
        if problem == "corrupt_image":
            for l in (split / "all_photo_filelist_train.txt").read_text().splitlines() + lines:
                (data / "Sketchy" / l.rsplit(" ", 1)[0]).write_bytes(b"garbage")
    extra = ["--zero_version", "zeroshot9"] if problem == "bad_flag" else []
    res = _script("train_sketchy_ext.py", "--data_root", str(data), "--savedir", str(tmp_path / "run"), *TINY,
                  "--epochs", "1", *extra)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    err_lines = [l for l in res.stderr.splitlines() if l.startswith("error:")]
    assert len(err_lines) == 1 and __import__("re").search(pattern, err_lines[0]), res.stderr


def test_torchrun_two_processes_write_one_checkpoint(tree, tmp_path):
    run = tmp_path / "ddp"
    with socket.socket() as sock:  # a free port (torchrun's port 0 does not work with the static rendezvous)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}",
         str(ROOT / "train_sketchy_ext.py"), "--data_root", str(tree), "--savedir", str(run), *TINY,
         "--epochs", "2", "--warmup_epochs", "1", "--no_figures"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [ARGS_FILE, LAST_CHECKPOINT_FILE, LOG_FILE, BEST_CHECKPOINT_FILE]
    assert res.stdout.count("done:") == 1  # only rank 0 prints
    log = [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]
    assert len(log) == 2


def test_model_best_follows_the_released_rule(tree, tmp_path):
    """best_acc1 counts warm-up epochs too; model_best is only written after warm-up."""
    run = tmp_path / "run"
    args, setting = _args(tree, run, "--epochs", "5", "--warmup_epochs", "2", "--no_figures")
    trainer = Trainer(args, setting, DistInfo(), torch.device("cpu"))
    run.mkdir()
    best = run / "model_best.pth.tar"
    trainer.save(0, 50.0)          # warm-up, best so far, but no model_best during warm-up
    assert not best.exists() and trainer.best_acc1 == 50.0
    trainer.save(1, 40.0)
    trainer.save(2, 45.0)          # past warm-up but below the warm-up best: still none
    assert not best.exists()
    trainer.save(3, 60.0)
    assert load_checkpoint(best)["epoch"] == 4 and load_checkpoint(best)["best_acc1"] == 60.0
    trainer.save(4, 55.0)
    assert load_checkpoint(best)["epoch"] == 4 and load_checkpoint(run / LAST_CHECKPOINT_FILE)["epoch"] == 5


@pytest.mark.parametrize("augment", ["released", "none"])
def test_augment_flag_chooses_the_training_transform(tree, tmp_path, augment):
    args, setting = _args(tree, tmp_path / "run", "--augment", augment, "--no_figures")
    trainer = Trainer(args, setting, DistInfo(), torch.device("cpu"))
    sketches = trainer.data.sketches
    torch.manual_seed(0)
    views = [sketches[0][0] for _ in range(12)]
    identical = all(torch.equal(views[0], v) for v in views[1:])
    # the released augmentation leaves an image alone with probability 0.3 + 0.7 * 1/16: 12 identical draws
    # happen with probability < 1e-5; without augmentation every draw is the same tensor.
    assert identical == (augment == "none")


def test_the_demo_baseline_is_the_network_training_starts_from(tree, tmp_path):
    args, setting = _args(tree, tmp_path / "run", "--seed", "5", "--classifier_init_std", "0.02", "--no_figures")
    trainer = Trainer(args, setting, DistInfo(), torch.device("cpu"))
    rebuilt = initial_student("convnextv2_atto", trainer.data.n_seen, None, 0.02, seed=5)
    other = initial_student("convnextv2_atto", trainer.data.n_seen, None, 0.02, seed=6)
    ours = trainer.student_module.state_dict()
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in ours.items())
    assert not torch.equal(ours["classifier.weight"], other.state_dict()["classifier.weight"])


# ---------------------------------------------------------------------------------- validation per setting
@pytest.fixture(scope="module")
def quickdraw_authors_tree(tmp_path_factory):
    """The released QuickDraw layout (sketch_filelist_*.txt, all_photo_filelist_*.txt) with a test list."""
    root = tmp_path_factory.mktemp("quickdraw")
    make_tree(root, "quickdraw_authors", cid_mask=False, sketches=8, photos=4)
    return root


def _data(data_root, *extra, dataset="quickdraw"):
    args, setting = _args(data_root, "unused", *extra, dataset=dataset)
    paths = resolve_paths(setting, args.data_root)
    return build_data(setting, paths, 32, args.val_fraction, "none", getattr(args, "val_list", False)), paths


def _listed(paths, role):
    return len(paths.list_file(role).read_text().splitlines())


def test_quickdraw_default_trains_on_every_sketch_without_validation(quickdraw_authors_tree):
    data, paths = _data(quickdraw_authors_tree)
    assert paths.list_file("sketch_train").name == QUICKDRAW_AUTHORS_NAMES["sketch_train"]
    assert data.val is None and len(data.sketches) == _listed(paths, "sketch_train")
    assert "sketch_filelist_test.txt is not used without --val_list" in data.val_source


def test_quickdraw_hold_out_is_opt_in(quickdraw_authors_tree):
    data, paths = _data(quickdraw_authors_tree, "--val_fraction", "0.05")
    n_train = _listed(paths, "sketch_train")
    assert data.val is not None and len(data.val) + len(data.sketches) == n_train
    assert set(data.val.paths).isdisjoint(data.sketches.paths) and "hold-out of 5%" in data.val_source


def test_quickdraw_test_list_only_when_asked(quickdraw_authors_tree, tmp_path):
    data, paths = _data(quickdraw_authors_tree, "--val_list")
    assert data.val.list_file == str(paths.list_file("sketch_test"))
    assert len(data.val) == _listed(paths, "sketch_test") and len(data.sketches) == _listed(paths, "sketch_train")
    make_tree(tmp_path, "quickdraw_authors", test_list=False, cid_mask=False, sketches=3, photos=3)
    with pytest.raises(UserError, match=r"--val_list: .* has no sketch_test-role list \(looked for "
                                        r"sketch_filelist_test\.txt, sketch_test\.txt, sketch_tx_"):
        _data(tmp_path, "--val_list")
    with pytest.raises(UserError, match=r"--val_list and --val_fraction 0.05 name two validation sets"):
        _data(quickdraw_authors_tree, "--val_list", "--val_fraction", "0.05")


@pytest.mark.parametrize("test_list", [True, False])
def test_sketchy_zeroshot2_keeps_its_test_list_else_the_hold_out(tmp_path, test_list):
    make_tree(tmp_path, "sketchy", split_dir="zeroshot2", test_list=test_list, sketches=8, photos=3)
    data, paths = _data(tmp_path, "--zero_version", "zeroshot2", dataset="sketchy")
    assert data.val is not None
    if test_list:
        assert data.val.list_file == str(paths.list_file("sketch_test"))
    else:
        assert "hold-out of 5%" in data.val_source and len(data.val) + len(data.sketches) == _listed(
            paths, "sketch_train")
    with pytest.raises(SystemExit):   # the flag exists only where the list is not used by default
        _args(tmp_path, "unused", "--zero_version", "zeroshot2", "--val_list", dataset="sketchy")
