"""The `edgetile` command: thin subcommands over the library.

Exit codes: 0 every input processed; 1 some inputs failed (the others are still processed and
written); 2 usage errors (missing model, bad option values), with a one-line message.

The runtime's own subcommands are detect, demo and env. The daemon (serve), the export and the
training parts add theirs through the ``edgetile.commands`` entry-point group, loaded only to build
the parser, so that dependencies still point one way (train -> export -> runtime, serve -> runtime).
What the commands share (UsageError, the exit codes, the detection options, open_detector, the
options-file merging) lives in :mod:`edgetile.runtime.options`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Generator, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ._version import __version__
from .argtypes import add_max_pixels_option, add_read_ahead_option
from .options import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, UsageError
from .options.detect import DATA_DIR, DEMO_MODEL, add_detect_options, open_detector
from .options.files import defer_defaults, resolve_options

if TYPE_CHECKING:
    from .detector import Detector
    from .geo.writers import GeoConfig
    from .photo_result import PhotoResult

DEMO_SAMPLE = DATA_DIR / "sample.jpg"
DEMO_CONF = 0.1

# The extra that brings each optional module a command may import when it runs: without it the
# command stops with one line naming the extra (exit 2), not a traceback. "export" modules come with
# "train" too, which the training commands need; onnx comes lighter with "engine" (no torch) for
# building engines on a Jetson.
EXTRA_OF_MODULE = {
    "onnxruntime": "onnx",
    "onnx": "export",
    "onnxslim": "export",
    "ultralytics": "export",
    "torch": "export",
    "torchvision": "export",
    "pycocotools": "export",
    "pi_heif": "export",
    "iterstrat": "train",
    "matplotlib": "train",
    "pytorch_metric_learning": "train",
    "sklearn": "train",
    "ray": "ray",
    "pycuda": "jetson",
    "yaml": "serve",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "pymap3d": "geo",
    "PIL": "geo",
    "paho": "mqtt",
    "pymavlink": "mavlink",
}
TRAINING_COMMANDS = ("dataset", "train", "train-verifier", "train-embedder", "tune", "eval", "pseudo-label")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line, as every other usage error is, with where to read the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def missing_module_line(exc: ModuleNotFoundError, a: argparse.Namespace) -> str | None:
    """The one-line error for an optional module this install lacks; None for any other module."""
    top = (exc.name or "").split(".")[0]
    if top == "tensorrt":
        return "needs TensorRT's Python bindings (tensorrt), which come with JetPack; none found here"
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    if extra == "export" and a.command in TRAINING_COMMANDS:
        extra = "train"
    elif top == "onnx" and getattr(a, "export_command", None) == "engine":
        extra = "engine"
    return f"needs the Python module {top}, which this install lacks: pip install 'edgetile[{extra}]'"


def detect_run_settings(a: argparse.Namespace, geo_config: GeoConfig | None) -> dict[str, object]:
    """What decides a run's outputs, as DIR/run.json records it for ``--resume`` (JSON values).

    The models by content (SHA-256), not by path: a model retrained into the same file is another
    setting, a model moved is not.
    """
    from dataclasses import asdict

    from .files import sha256_file
    from .options.detect import detector_recipe

    recipe = detector_recipe(a)
    formats = list(geo_config.formats) if geo_config is not None else []
    settings: dict[str, object] = {
        "models": [sha256_file(m) for m in recipe.models],
        "model-weights": list(recipe.weights) if recipe.weights is not None else None,
        "backend": recipe.backend,
        "detect": asdict(recipe.config),
        "verify": sha256_file(recipe.verify) if recipe.verify is not None else None,
        "verify-thr": recipe.verify_thr,
        "format": formats,
    }
    if recipe.embed is not None:  # only when given: a run.json written before --embed existed still resumes
        settings["embed"] = sha256_file(recipe.embed)
    if formats and geo_config is not None:
        geo = json.loads(json.dumps(asdict(geo_config), default=str))
        if geo.get("appearance_min") is None:  # a run.json written before tracks had appearance still resumes
            geo.pop("appearance_min", None)
        settings["geo"] = geo
    return settings


def run_detect(  # noqa: C901 - one loop over the photos: kept, failed, detected, placed, written
    sources: Sequence[str],
    a: argparse.Namespace,
    out_dir: Path,
    save_vis: bool,
    geo_config: GeoConfig | None = None,
) -> int:
    """Process every input, writing results as they come; return the exit code.

    Args:
        geo_config: With output formats (``--format``): ground coordinates, GeoJSON/KML/CSV and
            thumbnails are written too.

    With ``a.resume``, the records of an earlier run in ``out_dir`` with the same settings are kept
    (:mod:`edgetile.runtime.resume`); with ``a.ray``, the photos are detected on that Ray cluster
    (:mod:`edgetile.runtime.ray_detect`). Either way the outputs are those of one uninterrupted
    local run: the same records in input order.
    """
    from .images import MAX_PIXELS, expand_sources, read_image
    from .outputs import ResultWriter
    from .photo_result import PHOTO_ERRORS, error_line
    from .resume import kept_records, write_run

    inputs = expand_sources(sources)
    if not inputs:
        raise UsageError("SOURCE: expected image files, folders or glob patterns, found no inputs")
    try:  # before the model loads: a read-only or full --out is a usage error, not a traceback later
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        raise UsageError(
            f"--out {out_dir}: cannot write there ({exc.strerror or exc}); expected a folder edgetile "
            "may create files in"
        ) from None
    max_pixels = getattr(a, "max_pixels", MAX_PIXELS)
    settings = detect_run_settings(a, geo_config)
    try:
        kept = kept_records(out_dir, settings, inputs) if getattr(a, "resume", False) else {}
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    todo = [p for p in inputs if p not in kept]
    ray_address = getattr(a, "ray", None)
    worker: Any
    if ray_address:
        from .options.detect import detector_recipe
        from .ray_detect import RayCluster

        try:
            worker = RayCluster(ray_address, detector_recipe(a), max_pixels)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not a.quiet:
            print(
                f"edgetile: detecting on the Ray cluster at {ray_address}: {len(worker.actors)} model "
                f"copies, {len(todo)} photo(s) to detect",
                file=sys.stderr,
            )
    else:
        worker = open_detector(a)
    geo = None
    if geo_config is not None and geo_config.formats:
        from dataclasses import replace

        from .options.geo import appearance_min_for, embedder_threshold, open_geo_writer

        # the tracks take the embedding model's own threshold unless --appearance-min names one
        appearance_min = appearance_min_for(getattr(a, "appearance_min", None), embedder_threshold(worker))
        geo_config = replace(geo_config, appearance_min=appearance_min)
        try:
            geo = open_geo_writer(geo_config, out_dir, worker.names)
        except ValueError as exc:
            worker.close()
            raise UsageError(str(exc)) from exc
    write_run(out_dir, settings, inputs)
    failed = found = 0
    show_bar = not a.quiet and len(inputs) > 1 and sys.stderr.isatty()
    from tqdm import tqdm

    # On a cluster the photos stay on the workers; this machine reads one again only to draw it or to
    # cut its thumbnails.
    read_here = ray_address and (save_vis or (geo is not None and geo.config.thumbnails))
    bar = tqdm(total=len(inputs), disable=not show_bar, unit="img", file=sys.stderr, dynamic_ncols=True)
    t_start = time.perf_counter()
    results: Generator[PhotoResult, None, None] = (
        worker.detect(todo) if ray_address else _detect_here(worker, todo, a.read_ahead, max_pixels)
    )
    with worker, contextlib.closing(results), ResultWriter(
        out_dir, worker.names, save_vis=save_vis
    ) as writer, geo or contextlib.nullcontext(), bar:
        for path in inputs:
            if path in kept:
                old = kept[path]
                if geo is not None:
                    geo.restore(path, old["detections"], located="camera" in old)
                writer.keep(old)
                found += len(old["detections"])
                bar.update(1)
                continue
            res = next(results)
            record: dict = {"image": path}
            image, dets, placed = res.image, res.detections, None
            res.image = None
            if res.error is None and read_here:
                try:
                    image = read_image(path, max_pixels=max_pixels)
                except PHOTO_ERRORS as exc:
                    res.error, dets = error_line(exc), None
            if res.error is not None or dets is None:
                # One bad input must not stop the run: record why, go on, exit 1 at the end.
                record["error"] = res.error or "no detections"
                failed += 1
                tqdm.write(f"edgetile: skipped {path}: {record['error']}", file=sys.stderr)
                image = dets = None
            else:
                found += len(dets)
                if geo is not None:  # coordinates go into the detections before their records are made
                    placed = geo.add(path, dets, image)
                    dets = placed.detections
                    if placed.warning:
                        tqdm.write(
                            f"edgetile: no ground coordinates for {path}: {placed.warning}", file=sys.stderr
                        )
                record.update(
                    width=res.width,
                    height=res.height,
                    detections=dets.to_records(worker.names),
                    timings_ms={k: round(v, 2) for k, v in res.timings_ms.items()},
                    **(placed.record_fields() if placed is not None else {}),
                )
            writer.add(record, image, dets)
            del res, image, dets, placed  # let go before the next photo is read
            bar.update(1)
    if not a.quiet:
        dt = time.perf_counter() - t_start
        print(
            f"{len(inputs) - failed}/{len(inputs)} image(s) processed in {dt:.1f} s, {found} detection(s), "
            f"{failed} failed" + (f", {len(kept)} kept from the earlier run" if kept else ""),
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


def _detect_here(
    detector: Detector, paths: Sequence[str], read_ahead_mb: int | None, max_pixels: int | None
) -> Generator[PhotoResult, None, None]:
    """Detect in each photo on this machine, in order; a bad photo gives an error result."""
    from .photo_result import PHOTO_ERRORS, PhotoResult, error_line
    from .readahead import prefetch, read_ahead_bytes, read_in_turn, read_within

    # The next photo is decoded on a thread while this one is detected (photos over the budget wait
    # for their turn, so a huge one is never held twice); by default only when the model is on a GPU.
    load = read_within(read_ahead_bytes(read_ahead_mb, detector.infers_on_cpu), max_pixels)
    for path, ahead, read_error in prefetch(paths, load):
        timings: dict[str, float] = {}
        try:
            if read_error is not None:
                raise read_error
            assert ahead is not None  # prefetch gives a load result whenever it gives no error
            image, read_ms = read_in_turn(path, ahead, max_pixels)
            ahead = None
            timings["read"] = read_ms
            dets = detector.detect(image, timings)
        except PHOTO_ERRORS as exc:
            yield PhotoResult(path, error=error_line(exc))
            continue
        h, w = image.shape[:2]
        result = PhotoResult(path, int(w), int(h), dets, timings, None, image)
        del image, dets  # the caller holds the photo now, and lets go of it before asking for the next
        ahead = read_error = None
        yield result
        del result


def cmd_detect(a: argparse.Namespace) -> int:
    try:
        a = resolve_options(a)  # the command line over the --settings file over the defaults
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    from .options.geo import geo_config_from_args

    return run_detect(a.sources, a, Path(a.out), a.save_vis, geo_config_from_args(a, a.format))


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
    from .env import demo_model_card, environment_report

    print(environment_report())
    # The bundled model's card, so that nobody mistakes the demo model for one to fly with.
    print("\n" + demo_model_card())
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
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
    add_max_pixels_option(d)
    d.add_argument("--save-vis", action="store_true", help="also write annotated JPEGs to DIR/vis/")
    d.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into the same --out: photos already in DIR/detections.json "
        "(same path, size and modification time) are kept, not detected again, and the outputs are "
        "those of one uninterrupted run; refused when the settings differ from DIR/run.json's "
        "(default: start over, replacing the folder's results)",
    )
    d.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="detect on a Ray cluster: 'auto' (the cluster this machine has joined) or the head's "
        "host:port; one model copy per node (per GPU for TensorRT engines), results written here "
        "in input order. Photos and models must be at the same paths on every node (a shared "
        "folder). Needs pip install 'edgetile[ray]'",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    # The settings' defaults become SUPPRESS so that cmd_detect can tell what the command line gave;
    # a parse of detect's words holds only those until resolve_options() fills in the rest.
    defer_defaults(d, settings, option="--settings", noun="detection setting", json=True)
    d.set_defaults(func=cmd_detect)

    demo = sub.add_parser(
        "demo",
        help="run the bundled demo model on the bundled aerial sample",
        description="Run the bundled demo model on a bundled synthetic 4000x3000 aerial photo "
        "and write the same outputs as detect, with annotated images.",
    )
    demo.add_argument("--out", default="demo_out", metavar="DIR", help="output folder (default: demo_out)")
    # Recall first, as a search would: on held-out scenes the demo model finds 93% of people at 0.1
    # (precision 0.69) against 92% at 0.25 (0.81); at 0.1 it finds all 10 of the sample, no false alarm.
    add_detect_options(
        demo,
        conf_default=DEMO_CONF,
        conf_why="a search puts recall first; the demo model's card gives its recall and precision there",
    )
    demo.add_argument("--quiet", action="store_true", help="no summary")
    demo.set_defaults(func=cmd_demo)

    env = sub.add_parser(
        "env",
        help="versions of the libraries edgetile uses and which backends work here",
        description="Print Python, NumPy, OpenCV, ONNX Runtime, TensorRT, pycuda and CUDA "
        "versions where present, the merge implementation, and usable backends, then the bundled demo "
        "model's card: how it was trained, its measured accuracy, and what it is not.",
    )
    env.set_defaults(func=cmd_env)

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
    except ModuleNotFoundError as exc:
        line = missing_module_line(exc, a)
        if line is None:
            raise
        print(f"edgetile {a.command}: error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("edgetile: interrupted; results written so far are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
