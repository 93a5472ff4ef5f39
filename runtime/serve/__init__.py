"""``edgetile serve``: the on-device daemon that processes every photo it is given and never loses one.

Photos come from watched folders, video files, RTSP streams or V4L2 cameras (every Nth frame) and
HTTP uploads; each is recorded in a durable SQLite queue under ``--state`` before it is processed, and
its detections (the same records ``edgetile detect`` writes) are committed together with its done
mark. An HTTP API serves results, failures, images and Prometheus metrics.

Importing this package costs nothing. The ``serve`` subcommand (:mod:`.command`) is registered with
every ``edgetile`` invocation through the ``edgetile.commands`` entry points, while FastAPI, uvicorn
and the detector load only when the daemon runs.
"""
