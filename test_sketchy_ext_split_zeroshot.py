"""Zero-shot SBIR test on Sketchy split (Yelamarthi et al. split, checkpoint/sketchy/zeroshot2); `--help` lists the flags."""
import functools

from engine.entry import test_entry   # reads the flags before torch loads, then tests
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(functools.partial(test_entry, setting_name="sketchy/zeroshot2"))
