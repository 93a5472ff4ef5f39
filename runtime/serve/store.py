"""The durable photo queue: one SQLite database (stdlib sqlite3, WAL) under the daemon's state folder.

Why each rule exists:

* An input is recorded (``items``) before anything is done with it, keyed by the SHA-256 of its bytes,
  so the same photo seen twice (copied again, uploaded again, a restart rescanning the drop folder)
  is one item and never gets two results.
* A result is an ``outcomes`` row written in the same transaction that marks its item done or parked;
  ``outcomes.item_id`` is UNIQUE, so a second result for an item is impossible, not merely avoided.
* An item is marked ``running`` (its attempt counted) in a committed transaction before it is
  processed. After a crash, kill or power cut the items still ``running`` go back to the queue as
  *suspects*, each then processed alone, so a photo that kills the daemon (or a run of power cuts on
  the same photo) is parked after ``max_attempts`` tries instead of looping forever, and its batch
  mates are not blamed.
* Outcome ids grow in commit order (one writer at a time, AUTOINCREMENT), so a client that pages
  ``/detections?since=ID`` with the ``next`` it was given never misses a result, even when an input
  is retried and finishes after later ones.

* The daemon's own copy of an input (an upload under ``uploads/``, a video frame under ``frames/``)
  has its size in ``items.bytes``; the retention (:mod:`.retention`) deletes the copies of finished
  inputs, oldest result first, and marks them ``removed_at`` in the transaction that deleted them.
  Only done or parked inputs are ever chosen, so a queued or running input always has its bytes;
  a watched photo (``bytes`` NULL) is the user's file and never chosen. Results stay.

* With MQTT, each detection of a committed result gets an ``mqtt_outbox`` row in the transaction
  that commits the result (the outbox pattern): the row is deleted only once the broker has
  acknowledged the message, so a broker that is away, or a restart meanwhile, loses nothing; the
  oldest rows are dropped (and counted in ``meta``) past the configured limit. A committed photo also
  gets one row (topic ``photos``, before its detections' rows): its size, place and times, so that a
  ground station knows the photo and how many detections follow. The photo's time (``taken_at``)
  and the ground error at its centre are kept in ``photo_geo.pose`` beside the pose's own keys.

* An operator's review (:mod:`.review_store`) is a ``reviews`` row per decision, never updated: the
  latest row of a detection counts, the others are its history. A confirmed or flagged decision gets
  its ``mqtt_outbox`` row (topic ``reviews``, the message frozen in ``payload``) in the decision's
  transaction. Boxes the operator drew are ``operator_detections`` rows. ``photo_geo`` holds each
  georeferenced photo's pose, ground footprint and GSD, committed with its result, so the review map
  and the operator's boxes never read the photo's EXIF again.

* A video frame's telemetry (the vehicle's pose when the frame was grabbed, or why there was none)
  is a ``frame_telemetry`` row written in the same transaction as its item: the frame waits in the
  queue, possibly across a restart, while the vehicle moves on, so the pose cannot be asked for later.

Schema changes are migrations applied when an older database is opened (``_MIGRATIONS``), so an
existing state folder keeps its queue and results.

``synchronous=FULL``: a commit is on disk when it returns, so an upload answered 201 or a result
served once survives a power cut. Each thread opens its own :class:`PhotoQueue` (sqlite3
connections are not shared between threads).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

SCHEMA_VERSION = 4
STATES = ("queued", "running", "done", "parked")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id     INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256      TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'running', 'done', 'parked')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    suspect     INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    not_before  REAL NOT NULL DEFAULT 0,
    created_at  REAL NOT NULL,
    bytes       INTEGER,
    removed_at  REAL
);
CREATE INDEX IF NOT EXISTS items_pending ON items (state, suspect, item_id);
CREATE INDEX IF NOT EXISTS items_held ON items (item_id, bytes) WHERE bytes > 0 AND removed_at IS NULL;
CREATE TABLE IF NOT EXISTS outcomes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    item_id      INTEGER NOT NULL UNIQUE REFERENCES items (item_id),
    ok           INTEGER NOT NULL,
    width        INTEGER,
    height       INTEGER,
    detections   TEXT,
    timings      TEXT,
    error        TEXT,
    processed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outcomes_by_kind ON outcomes (ok, id);
CREATE TABLE IF NOT EXISTS files (
    path     TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    item_id  INTEGER NOT NULL REFERENCES items (item_id)
);
CREATE TABLE IF NOT EXISTS video_progress (source TEXT PRIMARY KEY, frames INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS frame_telemetry (
    item_id     INTEGER PRIMARY KEY REFERENCES items (item_id),
    telemetry   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mqtt_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    outcome_id  INTEGER NOT NULL REFERENCES outcomes (id),
    detection   INTEGER NOT NULL,
    topic       TEXT NOT NULL DEFAULT 'detections',
    payload     TEXT
);
CREATE TABLE IF NOT EXISTS reviews (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    detection   TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('unreviewed', 'confirmed', 'rejected', 'flagged')),
    operator    TEXT NOT NULL,
    note        TEXT,
    decided_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_by_detection ON reviews (detection, id);
CREATE TABLE IF NOT EXISTS operator_detections (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    outcome_id  INTEGER NOT NULL REFERENCES outcomes (id),
    bbox        TEXT NOT NULL,
    lat         REAL,
    lon         REAL,
    error_m     REAL,
    operator    TEXT NOT NULL,
    note        TEXT,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS photo_geo (
    outcome_id  INTEGER PRIMARY KEY REFERENCES outcomes (id),
    pose        TEXT,
    footprint   TEXT,
    gsd_cm      REAL
);
"""

# version -> statements that bring a database of the version before it up to it
_MIGRATIONS = {
    2: [
        "CREATE TABLE IF NOT EXISTS frame_telemetry (item_id INTEGER PRIMARY KEY REFERENCES items (item_id), "
        "telemetry TEXT NOT NULL)"
    ],
    # the retention budget: the size of the daemon's own copy of each input, and when it was deleted;
    # the MQTT outbox: one row per detection not yet acknowledged by the broker
    3: [
        "ALTER TABLE items ADD COLUMN bytes INTEGER",
        "ALTER TABLE items ADD COLUMN removed_at REAL",
        "CREATE INDEX IF NOT EXISTS items_held ON items (item_id, bytes) WHERE bytes > 0 AND removed_at IS NULL",
        "CREATE TABLE IF NOT EXISTS mqtt_outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "outcome_id INTEGER NOT NULL REFERENCES outcomes (id), detection INTEGER NOT NULL)",
    ],
    # the operator's review: every decision kept (the latest counts), boxes the operator drew, each
    # photo's pose, ground footprint and GSD for the map; outbox rows carry their topic, and a
    # review's message is frozen in the row (what was decided, not what holds when it is sent)
    4: [
        "ALTER TABLE mqtt_outbox ADD COLUMN topic TEXT NOT NULL DEFAULT 'detections'",
        "ALTER TABLE mqtt_outbox ADD COLUMN payload TEXT",
        "CREATE TABLE IF NOT EXISTS reviews (id INTEGER PRIMARY KEY AUTOINCREMENT, detection TEXT NOT NULL, "
        "status TEXT NOT NULL CHECK (status IN ('unreviewed', 'confirmed', 'rejected', 'flagged')), "
        "operator TEXT NOT NULL, note TEXT, decided_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS reviews_by_detection ON reviews (detection, id)",
        "CREATE TABLE IF NOT EXISTS operator_detections (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "outcome_id INTEGER NOT NULL REFERENCES outcomes (id), bbox TEXT NOT NULL, lat REAL, lon REAL, "
        "error_m REAL, operator TEXT NOT NULL, note TEXT, created_at REAL NOT NULL)",
        "CREATE TABLE IF NOT EXISTS photo_geo (outcome_id INTEGER PRIMARY KEY REFERENCES outcomes (id), "
        "pose TEXT, footprint TEXT, gsd_cm REAL)",
    ],
}
# Sources whose files are the daemon's own copies (under STATE/uploads and STATE/frames); a watched
# photo is the user's file.
OWN_COPIES = ("upload", "video")
PHOTOS_TOPIC = "photos"  # under the MQTT prefix: one message per committed photo, before its detections


@dataclass(frozen=True)
class Item:
    """One input waiting for, or under, processing.

    Attributes:
        item_id: Queue id (enqueue order).
        sha256: Hex SHA-256 of the input's bytes; the key that makes results unique.
        source: "watch", "upload" or "video".
        name: What results call the image: the watched path, the sanitized upload name, or
            ``SOURCE#frame=N``.
        path: Where the bytes are.
        attempts: Tries started so far, this one included.
        telemetry: What was recorded with a video frame when it was grabbed (a JSON object: the
            vehicle's pose, or why there was none), or None.
    """

    item_id: int
    sha256: str
    source: str
    name: str
    path: str
    attempts: int
    telemetry: dict | None = None


@dataclass(frozen=True)
class Outcome:
    """What processing one claimed item produced: results, or an error.

    ``photo_geo`` is what the hooks knew of the photo's place (``{"pose", "footprint", "gsd_cm"}``,
    see ``ResultHooks.photo_geo``), committed with the result for the review map, or None.
    """

    item: Item
    width: int | None = None
    height: int | None = None
    detections: list[dict] | None = None
    timings_ms: dict[str, float] | None = None
    error: str | None = None
    photo_geo: dict | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def iso_utc(t: float) -> str:
    """Seconds since the epoch as ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.123Z."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_Queue = TypeVar("_Queue", bound="PhotoQueue")  # typing.Self is Python 3.11+


class PhotoQueue:
    """One connection to the queue database; create one per thread.

    Args:
        path: The database file (created with its schema when missing).
        max_attempts: Tries after which a failing input is parked with its error.
        retry_after: Seconds before a failed input is tried again.
    """

    def __init__(self, path: str | Path, max_attempts: int = 3, retry_after: float = 10.0) -> None:
        if int(max_attempts) < 1:
            raise ValueError(f"max_attempts: expected an integer >= 1, found {max_attempts!r}")
        if not retry_after >= 0:
            raise ValueError(f"retry_after: expected seconds >= 0, found {retry_after!r}")
        self.path = Path(path)
        self.max_attempts = int(max_attempts)
        self.retry_after = float(retry_after)
        # isolation_level=None: no implicit transactions; every write below opens BEGIN IMMEDIATE itself.
        self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        try:
            self.conn.row_factory = sqlite3.Row
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(
                    f"{self.path}: expected SQLite to use WAL journaling, found {mode!r} (a network file system?)"
                )
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            version = self._schema_version()
            if version is None:  # a new database: create the schema once, not on every connection
                with self._write():
                    for statement in _statements():  # executescript() would commit the transaction first
                        self.conn.execute(statement)
                    self.conn.execute(
                        "INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),)
                    )
                version = self._schema_version()
            if version is not None and version < SCHEMA_VERSION:
                self._migrate()
                version = self._schema_version()
            if version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{self.path}: expected queue schema {SCHEMA_VERSION}, found {version} "
                    "(written by another edgetile version)"
                )
        except BaseException:
            self.conn.close()
            raise

    def check(self) -> None:
        """SQLite's quick integrity check: every page read once (about a second per 100 MB of queue).

        Raises:
            sqlite3.DatabaseError: The database is damaged; the message names the first problem.
        """
        problems = [" ".join(str(r[0]).split()) for r in self.conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"integrity check failed: {'; '.join(problems)}")

    def release(self, items: Sequence[Item]) -> None:
        """Give claimed items back to the queue with their attempt uncounted (their results could
        not be committed, through no fault of theirs: e.g. the disk was full)."""
        with self._write() as c:
            c.executemany(
                "UPDATE items SET state='queued', attempts=max(attempts-1, 0) WHERE item_id=? AND state='running'",
                [(it.item_id,) for it in items],
            )

    def _schema_version(self) -> int | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError:  # no meta table yet
            return None
        return int(row[0]) if row is not None else None

    def _migrate(self) -> None:
        """Bring an older database up to SCHEMA_VERSION, one version per committed transaction."""
        while True:
            with self._write():  # the version is read again under the write lock: two openers migrate once
                version = self._schema_version()
                if version is None or version >= SCHEMA_VERSION:
                    return
                for statement in _MIGRATIONS[version + 1]:
                    self.conn.execute(statement)
                if version + 1 == 3:
                    self._measure_copies()
                self.conn.execute("UPDATE meta SET value=? WHERE key='schema'", (str(version + 1),))

    def _measure_copies(self) -> None:
        """Schema 3: the size of every own copy recorded before sizes were kept (one stat each, once).

        A copy already missing gets size 0: it is not counted, and /images keeps answering 404 for it
        (it was not removed by the retention).
        """
        rows = self.conn.execute(
            f"SELECT item_id, path FROM items WHERE bytes IS NULL AND source IN ({_marks(OWN_COPIES)})",
            OWN_COPIES,
        ).fetchall()
        sizes = []
        for r in rows:
            try:
                sizes.append((Path(r["path"]).stat().st_size, r["item_id"]))
            except FileNotFoundError:
                sizes.append((0, r["item_id"]))
        self.conn.executemany("UPDATE items SET bytes=? WHERE item_id=?", sizes)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once so that two writers never deadlock upgrading locks."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back by itself (e.g. a COMMIT that met a full disk)
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise

    # ---- producers --------------------------------------------------------------------------

    def add(
        self,
        sha256: str,
        source: str,
        name: str,
        path: str | Path,
        file_stat: tuple[int, int] | None = None,
        telemetry: dict | None = None,
        size: int | None = None,
    ) -> tuple[int, bool]:
        """Record an input unless its content is already known.

        Args:
            sha256: Hex digest of the bytes.
            source: "watch", "upload" or "video".
            name: What results call it.
            path: Where its bytes are.
            file_stat: (size, mtime_ns) of a watched file, remembered so that a rescan after a
                restart does not hash it again.
            telemetry: A JSON object recorded with a new input in the same transaction (a video
                frame's pose when it was grabbed); ignored when the content was recorded before,
                like the rest of the input.
            size: Bytes of the daemon's own copy (an upload or a video frame), counted against the
                retention budget; None for a watched photo (the user's file, never deleted).

        Returns:
            (item_id, created): created is False when the same content was recorded before.
        """
        return self.add_many(
            [(sha256, source, name, path, file_stat)], [telemetry], None if size is None else [size]
        )[0]

    def add_many(
        self,
        inputs: Sequence[tuple[str, str, str, str | Path, tuple[int, int] | None]],
        telemetry: Sequence[dict | None] | None = None,
        sizes: Sequence[int | None] | None = None,
    ) -> list[tuple[int, bool]]:
        """Record several inputs in one transaction (one disk sync); each as :meth:`add` takes it.

        Args:
            inputs: (sha256, source, name, path, file_stat) per input.
            telemetry: One JSON object or None per input, or None for none at all.
            sizes: Bytes of each input's own copy (or None), or None for none at all.

        Returns:
            (item_id, created) per input, in order.
        """
        for what, given in (("telemetry", telemetry), ("sizes", sizes)):
            if given is not None and len(given) != len(inputs):
                raise ValueError(f"{what}: expected one entry per input ({len(inputs)}), found {len(given)}")
        out = []
        with self._write() as c:
            for i, (sha256, source, name, path, file_stat) in enumerate(inputs):
                size = None if sizes is None else sizes[i]
                if size is not None and (source not in OWN_COPIES or int(size) < 0):
                    raise ValueError(
                        f"sizes: expected a size >= 0 only for an own copy ({', '.join(OWN_COPIES)}), "
                        f"found {size!r} for a {source!r} input"
                    )
                cur = c.execute(
                    "INSERT OR IGNORE INTO items (sha256, source, name, path, created_at, bytes) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (sha256, source, name, str(path), time.time(), None if size is None else int(size)),
                )
                created = cur.rowcount == 1
                item_id = c.execute("SELECT item_id FROM items WHERE sha256=?", (sha256,)).fetchone()[0]
                if created and telemetry is not None and telemetry[i] is not None:
                    c.execute(
                        "INSERT INTO frame_telemetry (item_id, telemetry) VALUES (?, ?)",
                        (item_id, json.dumps(telemetry[i], separators=(",", ":"))),
                    )
                if file_stat is not None:
                    c.execute(
                        "INSERT OR REPLACE INTO files (path, size, mtime_ns, item_id) VALUES (?, ?, ?, ?)",
                        (str(path), int(file_stat[0]), int(file_stat[1]), item_id),
                    )
                out.append((int(item_id), created))
        return out

    def known(self, sha256: str) -> bool:
        """True when an input with this content was recorded (whatever became of it since)."""
        return self.conn.execute("SELECT 1 FROM items WHERE sha256=?", (sha256,)).fetchone() is not None

    def holds_copy(self, sha256: str, path: str | Path) -> bool:
        """True when the input with this content uses the file at ``path`` and it was not removed."""
        row = self.conn.execute("SELECT path, removed_at FROM items WHERE sha256=?", (sha256,)).fetchone()
        return row is not None and row["path"] == str(path) and row["removed_at"] is None

    def known_file(self, path: str | Path, size: int, mtime_ns: int) -> bool:
        """True when this exact file (path, size, modification time) was recorded before."""
        row = self.conn.execute("SELECT size, mtime_ns FROM files WHERE path=?", (str(path),)).fetchone()
        return row is not None and row[0] == size and row[1] == mtime_ns

    def video_frames_read(self, source: str) -> int:
        """How many frames of a video file were already read and queued."""
        row = self.conn.execute("SELECT frames FROM video_progress WHERE source=?", (source,)).fetchone()
        return int(row[0]) if row else 0

    def set_video_frames_read(self, source: str, frames: int) -> None:
        with self._write() as c:
            c.execute(
                "INSERT OR REPLACE INTO video_progress (source, frames) VALUES (?, ?)", (source, int(frames))
            )

    # ---- the worker -------------------------------------------------------------------------

    def recover(self) -> tuple[int, int]:
        """At start-up: what was ``running`` when the last daemon died goes back to the queue.

        Items interrupted ``max_attempts`` times are parked with that reason instead.

        Returns:
            (requeued, parked) counts.
        """
        now = time.time()
        with self._write() as c:
            doomed = c.execute(
                "SELECT item_id, attempts, last_error FROM items WHERE state='running' AND attempts>=?",
                (self.max_attempts,),
            ).fetchall()
            for r in doomed:
                error = (
                    f"the daemon stopped {r['attempts']} time(s) while processing this input "
                    "(crash, kill or power loss)"
                )
                if r["last_error"]:
                    error += f"; last error: {r['last_error']}"
                c.execute(
                    "INSERT INTO outcomes (item_id, ok, error, processed_at) VALUES (?, 0, ?, ?)",
                    (r["item_id"], error, now),
                )
                c.execute(
                    "UPDATE items SET state='parked', last_error=? WHERE item_id=?", (error, r["item_id"])
                )
            requeued = c.execute(
                "UPDATE items SET state='queued', suspect=1, not_before=0 WHERE state='running'"
            ).rowcount
        return requeued, len(doomed)

    def claim(self, limit: int) -> list[Item]:
        """Take up to ``limit`` queued inputs (oldest first) and count an attempt for each.

        A suspect (interrupted last time) is claimed alone, so that if it crashes the daemon again
        only it is blamed.
        """
        now = time.time()
        with self._write() as c:
            # A retry time further ahead than retry_after means the clock jumped back (a companion
            # computer without a battery-backed clock, set by GPS or NTP after boot): due now.
            rows = c.execute(
                "SELECT i.item_id, sha256, source, name, path, attempts, suspect, t.telemetry FROM items i "
                "LEFT JOIN frame_telemetry t USING (item_id) "
                "WHERE state='queued' AND (not_before<=? OR not_before>?) ORDER BY suspect DESC, i.item_id LIMIT ?",
                (now, now + self.retry_after + 1.0, int(limit)),
            ).fetchall()
            if rows and rows[0]["suspect"]:
                rows = rows[:1]
            c.executemany(
                "UPDATE items SET state='running', attempts=attempts+1 WHERE item_id=?",
                [(r["item_id"],) for r in rows],
            )
        return [
            Item(
                r["item_id"],
                r["sha256"],
                r["source"],
                r["name"],
                r["path"],
                r["attempts"] + 1,
                None if r["telemetry"] is None else json.loads(r["telemetry"]),
            )
            for r in rows
        ]

    def finish(self, outcomes: Sequence[Outcome], outbox_limit: int | None = None) -> int:
        """Commit a batch: results with their done marks, errors retried later or parked, in one transaction.

        Args:
            outcomes: What processing the claimed items produced.
            outbox_limit: With MQTT, the most messages the outbox holds: each detection of a result
                gets an outbox row in this transaction, and the oldest rows past the limit are
                dropped and counted. None: no outbox rows.

        Returns:
            How many of the failed inputs were parked.
        """
        if outbox_limit is not None and int(outbox_limit) < 1:
            raise ValueError(f"outbox_limit: expected at least 1 message or None, found {outbox_limit!r}")
        now = time.time()
        parked = 0
        with self._write() as c:
            for o in outcomes:
                if o.ok:
                    cur = c.execute(
                        "INSERT INTO outcomes (item_id, ok, width, height, detections, timings, processed_at) "
                        "VALUES (?, 1, ?, ?, ?, ?, ?)",
                        (
                            o.item.item_id,
                            o.width,
                            o.height,
                            json.dumps(o.detections, separators=(",", ":")),
                            json.dumps(o.timings_ms or {}, separators=(",", ":")),
                            now,
                        ),
                    )
                    if (
                        outbox_limit is not None
                    ):  # the photo first: a station learns its place, then its people
                        c.execute(
                            "INSERT INTO mqtt_outbox (outcome_id, detection, topic) VALUES (?, -1, ?)",
                            (cur.lastrowid, PHOTOS_TOPIC),
                        )
                        c.executemany(
                            "INSERT INTO mqtt_outbox (outcome_id, detection) VALUES (?, ?)",
                            [(cur.lastrowid, k) for k in range(len(o.detections or []))],
                        )
                    if o.photo_geo is not None:
                        g = o.photo_geo
                        pose = g.get("pose")
                        if (
                            pose is not None
                        ):  # kept beside the pose: CameraPose.from_dict reads only its own keys
                            pose = {**pose, "taken_at": g.get("taken_at"), "centre_error_m": g.get("error_m")}
                        c.execute(
                            "INSERT INTO photo_geo (outcome_id, pose, footprint, gsd_cm) VALUES (?, ?, ?, ?)",
                            (
                                cur.lastrowid,
                                _json_or_null(pose),
                                _json_or_null(g.get("footprint")),
                                g.get("gsd_cm"),
                            ),
                        )
                    c.execute(
                        "UPDATE items SET state='done', suspect=0, last_error=NULL WHERE item_id=?",
                        (o.item.item_id,),
                    )
                elif o.item.attempts >= self.max_attempts:
                    c.execute(
                        "INSERT INTO outcomes (item_id, ok, error, processed_at) VALUES (?, 0, ?, ?)",
                        (o.item.item_id, o.error, now),
                    )
                    c.execute(
                        "UPDATE items SET state='parked', suspect=0, last_error=? WHERE item_id=?",
                        (o.error, o.item.item_id),
                    )
                    parked += 1
                else:
                    c.execute(
                        "UPDATE items SET state='queued', suspect=0, last_error=?, not_before=? "
                        "WHERE item_id=?",
                        (o.error, now + self.retry_after, o.item.item_id),
                    )
            if outbox_limit is not None:
                trim_outbox(c, outbox_limit)
        return parked

    def retry_parked(self) -> int:
        """Send every parked input back to the queue with a fresh attempt count; returns how many.

        A parked input whose copy the retention removed stays parked: there is nothing left to read.
        """
        with self._write() as c:
            ids = [
                r[0]
                for r in c.execute("SELECT item_id FROM items WHERE state='parked' AND removed_at IS NULL")
            ]
            c.executemany("DELETE FROM outcomes WHERE item_id=?", [(i,) for i in ids])
            c.executemany(
                "UPDATE items SET state='queued', attempts=0, suspect=0, not_before=0 WHERE item_id=?",
                [(i,) for i in ids],
            )
        return len(ids)

    # ---- the retention ------------------------------------------------------------------------

    def remove_copies(
        self,
        excess_bytes: int,
        processed_before: float | None,
        remove: Callable[[list[Path]], list[bool]],
        limit: int = 256,
    ) -> tuple[int, int]:
        """Delete the own copies of finished inputs, oldest result first, in one transaction.

        Copies are chosen while ``excess_bytes`` is not yet freed, and while a result was committed
        before ``processed_before`` (seconds since the epoch; None: no age limit). Only inputs that
        are done or parked are chosen, so nothing queued or running loses its bytes.

        Args:
            excess_bytes: Bytes to free (0 or less: only the age limit chooses).
            processed_before: Copies of results older than this go whatever the budget.
            remove: Deletes the chosen files (and makes that durable) before the marks are
                committed; returns per file whether it is gone (False: it could not be deleted,
                and stays counted).
            limit: Most copies looked at in this transaction; call again while it returns files.

        Returns:
            (files, bytes) marked removed.
        """
        before = -1e300 if processed_before is None else float(processed_before)
        with self._write() as c:
            # The age is tested on every row, not assumed to grow with the id: a device without a
            # battery-backed clock commits results with times that jump back and forth.
            rows = c.execute(
                # INDEXED BY: only the copies still held are read, not every result ever committed
                "SELECT i.item_id, i.path, i.bytes, o.processed_at FROM items i INDEXED BY items_held "
                "JOIN outcomes o USING (item_id) "
                "WHERE i.bytes > 0 AND i.removed_at IS NULL AND i.state IN ('done', 'parked') "
                f"AND i.source IN ({_marks(OWN_COPIES)}) AND (? > 0 OR o.processed_at < ?) ORDER BY o.id LIMIT ?",
                (*OWN_COPIES, int(excess_bytes), before, int(limit)),
            ).fetchall()
            chosen = []
            for r in rows:
                if excess_bytes > 0 or r["processed_at"] < before:
                    chosen.append(r)
                    excess_bytes -= r["bytes"]
            if not chosen:
                return 0, 0
            gone = [r for r, ok in zip(chosen, remove([Path(r["path"]) for r in chosen])) if ok]
            now = time.time()
            c.executemany(
                "UPDATE items SET removed_at=? WHERE item_id=?", [(now, r["item_id"]) for r in gone]
            )
        return len(gone), sum(r["bytes"] for r in gone)

    def outbox_after(self, after_id: int, limit: int) -> list[tuple[int, dict]]:
        """MQTT messages waiting in the outbox after row ``after_id``, in commit order.

        Returns:
            (row id, message) pairs; a detection's message is its record with the photo's ``image``
            name and ``sha256`` (see :meth:`outbox_messages_after` for the topics).
        """
        return [(row_id, message) for row_id, _topic, message in self.outbox_messages_after(after_id, limit)]

    def outbox_messages_after(self, after_id: int, limit: int) -> list[tuple[int, str, dict]]:
        """MQTT messages waiting in the outbox after row ``after_id``, in commit order, with their topic.

        Returns:
            (row id, topic under the prefix, message) triples: "photos" with the photo's place and its
            number of detections, "detections" with the detection record plus its ``id``, ``outcome_id``,
            ``index``, ``image``, ``sha256``, ``committed_at`` and ``taken_at``, or the topic and the
            message frozen in the row (a review).
        """
        rows = self.conn.execute(
            "SELECT b.id, b.outcome_id, b.detection, b.topic, b.payload, o.detections, o.width, o.height, "
            "o.processed_at, i.name, i.sha256, g.pose, g.footprint, g.gsd_cm "
            "FROM mqtt_outbox b JOIN outcomes o ON o.id = b.outcome_id JOIN items i ON i.item_id = o.item_id "
            "LEFT JOIN photo_geo g ON g.outcome_id = o.id WHERE b.id > ? ORDER BY b.id LIMIT ?",
            (int(after_id), int(limit)),
        ).fetchall()
        parsed: dict[int, list[dict]] = {}
        out = []
        for r in rows:
            if r["payload"] is not None:
                out.append((int(r["id"]), r["topic"], json.loads(r["payload"])))
                continue
            records = parsed.get(r["outcome_id"])
            if records is None:
                records = parsed[r["outcome_id"]] = json.loads(r["detections"])
            pose = None if r["pose"] is None else json.loads(r["pose"])
            taken_at = None if pose is None else pose.get("taken_at")
            common = {"outcome_id": r["outcome_id"], "image": r["name"], "sha256": r["sha256"]}
            times = {"committed_at": round(r["processed_at"], 3), "taken_at": taken_at}
            if r["topic"] == PHOTOS_TOPIC:
                message = {
                    **common,
                    "width": r["width"],
                    "height": r["height"],
                    **times,
                    "detections": len(records),
                    "footprint": None if r["footprint"] is None else json.loads(r["footprint"]),
                    "gsd_cm": r["gsd_cm"],
                    "position": None
                    if pose is None
                    else {"lat": pose["lat"], "lon": pose["lon"], "alt_m": pose.get("abs_alt_m")},
                    "error_m": None if pose is None else pose.get("centre_error_m"),
                }
            else:
                k = r["detection"]
                message = {
                    "image": r["name"],
                    "sha256": r["sha256"],
                    **records[k],
                    "id": f"{r['outcome_id']}-{k}",
                    "outcome_id": r["outcome_id"],
                    "index": k,
                    **times,
                }
            out.append((int(r["id"]), r["topic"], message))
        return out

    def outbox_done(self, row_ids: Sequence[int]) -> None:
        """Forget messages the broker acknowledged (ids already dropped are ignored)."""
        with self._write() as c:
            c.executemany("DELETE FROM mqtt_outbox WHERE id=?", [(int(i),) for i in row_ids])

    def outbox_counts(self) -> dict[str, int]:
        """{"waiting": messages in the outbox, "dropped": dropped past the limit (all runs)}."""
        waiting = self.conn.execute("SELECT COUNT(*) FROM mqtt_outbox").fetchone()[0]
        row = self.conn.execute("SELECT value FROM meta WHERE key='mqtt_dropped'").fetchone()
        return {"waiting": int(waiting), "dropped": int(row[0]) if row else 0}

    def held_copies(self) -> tuple[int, int]:
        """(files, bytes) of the own copies on disk; reads only the ``items_held`` index."""
        held = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM items WHERE bytes > 0 AND removed_at IS NULL"
        ).fetchone()
        return int(held[0]), int(held[1])

    def copies(self) -> dict[str, int]:
        """The own copies: {"held_files", "held_bytes", "removed_files", "removed_bytes"} (all runs)."""
        files, nbytes = self.held_copies()
        removed = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(bytes), 0) FROM items WHERE removed_at IS NOT NULL"
        ).fetchone()
        return {
            "held_files": files,
            "held_bytes": nbytes,
            "removed_files": int(removed[0]),
            "removed_bytes": int(removed[1]),
        }

    def parked_without_copy(self) -> int:
        """Parked inputs whose copy the retention removed (--retry-failed cannot try them again)."""
        return int(
            self.conn.execute(
                "SELECT COUNT(*) FROM items WHERE state='parked' AND removed_at IS NOT NULL"
            ).fetchone()[0]
        )

    # ---- readers ----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of items in each state (every state present, zero when empty)."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self.conn.execute("SELECT state, COUNT(*) FROM items GROUP BY state"):
            out[state] = int(n)
        return out

    def depth(self) -> int:
        """Inputs waiting or under processing."""
        return int(
            self.conn.execute("SELECT COUNT(*) FROM items WHERE state IN ('queued', 'running')").fetchone()[0]
        )

    def detections(self, since: int, limit: int) -> tuple[list[dict], int]:
        """Results committed after outcome id ``since``, oldest first.

        Returns:
            (items, next): each item {"id", "image", "sha256", "width", "height", "detections",
            "processed_at"}; next is the id to pass as ``since`` for the following page (``since``
            itself when nothing new).
        """
        rows = self.conn.execute(
            "SELECT o.id, i.name, i.sha256, o.width, o.height, o.detections, o.processed_at "
            "FROM outcomes o JOIN items i USING (item_id) WHERE o.ok=1 AND o.id>? ORDER BY o.id LIMIT ?",
            (int(since), int(limit)),
        ).fetchall()
        items = [
            {
                "id": r["id"],
                "image": r["name"],
                "sha256": r["sha256"],
                "width": r["width"],
                "height": r["height"],
                "detections": json.loads(r["detections"]),
                "processed_at": iso_utc(r["processed_at"]),
            }
            for r in rows
        ]
        return items, (rows[-1]["id"] if rows else int(since))

    def failed(self, since: int, limit: int) -> tuple[list[dict], int]:
        """Parked inputs after outcome id ``since``: {"id", "image", "sha256", "source", "attempts", "error", "failed_at"}."""
        rows = self.conn.execute(
            "SELECT o.id, i.name, i.sha256, i.source, i.attempts, o.error, o.processed_at "
            "FROM outcomes o JOIN items i USING (item_id) WHERE o.ok=0 AND o.id>? ORDER BY o.id LIMIT ?",
            (int(since), int(limit)),
        ).fetchall()
        items = [
            {
                "id": r["id"],
                "image": r["name"],
                "sha256": r["sha256"],
                "source": r["source"],
                "attempts": r["attempts"],
                "error": r["error"],
                "failed_at": iso_utc(r["processed_at"]),
            }
            for r in rows
        ]
        return items, (rows[-1]["id"] if rows else int(since))

    def outcome(self, outcome_id: int) -> sqlite3.Row | None:
        """The outcome row joined with its item (path, name, ok, detections, removed_at), or None."""
        return self.conn.execute(
            "SELECT o.id, o.ok, o.detections, o.error, i.name, i.path, i.sha256, i.removed_at "
            "FROM outcomes o JOIN items i USING (item_id) WHERE o.id=?",
            (int(outcome_id),),
        ).fetchone()

    def lookup(self, sha256: str) -> dict | None:
        """Where an input stands, by its content hash: {"sha256", "image", "state", "attempts", "id", "error"}."""
        r = self.conn.execute(
            "SELECT i.sha256, i.name, i.state, i.attempts, i.last_error, o.id FROM items i "
            "LEFT JOIN outcomes o USING (item_id) WHERE i.sha256=?",
            (sha256,),
        ).fetchone()
        if r is None:
            return None
        return {
            "sha256": r["sha256"],
            "image": r["name"],
            "state": r["state"],
            "attempts": r["attempts"],
            "id": r["id"],
            "error": r["last_error"],
        }

    def close(self) -> None:
        self.conn.close()

    def __enter__(self: _Queue) -> _Queue:  # a ReviewQueue's `with` block gets a ReviewQueue
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def trim_outbox(c: sqlite3.Connection, outbox_limit: int) -> None:
    """Drop the oldest outbox rows past ``outbox_limit`` and count them (inside a write transaction)."""
    over = c.execute("SELECT COUNT(*) FROM mqtt_outbox").fetchone()[0] - int(outbox_limit)
    if over > 0:  # the broker has been away for long: the oldest messages make room
        c.execute(
            "DELETE FROM mqtt_outbox WHERE id IN (SELECT id FROM mqtt_outbox ORDER BY id LIMIT ?)", (over,)
        )
        c.execute("INSERT OR IGNORE INTO meta VALUES ('mqtt_dropped', '0')")  # no UPSERT before 3.24
        c.execute("UPDATE meta SET value=CAST(value AS INTEGER) + ? WHERE key='mqtt_dropped'", (over,))


def _json_or_null(value: object) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]
