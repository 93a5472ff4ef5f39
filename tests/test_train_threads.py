"""CPU training uses every core: Ultralytics alone leaves one of two idle (NUM_THREADS = cpu_count - 1)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("ultralytics", reason="the train extra (ultralytics) is not installed")
torch = pytest.importorskip("torch", reason="the train extra (torch) is not installed")

from edgetile.train.training import add_cpu_threads_callback, cpu_cores, use_every_cpu_core  # noqa: E402


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def tiny_data(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(tmp_path / "images" / split / "a.jpg"), np.full((64, 64, 3), 90, np.uint8))
        (tmp_path / "labels" / split / "a.txt").write_text("0 0.5 0.5 0.2 0.3\n")
    data = tmp_path / "data.yaml"
    data.write_text(f"path: {tmp_path}\ntrain: images/train\nval: images/val\nnames:\n  0: person\n")
    return data


def test_the_trainer_runs_on_every_core_after_choosing_the_cpu(tmp_path, torch_threads):
    from ultralytics import YOLO
    from ultralytics.models.yolo.detect import DetectionTrainer
    from ultralytics.utils import NUM_THREADS

    model = YOLO("yolov8n.yaml")
    add_cpu_threads_callback(model)
    assert use_every_cpu_core in model.callbacks["on_pretrain_routine_start"]
    overrides = dict(
        model="yolov8n.yaml", data=str(tiny_data(tmp_path)), device="cpu", plots=False, amp=False
    )
    # The trainer's own select_device sets NUM_THREADS; the callback, run after it, sets every core.
    DetectionTrainer(overrides=overrides, _callbacks=model.callbacks)
    assert torch.get_num_threads() == cpu_cores()
    DetectionTrainer(overrides=overrides)  # without the callback: Ultralytics' own choice
    assert torch.get_num_threads() == NUM_THREADS


def test_a_gpu_trainer_leaves_the_threads_alone(torch_threads):
    class Trainer:
        device = torch.device("cuda", 0)

    torch.set_num_threads(1)
    use_every_cpu_core(Trainer())
    assert torch.get_num_threads() == 1
