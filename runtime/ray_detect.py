"""``edgetile detect --ray ADDRESS``: the photos of a run detected on a Ray cluster's workers.

Each worker holds its own Detector in a Ray actor: one actor per GPU when the models run on TensorRT
(it asks Ray for ``num_gpus=1``), otherwise one per node, pinned to it (ONNX Runtime already keeps
every core of its node busy). Each photo is one task on an actor; the driver keeps each actor a
couple of photos ahead and hands the results on in input order, so that the same ResultWriter
writes the same outputs, in the same order, as a local run.

Photos and models are read by the workers from their paths: every node must see them at the same
path (a shared folder: NFS, SMB, or the same copy on each node). The driver sends paths, not bytes,
because an archive of tens of gigabytes would otherwise all pass through the driver's network link.

Ray is imported only here, inside the functions (``pip install 'edgetile[ray]'``).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

from .photo_result import PhotoResult

if TYPE_CHECKING:
    from .detector import Detector
    from .options.detect import DetectorRecipe

#: Photos each actor holds at once: one detecting, one waiting, so that it never idles between tasks.
IN_FLIGHT_PER_ACTOR = 2


class PhotoDetector:
    """A Ray actor's state: one Detector, opened once on its worker and used for every photo sent to it."""

    def __init__(self, recipe: DetectorRecipe, max_pixels: int | None) -> None:
        from .backends import BackendUnavailable

        self.max_pixels = max_pixels
        self.detector: Detector | None = None
        self.open_error: str | None = None
        try:
            self.detector = recipe.open()
        except (ValueError, BackendUnavailable, OSError) as exc:
            # Kept for the driver to report in one line: raised here, Ray would restart the actor and
            # print each attempt's traceback before the driver could say what was wrong.
            self.open_error = f"{type(exc).__name__}: {_first_line(exc)}"

    def opened(self) -> str | None:
        """None when the model is open, otherwise why not (one line)."""
        return self.open_error

    def names(self) -> dict[int, str]:
        """The models' class names (the driver's records and files need them); empty when not open."""
        return dict(self.detector.names) if self.detector is not None else {}

    def detect(self, path: str) -> PhotoResult:
        """Detect in one photo; the decoded photo stays on the worker."""
        from .photo_result import detect_photo

        if self.detector is None:
            return PhotoResult(path, error=f"the worker could not open the model: {self.open_error}")
        return detect_photo(self.detector, path, max_pixels=self.max_pixels)


class RayCluster:
    """A connection to a Ray cluster and one PhotoDetector actor per worker.

    Args:
        address: ``auto`` (the cluster this machine belongs to) or the head's host:port.
        recipe: The Detector each actor builds.

    Raises:
        ValueError: Ray is not installed, the cluster cannot be reached, it has no CPUs (or no GPUs for
            TensorRT), or a worker cannot open the model; one line.
    """

    def __init__(self, address: str, recipe: DetectorRecipe, max_pixels: int | None) -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--ray: Ray is not installed; pip install 'edgetile[ray]'") from None
        import logging

        self._ray = ray
        # Ray retries an unreachable head for minutes; a field laptop's user wants to know now.
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ValueError(f"--ray {address}: cannot join the Ray cluster: {_first_line(exc)}") from None
        try:
            self.actors = self._start_actors(recipe, max_pixels)
            try:
                problems = [p for p in ray.get([a.opened.remote() for a in self.actors]) if p]
                if problems:
                    raise ValueError(f"--ray: a worker cannot open the model: {problems[0]}")
                self.names: dict[int, str] = ray.get(self.actors[0].names.remote())
            except ray.exceptions.RayError as exc:
                raise ValueError(f"--ray: a worker failed while opening the model: {_cause(exc)}") from None
        except BaseException:
            ray.shutdown()
            raise

    def _start_actors(self, recipe: DetectorRecipe, max_pixels: int | None) -> list[Any]:
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor_class = ray.remote(PhotoDetector)
        retry = {"max_restarts": 1, "max_task_retries": 1}  # a worker process lost mid-photo retries it once
        if recipe.uses_tensorrt:
            gpus = int(ray.cluster_resources().get("GPU", 0))
            if gpus < 1:
                raise ValueError(
                    "--ray: the models run on TensorRT, expected GPUs in the cluster, found none"
                )
            return [
                actor_class.options(num_cpus=1, num_gpus=1, **retry).remote(recipe, max_pixels)
                for _ in range(gpus)
            ]
        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        if not nodes:
            raise ValueError("--ray: expected nodes with a free CPU in the cluster, found none")
        return [
            actor_class.options(
                num_cpus=1,
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                **retry,
            ).remote(recipe, max_pixels)
            for n in nodes
        ]

    def detect(self, paths: Sequence[str]) -> Generator[PhotoResult, None, None]:
        """Detect in every photo on the actors; yield the results in the order of ``paths``.

        A photo whose task fails in Ray (its worker lost twice, an error outside detection) gives an
        error result, as a bad photo does.
        """
        ray = self._ray
        free = {i: IN_FLIGHT_PER_ACTOR for i in range(len(self.actors))}
        running: dict[Any, tuple[int, int]] = {}  # task -> (photo index, actor index)
        done: dict[int, PhotoResult] = {}
        next_photo = next_out = 0
        window = IN_FLIGHT_PER_ACTOR * len(self.actors) * 4  # results held ahead of a slow photo, at most
        while next_out < len(paths):
            for i in free:
                while free[i] and next_photo < len(paths) and next_photo < next_out + window:
                    running[self.actors[i].detect.remote(paths[next_photo])] = (next_photo, i)
                    free[i] -= 1
                    next_photo += 1
            if next_out in done:
                yield done.pop(next_out)
                next_out += 1
                continue
            ready, _ = ray.wait(list(running), num_returns=1)
            for task in ready:
                index, actor = running.pop(task)
                free[actor] += 1
                try:
                    done[index] = ray.get(task)
                except ray.exceptions.RayError as exc:
                    done[index] = PhotoResult(paths[index], error=f"ray: {_cause(exc)}")

    def close(self) -> None:
        """Let the actors go and leave the cluster (it keeps running)."""
        for actor in self.actors:
            self._ray.kill(actor)
        self._ray.shutdown()

    def __enter__(self) -> RayCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Refuse a host:port where nothing listens (``auto`` is left to Ray: it reads a local file)."""
    import socket

    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--ray: expected auto or the head's host:port, found {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ValueError(
            f"--ray {address}: cannot reach the Ray cluster's head: {exc.strerror or exc}; "
            "start it with 'ray start --head' or give its host:port"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _cause(exc: BaseException) -> str:
    """The one line that says why a Ray task or actor failed (Ray wraps it in a long traceback)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return _cause(cause) if hasattr(cause, "cause") else f"{type(cause).__name__}: {_first_line(cause)}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # Ray's message ends with the original exception's own line, e.g. "ValueError: ..."
    return lines[-1] if lines else type(exc).__name__
