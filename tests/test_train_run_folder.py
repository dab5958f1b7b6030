"""A run folder that cannot lie: checkpoint provenance, no silent retrain into another run's folder,
--overwrite that deletes nothing early, exact resumes, the Ctrl-C resume command, --smoke."""
import json
import shlex
import shutil

import pytest
import torch

from data.registry import get_setting
from engine import flags
from engine.runs import batch_message, cpu_estimate
from engine.train import Trainer, main, parse_run_args
from tests.fixtures import make_tree
from utils.checkpoint import load_checkpoint
from utils.distributed import DistInfo
from utils.errors import UserError, run_cli
from utils.provenance import list_fingerprint, state_dict_sha256
from utils.run_files import ARGS_FILE, BEST_CHECKPOINT_FILE, LAST_CHECKPOINT_FILE, LOG_FILE

TINY = ["--model", "convnextv2_atto", "--pretrained", "none", "--img_size", "32", "--batch_size", "12",
        "--workers", "0", "--device", "cpu", "--no_figures"]
SHAPE = ["--epochs", "2", "--warmup_epochs", "1", "--max_steps_per_epoch", "1"]
LIST_ROLES = {"sketch_train": "sketch_tx_000000000000_ready_filelist_train.txt",
              "photo_train": "all_photo_filelist_train.txt",
              "sketch_test": "sketch_tx_000000000000_ready_filelist_test.txt"}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_tree(root, "sketchy", sketches=6, photos=6)
    return root


def _argv(tree, savedir, *extra):
    return ["--data_root", str(tree), "--savedir", str(savedir), *extra]


def _interrupt_at(monkeypatch, epoch):
    """Ctrl-C at the start of ``epoch`` (after the checkpoints of the epochs before it were written)."""
    real = Trainer.train_one_epoch

    def train_one_epoch(self, e):
        if e == epoch:
            raise KeyboardInterrupt
        return real(self, e)
    monkeypatch.setattr(Trainer, "train_one_epoch", train_one_epoch)


@pytest.fixture(scope="module")
def finished(tree, tmp_path_factory):
    """One finished run (2 epochs, one step each), shared by the read-only tests."""
    run = tmp_path_factory.mktemp("finished") / "run"
    main("sketchy", _argv(tree, run, *TINY, *SHAPE, "--seed", "3"))
    return run


def test_every_checkpoint_records_what_made_it(tree, finished):
    ckpt, best = load_checkpoint(finished / LAST_CHECKPOINT_FILE), load_checkpoint(finished / BEST_CHECKPOINT_FILE)
    for c in (ckpt, best):
        assert {"epoch", "state_dict", "best_acc1", "optimizer", "optimizer_1"} <= set(c)   # released keys kept
        p = c["provenance"]
        assert {"run_id", "setting", "model", "img_size", "n_seen", "seed", "epoch", "student_sha256", "lists",
                "version"} <= set(p)
        assert p["student_sha256"] == state_dict_sha256(c["state_dict"])   # the weights in this very file
        assert (p["setting"], p["model"], p["img_size"], p["n_seen"], p["seed"]) == (
            "sketchy/zeroshot1", "convnextv2_atto", 32, 3, 3)
        assert p["epoch"] == c["epoch"]
        split = tree / "Sketchy" / "zeroshot1"
        assert p["lists"] == {role: list_fingerprint(split / name) for role, name in LIST_ROLES.items()}
    assert ckpt["provenance"]["run_id"] == best["provenance"]["run_id"] and len(ckpt["provenance"]["run_id"]) == 32
    log = [json.loads(line) for line in (finished / LOG_FILE).read_text().splitlines()]
    assert all("val_top1_pct" in r and 0 <= r["val_top1_pct"] <= 100 for r in log)


def test_retraining_into_a_run_folder_is_refused_and_changes_nothing(tree, finished):
    """Issue 12, failure 1: a new seed into the same folder used to start silently next to the old files."""
    before = {p.name: p.read_bytes() for p in finished.iterdir()}
    with pytest.raises(UserError, match=r"already holds another run's files \(checkpoint\.pth\.tar, "
                                        r"model_best\.pth\.tar, log\.jsonl, args\.json\).*--resume.*--overwrite"):
        main("sketchy", _argv(tree, finished, *TINY, *SHAPE, "--seed", "4"))
    assert {p.name: p.read_bytes() for p in finished.iterdir()} == before


def test_overwrite_deletes_nothing_before_the_new_runs_first_checkpoint(tree, finished, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for name in ("features_zero.pickle", "features_zero.json", "results.json", "features_seen_val_s0.pickle"):
        (run / name).write_text("from the earlier run")
    old_id = load_checkpoint(run / LAST_CHECKPOINT_FILE)["provenance"]["run_id"]
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    _interrupt_at(monkeypatch, 0)                 # killed in epoch 0: nothing of the earlier run is lost
    with pytest.raises(KeyboardInterrupt, match="before this run's first checkpoint.*untouched"):
        main("sketchy", _argv(tree, run, *TINY, *SHAPE, "--seed", "4", "--overwrite"))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    monkeypatch.undo()

    main("sketchy", _argv(tree, run, *TINY, "--epochs", "1", "--warmup_epochs", "0", "--max_steps_per_epoch", "1",
                          "--seed", "4", "--overwrite"))
    # stale outputs are gone
    assert sorted(p.name for p in run.iterdir()) == sorted([LAST_CHECKPOINT_FILE, BEST_CHECKPOINT_FILE, LOG_FILE,
                                                            ARGS_FILE])
    assert json.loads((run / ARGS_FILE).read_text())["args"]["seed"] == 4          # the new run's flags
    ckpt = load_checkpoint(run / LAST_CHECKPOINT_FILE)
    assert ckpt["provenance"]["seed"] == 4 and ckpt["provenance"]["run_id"] != old_id
    assert load_checkpoint(run / BEST_CHECKPOINT_FILE)["provenance"]["run_id"] == ckpt["provenance"]["run_id"]
    assert [json.loads(line)["epoch"] for line in (run / LOG_FILE).read_text().splitlines()] == [0]   # not mixed


def test_interrupted_run_resumes_with_its_own_flags_from_the_printed_command(tree, tmp_path, monkeypatch, capsys):
    """Issue 12, failure 3: --resume with fewer flags used to continue with the defaults (batch 210, 20 epochs)."""
    run = tmp_path / "run"
    _interrupt_at(monkeypatch, 1)
    with pytest.raises(SystemExit) as stop:
        run_cli(lambda argv: main("sketchy", argv), _argv(tree, run, *TINY, *SHAPE, "--seed", "5"))
    assert stop.value.code == 130
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert len(err) == 1
    assert err[0].startswith(f"interrupted: {run / LAST_CHECKPOINT_FILE} holds the run (1 epoch(s) done)")
    command = shlex.split(err[0].split("resume it with: ", 1)[1])
    assert command[:4] == ["python", "train_sketchy_ext.py", "--resume", "--savedir"]
    assert "--batch_size" not in command and "--epochs" not in command    # the run's flags come from its checkpoint
    run_id = load_checkpoint(run / LAST_CHECKPOINT_FILE)["provenance"]["run_id"]
    monkeypatch.undo()

    main("sketchy", command[2:])
    ckpt = load_checkpoint(run / LAST_CHECKPOINT_FILE)
    assert ckpt["epoch"] == 2 and ckpt["provenance"]["run_id"] == run_id
    assert (ckpt["args"]["batch_size"], ckpt["args"]["epochs"], ckpt["args"]["max_steps_per_epoch"],
            ckpt["args"]["model"], ckpt["args"]["img_size"], ckpt["args"]["seed"]) == (12, 2, 1, "convnextv2_atto",
                                                                                        32, 5)
    log = [json.loads(line) for line in (run / LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and all(r["steps"] == 1 for r in log)
    recorded = json.loads((run / ARGS_FILE).read_text())        # the resolved flags, restored ones included
    assert (recorded["args"]["seed"], recorded["args"]["batch_size"], recorded["args"]["resume"]) == (5, 12, True)
    assert recorded["setting"] == "sketchy/zeroshot1" and recorded["version"]


def test_a_run_stopped_between_its_two_checkpoint_writes_resumes_to_the_same_files(tree, finished, tmp_path,
                                                                                     monkeypatch):
    """Killed after the first of the final epoch's two files (model_best, then checkpoint) was written: the
    checkpoint still says one epoch is left, --resume redoes it (with loader workers this time), and model_best is
    the uninterrupted run's, not missing or stale (the other order left a finished checkpoint beside no
    model_best)."""
    import engine.train as train_module

    run = tmp_path / "run"

    def killed(src, dst):
        raise KeyboardInterrupt             # the second write of the epoch never happens
    monkeypatch.setattr(train_module, "copy_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        main("sketchy", _argv(tree, run, *TINY, *SHAPE, "--seed", "3"))
    monkeypatch.undo()

    assert load_checkpoint(run / LAST_CHECKPOINT_FILE)["epoch"] == 1      # the final epoch is not marked done
    # another worker count than the uninterrupted run's (0): each image draws its augmentation from its own
    # generator, so loader workers (persistent across epochs) change nothing
    main("sketchy", ["--resume", "--savedir", str(run), "--workers", "2"])
    for name in (LAST_CHECKPOINT_FILE, BEST_CHECKPOINT_FILE):       # the same run, never stopped
        mine, reference = load_checkpoint(run / name), load_checkpoint(finished / name)
        assert mine["epoch"] == reference["epoch"] == 2
        assert mine["provenance"]["student_sha256"] == reference["provenance"]["student_sha256"]


def test_resume_refuses_every_differing_flag_and_accepts_operational_ones(tree, finished):
    with pytest.raises(UserError) as refused:
        parse_run_args("sketchy", _argv(tree, finished, "--resume", "--batch_size", "24", "--epochs", "5",
                                        "--detach_reverse_target", "--workers", "1"))
    msg = str(refused.value)
    assert all(s in msg for s in ("--batch_size 24 (the run has 12)", "--epochs 5 (the run has 2)",
                                  "--detach_reverse_target on (the run has off)"))
    assert "--workers 1" not in msg and "\n" not in msg
    _, args, _ = parse_run_args("sketchy", _argv(tree, finished, "--resume", "--workers", "1", "--device", "cpu",
                                                 "--batch_size", "12"))
    assert (args.workers, args.batch_size, args.epochs, args.model, args.max_steps_per_epoch) == (
        1, 12, 2, "convnextv2_atto", 1)


def test_resume_refuses_other_training_lists(tree, finished, tmp_path):
    other = tmp_path / "data"
    make_tree(other, "sketchy", sketches=7, photos=6)
    with pytest.raises(UserError, match=r"training lists differ.*sketch_train \(.*: 18 lines, the run had 15\)"):
        main("sketchy", _argv(other, finished, "--resume", "--workers", "0", "--device", "cpu"))


@pytest.mark.parametrize("dataset,batch", [("sketchy", 12), ("tuberlin", 20), ("quickdraw", 20)])
def test_smoke_preset_and_explicit_flags_win(dataset, batch):
    setting, args, _ = parse_run_args(dataset, ["--smoke", "--epochs", "3"])
    assert (args.model, args.img_size, args.batch_size, args.pretrained, args.epochs) == (
        "convnextv2_atto", 64, batch, "none", 3)
    assert args.savedir == f"checkpoint/smoke/{setting.name}" and args.max_steps_per_epoch == 10
    assert args.max_val_images == 200
    assert setting.split_batch(batch)[0] >= 1


def test_validation_cap_keeps_an_even_spread(tree, tmp_path):
    args = parse_run_args("sketchy", _argv(tree, tmp_path / "run", *TINY, "--max_val_images", "2"))[1]
    trainer = Trainer(args, get_setting("sketchy/zeroshot1"), DistInfo(), torch.device("cpu"))
    assert len(trainer.data.val) == 3 and trainer.n_val == 2
    assert list(trainer.val_loader.dataset.indices) == [0, 1]


def test_batch_message_and_cpu_estimate():
    sketchy = get_setting("sketchy/zeroshot1")
    assert batch_message(sketchy, 20) == (
        "batch 20 -> 6 sketches + 12 photos; 2 images unused: Sketchy takes B//3 sketches and 2*(B//3) photos")
    help_text = " ".join(flags.build_train_parser(get_setting("tuberlin/zeroshot"), "tuberlin").format_help().split())
    assert "TUBerlin takes B//10 sketches and 9*(B//10) photos, so B is at least 10" in help_text
    full = cpu_estimate("convnextv2_tiny", 224, 210, 415, 20, 6000, 2)
    smoke = cpu_estimate("convnextv2_atto", 64, 12, 10, 2, 300, 2)
    assert full.startswith("warning:") and " h, about " in full and "GB" in full
    assert smoke.startswith("estimate on CPU") and "min" in smoke
