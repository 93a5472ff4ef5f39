"""The operator's finds (confirmed and flagged detections) in the files search teams import.

GeoJSON (CalTopo/SARTopo read ``title``, ``description`` and ``marker-color`` of a Point feature), KML
(a Placemark per find with a TimeStamp), GPX 1.1 (a waypoint per find with a link to its crop), CSV
(one row per find: name, latitude, longitude, time, ...), and a one-page summary map as a PNG drawn
with OpenCV (the runtime's only drawing library): the searched photos' footprints, the finds with
their names, a scale bar and north.

Only finds with ground coordinates are written (a point needs a place); names are
"Find N (status)", N counting the finds in commit order, so a find keeps its name while the
operator works. Every text is escaped for its format: XML through ElementTree (and HTML inside a
KML description, which readers render as HTML), CSV cells that a
spreadsheet would run as a formula (starting with = + - @, a tab or a carriage return) get a
leading apostrophe.
"""

from __future__ import annotations

import csv
import html
import io
import math
import xml.etree.ElementTree as ET

import cv2
import numpy as np

from ..geo.writers import xml_safe
from ..outputs import csv_text_cell

KML_NS = "http://www.opengis.net/kml/2.2"
GPX_NS = "http://www.topografix.com/GPX/1/1"
COLOURS = {"confirmed": "#00a000", "flagged": "#ff8000"}  # CalTopo marker colours, and the map's


def numbered_finds(items: list[dict]) -> list[dict]:
    """The located confirmed and flagged Detections in commit order, each with its ``name``.

    Args:
        items: Detections in commit order (``ReviewQueue.review_items`` sorted by time).
    """
    out: list[dict] = []
    for it in items:
        if it["status"] not in COLOURS:
            continue
        n = len(out) + 1
        out.append({**it, "name": f"Find {n} ({it['status']})", "number": n})
    return [f for f in out if f.get("lat") is not None and f.get("lon") is not None]


def _description(f: dict, crop_url: str) -> str:
    parts = [
        f"{f.get('class_name') or 'object'}",
        "drawn by the operator" if f["score"] is None else f"score {f['score']:.2f}",
        f"photo {f['image']}",
        # a ground station's find: every drone that saw it
        f"{len(f['sightings'])} sighting(s) by {', '.join(f.get('drones') or [])}"
        if f.get("sightings")
        else "",
        "" if f.get("error_m") is None else f"error {f['error_m']:.0f} m",
        f"{f['status']} by {f.get('operator') or '?'}",
        f"note: {f['note']}" if f.get("note") else "",
        f"crop: {crop_url}",
    ]
    return "; ".join(p for p in parts if p)


def crop_url(base_url: str, f: dict) -> str:
    return f"{base_url.rstrip('/')}/api/review/crops/{f['id']}"


def finds_geojson(finds: list[dict], base_url: str) -> dict:
    """A FeatureCollection of Points ([lon, lat], RFC 7946), one per find."""
    feats = []
    for f in finds:
        url = crop_url(base_url, f)
        feats.append(
            {
                "type": "Feature",
                "id": f["id"],
                "geometry": {"type": "Point", "coordinates": [f["lon"], f["lat"]]},
                "properties": {
                    "title": f["name"],
                    "name": f["name"],
                    "class": "Marker",
                    "marker-color": COLOURS[f["status"]],
                    "description": _description(f, url),
                    "time": f["decided_at"] or f["time"],
                    "detected_at": f["time"],
                    "status": f["status"],
                    "detection_id": f["id"],
                    "score": f["score"],
                    "error_m": f.get("error_m"),
                    "image": f["image"],
                    "operator": f.get("operator"),
                    "note": f.get("note"),
                    "crop_url": url,
                    **(
                        {"sightings": len(f["sightings"]), "drones": f.get("drones")}
                        if f.get("sightings")
                        else {}
                    ),
                },
            }
        )
    return {"type": "FeatureCollection", "features": feats}


def finds_kml(finds: list[dict], base_url: str) -> str:
    """A KML 2.2 document: one Placemark per find, with its time and the crop's link."""
    root = ET.Element("kml", xmlns=KML_NS)
    doc = ET.SubElement(root, "Document")
    ET.SubElement(doc, "name").text = "edgetile finds"
    for status, colour in COLOURS.items():
        style = ET.SubElement(doc, "Style", id=status)
        icon = ET.SubElement(style, "IconStyle")
        # KML colours are aabbggrr
        ET.SubElement(icon, "color").text = f"ff{colour[5:7]}{colour[3:5]}{colour[1:3]}"
    for f in finds:
        pm = ET.SubElement(doc, "Placemark", id=f"find-{f['id']}")
        ET.SubElement(pm, "name").text = f["name"]
        # a KML description is HTML to its readers: the operator's note is shown, never rendered
        ET.SubElement(pm, "description").text = html.escape(_description(f, crop_url(base_url, f)))
        stamp = ET.SubElement(pm, "TimeStamp")
        ET.SubElement(stamp, "when").text = f["decided_at"] or f["time"]
        ET.SubElement(pm, "styleUrl").text = f"#{f['status']}"
        point = ET.SubElement(pm, "Point")
        ET.SubElement(point, "coordinates").text = f"{f['lon']:.8f},{f['lat']:.8f},0"
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + xml_safe(ET.tostring(root, encoding="unicode")) + "\n"


def finds_gpx(finds: list[dict], base_url: str) -> str:
    """A GPX 1.1 file: one waypoint per find (time, name, description, link to the crop, type = status)."""
    root = ET.Element("gpx", {"version": "1.1", "creator": "edgetile", "xmlns": GPX_NS})
    meta = ET.SubElement(root, "metadata")
    ET.SubElement(meta, "name").text = "edgetile finds"
    for f in finds:
        url = crop_url(base_url, f)
        wpt = ET.SubElement(root, "wpt", lat=f"{f['lat']:.8f}", lon=f"{f['lon']:.8f}")
        ET.SubElement(wpt, "time").text = f["decided_at"] or f["time"]  # the schema's order of elements
        ET.SubElement(wpt, "name").text = f["name"]
        ET.SubElement(wpt, "desc").text = _description(f, url)
        link = ET.SubElement(wpt, "link", href=url)
        ET.SubElement(link, "text").text = "crop of the photo"
        ET.SubElement(wpt, "sym").text = "Flag" if f["status"] == "flagged" else "Waypoint"
        ET.SubElement(wpt, "type").text = f["status"]
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + xml_safe(ET.tostring(root, encoding="unicode")) + "\n"


CSV_HEADER = (
    "name",
    "latitude",
    "longitude",
    "time",
    "status",
    "class",
    "score",
    "error_m",
    "image",
    "operator",
    "note",
    "crop_url",
    "description",
)


def csv_cell(text: object) -> str:
    """A text cell that a spreadsheet shows and never runs as a formula (outputs.csv_text_cell); None is empty."""
    return "" if text is None else csv_text_cell(text)


def finds_csv(finds: list[dict], base_url: str) -> str:
    """One row per find; numbers as numbers, every text cell through :func:`csv_cell`."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_HEADER)
    for f in finds:
        url = crop_url(base_url, f)
        w.writerow(
            [
                csv_cell(f["name"]),
                f"{f['lat']:.8f}",
                f"{f['lon']:.8f}",
                csv_cell(f["decided_at"] or f["time"]),
                csv_cell(f["status"]),
                csv_cell(f.get("class_name")),
                "" if f["score"] is None else f["score"],
                "" if f.get("error_m") is None else f["error_m"],
                csv_cell(f["image"]),
                csv_cell(f.get("operator")),
                csv_cell(f.get("note")),
                csv_cell(url),
                csv_cell(_description(f, url)),
            ]
        )
    return buf.getvalue()


# ---- the one-page map ---------------------------------------------------------------------------

PAGE_W, PAGE_H, MARGIN, TITLE_H = 1600, 1200, 60, 70
BGR = {"confirmed": (0, 160, 0), "flagged": (0, 128, 255)}


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode()  # OpenCV's Hershey fonts draw ASCII only


def _nice_length(m: float) -> float:
    """The largest 1, 2 or 5 x 10^k metres not above m."""
    k = 10 ** math.floor(math.log10(m))
    return max(s * k for s in (1, 2, 5) if s * k <= m)


def finds_png(finds: list[dict], photos: list[dict], title: str = "edgetile finds") -> bytes:
    """A one-page summary map (PNG): photo footprints, finds with their names, a scale bar, north up.

    Args:
        finds: From :func:`numbered_finds`.
        photos: {"footprint": [[lat, lon] x4] or None} per photo (``ReviewQueue.map_photos``).
        title: The page's heading.
    """
    page = np.full((PAGE_H, PAGE_W, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(page, _ascii(title), (MARGIN, 45), font, 1.1, (0, 0, 0), 2, cv2.LINE_AA)
    polys = [np.asarray(p["footprint"], np.float64) for p in photos if p.get("footprint")]
    points = np.asarray([[f["lat"], f["lon"]] for f in finds], np.float64).reshape(-1, 2)
    every = np.concatenate([points, *polys]) if polys else points
    counts = f"{len(finds)} find(s), {len(polys)} photo footprint(s)"
    cv2.putText(page, counts, (PAGE_W - MARGIN - 560, 45), font, 0.8, (60, 60, 60), 1, cv2.LINE_AA)
    if len(every) == 0:
        cv2.putText(page, "nothing georeferenced to draw", (MARGIN, PAGE_H // 2), font, 1.0, (0, 0, 0), 2)
        return cv2.imencode(".png", page)[1].tobytes()
    lat0, lon0 = float(every[:, 0].mean()), float(every[:, 1].mean())
    m_per_lat = 111_320.0
    m_per_lon = 111_320.0 * math.cos(math.radians(lat0))

    def metres(ll: np.ndarray) -> np.ndarray:  # east, north of the centre
        return np.stack([(ll[:, 1] - lon0) * m_per_lon, (ll[:, 0] - lat0) * m_per_lat], axis=1)

    xy = metres(every)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.maximum(hi - lo, 20.0)  # at least 20 m across: one find alone is not a dot on white
    area_w, area_h = PAGE_W - 2 * MARGIN, PAGE_H - TITLE_H - 2 * MARGIN - 40
    scale = min(area_w / span[0], area_h / span[1])  # pixels per metre
    mid = (lo + hi) / 2

    def px(ll: np.ndarray) -> np.ndarray:
        e_n = metres(ll)
        x = MARGIN + area_w / 2 + (e_n[:, 0] - mid[0]) * scale
        y = TITLE_H + MARGIN + area_h / 2 - (e_n[:, 1] - mid[1]) * scale
        return np.round(np.stack([x, y], axis=1)).astype(np.int32)

    for poly in polys:
        pts = px(poly)
        overlay = page.copy()
        cv2.fillPoly(overlay, [pts], (235, 220, 200))
        cv2.addWeighted(overlay, 0.5, page, 0.5, 0, dst=page)
        cv2.polylines(page, [pts], True, (180, 130, 70), 1, cv2.LINE_AA)
    for f, (x, y) in zip(finds, px(points) if len(points) else []):
        colour = BGR[f["status"]]
        cv2.circle(page, (int(x), int(y)), 9, colour, -1, cv2.LINE_AA)
        cv2.circle(page, (int(x), int(y)), 9, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(page, _ascii(f["name"]), (int(x) + 12, int(y) - 8), font, 0.6, (0, 0, 0), 2, cv2.LINE_AA)
    # scale bar: about a quarter of the page, a round length
    bar_m = _nice_length(area_w / 4 / scale)
    bar_px = int(round(bar_m * scale))
    x0, y0 = MARGIN, PAGE_H - MARGIN // 2 - 10
    cv2.rectangle(page, (x0, y0 - 8), (x0 + bar_px, y0), (0, 0, 0), -1)
    label = f"{bar_m:g} m" if bar_m < 1000 else f"{bar_m / 1000:g} km"
    cv2.putText(page, label, (x0 + bar_px + 10, y0), font, 0.7, (0, 0, 0), 2, cv2.LINE_AA)
    # north arrow, top right of the map
    nx, ny = PAGE_W - MARGIN - 20, TITLE_H + MARGIN
    cv2.arrowedLine(page, (nx, ny + 50), (nx, ny), (0, 0, 0), 3, cv2.LINE_AA, tipLength=0.35)
    cv2.putText(page, "N", (nx - 10, ny + 80), font, 0.9, (0, 0, 0), 2, cv2.LINE_AA)
    legend = "green: confirmed   orange: flagged   blue: photo footprints"
    cv2.putText(page, legend, (PAGE_W - MARGIN - 700, PAGE_H - MARGIN // 2 - 10), font, 0.6, (60, 60, 60), 1)
    return cv2.imencode(".png", page)[1].tobytes()
