"""``edgetile export onnx | int8 | engine``: thin commands over edgetile.export.

Registered through the ``edgetile.commands`` entry point; building the parser imports nothing heavy
(torch, ultralytics, onnx and tensorrt are imported by the command that runs).

Every command prints the path of each file it wrote on stdout (one per line; the rest goes to stderr),
takes --out (default: beside the input) and --budget-mb. Exit codes: 0 written and checked; 1 written
but a check failed (verification, accuracy drop, weight budget) or the export itself failed; 2 usage
(bad options, a combination the TensorRT here cannot build).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from edgetile.runtime.argtypes import finite_number, int_at_least, number_in
from edgetile.runtime.options import EXIT_OK, EXIT_SOME_FAILED, UsageError

EPILOG = (
    "Exit codes: 0 written and checked; 1 written but a check failed (verification, accuracy drop, "
    "budget) or the export failed; 2 usage error."
)


def _batch(s: str) -> int | None:
    if s == "dynamic":
        return None
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected 'dynamic' or a positive integer for --batch, found {s!r}"
        ) from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive integer for --batch, found {v}")
    return v


def _common(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--out", metavar="PATH", help=out_help)
    p.add_argument(
        "--budget-mb",
        type=finite_number("--budget-mb"),
        default=100.0,
        metavar="MB",
        help="fail (exit 1, file kept) when the written file is larger than this; the weight budget "
        "of the deployment (default: 100)",
    )


def _tiling(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--tile",
        type=int_at_least("--tile"),
        default=1024,
        metavar="PX",
        help=f"tile side in photo pixels, as 'edgetile detect --tile' will run: {what} tiles are cut "
        "this size and resized to the model input (default: 1024)",
    )
    p.add_argument(
        "--overlap",
        type=number_in("--overlap", 0.0, 0.9, hi_open=True),
        default=0.2,
        help="tile overlap, as 'edgetile detect --overlap' will run (default: 0.2)",
    )


def register(subparsers) -> None:
    """Add ``export`` with its three subcommands to the ``edgetile`` parser."""
    exp = subparsers.add_parser(
        "export",
        help="PyTorch -> ONNX -> INT8 Q/DQ ONNX -> TensorRT engine, each step checked",
        description="Turn a trained model into what the runtime runs: 'onnx' exports and verifies against "
        "PyTorch, 'int8' quantizes and reports the accuracy cost, 'engine' builds a TensorRT plan "
        "on the Jetson that will run it.",
        epilog=EPILOG,
    )
    sub = exp.add_subparsers(dest="export_command", metavar="STEP")
    exp.set_defaults(func=lambda a: _missing_step(exp))

    o = sub.add_parser(
        "onnx",
        help="export an Ultralytics .pt to ONNX and verify it against PyTorch",
        description="Export with Ultralytics' exporter (dynamic batch axis by default, fixed input size), "
        "simplify with onnxslim, add edgetile's metadata, then run ONNX Runtime and PyTorch on the "
        "same tiles and compare.",
        epilog=EPILOG + "\nExample: edgetile export onnx person.pt --imgsz 1024 --verify-images flight_07/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    o.add_argument("weights", metavar="MODEL.pt", help="Ultralytics detection checkpoint (YOLOv8 / YOLO11)")
    o.add_argument(
        "--imgsz",
        type=int_at_least("--imgsz"),
        default=1024,
        help="model input side in pixels, a multiple of 32; match the tile size the model was trained "
        "on (default: 1024)",
    )
    o.add_argument(
        "--batch",
        type=_batch,
        default=None,
        metavar="dynamic|N",
        help="'dynamic' (one ONNX and one engine for any batch) or a fixed batch size (default: dynamic)",
    )
    o.add_argument(
        "--opset",
        type=int_at_least("--opset"),
        default=None,
        help="ONNX opset (default: Ultralytics' choice for the installed onnx); TensorRT 8.5 parses up "
        "to opset 17",
    )
    _common(o, "ONNX file to write (default: MODEL.onnx beside MODEL.pt)")
    g = o.add_argument_group("verification")
    g.add_argument(
        "--verify-images",
        metavar="DIR",
        help="photos to cut verification tiles from, as the runtime cuts them (default: a built-in "
        "deterministic test pattern)",
    )
    g.add_argument(
        "--verify-count",
        type=int_at_least("--verify-count"),
        default=8,
        metavar="N",
        help="tiles to compare (default: 8)",
    )
    g.add_argument(
        "--max-box-diff",
        type=finite_number("--max-box-diff"),
        default=0.05,
        metavar="PX",
        help="largest acceptable difference of a box coordinate between ONNX Runtime and PyTorch, in "
        "input pixels (default: 0.05)",
    )
    g.add_argument(
        "--max-score-diff",
        type=finite_number("--max-score-diff"),
        default=1e-3,
        help="largest acceptable difference of a class score (default: 0.001)",
    )
    g.add_argument("--no-verify", action="store_true", help="skip the comparison (not recommended)")
    _tiling(o, "verification")
    o.set_defaults(func=cmd_onnx)

    q = sub.add_parser(
        "int8",
        help="quantize an ONNX to INT8 Q/DQ for TensorRT and report the accuracy cost",
        description="Static INT8 quantization with ONNX Runtime: symmetric, per-channel weights, Q/DQ nodes as "
        "TensorRT requires; calibrated on tiles cut from full-size photos exactly as the runtime "
        "cuts them. Then FP32 and INT8 are scored side by side on a validation set through the "
        "runtime (ONNX Runtime, CPU).",
        epilog=EPILOG + "\nExample: edgetile export int8 person.onnx --calib flights/ --val val_voc/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("model", metavar="MODEL.onnx", help="FP32 ONNX from 'edgetile export onnx'")
    q.add_argument(
        "--calib",
        required=True,
        metavar="DIR",
        help="full-size field photos (not tiles, not the validation photos) to calibrate on",
    )
    q.add_argument(
        "--calib-count",
        type=int_at_least("--calib-count"),
        default=512,
        metavar="N",
        help="calibration tiles, spread over all photos; fewer than 128 risks collapsing small-object "
        "accuracy (default: 512)",
    )
    q.add_argument(
        "--method",
        choices=["minmax", "entropy", "percentile"],
        default="minmax",
        help="activation range calibration: minmax keeps the rare strong activations of small objects; "
        "entropy gives finer steps but clips them (it lost all recall at --conf 0.25 in our "
        "measurement); percentile clips the top 0.001%% (default: minmax)",
    )
    q.add_argument(
        "--quantize-head",
        action="store_true",
        help="also quantize the head's box-decoding tail (DFL, anchors, final concat); usually ruins "
        "localization: use it to measure, not to deploy",
    )
    g = q.add_argument_group("accuracy report")
    g.add_argument(
        "--val",
        metavar="DATASET",
        help="annotated full-size photos (VOC folder, YOLO folder or data.yaml, COCO JSON) to score FP32 "
        "and INT8 on; required unless --no-report",
    )
    g.add_argument(
        "--val-format",
        choices=["auto", "voc", "yolo", "coco"],
        default="auto",
        help="annotation format of --val (default: auto)",
    )
    g.add_argument(
        "--max-drop",
        type=finite_number("--max-drop"),
        default=0.02,
        help="largest acceptable loss of mAP@0.5 from FP32 to INT8; more exits 1 (default: 0.02)",
    )
    g.add_argument(
        "--max-recall-drop",
        type=finite_number("--max-recall-drop"),
        default=0.05,
        help="largest acceptable loss of recall at --conf: INT8 may rank as well as FP32 yet score "
        "everything lower, and then the runtime's threshold misses people (default: 0.05)",
    )
    g.add_argument(
        "--conf",
        type=finite_number("--conf"),
        default=0.25,
        help="the confidence threshold the runtime will use, where recall and precision are "
        "compared (default: 0.25, as 'edgetile detect')",
    )
    g.add_argument(
        "--no-report",
        action="store_true",
        help="write the INT8 model without measuring what it costs (not recommended)",
    )
    _tiling(q, "calibration and validation")
    _common(q, "Q/DQ ONNX to write (default: MODEL_int8.onnx beside MODEL.onnx)")
    q.set_defaults(func=cmd_int8)

    e = sub.add_parser(
        "engine",
        help="build a TensorRT engine (run it on the Jetson that will use it)",
        description="Build a TensorRT plan with its JSON sidecar (TensorRT version, GPU, precision, batch range, "
        "input size, classes, hash of the ONNX). Works with TensorRT 8.5 (JetPack 5.1), 8.6 and 10.x "
        "(JetPack 6), and 10.13+ / 11 (JetPack 7). Combinations this TensorRT cannot build are refused "
        "before building.",
        epilog=EPILOG + "\nExamples:\n  edgetile export engine person.onnx --precision fp16\n"
        "  edgetile export engine person_int8.onnx --precision int8\n"
        "  edgetile export engine person.onnx --precision int8 --calib flights/   (TensorRT <= 10)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument(
        "model",
        metavar="MODEL.onnx",
        help="FP32 ONNX, or the Q/DQ ONNX from 'edgetile export int8'; or an ensemble file (.yaml/.json): "
        "one engine per member and an ensemble file of the engines (--out names it)",
    )
    e.add_argument(
        "--precision",
        choices=["fp32", "fp16", "int8"],
        default="fp16",
        help="fp16 is the usual choice on Jetson; int8 needs a Q/DQ ONNX or --calib (default: fp16)",
    )
    e.add_argument(
        "--batch-min",
        type=int_at_least("--batch-min"),
        default=None,
        metavar="N",
        help="smallest batch the engine accepts (default: 1, or the ONNX's fixed batch)",
    )
    e.add_argument(
        "--batch-opt",
        type=int_at_least("--batch-opt"),
        default=None,
        metavar="N",
        help="batch TensorRT tunes for; use the runtime's --batch (default: 8, or the fixed batch)",
    )
    e.add_argument(
        "--batch-max",
        type=int_at_least("--batch-max"),
        default=None,
        metavar="N",
        help="largest batch the engine accepts (default: 8, or the fixed batch)",
    )
    e.add_argument(
        "--workspace-mb",
        type=int_at_least("--workspace-mb"),
        default=1024,
        metavar="MB",
        help="builder scratch memory; the GPU shares the board's memory, so keep it well below it on "
        "4-8 GB boards (default: 1024)",
    )
    e.add_argument(
        "--dla",
        type=int,
        default=None,
        metavar="CORE",
        help="run on this DLA core (0 or 1 on AGX Orin / Orin NX 16 GB) with GPU fallback; needs fp16 or "
        "int8 and a fixed batch; saves power, may be slower (default: GPU)",
    )
    e.add_argument(
        "--timing-cache",
        metavar="FILE",
        help="load tactic timings from FILE when it exists and save them after; rebuilds on the same "
        "device get faster (default: none)",
    )
    g = e.add_argument_group("implicit INT8 calibration (TensorRT <= 10, FP32 ONNX)")
    g.add_argument("--calib", metavar="DIR", help="full-size field photos to calibrate on")
    g.add_argument(
        "--calib-method",
        choices=["minmax", "entropy"],
        default="minmax",
        help="minmax (IInt8MinMaxCalibrator, keeps the rare strong activations of small objects; "
        "Ultralytics' choice) or entropy (IInt8EntropyCalibrator2) (default: minmax)",
    )
    g.add_argument(
        "--calib-count",
        type=int_at_least("--calib-count"),
        default=512,
        metavar="N",
        help="calibration tiles (default: 512)",
    )
    g.add_argument(
        "--calib-cache",
        metavar="FILE",
        help="calibration cache: reused when it exists (calibration skipped), written otherwise "
        "(default: ENGINE.calib beside the engine)",
    )
    _tiling(g, "calibration")
    _common(
        e,
        "engine file to write (default: MODEL_PRECISION.engine beside MODEL.onnx); its sidecar is "
        "written to PATH.json",
    )
    e.set_defaults(func=cmd_engine)


def _engine_ensemble(model, out, req, build) -> int:
    """``export engine ENSEMBLE.yaml``: one engine per member, and the ensemble file of engines."""
    from .artifacts import BudgetExceeded, ExportError
    from .engine import BuildRefused

    try:
        path, results = build(model, out, req, log=lambda m: print(m, file=sys.stderr))
    except (BuildRefused, ValueError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    except (BudgetExceeded, ExportError) as exc:
        _err(str(exc))
        return EXIT_SOME_FAILED
    for r in results:
        print(r.path)
    print(path)
    print(
        f"{len(results)} engine(s) built in {sum(r.seconds for r in results):.0f} s; ensemble file: {path} "
        "(edgetile detect --model accepts it)",
        file=sys.stderr,
    )
    return EXIT_OK


def _missing_step(p: argparse.ArgumentParser) -> int:
    raise UsageError("expected a step: onnx, int8 or engine (see 'edgetile export --help')")


def _err(msg: str) -> None:
    print(f"edgetile export: {msg}", file=sys.stderr)


@contextlib.contextmanager
def _quiet_ultralytics():
    """Keep Ultralytics' INFO lines (printed on stdout) out of the output, which carries the written paths."""
    import ultralytics  # noqa: F401 - its import configures the logger; quiet it after that

    log = logging.getLogger("ultralytics")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def cmd_onnx(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .artifacts import BudgetExceeded, ExportError, default_out
    from .onnx import OnnxExportConfig, export_onnx, verification_tiles, verify_onnx

    if not Path(a.weights).is_file():
        raise UsageError(f"MODEL.pt: file not found: {a.weights}")
    if a.verify_images is not None and not Path(a.verify_images).exists():
        raise UsageError(f"--verify-images: not found: {a.verify_images}")
    try:
        cfg = OnnxExportConfig(imgsz=a.imgsz, batch=a.batch, opset=a.opset, budget_mb=a.budget_mb)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    code = EXIT_OK
    try:
        with _quiet_ultralytics():
            out = export_onnx(a.weights, a.out, cfg)
    except BudgetExceeded as exc:
        _err(str(exc))
        out, code = Path(a.out) if a.out else default_out(a.weights, ".onnx"), EXIT_SOME_FAILED
    except ExportError as exc:
        _err(str(exc))
        return EXIT_SOME_FAILED
    print(out)
    if a.no_verify:
        _err("verification skipped (--no-verify): the ONNX was not compared with PyTorch")
        return code
    try:
        tiles, source = verification_tiles(a.imgsz, a.verify_images, a.verify_count, a.tile, a.overlap)
        with _quiet_ultralytics():
            v = verify_onnx(a.weights, out, tiles, source, a.max_box_diff, a.max_score_diff)
    except ExportError as exc:
        _err(f"verification could not run: {exc}")
        return EXIT_SOME_FAILED
    print(v.summary(), file=sys.stderr)
    return code if v.passed else EXIT_SOME_FAILED


def cmd_int8(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .artifacts import BudgetExceeded, ExportError
    from .int8 import Int8Config, accuracy_report, float_nodes_line, quantize_int8

    if not Path(a.model).is_file():
        raise UsageError(f"MODEL.onnx: file not found: {a.model}")
    if not Path(a.calib).exists():
        raise UsageError(f"--calib: not found: {a.calib}")
    if a.val is None and not a.no_report:
        raise UsageError(
            "--val: expected an annotated validation set to measure the INT8 accuracy cost on "
            "(or --no-report to skip the measurement knowingly)"
        )
    if a.val is not None and not Path(a.val).exists():
        raise UsageError(f"--val: not found: {a.val}")
    cfg = Int8Config(
        calib_count=a.calib_count,
        method=a.method,
        tile=a.tile,
        overlap=a.overlap,
        exclude_head=not a.quantize_head,
        budget_mb=a.budget_mb,
    )
    code = EXIT_OK
    try:
        # ONNX Runtime's calibrators print progress on stdout, which carries the written paths.
        with contextlib.redirect_stdout(sys.stderr):
            result = quantize_int8(a.model, a.calib, a.out, cfg)
    except BudgetExceeded as exc:
        _err(str(exc))
        return EXIT_SOME_FAILED
    except ExportError as exc:
        _err(str(exc))
        return EXIT_SOME_FAILED
    print(result.path)
    print(result.calibration_line(), file=sys.stderr)
    print(float_nodes_line(result), file=sys.stderr)
    if result.problems:
        code = EXIT_SOME_FAILED
        _err(f"{len(result.problems)} calibration photo(s) could not be read")
    if a.no_report:
        _err("accuracy report skipped (--no-report): the INT8 model's accuracy is unmeasured")
        return code
    try:
        report = accuracy_report(
            a.model,
            result.path,
            a.val,
            result.calibration_line(),
            a.max_drop,
            a.tile,
            a.overlap,
            a.val_format,
            a.conf,
            a.max_recall_drop,
        )
    except (ExportError, ValueError, FileNotFoundError) as exc:
        _err(f"accuracy report could not run: {str(exc).splitlines()[0]}")
        return EXIT_SOME_FAILED
    for line in report.lines():
        print(line, file=sys.stderr)
    if not report.passed:
        _err(
            f"WARNING: INT8 loses {report.drop50:.4f} mAP@0.5 (--max-drop {a.max_drop:g}) and "
            f"{report.recall_drop:.3f} recall at --conf {a.conf:g} (--max-recall-drop {a.max_recall_drop:g})"
        )
        return EXIT_SOME_FAILED
    return code


def cmd_engine(a: argparse.Namespace) -> int:
    from pathlib import Path

    from edgetile.runtime.options.detect import is_ensemble_file

    from .artifacts import BudgetExceeded, ExportError
    from .engine import BuildRefused, EngineRequest, build_engine, build_ensemble_engines

    if not Path(a.model).is_file():
        raise UsageError(f"MODEL.onnx: file not found: {a.model}")
    ensemble = is_ensemble_file(a.model)
    if a.calib is not None and not Path(a.calib).exists():
        raise UsageError(f"--calib: not found: {a.calib}")
    if a.dla is not None and a.dla < 0:
        raise UsageError(f"--dla: expected a DLA core index >= 0, found {a.dla}")
    suffix = Path(a.model).suffix if ensemble else ".engine"
    out = Path(a.out) if a.out else Path(a.model).with_name(f"{Path(a.model).stem}_{a.precision}{suffix}")
    calib_cache = (
        Path(a.calib_cache) if a.calib_cache else (out.with_name(out.name + ".calib") if a.calib else None)
    )
    req = EngineRequest(
        precision=a.precision,
        batch_min=a.batch_min,
        batch_opt=a.batch_opt,
        batch_max=a.batch_max,
        workspace_mb=a.workspace_mb,
        dla_core=a.dla,
        timing_cache=Path(a.timing_cache) if a.timing_cache else None,
        calib=Path(a.calib) if a.calib else None,
        calib_method=a.calib_method,
        calib_count=a.calib_count,
        calib_cache=calib_cache,
        tile=a.tile,
        overlap=a.overlap,
        budget_mb=a.budget_mb,
    )
    if ensemble:
        return _engine_ensemble(a.model, out, req, build_ensemble_engines)
    try:
        result = build_engine(a.model, out, req, log=lambda m: print(m, file=sys.stderr))
    except BuildRefused as exc:
        raise UsageError(str(exc)) from exc
    except BudgetExceeded as exc:
        _err(str(exc))
        print(out)
        return EXIT_SOME_FAILED
    except ExportError as exc:
        _err(str(exc))
        return EXIT_SOME_FAILED
    print(result.path)
    print(result.sidecar)
    print(
        f"built in {result.seconds:.0f} s: {result.size_mb:.1f} MB, TensorRT {result.meta.tensorrt_version} on "
        f"{result.meta.gpu_name} (sm {result.meta.compute_capability})",
        file=sys.stderr,
    )
    return EXIT_OK
