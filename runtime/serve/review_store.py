"""The operator's review in the daemon's queue database: decisions, operator-drawn boxes, photo footprints.

A detection is named by a string id that survives restarts: ``"{outcome_id}-{index}"`` for the
model's (the index into that result's detection list) and ``"op-{n}"`` for a box the operator drew.
Every decision is a ``reviews`` row, never updated; the latest row of a detection counts and the
others are its history, so two operators on one queue cannot lose each other's decisions, only
follow one another. Each write is one transaction of the WAL database with ``synchronous=FULL`` (see
:mod:`.store`): a decision answered 200 survives ``kill -9`` and a power cut.

A confirmed or flagged decision writes its MQTT message (the Detection as it then stood, plus
``decision_id``) into the outbox in the decision's own transaction, so a broker that is away loses
nothing and a decision never goes out that was not kept.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time

from .store import PhotoQueue, iso_utc, trim_outbox

STATUSES = ("unreviewed", "confirmed", "rejected", "flagged")
FINDS = ("confirmed", "flagged")  # what goes to the team: MQTT, MAVLink, the exports
SOURCES = ("watch", "video", "upload", "operator")
REVIEWS_TOPIC = "reviews"  # under the MQTT prefix
_MODEL_ID = re.compile(r"^([0-9]{1,18})-([0-9]{1,9})$")
_OPERATOR_ID = re.compile(r"^op-([0-9]{1,18})$")


def parse_detection_id(text: str) -> tuple[str, int, int]:
    """("model", outcome_id, index) or ("operator", row id, 0) from a detection id.

    Raises:
        ValueError: Not an id of either form.
    """
    m = _MODEL_ID.match(text)
    if m:
        return "model", int(m.group(1)), int(m.group(2))
    m = _OPERATOR_ID.match(text)
    if m:
        return "operator", int(m.group(1)), 0
    raise ValueError(f"expected a detection id like '12-0' or 'op-3', found {text[:80]!r}")


UNREVIEWED = {"status": "unreviewed", "operator": None, "note": None, "decided_at": None}


def _rounded(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


class ReviewQueue(PhotoQueue):
    """The queue database with the review's reads and writes; one per thread, like PhotoQueue."""

    # ---- readers ----------------------------------------------------------------------------

    def _latest(self, detection: str | None = None) -> dict[str, dict]:
        """The decision that counts, per detection id (all, or one): {"status", "operator", "note", "decided_at"}."""
        where, args = ("WHERE detection=?", (detection,)) if detection is not None else ("", ())
        rows = self.conn.execute(
            "SELECT r.* FROM reviews r JOIN (SELECT detection, MAX(id) AS last FROM reviews "
            f"{where} GROUP BY detection) l ON r.id = l.last",
            args,
        ).fetchall()
        return {
            r["detection"]: {
                "status": r["status"],
                "operator": r["operator"],
                "note": r["note"],
                "decided_at": iso_utc(r["decided_at"]),
            }
            for r in rows
        }

    def _model_items(self, rows: list[sqlite3.Row], latest: dict[str, dict]) -> list[dict]:
        out = []
        for r in rows:
            when = iso_utc(r["processed_at"])  # once per photo: formatting is most of the cost
            for k, d in enumerate(json.loads(r["detections"] or "[]")):
                det_id = f"{r['id']}-{k}"
                out.append(
                    {
                        "id": det_id,
                        "outcome_id": r["id"],
                        "index": k,
                        "origin": "model",
                        "image": r["name"],
                        "image_id": r["id"],
                        "source": r["source"],
                        "time": when,
                        "score": _rounded(d.get("score"), 5),
                        "class_name": d.get("class_name"),
                        "bbox": [float(v) for v in d["bbox"]],
                        "lat": d.get("lat"),
                        "lon": d.get("lon"),
                        "error_m": d.get("error_m"),
                        **latest.get(det_id, UNREVIEWED),
                        "photo_width": r["width"],
                        "photo_height": r["height"],
                        "_order": (r["processed_at"], 0, r["id"], k),
                        "_embedding": d.get("embedding"),  # for the tracks; the API leaves "_" keys out
                    }
                )
        return out

    def _operator_items(self, rows: list[sqlite3.Row], latest: dict[str, dict]) -> list[dict]:
        out = []
        for r in rows:
            det_id = f"op-{r['id']}"
            out.append(
                {
                    "id": det_id,
                    "outcome_id": r["outcome_id"],
                    "index": None,
                    "origin": "operator",
                    "image": r["name"],
                    "image_id": r["outcome_id"],
                    "source": "operator",
                    "time": iso_utc(r["created_at"]),
                    "score": None,
                    "class_name": "person",
                    "bbox": json.loads(r["bbox"]),
                    "lat": r["lat"],
                    "lon": r["lon"],
                    "error_m": r["error_m"],
                    **latest.get(det_id, UNREVIEWED),
                    "photo_width": r["width"],
                    "photo_height": r["height"],
                    "_order": (r["created_at"], 1, r["id"], 0),
                }
            )
        return out

    _MODEL_SQL = (
        "SELECT o.id, o.detections, o.width, o.height, o.processed_at, i.name, i.source "
        "FROM outcomes o JOIN items i USING (item_id) WHERE o.ok=1"
    )
    _OPERATOR_SQL = (
        "SELECT d.*, o.width, o.height, i.name FROM operator_detections d "
        "JOIN outcomes o ON o.id = d.outcome_id JOIN items i ON i.item_id = o.item_id"
    )

    def review_items(self) -> list[dict]:
        """Every detection, the model's in commit order then the operator's, with its decision.

        Each is a Detection of the API (see docs/review.md) plus ``_order``, the key of the time
        order (callers drop it before answering).
        """
        return self.review_snapshot()[1]

    def decisions_since(self, review_after: int) -> tuple[tuple[int, int, int], dict[str, dict]]:
        """(:meth:`review_marks`, the decision that now counts of each detection decided after row
        ``review_after``), read in one transaction."""
        self.conn.execute("BEGIN")
        try:
            marks = self.review_marks()
            rows = self.conn.execute(
                "SELECT r.* FROM reviews r JOIN (SELECT detection, MAX(id) AS last FROM reviews WHERE detection IN "
                "(SELECT detection FROM reviews WHERE id>?) GROUP BY detection) l ON r.id = l.last",
                (int(review_after),),
            ).fetchall()
        finally:
            self.conn.execute("COMMIT")
        return marks, {
            r["detection"]: {
                "status": r["status"],
                "operator": r["operator"],
                "note": r["note"],
                "decided_at": iso_utc(r["decided_at"]),
            }
            for r in rows
        }

    def review_snapshot(self) -> tuple[tuple[int, int, int], list[dict]]:
        """(:meth:`review_marks`, :meth:`review_items`) read in one transaction, so they agree."""
        self.conn.execute("BEGIN")  # a read transaction: one snapshot of the WAL database
        try:
            marks = self.review_marks()
            latest = self._latest()
            model = self.conn.execute(self._MODEL_SQL + " ORDER BY o.id").fetchall()
            operator = self.conn.execute(self._OPERATOR_SQL + " ORDER BY d.id").fetchall()
        finally:
            self.conn.execute("COMMIT")
        return marks, self._model_items(model, latest) + self._operator_items(operator, latest)

    def review_item(self, det_id: str) -> dict | None:
        """One detection by id (see :func:`parse_detection_id`), or None when there is none."""
        kind, n, k = parse_detection_id(det_id)
        latest = self._latest(det_id)
        if kind == "operator":
            rows = self.conn.execute(self._OPERATOR_SQL + " WHERE d.id=?", (n,)).fetchall()
            items = self._operator_items(rows, latest)
        else:
            rows = self.conn.execute(self._MODEL_SQL + " AND o.id=?", (n,)).fetchall()
            items = [it for it in self._model_items(rows, latest) if it["index"] == k]
        return items[0] if items else None

    def items_after(self, outcome_after: int, operator_after: int) -> tuple[list[dict], int, int]:
        """Detections committed after outcome id ``outcome_after`` and operator box ``operator_after``.

        Returns:
            (items, last outcome id, last operator box id) for the next call.
        """
        latest = self._latest()
        model = self.conn.execute(self._MODEL_SQL + " AND o.id>? ORDER BY o.id", (outcome_after,)).fetchall()
        operator = self.conn.execute(
            self._OPERATOR_SQL + " WHERE d.id>? ORDER BY d.id", (operator_after,)
        ).fetchall()
        items = self._model_items(model, latest) + self._operator_items(operator, latest)
        return (
            items,
            max([outcome_after] + [r["id"] for r in model]),
            max([operator_after] + [r["id"] for r in operator]),
        )

    def decisions_after(self, review_after: int) -> tuple[list[str], int]:
        """Ids of the detections decided after review row ``review_after`` (each once), and the last row."""
        rows = self.conn.execute(
            "SELECT id, detection FROM reviews WHERE id>? ORDER BY id", (review_after,)
        ).fetchall()
        return list(dict.fromkeys(r["detection"] for r in rows)), max(
            [review_after] + [r["id"] for r in rows]
        )

    def review_marks(self) -> tuple[int, int, int]:
        """(last outcome id, last operator box id, last review row id): where a live stream starts."""
        r = self.conn.execute(
            "SELECT (SELECT COALESCE(MAX(id), 0) FROM outcomes), "
            "(SELECT COALESCE(MAX(id), 0) FROM operator_detections), (SELECT COALESCE(MAX(id), 0) FROM reviews)"
        ).fetchone()
        return int(r[0]), int(r[1]), int(r[2])

    def history(self, det_id: str) -> list[dict]:
        """Every decision on one detection, oldest first: {"status", "operator", "note", "time"}."""
        rows = self.conn.execute(
            "SELECT status, operator, note, decided_at FROM reviews WHERE detection=? ORDER BY id", (det_id,)
        ).fetchall()
        return [
            {
                "status": r["status"],
                "operator": r["operator"],
                "note": r["note"],
                "time": iso_utc(r["decided_at"]),
            }
            for r in rows
        ]

    def photo_geo(self, outcome_id: int) -> dict | None:
        """What was committed of one photo's place: {"pose", "footprint", "gsd_cm"}, or None."""
        r = self.conn.execute(
            "SELECT pose, footprint, gsd_cm FROM photo_geo WHERE outcome_id=?", (int(outcome_id),)
        ).fetchone()
        if r is None:
            return None
        return {
            "pose": None if r["pose"] is None else json.loads(r["pose"]),
            "footprint": None if r["footprint"] is None else json.loads(r["footprint"]),
            "gsd_cm": r["gsd_cm"],
        }

    def map_photos(self) -> list[dict]:
        """Every committed photo in commit order: {"outcome_id", "image", "time", "footprint", "gsd_cm"}."""
        rows = self.conn.execute(
            "SELECT o.id, o.processed_at, i.name, g.footprint, g.gsd_cm FROM outcomes o "
            "JOIN items i USING (item_id) LEFT JOIN photo_geo g ON g.outcome_id = o.id WHERE o.ok=1 ORDER BY o.id"
        ).fetchall()
        return [
            {
                "outcome_id": r["id"],
                "image": r["name"],
                "time": iso_utc(r["processed_at"]),
                "footprint": None if r["footprint"] is None else json.loads(r["footprint"]),
                "gsd_cm": r["gsd_cm"],
            }
            for r in rows
        ]

    # ---- writers ----------------------------------------------------------------------------

    def decide(
        self,
        det_id: str,
        status: str,
        operator: str,
        note: str | None = None,
        outbox_limit: int | None = None,
    ) -> tuple[dict, int]:
        """Record one decision, committed before it returns.

        Args:
            det_id: The detection.
            status: One of STATUSES ("unreviewed" too: that is how an undo goes back).
            operator: Who decided (a label, not an identity that is checked).
            note: Free text, or None.
            outbox_limit: With MQTT, the outbox's limit: a confirmed or flagged decision gets its
                message in this transaction. None: no message.

        Returns:
            (the Detection as it now stands, the decision's row id).

        Raises:
            ValueError: An unknown status or a malformed id.
            KeyError: No detection with that id.
        """
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {', '.join(STATUSES)}, found {status!r}")
        with self._write() as c:
            if self.review_item(det_id) is None:
                raise KeyError(det_id)
            cur = c.execute(
                "INSERT INTO reviews (detection, status, operator, note, decided_at) VALUES (?, ?, ?, ?, ?)",
                (det_id, status, operator, note, time.time()),
            )
            decision_id = _inserted_id(cur)
            item = self._written_item(det_id)
            self._queue_review_message(c, item, decision_id, outbox_limit)
        return item, decision_id

    def add_operator_box(
        self,
        outcome_id: int,
        bbox: list[float],
        operator: str,
        note: str | None = None,
        fix: dict | None = None,
        outbox_limit: int | None = None,
    ) -> tuple[dict, int]:
        """Record a box the operator drew, confirmed by them, in one transaction.

        Args:
            outcome_id: The photo's result.
            bbox: x1, y1, x2, y2 in photo pixels.
            fix: {"lat", "lon", "error_m"} when the photo was georeferenced, else None.
            outbox_limit: As for :meth:`decide`.

        Returns:
            (the new Detection, its decision's row id).

        Raises:
            KeyError: No committed photo with that outcome id.
        """
        now = time.time()
        fix = fix or {}
        with self._write() as c:
            found = c.execute("SELECT id FROM outcomes WHERE id=? AND ok=1", (int(outcome_id),)).fetchone()
            if found is None:
                raise KeyError(outcome_id)
            cur = c.execute(
                "INSERT INTO operator_detections (outcome_id, bbox, lat, lon, error_m, operator, note, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    int(outcome_id),
                    json.dumps([round(float(v), 2) for v in bbox]),
                    fix.get("lat"),
                    fix.get("lon"),
                    fix.get("error_m"),
                    operator,
                    note,
                    now,
                ),
            )
            det_id = f"op-{_inserted_id(cur)}"
            cur = c.execute(
                "INSERT INTO reviews (detection, status, operator, note, decided_at) VALUES (?, 'confirmed', ?, ?, ?)",
                (det_id, operator, note, now),
            )
            decision_id = _inserted_id(cur)
            item = self._written_item(det_id)
            self._queue_review_message(c, item, decision_id, outbox_limit)
        return item, decision_id

    def _written_item(self, det_id: str) -> dict:
        """The detection that this transaction has just decided on or drawn."""
        item = self.review_item(det_id)
        if item is None:
            raise RuntimeError(f"expected detection {det_id} in the transaction that wrote it, found none")
        return item

    def _queue_review_message(
        self, c: sqlite3.Connection, item: dict, decision_id: int, outbox_limit: int | None
    ) -> None:
        if outbox_limit is None or item["status"] not in FINDS:
            return
        message = public(item)
        message["decision_id"] = decision_id
        c.execute(
            "INSERT INTO mqtt_outbox (outcome_id, detection, topic, payload) VALUES (?, ?, ?, ?)",
            (
                item["outcome_id"],
                -1 if item["index"] is None else item["index"],
                REVIEWS_TOPIC,
                json.dumps(message, separators=(",", ":")),
            ),
        )
        trim_outbox(c, outbox_limit)


def _inserted_id(cur: sqlite3.Cursor) -> int:
    """The row id of the INSERT the cursor has just run (sqlite3 leaves it None only before any)."""
    if cur.lastrowid is None:
        raise RuntimeError("expected the row id of the INSERT just run, found none")
    return cur.lastrowid


def public(item: dict) -> dict:
    """A Detection without the private sort keys."""
    return {k: v for k, v in item.items() if not k.startswith("_")}


def review_counts(items: list[dict]) -> dict[str, int]:
    """{"unreviewed", "confirmed", "rejected", "flagged", "total"} of a list of Detections."""
    out = dict.fromkeys(STATUSES, 0)
    for it in items:
        out[it["status"]] += 1
    out["total"] = len(items)
    return out
