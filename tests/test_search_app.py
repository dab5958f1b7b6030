"""The sketch-search app's API on a tiny generated run: rankings, galleries and their cache, refusals, concurrency.

A random-weight ``convnextv2_atto`` checkpoint in the trainer's format and a generated dataset: nothing is
trained. The reference rankings are recomputed here independently (plain NumPy on features embedded by
hand), not through the app's code.
"""
from __future__ import annotations

import http.client
import io
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("starlette", reason="the app's extras are not installed (pip install -r requirements-app.txt)")
pytest.importorskip("httpx", reason="starlette's test client needs httpx (pip install -r requirements-app.txt)")
pytest.importorskip("uvicorn", reason="the app's extras are not installed (pip install -r requirements-app.txt)")

import torch  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from app.gallery import cache_path, embed_with_cache, features_file_usable  # noqa: E402
from app.searcher import build_searcher, load_searcher, load_trained_student, suggested_stroke_width  # noqa: E402
from app.server import create_app, serve_in_thread  # noqa: E402
from data.transforms import test_transform as sketch_transform  # noqa: E402
from retrieval.feature_io import FeatureSet, save_features  # noqa: E402
from tests.fixtures import make_tree  # noqa: E402
from tests.helpers_retrieval import make_checkpoint  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.provenance import write_sidecar  # noqa: E402

SETTING = "sketchy/zeroshot1"


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def drawing(seed: int, size: int = 256) -> bytes:
    """A few black strokes on white, different for every seed."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        draw.line([tuple(p) for p in rng.integers(10, size - 10, (3, 2))], fill="black", width=5)
    return png_bytes(img)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(searcher, client, run dir, data root) on 2 unseen classes x 4 photos."""
    tmp = tmp_path_factory.mktemp("app")
    make_tree(tmp / "datasets", layout="sketchy", sketches=3, photos=4)
    make_checkpoint(tmp / "run", SETTING, n_seen=3)
    searcher = load_searcher(tmp / "run", "zero", tmp / "datasets", workers=0)
    return searcher, TestClient(create_app(searcher)), tmp / "run", tmp / "datasets"


@pytest.fixture(scope="module")
def trained(run):
    """The fixture run's student, loaded once for the tests that build other galleries with it."""
    return load_trained_student(run[2] / "model_best.pth.tar")


def reference_features(student: torch.nn.Module, images: list[Image.Image], img_size: int) -> np.ndarray:
    """The student's L2-normalised features, computed without the app (float64)."""
    t = sketch_transform(img_size)
    with torch.inference_mode():
        feats = student.embed(torch.stack([t(img.convert("RGB")) for img in images])).double().numpy()
    return feats


def gallery_images(searcher) -> list[Image.Image]:
    return [Image.open(searcher.gallery.root / p) for p in searcher.gallery.paths]


def test_search_ranks_like_an_independent_euclidean_ranking(run):
    searcher, client, _, _ = run
    query = drawing(1)
    answer = client.post("/api/search?k=8", content=query, headers={"content-type": "image/png"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    q = reference_features(searcher.run.student, [Image.open(io.BytesIO(query))], 32)[0]
    g = reference_features(searcher.run.student, gallery_images(searcher), 32)
    dist = np.linalg.norm(g - q, axis=1)
    order = np.argsort(dist, kind="stable")
    assert [r["index"] for r in body["results"]] == order.tolist()
    assert [r["rank"] for r in body["results"]] == list(range(1, 9))
    np.testing.assert_allclose([r["distance"] for r in body["results"]], dist[order], atol=2e-5)
    first = body["results"][0]
    assert first["url"] == f"/photo/{first['index']}"
    assert first["path"] == searcher.gallery.paths[first["index"]]
    assert first["label"] == f"unseen class {int(searcher.gallery.labels[first['index']])}"
    assert body["ms"] > 0
    # the same image as a multipart upload ranks identically; k cuts the list
    upload = client.post("/api/search?k=3", files={"file": ("q.png", query, "image/png")}).json()
    assert [r["index"] for r in upload["results"]] == order[:3].tolist()


def test_info_describes_the_run(run):
    searcher, client, _, _ = run
    info = client.get("/api/info").json()
    assert (info["setting"], info["model"], info["img_size"], info["device"]) == (SETTING, "convnextv2_atto", 32, "cpu")
    assert info["gallery"]["size"] == 8 and info["gallery"]["labelled"]
    assert info["gallery"]["classes"] == ["unseen class 0", "unseen class 1"]
    assert info["one_to_many"] is None and "results.json" in info["one_to_many_reason"]
    # the suggested pen survives the resize to the model's input: thick at 32 px, thin at the paper's 224 px
    assert info["stroke_width"] == 14 and suggested_stroke_width(64) == 7 and suggested_stroke_width(224) == 3
    page = client.get("/")
    assert page.status_code == 200 and '<canvas id="pad"' in page.text
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.content == client.get("/static/favicon.svg").content and 'href="/static/favicon.svg"' in page.text


def test_precision_at_k_for_a_named_class(run):
    _, client, _, _ = run
    body = client.post("/api/search?k=5&class=unseen%20class%201", content=drawing(2)).json()
    labels = [r["label"] for r in body["results"]]
    assert body["precision_at_k"] == pytest.approx(labels.count("unseen class 1") / 5)
    assert body["class"] == "unseen class 1"


@pytest.mark.parametrize("url", [
    "/photo/8", "/photo/-1", "/photo/abc", "/thumb/8", "/photo/..%2F..%2Fmodel_best.pth.tar",
    "/photo/%2Fetc%2Fpasswd", "/static/..%2F..%2Fsearch_app.py", "/static/%2e%2e/server.py",
    "/256x256/photo/tx_000000000000_ready/unseen%20class%200/0.jpg"])
def test_only_gallery_photos_are_served(run, url):
    _, client, _, _ = run
    assert client.get(url).status_code == 404


def test_photo_and_thumbnail_of_a_gallery_item(run):
    searcher, client, _, _ = run
    photo = client.get("/photo/3")
    assert photo.status_code == 200
    assert photo.content == (searcher.gallery.root / searcher.gallery.paths[3]).read_bytes()
    thumb = client.get("/thumb/3")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).format == "JPEG"


@pytest.mark.parametrize("query, params, status, words", [
    (b"definitely not an image", "", 415, "not an image"),
    (b"", "", 400, "no image"),
    (b"\x89PNG" + bytes(11 * 2**20), "", 413, "MB"),
    ("wide", "", 413, "4096 px"),
    ("white", "", 400, "empty"),
    ("transparent", "", 400, "empty"),
    ("ok", "?k=0", 400, "k must be between 1 and 200"),
    ("ok", "?k=201", 400, "k must be between 1 and 200"),
    ("ok", "?k=ten", 400, "integer"),
    ("ok", "?one_to_many=1", 400, "not offered"),
    ("ok", "?one_to_many=maybe", 400, "one_to_many must be 1 or 0"),
    ("ok", "?class=zebra", 400, "unknown class"),
])
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(run, query, params, status, words):
    _, client, _, _ = run
    samples = {"wide": png_bytes(Image.new("1", (5000, 8), 1)), "white": png_bytes(Image.new("RGB", (64, 64), "white")),
               "transparent": png_bytes(Image.new("RGBA", (64, 64), (0, 0, 0, 0))), "ok": drawing(3)}
    body = samples.get(query, query) if isinstance(query, str) else query
    answer = client.post(f"/api/search{params}", content=body, headers={"content-type": "image/png"})
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"]
    assert client.post("/api/search?k=2", content=drawing(3)).status_code == 200


def test_multipart_without_a_file_and_oversized_upload_are_refused(run):
    _, client, _, _ = run
    no_file = client.post("/api/search", files={"picture": ("q.png", drawing(4), "image/png")})
    assert no_file.status_code == 400 and "'file'" in no_file.json()["error"]
    assert client.post("/api/search", data={"note": "x"}).status_code == 415      # a form body is no image
    huge = client.post("/api/search", files={"file": ("big.png", b"\x89PNG" + bytes(11 * 2**20), "image/png")})
    assert huge.status_code == 413
    assert client.post("/api/search", files={"file": ("q.png", drawing(4), "image/png")}).status_code == 200


def test_features_file_is_used_only_for_its_own_checkpoint(tmp_path):
    weights = "a" * 64
    fake = np.eye(8, 320, dtype=np.float32)
    features = tmp_path / "features_zero.pickle"
    save_features(FeatureSet(fake, np.zeros(8, np.int64), fake[:2], np.zeros(2, np.int64)), features)
    assert features_file_usable(features, weights, 8)          # no sidecar: the photo count decides
    assert not features_file_usable(features, weights, 9)
    write_sidecar(features, {"student_sha256": weights})
    assert features_file_usable(features, weights, 9)          # the sidecar decides
    assert not features_file_usable(features, "b" * 64, 8)
    assert not features_file_usable(tmp_path / "absent.pickle", weights, 8)
    lists = {"photo_zero": {"file": "p.txt", "lines": 8, "sha256": "c" * 64}}
    write_sidecar(features, {"student_sha256": weights, "lists": lists})
    assert features_file_usable(features, weights, 8, lists)
    changed = {"photo_zero": {**lists["photo_zero"], "sha256": "d" * 64}}      # the zero list was edited since
    assert not features_file_usable(features, weights, 8, changed)


def test_zero_gallery_reads_a_matching_features_file(run, trained, tmp_path):
    searcher, _, run_dir, data_root = run
    other = tmp_path / "run"
    rng = np.random.default_rng(0)
    fake = rng.standard_normal((8, 320)).astype(np.float32)
    fake /= np.linalg.norm(fake, axis=1, keepdims=True)
    save_features(FeatureSet(fake, np.zeros(8, np.int64), fake[:2], np.zeros(2, np.int64)),
                  other / "features_zero.pickle")
    from data.registry import get_setting, resolve_paths
    from engine.folder_checks import zero_lists

    lists = zero_lists(resolve_paths(get_setting(SETTING), data_root))   # as the test scripts' sidecars record
    write_sidecar(other / "features_zero.pickle", {"student_sha256": trained.weights_sha256, "lists": lists})
    used = build_searcher(trained, other, "zero", data_root)
    np.testing.assert_array_equal(used.gallery.features, fake)
    assert "features from" in used.gallery.source
    write_sidecar(other / "features_zero.pickle", {"student_sha256": "0" * 64})     # made by other weights
    embedded = build_searcher(trained, other, "zero", data_root)
    np.testing.assert_allclose(embedded.gallery.features, searcher.gallery.features, atol=1e-6)


def photo(path: Path, seed: int, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, format=fmt)


def test_folder_cache_reuses_and_re_embeds_only_what_changed(tmp_path):
    folder, run_dir = tmp_path / "photos", tmp_path / "run"
    photo(folder / "a.jpg", 0, "JPEG")
    photo(folder / "sub" / "b.png", 1, "PNG")
    photo(folder / "sub" / "deeper" / "c.webp", 2, "WEBP")
    (folder / "notes.txt").write_text("not a photo")
    from app.images import find_photos

    rel = find_photos(folder)
    assert rel == ["a.jpg", "sub/b.png", "sub/deeper/c.webp"]
    calls: list[list[str]] = []

    def embed(root, paths, desc=""):
        calls.append(list(paths))
        feats = np.stack([np.asarray(Image.open(root / p).convert("RGB"), np.float32).mean((0, 1)) for p in paths])
        return feats, np.ones(len(paths), bool)

    cache = cache_path(run_dir, folder)
    first = embed_with_cache(folder, rel, cache, "w1", embed)
    assert calls == [rel] and first.reused == 0 and cache.is_file()
    with np.load(cache, allow_pickle=False) as z:                     # a plain .npz: no pickle inside
        assert z["paths"].tolist() == rel and z["features"].shape == (3, 3)
    second = embed_with_cache(folder, rel, cache, "w1", embed)
    assert len(calls) == 1 and second.reused == 3
    np.testing.assert_array_equal(second.features, first.features)
    photo(folder / "sub" / "b.png", 7, "PNG")                          # changed content (size or mtime)
    os.utime(folder / "sub" / "b.png", ns=(1, 1))
    photo(folder / "new.jpg", 3, "JPEG")
    rel = find_photos(folder)
    third = embed_with_cache(folder, rel, cache, "w1", embed)
    assert calls[-1] == ["new.jpg", "sub/b.png"] and third.reused == 2
    expected, _ = embed(folder, rel)
    np.testing.assert_allclose(third.features, expected)
    embed_with_cache(folder, rel, cache, "w2", embed)                  # other weights: everything again
    assert calls[-1] == rel
    cache.write_bytes(b"garbage")                                      # a broken cache is rebuilt, with a warning
    with pytest.warns(UserWarning, match="unreadable"):
        embed_with_cache(folder, rel, cache, "w2", embed)
    assert calls[-1] == rel


def test_an_interrupted_first_embedding_keeps_its_finished_chunks(tmp_path, monkeypatch):
    import app.gallery as gallery_module

    monkeypatch.setattr(gallery_module, "EMBED_CHUNK", 2)
    folder = tmp_path / "photos"
    for i in range(5):
        photo(folder / f"p{i}.png", i, "PNG")
    rel = [f"p{i}.png" for i in range(5)]
    cache = cache_path(tmp_path / "run", folder)
    calls: list[list[str]] = []

    def embed(root, paths, desc=""):
        calls.append(list(paths))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.full((len(paths), 4), float(len(calls)), np.float32), np.ones(len(paths), bool)

    with pytest.raises(KeyboardInterrupt):
        embed_with_cache(folder, rel, cache, "w", embed)
    resumed = embed_with_cache(folder, rel, cache, "w", embed)
    assert calls[2:] == [["p2.png", "p3.png"], ["p4.png"]] and resumed.reused == 2
    assert resumed.features[:, 0].tolist() == [1, 1, 3, 3, 4]


def test_a_missing_zero_photo_is_named(trained, tmp_path):
    make_tree(tmp_path / "datasets", layout="sketchy", sketches=2, photos=2)
    photo_dir = tmp_path / "datasets" / "Sketchy" / "256x256" / "photo" / "tx_000000000000_ready"
    (photo_dir / "unseen class 1" / "1.jpg").unlink()
    with pytest.raises(UserError, match=r"unseen class 1/1.jpg .*all_photo_filelist_zero.txt.* is missing"):
        build_searcher(trained, tmp_path / "run", "zero", tmp_path / "datasets")


def test_folder_gallery_end_to_end_skips_unreadable_photos(run, trained, tmp_path):
    searcher, _, run_dir, _ = run
    folder = tmp_path / "photos"
    for i in range(3):
        photo(folder / f"p{i}.jpg", i, "JPEG")
    (folder / "broken.jpg").write_bytes(b"not really a jpeg")
    other = tmp_path / "run"
    first = build_searcher(trained, other, str(folder))
    assert first.gallery.paths == ["p0.jpg", "p1.jpg", "p2.jpg"] and not first.gallery.labelled
    assert "unreadable" in first.gallery.source and "broken.jpg" in first.gallery.source
    again = build_searcher(trained, other, str(folder))
    assert "3 from the cache" in again.gallery.source
    reference = reference_features(searcher.run.student, [Image.open(folder / p) for p in again.gallery.paths], 32)
    np.testing.assert_allclose(again.gallery.features, reference, atol=1e-5)
    body = TestClient(create_app(again)).post("/api/search?k=3", content=drawing(5)).json()
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2] and body["results"][0]["label"] is None


def test_one_to_many_at_the_selected_m_k(run, trained, tmp_path):
    searcher, _, run_dir, data_root = run
    other = tmp_path / "run"
    other.mkdir()
    for cache in run_dir.glob("app_gallery_*.npz"):
        (other / cache.name).write_bytes(cache.read_bytes())
    (other / "results.json").write_text(json.dumps({"one_to_many": {"alpha": 0.8, "selected": {"M": 2, "K": 3}}}))
    otm_searcher = build_searcher(trained, other, "zero", data_root)
    assert otm_searcher.one_to_many.wait(60), otm_searcher.one_to_many.status
    client = TestClient(create_app(otm_searcher))
    assert client.get("/api/info").json()["one_to_many"] == {"M": 2, "K": 3, "alpha": 0.8, "status": "ready"}
    query = drawing(6)
    body = client.post("/api/search?k=8&one_to_many=1", content=query).json()
    assert body["one_to_many"] is True
    # reference: per subspace the nearest codeword of each photo, squared distance of the query to it, blended
    q = reference_features(searcher.run.student, [Image.open(io.BytesIO(query))], 32)[0]
    g = otm_searcher.gallery.features.astype(np.float64)
    words = otm_searcher.one_to_many.codewords.numpy().astype(np.float64)      # (M, K, D/M)
    sub = g.shape[1] // 2
    cluster = np.zeros(len(g))
    for s in range(2):
        gs, qs = g[:, s * sub:(s + 1) * sub], q[s * sub:(s + 1) * sub]
        nearest = np.argmin(((gs[:, None, :] - words[s][None]) ** 2).sum(-1), axis=1)
        cluster += ((words[s][nearest] - qs) ** 2).sum(-1)
    blended = 0.8 * cluster + 0.2 * np.linalg.norm(g - q, axis=1)
    assert [r["index"] for r in body["results"]] == np.argsort(blended, kind="stable").tolist()
    np.testing.assert_allclose([r["distance"] for r in body["results"]], np.sort(blended), atol=1e-4)


def test_compiled_query_path_ranks_as_the_eager_one(run, trained, monkeypatch):
    """search_app.py compiles the query forward pass: the same features (to float rounding) and the same
    ranking; where compiling fails, the searcher says why and stays eager."""
    from app.searcher import SketchSearcher
    from engine.trained_run import TrainedRun

    searcher = run[0]
    def fresh_run():            # compiling changes the run's query path: not the shared fixture's
        return TrainedRun(trained.student, trained.config, trained.checkpoint, trained.device)

    compiled = SketchSearcher(fresh_run(), searcher.gallery)
    assert compiled.compile_queries() == "" and compiled.compiled
    for seed in (1, 2):
        img = Image.open(io.BytesIO(drawing(seed))).convert("RGB")
        torch.testing.assert_close(compiled.embed(img), searcher.embed(img), atol=1e-5, rtol=1e-5)
        got, want = compiled.search(drawing(seed), 8)["results"], searcher.search(drawing(seed), 8)["results"]
        assert [r["index"] for r in got] == [r["index"] for r in want]
        np.testing.assert_allclose([r["distance"] for r in got], [r["distance"] for r in want], atol=1e-5)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(torch, "compile", no_compiler)
    eager = SketchSearcher(fresh_run(), searcher.gallery)
    assert "no C++ compiler" in eager.compile_queries() and not eager.compiled
    assert eager.search(drawing(1), 8)["results"] == searcher.search(drawing(1), 8)["results"]


def test_selected_m_k_of_other_weights_is_not_offered(tmp_path):
    """results.json records the weights of its features (provenance.features.student_sha256): a selection
    computed with other weights than the checkpoint's is not used; the same weights are."""
    from app.searcher import selected_one_to_many

    results = {"one_to_many": {"alpha": 0.8, "selected": {"M": 2, "K": 3}},
               "provenance": {"features": {"student_sha256": "a" * 64}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    chosen, why = selected_one_to_many(tmp_path, "b" * 64)
    assert chosen is None and "other weights" in why
    assert selected_one_to_many(tmp_path, "a" * 64) == ((2, 3, 0.8), "")


# ------------------------------------------------------------------------------------------ real server
@pytest.fixture(scope="module")
def server(run):
    """The app served by uvicorn on 127.0.0.1 in a thread: (host, port)."""
    srv, thread, port = serve_in_thread(create_app(run[0]))
    yield "127.0.0.1", port
    srv.should_exit = True
    thread.join(10)


def post(host: str, port: int, path: str, body: bytes) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request("POST", path, body=body, headers={"Content-Type": "image/png"})
    resp = conn.getresponse()
    status, data = resp.status, json.loads(resp.read())
    conn.close()
    return status, data


@pytest.mark.parametrize("raw", ["/photo/../model_best.pth.tar", "/photo/../../etc/passwd", "//etc/passwd",
                                 "/static/../../search_app.py", "/photo/0/../../tests/conftest.py",
                                 "/thumb/%2e%2e%2f%2e%2e%2fsearch_app.py"])
def test_raw_traversal_paths_get_404_from_the_real_server(server, raw):
    conn = http.client.HTTPConnection(*server, timeout=10)
    conn.putrequest("GET", raw, skip_accept_encoding=True)       # sent exactly as written, no normalisation
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 404
    assert b"root:" not in resp.read()
    conn.close()


def test_fifty_concurrent_requests_are_all_answered_correctly(server):
    queries = [drawing(100 + i) for i in range(5)]
    expected = [[r["index"] for r in post(*server, "/api/search?k=5", q)[1]["results"]] for q in queries]
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(lambda i: (i, post(*server, "/api/search?k=5", queries[i % 5])), range(50)))
    for i, (status, body) in answers:
        assert status == 200
        assert [r["index"] for r in body["results"]] == expected[i % 5]


# ------------------------------------------------------------------------------------------ command line
def test_command_line_defaults_to_loopback_and_explains_bad_starts(run, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))   # undone after the test
    import search_app

    assert search_app.build_parser().parse_args(["--resume_dir", "r"]).host == "127.0.0.1"
    with pytest.raises(UserError, match="checkpoint .* does not exist"):
        search_app.main(["--resume_dir", str(tmp_path / "nothing"), "--port", "0"])
    with pytest.raises(UserError, match="neither 'zero' nor a folder"):
        search_app.main(["--resume_dir", str(run[2]), "--gallery", str(tmp_path / "absent"), "--port", "0",
                         "--device", "cpu"])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            search_app.main(["--resume_dir", str(run[2]), "--port", str(busy.getsockname()[1])])
