"""torch.hub entry point: a trained SBKA run as a Python object (engine/trained_run.py).

    import torch
    run = torch.hub.load(".", "sbka", source="local", run="checkpoint/sketchy/zeroshot1")
"""
dependencies = ["torch", "timm"]


def sbka(run: str = "checkpoint/sketchy/zeroshot1", device=None, checkpoint=None, batch_size: int = 32,
         workers: int = 0):
    """The trained run in folder ``run`` (its ``model_best.pth.tar`` unless ``checkpoint``), on ``device``
    (default: CUDA when present): ``embed_sketches``, ``embed_photos`` and ``rank`` (see TrainedRun)."""
    from engine.trained_run import TrainedRun

    return TrainedRun.load(run, checkpoint, device, batch_size, workers)
