"""Zero-shot SBIR test on TU-Berlin Ext (checkpoint/tuberlin/zeroshot); `--help` lists the flags."""
import functools

from engine.evaluate import main
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(functools.partial(main, setting_name="tuberlin/zeroshot"))
