"""Train SBKA on tuberlin; `--help` lists the flags, no flags = the released run."""
from engine.train import main
from utils.errors import run_cli

if __name__ == "__main__":
    run_cli(lambda argv: main("tuberlin", argv))
