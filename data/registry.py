"""One entry per dataset setting: where its files are and the released code's training defaults.

The per-dataset difference between the seven entry scripts is data, and it lives here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from utils.errors import UserError

# List-file naming schemes (METHOD.md section 1). Each scheme maps a role to a file name in the split dir.
SAKE_NAMES = {
    "sketch_train": "sketch_tx_000000000000_ready_filelist_train.txt",
    "sketch_test": "sketch_tx_000000000000_ready_filelist_test.txt",
    "sketch_zero": "sketch_tx_000000000000_ready_filelist_zero.txt",
    "photo_train": "all_photo_filelist_train.txt",
    "photo_zero": "all_photo_filelist_zero.txt",
}
TUBERLIN_NAMES = {
    "sketch_train": "png_ready_filelist_train.txt",
    "sketch_test": "png_ready_filelist_test.txt",
    "sketch_zero": "png_ready_filelist_zero.txt",
    "photo_train": "ImageResized_ready_filelist_train.txt",
    "photo_zero": "ImageResized_ready_filelist_zero.txt",
}
# The released QuickDraw loader's names (QuickDraw.py: <version>_filelist_<split>.txt, versions sketch and
# all_photo); it reads no test list, the name below is the one its commented-out validation split would read.
QUICKDRAW_AUTHORS_NAMES = {
    "sketch_train": "sketch_filelist_train.txt",
    "sketch_test": "sketch_filelist_test.txt",
    "sketch_zero": "sketch_filelist_zero.txt",
    "photo_train": "all_photo_filelist_train.txt",
    "photo_zero": "all_photo_filelist_zero.txt",
}
QUICKDRAW_PUBLIC_NAMES = {
    "sketch_train": "sketch_train.txt",
    "sketch_test": "sketch_test.txt",
    "sketch_zero": "sketch_zero.txt",
    "photo_train": "all_photo_train.txt",
    "photo_zero": "all_photo_zero.txt",
}
REQUIRED_ROLES = ("sketch_train", "sketch_zero", "photo_train", "photo_zero")
VAL_FRACTION = 0.05  # per-class hold-out of training sketches where a split validates without a *_test list


@dataclass(frozen=True)
class Setting:
    """A dataset setting and the released code's defaults for it."""

    name: str                      # e.g. "sketchy/zeroshot1"
    dataset_dir: str               # folder under --data_root, e.g. "Sketchy"; "" = --data_root itself
    split_dir: str                 # folder under the dataset dir holding lists and class files
    naming_schemes: tuple          # candidate list-name dicts, tried in order
    n_seen: Optional[int]          # published class counts (the class files are authoritative); None: none
    n_unseen: Optional[int]
    batch_size: int                # sketches + photos per step
    sketch_divisor: int            # sketches = B // d, photos = B // d * (d - 1)
    warmup_epochs: int             # epochs 0 .. warmup_epochs-1 train the student only
    teacher_lr_scale: float        # teacher lr = student lr * scale
    use_cid_mask: bool             # add 0.3 * cid_mask to the soft targets
    val_list_by_default: bool      # validate on the split's sketch_test list when present (else: only if asked)
    checkpoint_dir: str            # default run directory
    pq_m: tuple                    # faithful one-to-many sweep (METHOD section 6)
    pq_k: tuple
    paper_metrics: tuple           # the metric pair marked in reports: the paper's table's (custom: Sketchy Ext's)
    train_script: str              # the entry scripts of the setting
    test_script: str
    val_fraction: float = VAL_FRACTION   # hold-out used when no list validates; 0 = no validation
    custom: bool = False           # the user's own folder tree (data.from_folders): no published counts or table
    epochs: int = 20
    lr: float = 1e-4
    weight_decay: float = 5e-4

    @property
    def dataset_label(self) -> str:
        """The dataset as messages name it."""
        return self.dataset_dir or "a custom dataset"

    @property
    def data_root_help(self) -> str:
        """What ``--data_root`` means for this setting."""
        if self.custom:
            return (f"your dataset folder ROOT, holding sketches/, photos/ and the {self.split_dir}/ that "
                    f"`python -m data.from_folders ROOT` writes")
        return f"folder holding {self.dataset_dir}/"

    def split_batch(self, batch_size: int) -> tuple[int, int]:
        """(sketches, photos) per step for a global batch, as the released code splits it."""
        unit = batch_size // self.sketch_divisor
        if unit < 1:
            raise UserError(
                f"--batch_size {batch_size} is too small for {self.name}: it needs at least "
                f"{self.sketch_divisor} so that one sketch goes with {self.sketch_divisor - 1} photos")
        return unit, unit * (self.sketch_divisor - 1)


SETTINGS: dict[str, Setting] = {}


def _register(s: Setting) -> None:
    SETTINGS[s.name] = s


_register(Setting(
    name="sketchy/zeroshot1", dataset_dir="Sketchy", split_dir="zeroshot1", naming_schemes=(SAKE_NAMES,),
    n_seen=100, n_unseen=25, batch_size=210, sketch_divisor=3, warmup_epochs=10, teacher_lr_scale=1.0,
    use_cid_mask=True, val_list_by_default=True, checkpoint_dir="checkpoint/sketchy/zeroshot1",
    pq_m=(2, 4), pq_k=tuple(range(22, 29)), paper_metrics=("mAP@all", "P@100"),
    train_script="train_sketchy_ext.py", test_script="test_sketchy_ext_zeroshot.py"))
_register(Setting(
    name="sketchy/zeroshot2", dataset_dir="Sketchy", split_dir="zeroshot2", naming_schemes=(SAKE_NAMES,),
    n_seen=104, n_unseen=21, batch_size=210, sketch_divisor=3, warmup_epochs=10, teacher_lr_scale=1.0,
    use_cid_mask=True, val_list_by_default=True, checkpoint_dir="checkpoint/sketchy/zeroshot2",
    pq_m=(2, 4), pq_k=tuple(range(18, 25)), paper_metrics=("mAP@200", "P@200"),
    train_script="train_sketchy_ext.py", test_script="test_sketchy_ext_split_zeroshot.py"))
_register(Setting(
    name="tuberlin/zeroshot", dataset_dir="TUBerlin", split_dir="zeroshot", naming_schemes=(TUBERLIN_NAMES,),
    n_seen=220, n_unseen=30, batch_size=210, sketch_divisor=10, warmup_epochs=6, teacher_lr_scale=0.5,
    use_cid_mask=True, val_list_by_default=True, checkpoint_dir="checkpoint/tuberlin/zeroshot",
    pq_m=(2, 4), pq_k=tuple(range(27, 34)), paper_metrics=("mAP@all", "P@100"),
    train_script="train_tuberlin_ext.py", test_script="test_tuberlin_ext_zeroshot.py"))
_register(Setting(
    name="quickdraw/zeroshot", dataset_dir="QuickDraw", split_dir="zeroshot",
    naming_schemes=(QUICKDRAW_AUTHORS_NAMES, QUICKDRAW_PUBLIC_NAMES, SAKE_NAMES),
    n_seen=80, n_unseen=30, batch_size=110, sketch_divisor=10, warmup_epochs=4, teacher_lr_scale=1.0,
    # the released QuickDraw run validates on nothing: all training sketches train, the last epoch is the model
    use_cid_mask=False, val_list_by_default=False, val_fraction=0.0, checkpoint_dir="checkpoint/quickdraw/zeroshot",
    pq_m=(2,), pq_k=tuple(range(27, 34)), paper_metrics=("mAP@all", "P@200"),
    train_script="train_quickdraw_ext.py", test_script="test_quickdraw_ext_zeroshot.py"))
# The user's own folder tree, made into lists by `python -m data.from_folders ROOT` (SAKE-style names in
# ROOT/zeroshot/, --data_root ROOT): the Sketchy recipe; no cid_mask, since the semantic bias needs a
# class -> ImageNet relatedness that a custom set does not have (QuickDraw also trains without one).
_register(Setting(
    name="custom/zeroshot", dataset_dir="", split_dir="zeroshot", naming_schemes=(SAKE_NAMES,),
    n_seen=None, n_unseen=None, batch_size=210, sketch_divisor=3, warmup_epochs=10, teacher_lr_scale=1.0,
    use_cid_mask=False, val_list_by_default=True, checkpoint_dir="checkpoint/custom/zeroshot",
    pq_m=(2, 4), pq_k=tuple(range(22, 29)), paper_metrics=("mAP@all", "P@100"),
    train_script="train_custom.py", test_script="test_custom_zeroshot.py", custom=True))


def published_settings() -> list[Setting]:
    """The settings of the paper's table (every one but a dataset of your own)."""
    return [s for s in SETTINGS.values() if not s.custom]


def train_script_of(dataset: str) -> str:
    """The training script of a dataset (``sketchy`` -> ``train_sketchy_ext.py``)."""
    return next(s.train_script for n, s in SETTINGS.items() if n.split("/", 1)[0] == dataset)


def get_setting(name: str) -> Setting:
    try:
        return SETTINGS[name]
    except KeyError:
        raise UserError(f"unknown setting {name!r}; known: {', '.join(SETTINGS)}") from None


@dataclass(frozen=True)
class SettingPaths:
    """Resolved files of one setting under a data root."""

    setting: Setting
    root: Path                     # image paths in the lists are relative to this
    split: Path                    # the split dir (lists, class files, cid_mask.pickle)
    lists: dict = field(default_factory=dict)   # role -> Path (sketch_test may be missing)

    @property
    def class_file(self) -> Path:
        return self.split / "cname_cid.txt"

    @property
    def zero_class_file(self) -> Path:
        return self.split / "cname_cid_zero.txt"

    @property
    def cid_mask_file(self) -> Path:
        return self.split / "cid_mask.pickle"

    def list_file(self, role: str) -> Optional[Path]:
        return self.lists.get(role)


def resolve_paths(setting: Setting, data_root: str | Path) -> SettingPaths:
    """Find the setting's folders and list files under ``data_root``; one clear error if absent."""
    data_root = Path(data_root)
    root = data_root / setting.dataset_dir
    split = root / setting.split_dir
    if setting.custom and not split.is_dir():
        made_by = f"`python -m data.from_folders {root}` writes it from {root}/sketches/ and {root}/photos/"
        if not root.is_dir():
            raise UserError(f"dataset folder {root} (--data_root) does not exist: pass the folder that holds "
                            f"sketches/, photos/ and {setting.split_dir}/ ({made_by})")
        raise UserError(f"split folder {split} does not exist: {made_by}")
    if not root.is_dir():
        if data_root.resolve().name == setting.dataset_dir:
            parent = data_root.parent if data_root.parent != data_root else Path("..")
            raise UserError(
                f"dataset folder {root} does not exist: --data_root {data_root} seems to be the "
                f"{setting.dataset_dir} folder itself; pass the folder that holds it, --data_root {parent}")
        raise UserError(
            f"dataset folder {root} does not exist: create it and unpack the {setting.dataset_dir} package "
            f"there (README.md, section 'Datasets'), or point --data_root at the folder that holds "
            f"{setting.dataset_dir}/")
    if not split.is_dir():
        raise UserError(
            f"split folder {split} does not exist: the {setting.dataset_dir} package must contain "
            f"{setting.split_dir}/ with the list files (README.md, section 'Datasets')")
    looked_for: list[str] = []
    for scheme in setting.naming_schemes:
        if all((split / scheme[r]).is_file() for r in REQUIRED_ROLES):
            lists = {r: split / n for r, n in scheme.items() if (split / n).is_file()}
            paths = SettingPaths(setting=setting, root=root, split=split, lists=lists)
            for f in (paths.class_file, paths.zero_class_file):
                if not f.is_file():
                    raise UserError(f"class file {f} does not exist (it comes with {_source_of(setting, root)})")
            return paths
        looked_for.extend(scheme[r] for r in REQUIRED_ROLES)
    looked_for = list(dict.fromkeys(looked_for))      # schemes share some names (all_photo_filelist_*.txt)
    missing = [n for n in looked_for if not (split / n).is_file()]
    raise UserError(
        f"no complete set of list files in {split}: looked for {', '.join(looked_for)}; "
        f"missing {', '.join(missing)}" + (f" (they come with {_source_of(setting, root)})" if setting.custom else ""))


def _source_of(setting: Setting, root: Path) -> str:
    """Where a setting's list and class files come from."""
    if setting.custom:
        return f"`python -m data.from_folders {root}`"
    return f"the {setting.dataset_dir} package"
