"""Zero-shot SBIR test on Sketchy Ext (SAKE split, checkpoint/sketchy/zeroshot1); `--help` lists the flags."""
import functools

from engine.evaluate import main
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(functools.partial(main, setting_name="sketchy/zeroshot1"))
