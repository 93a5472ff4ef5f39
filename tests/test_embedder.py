"""The appearance embedding: the runtime's one batch per photo, the records' field, train-embedder's parts."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetile.runtime.backends import create_backend
from edgetile.runtime.detector import DetectConfig, Detector
from edgetile.runtime.embedder import META_KEYS, Embedder
from edgetile.runtime.embedding import DIM, decode_embedding, similarity
from edgetile.runtime.results import Detections
from edgetile.runtime.verifier import CropConfig, Verifier
from onnx_models import red_blob_model, red_crop_classifier

pytest.importorskip("onnxruntime")

GREEN = (70, 110, 60)
RED = (0, 0, 255)
BLUE = (255, 60, 0)
#: Crops exactly the box, so the colour embedder sees only the object.
TIGHT = {META_KEYS["dim"]: str(DIM), META_KEYS["context"]: "1.0", META_KEYS["min_side"]: "8"}


def colour_embedder(path, dim=DIM, out_dim=None, input_hw=(32, 32), batch=None, extra_meta=None):
    """A real ONNX embedder: the crop's mean RGB through a fixed random linear map to dim values, L2
    normalised; crops of one colour get one vector. out_dim makes the output disagree with the metadata."""
    rng = np.random.default_rng(7)
    n = out_dim or dim
    h, w = input_hw
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, n)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.normal(size=(n,)).astype(np.float32) * 0.1, "bias"),
    ]
    nodes = [
        helper.make_node("GlobalAveragePool", ["images"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["rgb"], axis=1),
        helper.make_node("MatMul", ["rgb", "W"], ["lin"]),
        helper.make_node("Add", ["lin", "bias"], ["raw"]),
        helper.make_node("LpNormalization", ["raw"], ["embeddings"], axis=1, p=2),
    ]
    b = batch if batch is not None else "batch"
    graph = helper.make_graph(
        nodes,
        "colour_embedder",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [b, 3, h, w])],
        [helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, [b, n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {**TIGHT, META_KEYS["dim"]: str(dim), META_KEYS["threshold"]: "0.9", **(extra_meta or {})}
    for k, v in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=k, value=str(v)))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class CountingBackend:
    """Wraps a real backend and counts its inference calls."""

    def __new__(cls, path):
        be = create_backend("onnxruntime", path)
        calls = []
        real = be.infer

        def infer(batch):
            calls.append(batch.shape[0])
            return real(batch)

        be.infer = infer
        be.calls = calls
        return be


def photo(w=800, h=400, objects=()):
    img = np.full((h, w, 3), GREEN, np.uint8)
    for (x1, y1, x2, y2), colour in objects:
        img[y1:y2, x1:x2] = colour
    return img


@pytest.fixture
def embedder_path(tmp_path):
    return colour_embedder(tmp_path / "embed.onnx")


# --------------------------------------------------------------------------------------------------- runtime


def test_embedder_reads_its_settings_from_the_model(embedder_path):
    with Embedder(embedder_path) as e:
        assert (e.threshold, e.crop, e.input_hw, e.fixed_batch) == (0.9, CropConfig(1.0, 8), (32, 32), None)


def test_the_detector_embeds_every_detection_of_a_photo_in_one_batch_after_the_merge(tmp_path, embedder_path):
    objects = [((100 + 120 * i, 100, 160 + 120 * i, 180), RED if i % 2 else BLUE) for i in range(5)]
    img = photo(objects=objects)
    model = red_blob_model(tmp_path / "red.onnx")
    embedder = Embedder(CountingBackend(embedder_path))
    cfg = DetectConfig(tile=256, overlap=0.25, conf=0.05)
    with Detector(str(model), config=cfg) as plain:
        before = plain.detect(img)
    with Detector(str(model), config=cfg, embedder=embedder) as det:
        timings: dict[str, float] = {}
        after = det.detect(img, timings)
        det.detect(img)
    assert len(before) > 1
    assert embedder.backend.calls == [len(before), len(before)]  # every detection at once, per photo
    assert "embed" in timings
    np.testing.assert_array_equal(after.xyxy, before.xyxy)  # the embedder adds, never removes
    vectors = np.stack([decode_embedding(t) for t in after.data["embedding"]])
    assert vectors.shape == (len(before), DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)


def test_crops_of_one_colour_embed_alike_and_of_another_apart(embedder_path):
    img = photo(
        objects=[((100, 100, 140, 180), RED), ((300, 100, 340, 180), RED), ((500, 100, 540, 180), BLUE)]
    )
    dets = Detections([[100, 100, 140, 180], [300, 100, 340, 180], [500, 100, 540, 180]], [0.9] * 3, [0] * 3)
    with Embedder(embedder_path) as e:
        texts = e.embed(img, dets).data["embedding"]
    assert similarity(texts[0], texts[1]) > 0.999
    assert similarity(texts[0], texts[2]) < 0.9


def test_the_verifier_runs_first_and_only_what_it_keeps_is_embedded(tmp_path, embedder_path):
    tight = {"edgetile_verifier_context": "1.0", "edgetile_verifier_min_side": "8"}
    classifier = red_crop_classifier(
        tmp_path / "v.onnx", extra_meta={**tight, "edgetile_verifier_threshold": "0.5"}
    )
    img = photo(objects=[((100, 100, 140, 180), RED), ((300, 100, 340, 180), BLUE)])
    dets = Detections([[100, 100, 140, 180], [300, 100, 340, 180]], [0.9, 0.8], [0, 0])
    with Verifier(classifier) as v, Embedder(CountingBackend(embedder_path)) as e:
        kept = e.embed(img, v.verify(img, dets))
        assert e.backend.calls == [1] and len(kept.data["embedding"]) == 1
    assert kept.xyxy[0, 0] == 100


def test_no_detections_no_model_call(embedder_path):
    with Embedder(CountingBackend(embedder_path)) as e:
        out = e.embed(photo(), Detections.empty())
        assert e.backend.calls == [] and out.data["embedding"] == []


def test_a_fixed_batch_embedder_runs_in_chunks_of_its_batch(tmp_path):
    path = colour_embedder(tmp_path / "e.onnx", batch=2)
    img = photo(objects=[((10 + 50 * i, 10, 40 + 50 * i, 40), RED) for i in range(3)])
    dets = Detections([[10 + 50 * i, 10, 40 + 50 * i, 40] for i in range(3)], [0.5] * 3, [0] * 3)
    with Embedder(CountingBackend(path)) as e:
        out = e.embed(img, dets)
        assert e.backend.calls == [2, 2] and len(out.data["embedding"]) == 3


@pytest.mark.parametrize(
    "make, match",
    [
        # a detector given as an embedder: no embedder metadata
        (lambda p: red_blob_model(p), "expected an embedding model from 'edgetile train-embedder'"),
        # vectors of another length than the records hold
        (lambda p: colour_embedder(p, dim=64), "expected embeddings of 128 values, found 64"),
        # an unreadable threshold
        (lambda p: colour_embedder(p, extra_meta={META_KEYS["threshold"]: "high"}), "expected a number"),
        # a threshold that is no cosine similarity
        (lambda p: colour_embedder(p, extra_meta={META_KEYS["threshold"]: "1.5"}), r"in \[-1, 1\]"),
    ],
)
def test_embedder_refuses_what_it_cannot_use(tmp_path, make, match):
    path = make(tmp_path / "bad.onnx")
    with pytest.raises(ValueError, match=match):
        Embedder(path)


def test_an_output_that_disagrees_with_the_metadata_is_an_error_naming_shapes(tmp_path):
    img = photo(objects=[((100, 100, 140, 180), RED)])
    dets = Detections([[100, 100, 140, 180]], [0.9], [0])
    with Embedder(colour_embedder(tmp_path / "e.onnx", out_dim=16)) as e:
        with pytest.raises(ValueError, match=r"expected an output of shape \(1, 128\).*found \(1, 16\)"):
            e.embed(img, dets)


def _detect(tmp_path, *extra):
    cmd = [sys.executable, "-m", "edgetile.runtime.cli", "detect", str(tmp_path / "p.png"), "--model"]
    cmd += [str(red_blob_model(tmp_path / "red.onnx")), "--tile", "256", "--quiet", *map(str, extra)]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_detect_command_with_embed_writes_decodable_embeddings(tmp_path, embedder_path):
    img = photo(objects=[((100, 100, 160, 180), RED), ((300, 200, 360, 280), RED)])
    cv2.imwrite(str(tmp_path / "p.png"), img)
    r = _detect(tmp_path, "--out", tmp_path / "o", "--embed", embedder_path)
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "o" / "detections.json").read_text())[0]
    dets = record["detections"]
    assert len(dets) >= 2 and "embed" in record["timings_ms"]
    vectors = [decode_embedding(d["embedding"]) for d in dets]
    assert all(v.shape == (DIM,) for v in vectors)
    assert similarity(vectors[0], vectors[1]) > 0.99  # two red people: one colour
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert len(run["settings"]["embed"]) == 64  # --resume tells another embedder by its SHA-256


@pytest.mark.parametrize(
    "bad, expect",
    [
        ("missing", "--embed: file not found"),
        ("garbage", "--embed: model: not a loadable ONNX model"),
        ("detector", "--embed: embedder"),
    ],
)
def test_detect_refuses_a_bad_embedder_in_one_line(tmp_path, bad, expect):
    cv2.imwrite(str(tmp_path / "p.png"), photo())
    path = tmp_path / f"{bad}.onnx"
    if bad == "garbage":
        path.write_bytes(b"this is not an ONNX model")
    elif bad == "detector":
        red_blob_model(path)
    r = _detect(tmp_path, "--out", tmp_path / "o", "--embed", path)
    assert r.returncode == 2, r.stderr
    assert expect in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_engine_builder_carries_the_embedders_settings(embedder_path):
    from edgetile.export.engine import onnx_facts

    facts = onnx_facts(embedder_path)
    assert (facts.input_name, facts.batch, facts.input_hw) == ("images", None, (32, 32))
    assert facts.extra == {**TIGHT, META_KEYS["threshold"]: "0.9"}


def test_train_verifier_refuses_embed(tmp_path, capsys):
    from edgetile.runtime.cli import main

    code = main(
        ["train-verifier", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--embed", "e.onnx"]
    )
    assert code == 2 and "--embed: expected none here" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_with_embed_writes_records_with_embeddings(tmp_path, embedder_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    (data / "classes.txt").write_text("person\n")
    cv2.imwrite(str(data / "images" / "a.png"), photo(w=600, objects=[((100, 100, 160, 160), RED)]))
    (data / "labels" / "a.txt").write_text(f"0 {130 / 600} {130 / 400} {60 / 600} {60 / 400}\n")
    cmd = [sys.executable, "-m", "edgetile.runtime.cli", "eval", "--data", data, "--model"]
    cmd += [red_blob_model(tmp_path / "red.onnx"), "--tile", "256", "--out", tmp_path / "ev", "--quiet"]
    r = subprocess.run([*map(str, cmd), "--embed", str(embedder_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    photos = json.loads((tmp_path / "ev" / "detections.json").read_text())
    assert photos[0]["detections"] and all(
        decode_embedding(d["embedding"]).shape == (DIM,) for d in photos[0]["detections"]
    )


@pytest.mark.slow
def test_serve_with_embed_stores_embeddings(tmp_path, embedder_path):
    from serve_process import ServeProcess, person_photo, write_jpeg

    drop = tmp_path / "drop"
    drop.mkdir()
    write_jpeg(drop / "p.jpg", person_photo(0))
    model = red_blob_model(tmp_path / "red.onnx")
    opts = ["--tile", "256", "--settle", "0", "--poll", "0.1", "--embed", embedder_path]
    d = ServeProcess(
        tmp_path, "--model", model, *opts, "--watch", drop, "--state", tmp_path / "state"
    ).start()
    try:
        d.wait_for(lambda: len(d.json("/detections")["items"]) == 1, what="the photo's result")
        dets = d.json("/detections")["items"][0]["detections"]
        assert dets and all(decode_embedding(x["embedding"]).shape == (DIM,) for x in dets)
    finally:
        assert d.terminate() == 0, d.log()


# --------------------------------------------------------------------------------------------------- training


torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_metric_learning")
from edgetile.train import embedder as te  # noqa: E402  (needs torch: after the skip)
from edgetile.train.budget import BudgetError  # noqa: E402


@pytest.mark.parametrize(
    "sim, same, want_thr, want_acc",
    [
        ([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0], 0.55, 1.0),  # separable: the threshold halfway
        ([0.9, 0.2, 0.6, 0.1], [1, 1, 0, 0], 0.75, 0.75),  # one same pair below a different one
        ([0.5, 0.5, 0.5, 0.1], [1, 0, 1, 0], 0.3, 0.75),  # ties go together: never split equal scores
    ],
)
def test_best_threshold(sim, same, want_thr, want_acc):
    thr, acc = te.best_threshold(np.array(sim), np.array(same, bool))
    assert thr == pytest.approx(want_thr) and acc == pytest.approx(want_acc)


def test_roc_auc_is_the_chance_a_same_pair_scores_above_a_different_one():
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=200), rng.random(200) < 0.4
    s[y] += 0.7
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in s[y] for b in s[~y]])
    assert te.roc_auc(s, y) == pytest.approx(brute)


def test_an_identity_is_drawn_alike_every_time_and_unlike_another():
    a, b = te.identities(2, seed=3)
    pa, ma, _ = a.draw()
    np.testing.assert_array_equal(pa, a.draw()[0])
    assert a.name != b.name and a.seed != b.seed


def _crops_dir(root, people, per_person, seed=0):
    return te.render_identities(root, people, per_person, seed, imgsz=64)


def test_rendered_crops_load_as_folders_and_bad_ones_are_listed(tmp_path):
    root = _crops_dir(tmp_path / "c", 3, 3)
    lonely = root / "lonely"
    lonely.mkdir()
    cv2.imwrite(str(lonely / "0.png"), np.zeros((64, 64, 3), np.uint8))
    cv2.imwrite(str(root / te.identities(3, 0)[0].name / "wide.png"), np.zeros((20, 40, 3), np.uint8))
    crops = te.load_identity_crops(root, 32)
    assert crops.images.shape == (9, 32, 32, 3) and len(crops.names) == 3
    assert np.bincount(crops.labels).tolist() == [3, 3, 3]
    assert any("lonely" in p and "at least 2" in p for p in crops.problems)
    assert any("wide.png" in p and "square" in p for p in crops.problems)
    with pytest.raises(ValueError, match="at least two people"):
        te.load_identity_crops(lonely.parent / "lonely", 32)


def test_look_alike_batches_hold_people_in_similar_clothes():
    colours = np.array([[0.0] * 6, [100.0] * 6, [1.0] * 6, [101.0] * 6, [2.0] * 6, [102.0] * 6])
    labels = np.repeat(np.arange(6), 3)
    s = te.LookAlikeSampler(labels, colours, batch=6, per_identity=2, group=3, seed=1)
    idx = list(iter(s))
    assert len(idx) == len(s) == 12
    for batch in (idx[:6], idx[6:]):
        people = labels[batch].reshape(3, 2)
        assert (people[:, 0] == people[:, 1]).all()  # per_identity crops of each person
        group = people[:, 0]
        assert (
            len(set(group)) == 3 and len({int(c) // 100 for c in colours[group, 0]}) == 1
        )  # all dark or all bright


def test_a_backbone_over_the_budget_is_refused_naming_those_that_fit():
    with pytest.raises(BudgetError, match="resnet18.*over the weight budget of 10 MB.*mobilenet_v3_small"):
        te.check_embedder_budget("resnet18", 10.0)
    assert te.check_embedder_budget("mobilenet_v3_small", 10.0).onnx_mb < 5


def test_train_embedder_refuses_before_rendering(tmp_path, capsys):
    from edgetile.runtime.cli import main

    code = main(["train-embedder", "--backbone", "resnet18", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "refused: --backbone resnet18" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    code = main(["train-embedder", "--crops", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2 and "--crops: expected a folder" in capsys.readouterr().err


@pytest.mark.slow
def test_tiny_training_gives_an_onnx_under_budget_with_its_threshold(tmp_path):
    opt = te.EmbedderOptions(epochs=1, batch=8, per_identity=2, budget_mb=10)
    result = te.train_embedder(tmp_path / "run", opt, people=(6, 4), sightings=3)
    meta = {p.key: p.value for p in onnx.load(str(result.onnx)).metadata_props}
    assert float(meta[META_KEYS["threshold"]]) == pytest.approx(result.verification["threshold"], abs=1e-6)
    assert meta[META_KEYS["dim"]] == "128" and result.sizes_mb["embedder.onnx"] < 10
    assert json.loads((tmp_path / "run" / "embedder_report.json").read_text())["epochs_run"] == 1
    with Embedder(result.onnx) as e:  # the runtime reads it back: threshold and crops as trained
        assert e.threshold == pytest.approx(result.verification["threshold"], abs=1e-6)
        assert e.crop == opt.crop and e.input_hw == (64, 64)


@pytest.mark.slow
def test_a_little_training_tells_renders_of_one_person_from_other_people(tmp_path):
    # Held-out people: never seen in training. Averages over every same pair and as many different
    # ones, so one unlucky render cannot decide the test. 32 px crops keep the 150 steps quick.
    opt = te.EmbedderOptions(imgsz=32, epochs=10, batch=32, per_identity=4, seed=1)
    result = te.train_embedder(tmp_path / "run", opt, people=(120, 12), sightings=4)
    v = result.verification
    assert v["mean_similarity"]["same"] > v["mean_similarity"]["different"], v
    assert v["roc_auc"] > 0.6, v
    # The same through the runtime: each held-out crop embedded by the ONNX as a photo's detection.
    crops = te.load_identity_crops(tmp_path / "run" / "crops" / "val", 32)
    whole = np.array([[3.2, 3.2, 28.8, 28.8]], np.float32)  # a box whose crop (context 1.25) is all 32 px
    with Embedder(result.onnx) as e:
        vecs = np.stack([e.vectors(c, whole)[0] for c in crops.images])
    pairs = [(i, j) for i in range(len(vecs)) for j in range(i)]
    same = [vecs[i] @ vecs[j] for i, j in pairs if crops.labels[i] == crops.labels[j]]
    diff = [vecs[i] @ vecs[j] for i, j in pairs if crops.labels[i] != crops.labels[j]]
    assert np.mean(same) > np.mean(diff)
