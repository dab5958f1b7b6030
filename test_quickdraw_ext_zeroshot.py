"""Zero-shot SBIR test on QuickDraw Ext (checkpoint/quickdraw/zeroshot); `--help` lists the flags."""
import functools

from engine.evaluate import main
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(functools.partial(main, setting_name="quickdraw/zeroshot"))
