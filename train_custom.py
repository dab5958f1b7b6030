"""Train SBKA on your own folder tree (`python -m data.from_folders ROOT` first); `--help` lists the flags."""
from engine.train import main
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(lambda argv: main("custom", argv))
