"""edgetile.runtime.evaluation: offline evaluation, beside the device path and never imported by it.

``annotations`` reads annotated datasets (Pascal VOC, YOLO, COCO) into one list of photos with their
ground truth; ``metrics`` scores a detector on them (COCO mAP and the Lacmus metric). Their users are
the export side (INT8 calibration and its accuracy check) and the training side (evaluation, tuning,
dataset tools); a detector on a drone needs neither.
"""

from __future__ import annotations
