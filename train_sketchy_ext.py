"""Train SBKA on sketchy (--zero_version zeroshot1|zeroshot2); `--help` lists the flags, no flags = the released run."""
from engine.entry import train_entry   # reads the flags before torch loads, then trains
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(lambda argv: train_entry("sketchy", argv))
