"""Train SBKA on tuberlin; `--help` lists the flags, no flags = the released run."""
from engine.entry import train_entry   # reads the flags before torch loads, then trains
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(lambda argv: train_entry("tuberlin", argv))
