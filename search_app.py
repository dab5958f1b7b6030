"""Draw a sketch, get photos: a local web app over a trained run and a photo collection.

    python search_app.py --resume_dir checkpoint/demo --data_root datasets/Demo
    python search_app.py --resume_dir RUN --gallery ~/Pictures
    python search_app.py --resume_dir RUN --queries SKETCHES --gallery zero --k 20 --out OUT   # batch, no server

Needs the optional extras: ``pip install -r requirements-app.txt`` (``make app`` does it).
"""
from __future__ import annotations

import argparse
import ipaddress
import socket
from pathlib import Path
from typing import Optional, Sequence

from utils.cli import ArgumentParser  # importing utils first sets OpenMP up for torch (utils/runtime.py)
from utils.cpus import usable_cores
from utils.errors import UserError, run_cli
from utils.run_files import BATCH_OUTPUTS, BEST_CHECKPOINT_FILE


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Sketch search web app: draw (or upload) a sketch and get the closest "
                                   "photos of a gallery, ranked by a trained SBKA student.")
    p.add_argument("--resume_dir", required=True, help=f"the run directory (holds {BEST_CHECKPOINT_FILE}; "
                                                       "the gallery cache is written there)")
    p.add_argument("--checkpoint", default=None,
                   help=f"student checkpoint (default: <resume_dir>/{BEST_CHECKPOINT_FILE})")
    p.add_argument("--gallery", default="zero",
                   help="'zero': the setting's unseen-class test photos; or a folder of photos (JPEG/PNG/WebP, "
                        "searched recursively)")
    p.add_argument("--data_root", default="datasets", help="folder holding the dataset (for --gallery zero)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (anything but loopback exposes the "
                                                       "gallery to the network)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when present)")
    p.add_argument("--batch_size", type=int, default=32, help="photos per batch when embedding a gallery")
    p.add_argument("--workers", type=int, default=min(2, usable_cores()), help="image loader workers")
    p.add_argument("--no_compile", action="store_true",
                   help="run queries eagerly (by default the query forward pass is compiled at start, once)")
    batch = p.add_argument_group("batch mode (no server): rank a folder of query sketches, write CSV/JSON/HTML")
    batch.add_argument("--queries", default=None,
                       help="folder of query sketches (searched recursively; DIR/<class>/* gives them labels)")
    batch.add_argument("--out", default=None, help=f"folder receiving {BATCH_OUTPUTS}")
    batch.add_argument("--k", type=int, default=20, help="photos kept per query")
    batch.add_argument("--chunk", type=int, default=1024, help="queries per distance block (bounds memory)")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")
    return p


def batch_main(args: argparse.Namespace) -> None:
    """``--queries``: the batch search (app/batch.py), without a server or the app's web extras."""
    if args.out is None:
        raise UserError(f"--queries needs --out FOLDER to receive {BATCH_OUTPUTS}")
    if args.batch_size < 1 or args.workers < 0:
        raise UserError("--batch_size must be at least 1 and --workers 0 or more")
    from app.batch import batch_search
    from engine.trained_run import TrainedRun

    run = TrainedRun.load(args.resume_dir, args.checkpoint, args.device, args.batch_size, args.workers)
    batch_search(run, Path(args.resume_dir), Path(args.queries), args.gallery, Path(args.data_root), args.k,
                 Path(args.out), args.chunk)


def check_port(host: str, port: int) -> None:
    """Fail before the (slow) model load when the address cannot be bound."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise UserError(f"--host {host} is not an address of this machine") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port") from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    if args.queries is not None:
        return batch_main(args)
    if args.out is not None:
        raise UserError("--out is for the batch mode: add --queries FOLDER (or leave --out out to start the app)")
    from app.searcher import load_searcher       # the core dependencies first: without torch the extras won't help
    from utils.distributed import select_device

    try:
        import uvicorn

        from app.server import create_app
    except ImportError as exc:
        raise UserError(f"the app needs its optional extras ({exc.name} is missing): "
                        "pip install -r requirements-app.txt, or run `make app`") from None

    if args.batch_size < 1 or args.workers < 0:
        raise UserError("--batch_size must be at least 1 and --workers 0 or more")
    check_port(args.host, args.port)
    device = select_device(args.device)
    from utils.precision import exact_float32

    exact_float32()     # no TF32, as in evaluation: the same ranking on any card
    searcher = load_searcher(Path(args.resume_dir), args.gallery, Path(args.data_root),
                             Path(args.checkpoint) if args.checkpoint else None, device,
                             args.batch_size, args.workers)
    if not args.no_compile:
        print("compiling the query path (once, some tens of seconds; --no_compile skips it)", flush=True)
        why_not = searcher.compile_queries()
        if why_not:
            print(f"note: queries run eagerly ({why_not})")
    info = searcher.info()
    print(f"gallery: {info['gallery']['source']}")
    otm = info["one_to_many"]
    print("one-to-many: " + (f"M={otm['M']}, K={otm['K']} (codewords fitted in the background)" if otm
                             else f"not offered ({info['one_to_many_reason']})"))
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host}: anyone who can reach this machine can search the gallery")
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Sketch search is running at http://{shown}:{args.port}/  (Ctrl+C stops it)", flush=True)
    uvicorn.run(create_app(searcher), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    run_cli(main)
