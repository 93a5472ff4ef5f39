"""The ground station's durable store: one SQLite database (WAL, ``synchronous=FULL``) in its state folder.

Why each rule exists:

* A detection heard over MQTT is a ``sightings`` row, UNIQUE on (drone, the daemon's result id, the
  detection's index): QoS 1 delivers at least once, so the same message after a reconnection, a
  restart of the station or of the broker is recognised and recorded once. The ingest acknowledges
  a message to the broker only after the transaction that recorded it has committed, so a
  ``kill -9`` between receipt and commit means the broker delivers it again, never that it is lost.
* A photo (``photos``) is keyed by (drone, the daemon's result id) the same way; its id here is the
  station's photo id that the API uses. A detection whose photo message never came (dropped by a
  daemon's full outbox) still gets a photo row from what the detection says.
* Each sighting's find is stored with it (``sightings.find_id``) in the transaction that recorded
  it, and a split writes the sighting's new find and the find it left (``splits``) in one
  transaction: at start the finds are rebuilt exactly as they were, never regrouped differently.
* A decision is a ``decisions`` row, never updated (the latest one of a find counts, the others are
  its history). A confirmed or flagged decision writes its MQTT message into ``outbox`` in the same
  transaction, once per find and status (``published``): a broker that is away loses nothing, and a
  find confirmed twice is announced once.
* The crop of each sighting is fetched from its daemon by a background thread; where that stands
  (pending, ready, given up; tries; next try) is stored with the sighting, so a restart resumes the
  fetches that were pending.
* ``changes`` lists, in commit order, what the live page must hear (a find changed by a new
  sighting, a decision, a crop, a drone); the live stream reads it after the id it last saw.

Each thread opens its own :class:`StationStore` (sqlite3 connections are not shared between threads).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
REVIEWS_TOPIC = "reviews"
CROP_STATES = ("pending", "ready", "given_up")
# A crop the station would not fetch (its drone's api outside --drone-networks) is given up with an
# error that starts with this; it is counted apart ("refused"), without a new state in the schema.
REFUSED = "refused: "
# The embedding model a drone announced last (PREFIX/photos' "embedder") is a ``meta`` row under this
# key and the drone's id: embeddings of two models are not comparable (see :mod:`.grouping`).
EMBEDDER_KEY = "embedder/"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS drones (
    drone_id    TEXT PRIMARY KEY,
    seq         INTEGER NOT NULL UNIQUE,
    api         TEXT,
    online      INTEGER NOT NULL DEFAULT 0,
    status_at   REAL,
    last_lat    REAL,
    last_lon    REAL,
    last_time   REAL
);
CREATE TABLE IF NOT EXISTS photos (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    drone_id     TEXT NOT NULL,
    outcome_id   INTEGER NOT NULL,
    api          TEXT,
    image        TEXT NOT NULL,
    sha256       TEXT,
    width        INTEGER,
    height       INTEGER,
    committed_at REAL,
    taken_at     REAL,
    detections   INTEGER,
    footprint    TEXT,
    gsd_cm       REAL,
    position     TEXT,
    error_m      REAL,
    received_at  REAL NOT NULL,
    UNIQUE (drone_id, outcome_id)
);
CREATE TABLE IF NOT EXISTS sightings (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    drone_id      TEXT NOT NULL,
    outcome_id    INTEGER NOT NULL,
    idx           INTEGER NOT NULL,
    photo_id      INTEGER NOT NULL REFERENCES photos (id),
    score         REAL,
    class_name    TEXT NOT NULL,
    bbox          TEXT NOT NULL,
    lat           REAL,
    lon           REAL,
    error_m       REAL,
    embedding     TEXT,
    time          REAL NOT NULL,
    find_id       INTEGER,
    received_at   REAL NOT NULL,
    crop_state    TEXT NOT NULL DEFAULT 'pending' CHECK (crop_state IN ('pending', 'ready', 'given_up')),
    crop_tries    INTEGER NOT NULL DEFAULT 0,
    crop_next     REAL NOT NULL DEFAULT 0,
    crop_error    TEXT,
    UNIQUE (drone_id, outcome_id, idx)
);
CREATE INDEX IF NOT EXISTS sightings_crops ON sightings (crop_state, crop_next);
CREATE INDEX IF NOT EXISTS sightings_by_find ON sightings (find_id, id);
CREATE TABLE IF NOT EXISTS splits (
    sighting_id INTEGER NOT NULL REFERENCES sightings (id),
    from_find   INTEGER NOT NULL,
    operator    TEXT NOT NULL,
    split_at    REAL NOT NULL,
    PRIMARY KEY (sighting_id, from_find)
);
CREATE TABLE IF NOT EXISTS decisions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    find_id     INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('unreviewed', 'confirmed', 'rejected', 'flagged')),
    operator    TEXT NOT NULL,
    note        TEXT,
    decided_at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_find ON decisions (find_id, id);
CREATE TABLE IF NOT EXISTS published (
    find_id     INTEGER NOT NULL,
    status      TEXT NOT NULL,
    decision_id INTEGER NOT NULL,
    PRIMARY KEY (find_id, status)
);
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    topic       TEXT NOT NULL,
    payload     TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS changes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL CHECK (kind IN ('detection', 'decision', 'crop', 'drone')),
    ref         TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class NewSighting:
    """What a PREFIX/detections message says, checked (see :func:`.ingest.parse_detection`)."""

    drone_id: str
    api: str | None
    outcome_id: int
    index: int
    image: str
    sha256: str | None
    score: float | None
    class_name: str
    bbox: list[float]
    lat: float | None
    lon: float | None
    error_m: float | None
    committed_at: float | None
    taken_at: float | None
    embedding: str | None = None

    @property
    def time(self) -> float:
        """When the person was seen: the photo's time, else its commit on the drone."""
        if self.taken_at is not None:
            return self.taken_at
        return self.committed_at if self.committed_at is not None else time.time()


def _rowid(cur: sqlite3.Cursor) -> int:
    """The row id of the INSERT the cursor has just run."""
    if cur.lastrowid is None:
        raise RuntimeError("expected the row id of the INSERT just run, found none")
    return int(cur.lastrowid)


def _statements() -> list[str]:
    return [s.strip() for s in _SCHEMA.split(";") if s.strip()]


class StationStore:
    """One connection to the station's database; create one per thread.

    Args:
        path: The database file (created with its schema when missing).
        shared: Opened on one thread and closed on another once the first has ended (the MQTT
            client's network thread).
    """

    def __init__(self, path: str | Path, shared: bool = False) -> None:
        self.path = Path(path)
        self.conn = sqlite3.connect(
            str(self.path), timeout=60.0, isolation_level=None, check_same_thread=not shared
        )
        try:
            self.conn.row_factory = sqlite3.Row
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.OperationalError(
                    f"{self.path}: expected SQLite to use WAL journaling, found {mode!r} (a network file system?)"
                )
            self.conn.execute("PRAGMA synchronous=FULL")
            version = self._schema_version()
            if version is None:
                with self.write() as c:
                    for statement in _statements():
                        c.execute(statement)
                    c.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                version = self._schema_version()
            if version != SCHEMA_VERSION:
                raise sqlite3.DatabaseError(
                    f"{self.path}: expected station schema {SCHEMA_VERSION}, found {version} "
                    "(written by another edgetile version)"
                )
        except BaseException:
            self.conn.close()
            raise

    def _schema_version(self) -> int | None:
        try:
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row is not None else None

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def check(self) -> None:
        """SQLite's quick integrity check; DatabaseError naming the first problem."""
        problems = [" ".join(str(r[0]).split()) for r in self.conn.execute("PRAGMA quick_check(3)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError(f"integrity check failed: {'; '.join(problems)}")

    # ---- counters kept across restarts --------------------------------------------------------

    def counter(self, key: str) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def add_count(c: sqlite3.Connection, key: str, n: int = 1) -> None:
        c.execute("INSERT OR IGNORE INTO meta VALUES (?, '0')", (key,))
        c.execute("UPDATE meta SET value=CAST(value AS INTEGER) + ? WHERE key=?", (int(n), key))

    def count_bad_message(self) -> None:
        with self.write() as c:
            self.add_count(c, "bad_messages")

    # ---- ingest -------------------------------------------------------------------------------

    def _drone(self, c: sqlite3.Connection, drone_id: str, api: str | None) -> bool:
        """Make sure the drone is known (and its API up to date); True when that changed anything."""
        row = c.execute("SELECT api FROM drones WHERE drone_id=?", (drone_id,)).fetchone()
        if row is None:
            seq = c.execute("SELECT COALESCE(MAX(seq), -1) + 1 FROM drones").fetchone()[0]
            c.execute("INSERT INTO drones (drone_id, seq, api) VALUES (?, ?, ?)", (drone_id, seq, api))
            return True
        if api is not None and row["api"] != api:
            c.execute("UPDATE drones SET api=? WHERE drone_id=?", (api, drone_id))
            return True
        return False

    @staticmethod
    def _change(c: sqlite3.Connection, kind: str, ref: object) -> None:
        c.execute("INSERT INTO changes (kind, ref) VALUES (?, ?)", (kind, str(ref)))

    def record_status(self, drone_id: str, api: str | None, online: bool, at: float) -> None:
        """A drone's retained status (PREFIX/status/DRONE_ID)."""
        with self.write() as c:
            self._drone(c, drone_id, api)
            c.execute(
                "UPDATE drones SET online=?, status_at=? WHERE drone_id=?", (int(online), float(at), drone_id)
            )
            self._change(c, "drone", drone_id)

    def record_photo(self, m: dict) -> int:
        """A PREFIX/photos message (checked by the ingest); returns the station's photo id."""
        now = time.time()
        with self.write() as c:
            self._drone(c, m["drone_id"], m.get("api"))
            values = (
                m.get("api"),
                m["image"],
                m.get("sha256"),
                m.get("width"),
                m.get("height"),
                m.get("committed_at"),
                m.get("taken_at"),
                m.get("detections"),
                None if m.get("footprint") is None else json.dumps(m["footprint"]),
                m.get("gsd_cm"),
                None if m.get("position") is None else json.dumps(m["position"]),
                m.get("error_m"),
            )
            row = c.execute(
                "SELECT id FROM photos WHERE drone_id=? AND outcome_id=?", (m["drone_id"], m["outcome_id"])
            ).fetchone()
            if row is None:
                photo_id = _rowid(
                    c.execute(
                        "INSERT INTO photos (api, image, sha256, width, height, committed_at, taken_at, detections, "
                        "footprint, gsd_cm, position, error_m, drone_id, outcome_id, received_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (*values, m["drone_id"], m["outcome_id"], now),
                    )
                )
            else:  # a detection came first and made the row from what it knew
                photo_id = row["id"]
                c.execute(
                    "UPDATE photos SET api=?, image=?, sha256=?, width=?, height=?, committed_at=?, taken_at=?, "
                    "detections=?, footprint=?, gsd_cm=?, position=?, error_m=? WHERE id=?",
                    (*values, photo_id),
                )
            position = m.get("position")
            if position is not None:
                when = m.get("taken_at") or m.get("committed_at") or now
                last = c.execute("SELECT last_time FROM drones WHERE drone_id=?", (m["drone_id"],)).fetchone()
                if last["last_time"] is None or when >= last["last_time"]:
                    c.execute(
                        "UPDATE drones SET last_lat=?, last_lon=?, last_time=? WHERE drone_id=?",
                        (position["lat"], position["lon"], when, m["drone_id"]),
                    )
            if m.get("embedder") is not None:
                c.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    (EMBEDDER_KEY + m["drone_id"], json.dumps(m["embedder"])),
                )
            self._change(c, "drone", m["drone_id"])
        return int(photo_id)

    def embedders(self) -> dict[str, dict]:
        """The embedding model each drone announced last ({drone id: {"sha256", "threshold"}})."""
        rows = self.conn.execute(
            "SELECT key, value FROM meta WHERE key >= ? AND key < ?", (EMBEDDER_KEY, EMBEDDER_KEY[:-1] + "0")
        ).fetchall()
        return {r["key"][len(EMBEDDER_KEY) :]: json.loads(r["value"]) for r in rows}

    def record_sighting(self, s: NewSighting, assign) -> tuple[int, int] | None:
        """Record one detection once, with the find ``assign`` gives it, in one transaction.

        Args:
            s: The detection.
            assign: Called inside the transaction with (sighting row id, photo id) for a new sighting;
                returns its find id (the grouper's ``add``). Not called for a sighting already recorded.

        Returns:
            (sighting id, find id) of a new sighting; None when it was recorded before (a redelivery).
        """
        now = time.time()
        with self.write() as c:
            if c.execute(
                "SELECT 1 FROM sightings WHERE drone_id=? AND outcome_id=? AND idx=?",
                (s.drone_id, s.outcome_id, s.index),
            ).fetchone():
                return None
            self._drone(c, s.drone_id, s.api)
            row = c.execute(
                "SELECT id FROM photos WHERE drone_id=? AND outcome_id=?", (s.drone_id, s.outcome_id)
            ).fetchone()
            if row is None:  # its photo message was lost (a full outbox on the drone): what we know
                photo_id = _rowid(
                    c.execute(
                        "INSERT INTO photos (drone_id, outcome_id, api, image, sha256, committed_at, taken_at, "
                        "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (s.drone_id, s.outcome_id, s.api, s.image, s.sha256, s.committed_at, s.taken_at, now),
                    )
                )
            else:
                photo_id = row["id"]
            key = _rowid(
                c.execute(
                    "INSERT INTO sightings (drone_id, outcome_id, idx, photo_id, score, class_name, bbox, lat, lon, "
                    "error_m, embedding, time, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        s.drone_id,
                        s.outcome_id,
                        s.index,
                        photo_id,
                        s.score,
                        s.class_name,
                        json.dumps(s.bbox),
                        s.lat,
                        s.lon,
                        s.error_m,
                        s.embedding,
                        s.time,
                        now,
                    ),
                )
            )
            find_id = int(assign(int(key), int(photo_id)))
            c.execute("UPDATE sightings SET find_id=? WHERE id=?", (find_id, key))
            self._change(c, "detection", find_id)
        return int(key), find_id

    # ---- crops --------------------------------------------------------------------------------

    def crops_due(self, now: float, limit: int) -> list[sqlite3.Row]:
        """Pending crop fetches whose next try is due: id, drone_id, outcome_id, idx, api, tries, received_at."""
        return self.conn.execute(
            "SELECT s.id, s.drone_id, s.outcome_id, s.idx, s.crop_tries, s.received_at, s.find_id, "
            "COALESCE(d.api, p.api) AS api FROM sightings s JOIN photos p ON p.id = s.photo_id "
            "JOIN drones d ON d.drone_id = s.drone_id "
            "WHERE s.crop_state='pending' AND s.crop_next<=? ORDER BY s.crop_next, s.id LIMIT ?",
            (float(now), int(limit)),
        ).fetchall()

    def next_crop_due(self) -> float | None:
        row = self.conn.execute("SELECT MIN(crop_next) FROM sightings WHERE crop_state='pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def crop_fetched(self, sighting_id: int, find_id: int) -> None:
        with self.write() as c:
            c.execute(
                "UPDATE sightings SET crop_state='ready', crop_error=NULL WHERE id=?", (int(sighting_id),)
            )
            self._change(c, "crop", find_id)

    def crop_failed(self, sighting_id: int, error: str, next_try: float | None) -> None:
        """A failed fetch: try again at ``next_try``, or give up (None; counted)."""
        with self.write() as c:
            if next_try is None:
                c.execute(
                    "UPDATE sightings SET crop_state='given_up', crop_tries=crop_tries+1, crop_error=? WHERE id=?",
                    (error, int(sighting_id)),
                )
            else:
                c.execute(
                    "UPDATE sightings SET crop_tries=crop_tries+1, crop_next=?, crop_error=? WHERE id=?",
                    (float(next_try), error, int(sighting_id)),
                )

    def crop_counts(self) -> dict[str, int]:
        """Sightings per crop state: pending, ready, given_up, and refused (given up without a request)."""
        out = dict.fromkeys((*CROP_STATES, "refused"), 0)
        for state, n in self.conn.execute(
            "SELECT CASE WHEN crop_state='given_up' AND substr(crop_error, 1, ?)=? THEN 'refused' "
            "ELSE crop_state END AS state, COUNT(*) FROM sightings GROUP BY state",
            (len(REFUSED), REFUSED),
        ):
            out[state] = int(n)
        return out

    # ---- reads --------------------------------------------------------------------------------

    def sightings(self) -> list[sqlite3.Row]:
        """Every sighting with its photo's fields, in id order (the order they were recorded)."""
        return self.conn.execute(
            "SELECT s.*, p.image, p.width, p.height, p.id AS photo FROM sightings s "
            "JOIN photos p ON p.id = s.photo_id ORDER BY s.id"
        ).fetchall()

    def sighting(self, sighting_id: int) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT s.*, p.image, p.width, p.height, p.id AS photo FROM sightings s "
            "JOIN photos p ON p.id = s.photo_id WHERE s.id=?",
            (int(sighting_id),),
        ).fetchone()

    def find_sightings(self, find_id: int) -> list[sqlite3.Row]:
        """The sightings of one find, with their photo's fields, in id order."""
        return self.conn.execute(
            "SELECT s.*, p.image, p.width, p.height, p.id AS photo FROM sightings s "
            "JOIN photos p ON p.id = s.photo_id WHERE s.find_id=? ORDER BY s.id",
            (int(find_id),),
        ).fetchall()

    def latest_decision(self, find_id: int) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT * FROM decisions WHERE find_id=? ORDER BY id DESC LIMIT 1", (int(find_id),)
        ).fetchone()

    def splits(self) -> dict[int, set[int]]:
        """Sighting id -> the finds it was split from (never to be grouped with again)."""
        out: dict[int, set[int]] = {}
        for r in self.conn.execute("SELECT sighting_id, from_find FROM splits"):
            out.setdefault(int(r[0]), set()).add(int(r[1]))
        return out

    def latest_decisions(self) -> dict[int, sqlite3.Row]:
        """The decision that counts, per find id."""
        rows = self.conn.execute(
            "SELECT d.* FROM decisions d JOIN (SELECT find_id, MAX(id) AS last FROM decisions GROUP BY find_id) l "
            "ON d.id = l.last"
        ).fetchall()
        return {int(r["find_id"]): r for r in rows}

    def history(self, find_id: int) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT status, operator, note, decided_at FROM decisions WHERE find_id=? ORDER BY id",
            (int(find_id),),
        ).fetchall()

    def photos(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM photos ORDER BY id").fetchall()

    def photo(self, photo_id: int) -> sqlite3.Row | None:
        return self.conn.execute(
            "SELECT p.*, COALESCE(d.api, p.api) AS fetch_api FROM photos p JOIN drones d USING (drone_id) "
            "WHERE p.id=?",
            (int(photo_id),),
        ).fetchone()

    def drones(self) -> list[sqlite3.Row]:
        return self.conn.execute("SELECT * FROM drones ORDER BY seq").fetchall()

    def drone(self, drone_id: str) -> sqlite3.Row | None:
        return self.conn.execute("SELECT * FROM drones WHERE drone_id=?", (drone_id,)).fetchone()

    def last_change(self) -> int:
        return int(self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM changes").fetchone()[0])

    def changes_after(self, after: int, limit: int = 1000) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT id, kind, ref FROM changes WHERE id>? ORDER BY id LIMIT ?", (int(after), int(limit))
        ).fetchall()

    # ---- decisions and splits -------------------------------------------------------------------

    def decide(
        self,
        find_id: int,
        status: str,
        operator: str,
        note: str | None,
        message,
        outbox_limit: int | None,
        publish: Sequence[str],
    ) -> tuple[int, bool]:
        """Record a decision on a find; a first ``publish`` status of a find queues its message.

        Args:
            message: Called inside the transaction with the decision's id; returns the MQTT message
                (the find as it now stands).
            outbox_limit: The outbox's limit with MQTT; None: no message is queued.
            publish: The statuses that go out (confirmed, flagged).

        Returns:
            (decision id, whether it goes out: the first decision of this status on this find).
        """
        with self.write() as c:
            decision_id = _rowid(
                c.execute(
                    "INSERT INTO decisions (find_id, status, operator, note, decided_at) VALUES (?, ?, ?, ?, ?)",
                    (int(find_id), status, operator, note, time.time()),
                )
            )
            first = False
            if status in publish:
                first = (
                    c.execute(
                        "INSERT OR IGNORE INTO published (find_id, status, decision_id) VALUES (?, ?, ?)",
                        (int(find_id), status, decision_id),
                    ).rowcount
                    == 1
                )
            if first and outbox_limit is not None:
                c.execute(
                    "INSERT INTO outbox (topic, payload) VALUES (?, ?)",
                    (REVIEWS_TOPIC, json.dumps(message(decision_id), separators=(",", ":"))),
                )
                over = c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] - int(outbox_limit)
                if over > 0:
                    c.execute(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)", (over,)
                    )
                    self.add_count(c, "mqtt_dropped", over)
            self._change(c, "decision", find_id)
        return decision_id, first

    def split(self, sighting_id: int, operator: str, regroup) -> tuple[int, int]:
        """Take a sighting out of its find, in one transaction with the grouper's split.

        Args:
            regroup: Called inside the transaction (so that the database's write lock is taken before
                the grouper's, as the ingest takes them); returns (new find, the find it left), or
                raises ValueError (nothing is written).

        Returns:
            (the new find, the find it left).
        """
        with self.write() as c:
            new_find, from_find = regroup()
            c.execute("UPDATE sightings SET find_id=? WHERE id=?", (int(new_find), int(sighting_id)))
            c.execute(
                "INSERT OR IGNORE INTO splits (sighting_id, from_find, operator, split_at) VALUES (?, ?, ?, ?)",
                (int(sighting_id), int(from_find), operator, time.time()),
            )
            self._change(c, "detection", new_find)
            self._change(c, "detection", from_find)
        return int(new_find), int(from_find)

    # ---- the outbox (read by serve.outbox.MqttOutbox) -----------------------------------------------

    def outbox_messages_after(self, after_id: int, limit: int) -> list[tuple[int, str, dict]]:
        rows = self.conn.execute(
            "SELECT id, topic, payload FROM outbox WHERE id>? ORDER BY id LIMIT ?",
            (int(after_id), int(limit)),
        ).fetchall()
        return [(int(r["id"]), r["topic"], json.loads(r["payload"])) for r in rows]

    def outbox_done(self, row_ids: Sequence[int]) -> None:
        with self.write() as c:
            c.executemany("DELETE FROM outbox WHERE id=?", [(int(i),) for i in row_ids])

    def outbox_counts(self) -> dict[str, int]:
        waiting = self.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        return {"waiting": int(waiting), "dropped": self.counter("mqtt_dropped")}

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> StationStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
