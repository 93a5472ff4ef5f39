"""The `edgetile` command: thin subcommands over the library.

Exit codes: 0 every input processed; 1 some inputs failed (the others are still processed and
written); 2 usage errors (missing model, bad option values), with a one-line message.

The runtime's own subcommands are detect, demo and env. The export and training parts add theirs
through the ``edgetile.commands`` entry-point group, loaded only to build the parser, so that
dependencies still point one way (train -> export -> runtime).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from ._version import __version__
from .argtypes import add_read_ahead_option, finite_number, int_at_least, number_in

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2
DATA_DIR = Path(__file__).resolve().parent / "data"
DEMO_MODEL = DATA_DIR / "demo.onnx"
DEMO_SAMPLE = DATA_DIR / "sample.jpg"
DEMO_CONF = 0.1


class UsageError(Exception):
    """A problem with what the user asked for: reported in one line, exit code 2."""


def add_detect_options(
    p: argparse.ArgumentParser, conf_default: float = 0.25, conf_why: str = ""
) -> dict[str, argparse.Action]:
    """Options shared by detect, demo and the daemon: model, tiling, thresholds, merging.

    Args:
        p: The subcommand's parser.
        conf_default: Default confidence threshold.
        conf_why: Why this command's default differs from detect's, for the help line.

    Returns:
        dest -> action of each option added: the detection settings a --settings file may set.
    """
    from .detector import MERGE_METHODS

    first = len(p._actions)  # argparse has no public way to list a parser's options
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        nargs="+",
        action="extend",
        metavar="PATH",
        help="ONNX model or TensorRT engine; several for an ensemble fused by WBF "
        "(default: the bundled demo model)",
    )
    g.add_argument(
        "--model-weights",
        nargs="+",
        type=finite_number("--model-weights", 0.0, inclusive=False),
        metavar="W",
        help="one weight per --model for the ensemble fusion, e.g. 1 2 (default: all 1)",
    )
    g.add_argument(
        "--backend",
        choices=["auto", "onnxruntime", "tensorrt"],
        default="auto",
        help="inference backend; auto picks TensorRT for .engine/.plan and ONNX Runtime for .onnx",
    )
    g = p.add_argument_group("tiling")
    g.add_argument(
        "--tile",
        type=int_at_least("--tile", 32),
        default=1024,
        help="tile side in image pixels; tiles are resized to the model input (default: 1024)",
    )
    g.add_argument(
        "--overlap",
        type=number_in("--overlap", 0.0, 0.9, hi_open=True),
        default=0.2,
        help="fraction of a tile shared with its neighbour; keep it wider than the largest "
        "object over the tile size (default: 0.2)",
    )
    g.add_argument(
        "--full-frame",
        action="store_true",
        help="add one downscaled pass of the whole image, for objects larger than a tile",
    )
    g.add_argument(
        "--batch",
        type=int_at_least("--batch"),
        default=None,
        help="tiles per inference call (default: the model's fixed batch, or 8)",
    )
    g = p.add_argument_group("thresholds and merging")
    g.add_argument(
        "--conf",
        type=number_in("--conf"),
        default=conf_default,
        help=f"confidence threshold; lower it for recall when every miss matters (default: {conf_default}"
        + (f", because {conf_why})" if conf_why else ")"),
    )
    g.add_argument(
        "--iou",
        type=number_in("--iou"),
        default=0.7,
        help="IoU threshold of the NMS inside each tile (default: 0.7)",
    )
    g.add_argument(
        "--merge",
        choices=MERGE_METHODS,
        default="ios",
        help="how boxes of overlapping tiles are joined: ios suppresses a box whose intersection "
        "over the smaller box exceeds --merge-thr; nms uses IoU; nmm merges into the union "
        "box; wbf averages (default: ios)",
    )
    g.add_argument(
        "--merge-thr",
        type=number_in("--merge-thr"),
        default=0.5,
        help="threshold of the cross-tile merge (default: 0.5)",
    )
    g.add_argument(
        "--tta",
        choices=["none", "flip"],
        default="none",
        help="flip adds a mirrored pass fused by WBF: slower, usually better recall (default: none)",
    )
    return {action.dest: action for action in p._actions[first:]}


def detect_config_from_args(a: argparse.Namespace):
    from .detector import DetectConfig

    return DetectConfig(
        tile=a.tile,
        overlap=a.overlap,
        full_frame=a.full_frame,
        batch=a.batch,
        conf=a.conf,
        iou=a.iou,
        merge=a.merge,
        merge_thr=a.merge_thr,
        tta=() if a.tta == "none" else (a.tta,),
    )


def open_detector(a: argparse.Namespace):
    """Build the Detector the options describe; every problem becomes a UsageError."""
    from .backends import BackendUnavailable
    from .detector import Detector

    models = a.model or [str(DEMO_MODEL)]
    for m in models:
        if not Path(m).is_file():
            raise UsageError(f"--model: file not found: {m}")
    if a.model_weights is not None and len(a.model_weights) != len(models):
        raise UsageError(
            f"--model-weights: expected {len(models)} weight(s), one per model, found {len(a.model_weights)}"
        )
    try:
        return Detector(models, weights=a.model_weights, backend=a.backend, config=detect_config_from_args(a))
    except (ValueError, BackendUnavailable, FileNotFoundError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc


def run_detect(sources: Sequence[str], a: argparse.Namespace, out_dir: Path, save_vis: bool) -> int:
    """Process every input, writing results as they come; return the exit code."""
    from .images import ImageReadError, expand_sources
    from .outputs import ResultWriter
    from .readahead import prefetch, read_ahead_bytes, read_in_turn, read_within

    inputs = expand_sources(sources)
    if not inputs:
        raise UsageError("SOURCE: expected image files, folders or glob patterns, found no inputs")
    detector = open_detector(a)
    # ground coordinates, GeoJSON/KML/CSV, thumbnails; None without --format
    geo = None
    if getattr(a, "format", None):
        from .options.geo import geo_config_from_args, open_geo_writer

        try:
            geo = open_geo_writer(geo_config_from_args(a, a.format), out_dir)
        except ValueError as exc:
            raise UsageError(str(exc)) from exc
    failed = found = 0
    show_bar = not a.quiet and len(inputs) > 1 and sys.stderr.isatty()
    from tqdm import tqdm

    # The next photo is decoded on a thread while this one is detected (photos over the budget wait
    # for their turn, so a huge one is never held twice); by default only when the model is on a GPU.
    load = read_within(read_ahead_bytes(a.read_ahead, detector.infers_on_cpu))
    bar = tqdm(total=len(inputs), disable=not show_bar, unit="img", file=sys.stderr, dynamic_ncols=True)
    t_start = time.perf_counter()
    with detector, ResultWriter(out_dir, detector.names, save_vis=save_vis) as writer, (
        geo or contextlib.nullcontext()
    ), bar:
        for path, ahead, read_error in prefetch(inputs, load):
            record: dict = {"image": path}
            image = dets = None
            try:
                if read_error is not None:
                    raise read_error
                image, read_ms = read_in_turn(path, ahead)
                ahead = None
                timings = {"read": read_ms}
                dets = detector.detect(image, timings)
                record.update(
                    width=int(image.shape[1]),
                    height=int(image.shape[0]),
                    detections=dets.to_records(detector.names),
                    timings_ms={k: round(v, 2) for k, v in timings.items()},
                )
                found += len(dets)
            except (ImageReadError, MemoryError, OSError, ValueError) as exc:
                # One bad input must not stop the run: record why, go on, exit 1 at the end.
                record["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                failed += 1
                tqdm.write(f"edgetile: skipped {path}: {record['error']}", file=sys.stderr)
            if geo is not None:  # coordinates go into the record before it is written
                warning = geo.add(record, image)
                if warning:
                    tqdm.write(f"edgetile: no ground coordinates for {path}: {warning}", file=sys.stderr)
            writer.add(record, image, dets)
            image = dets = ahead = read_error = None  # let go before the next photo is read
            bar.update(1)
    if not a.quiet:
        dt = time.perf_counter() - t_start
        print(
            f"{len(inputs) - failed}/{len(inputs)} image(s) processed in {dt:.1f} s, {found} detection(s), "
            f"{failed} failed",
            file=sys.stderr,
        )
        print(
            f"results: {writer.json_path}  {writer.csv_path}" + (f"  {writer.vis_dir}/" if save_vis else ""),
            file=sys.stderr,
        )
        if geo is not None:
            print(
                f"{geo.located} detection(s) georeferenced, {len(geo.tracks.tracks)} track(s): "
                + "  ".join(str(p) for p in geo.paths)
                + f"  {geo.thumb_dir}/",
                file=sys.stderr,
            )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def cmd_detect(a: argparse.Namespace) -> int:
    from .settings import resolve

    try:
        a = resolve(a)  # the command line over the --settings file over the defaults
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return run_detect(a.sources, a, Path(a.out), a.save_vis)


def cmd_demo(a: argparse.Namespace) -> int:
    if not DEMO_SAMPLE.is_file():
        raise UsageError(f"the bundled sample is missing from this install: {DEMO_SAMPLE}")
    a.model = a.model or [str(DEMO_MODEL)]
    a.read_ahead = None  # one photo: nothing to read ahead; detect's default rule applies
    print(
        f"edgetile demo: the bundled model {Path(a.model[0]).name} on the bundled 4000x3000 sample "
        f"{DEMO_SAMPLE.name}",
        file=sys.stderr,
    )
    code = run_detect([str(DEMO_SAMPLE)], a, Path(a.out), save_vis=True)
    if code == EXIT_OK and not a.quiet:
        print(f"open {Path(a.out) / 'vis' / DEMO_SAMPLE.name} to see the people found", file=sys.stderr)
    return code


def cmd_env(a: argparse.Namespace) -> int:
    from .env import environment_report

    print(environment_report())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edgetile",
        description="Find small objects (people seen from a drone) in large photos by tiled detection.",
        epilog="Run 'edgetile COMMAND --help' for each command's options.",
    )
    p.add_argument("--version", action="version", version=f"edgetile {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    d = sub.add_parser(
        "detect",
        help="detect objects in photos by tiled inference",
        description="Detect objects in photos: each photo is cut into overlapping tiles, tiles run in batches, "
        "and boxes of neighbouring tiles are merged. Writes DIR/detections.json (one record per "
        "input) and DIR/detections.csv (Lacmus layout: id,xmin,ymin,xmax,ymax,score).",
        epilog="Exit codes: 0 all inputs processed, 1 some inputs failed (others still written), 2 usage error.\n"
        "Example: edgetile detect flight_07/ --model person.onnx --out results --conf 0.1 --tta flip\n"
        "Example: edgetile detect flight_07/ --model person.onnx --out results "
        "--settings runs/eval/best_detect.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="image files, folders (searched recursively) or glob patterns",
    )
    d.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    d.add_argument(
        "--settings",
        metavar="FILE",
        help="YAML or JSON file of detection settings keyed by these option names without dashes, "
        "e.g. 'conf: 0.15' and 'merge-thr: 0.6': the best_detect.yaml of 'edgetile eval --sweep', "
        "which 'edgetile serve --config' reads too. It may set the model, tiling, threshold and "
        "merging options; options given on the command line win over it. JSON (a file starting with "
        "'{') needs nothing more, YAML needs PyYAML (pip install 'edgetile[serve]')",
    )
    settings = add_detect_options(d)
    from .options.geo import add_geo_options  # --format geojson,kml,csv and pose overrides

    add_geo_options(d)
    add_read_ahead_option(d)
    d.add_argument("--save-vis", action="store_true", help="also write annotated JPEGs to DIR/vis/")
    d.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    from .settings import defer_defaults

    # The settings' defaults become SUPPRESS so that cmd_detect can tell what the command line gave;
    # a parse of detect's words holds only those until settings.resolve() fills in the rest.
    d.set_defaults(func=cmd_detect, _settings=defer_defaults(settings, d._actions))

    demo = sub.add_parser(
        "demo",
        help="run the bundled demo model on the bundled aerial sample",
        description="Run the bundled demo model on a bundled synthetic 4000x3000 aerial photo "
        "and write the same outputs as detect, with annotated images.",
    )
    demo.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: demo_out)")
    # At detect's 0.25 the demo model misses half the sample's people; at 0.1 it finds all, no false alarm.
    add_detect_options(
        demo,
        conf_default=DEMO_CONF,
        conf_why="the bundled model is small and briefly trained, so its scores run low",
    )
    demo.add_argument("--quiet", action="store_true", help="no summary")
    demo.set_defaults(func=cmd_demo)

    env = sub.add_parser(
        "env",
        help="versions of the libraries edgetile uses and which backends work here",
        description="Print Python, NumPy, OpenCV, ONNX Runtime, TensorRT, pycuda and CUDA "
        "versions where present, the merge implementation, and usable backends.",
    )
    env.set_defaults(func=cmd_env)

    # The on-device daemon (edgetile.runtime.serve); fastapi and uvicorn load only when it runs.
    from .serve import register as register_serve

    register_serve(sub)

    unavailable = []
    seen: set[str] = set()
    for ep in sorted(metadata.entry_points(group="edgetile.commands"), key=lambda e: e.name):
        # The same distribution can be visible twice (an editable install's egg-info beside the
        # checkout and its dist-info): register each command once.
        if ep.name in seen:
            continue
        seen.add(ep.name)
        try:
            register = ep.load()
        except ImportError as exc:
            unavailable.append(f"{ep.name} ({exc})")
            continue
        register(sub)
    if unavailable:
        p.epilog = (p.epilog or "") + " Commands not available in this install: " + "; ".join(unavailable)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(a.func(a))
    except UsageError as exc:
        print(f"edgetile {a.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("edgetile: interrupted; results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run the package's module, not this __main__ copy: plugins raise edgetile.runtime.cli.UsageError,
    # which this copy's own UsageError class would not catch.
    from edgetile.runtime.cli import main as package_main

    sys.exit(package_main())
