"""Train SBKA on your own folder tree (`python -m data.from_folders ROOT` first); `--help` lists the flags."""
from engine.entry import train_entry   # reads the flags before torch loads, then trains
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(lambda argv: train_entry("custom", argv))
