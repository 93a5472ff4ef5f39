from __future__ import annotations

import json

import numpy as np
import pytest

from edgetile.runtime.results import NULL, Detections

BAD = [
    # (xyxy, scores, class_ids, argument named in the error)
    (np.zeros((3, 5)), np.zeros(3), np.zeros(3), "xyxy"),  # five columns
    (np.zeros((3, 4)), np.zeros(2), np.zeros(3), "scores"),  # one score short
    (np.zeros((3, 4)), np.zeros(3), np.zeros(4), "class_ids"),  # one class too many
    (np.zeros((3, 4)), np.zeros((3, 1)), np.zeros(3), "scores"),  # column vector
    (np.zeros((2, 4)), np.zeros(2), np.array([0.5, 1.0]), "class_ids"),  # fractional classes
]


@pytest.mark.parametrize("xyxy,scores,class_ids,name", BAD)
def test_construction_names_expected_and_actual_shapes(xyxy, scores, class_ids, name):
    with pytest.raises(ValueError, match=name):
        Detections(xyxy, scores, class_ids)


def test_dtypes_are_normalised_and_subsets_keep_alignment():
    d = Detections([[0, 0, 1, 1], [2, 2, 4, 5]], [0.2, 0.9], [1.0, 0.0])
    assert d.xyxy.dtype == np.float32 and d.scores.dtype == np.float32 and d.class_ids.dtype == np.int64
    s = d.sorted()
    assert s.scores.tolist() == pytest.approx([0.9, 0.2]) and s.class_ids.tolist() == [0, 1]
    assert len(Detections.concat([d, Detections.empty(), d])) == 4
    rec = s.to_records({0: "person"})[0]
    assert rec == {
        "bbox": [2.0, 2.0, 4.0, 5.0],
        "score": pytest.approx(0.9),
        "class_id": 0,
        "class_name": "person",
    }


def three(**data):
    """Three boxes, scores 0.1, 0.3, 0.2, classes 0, 1, 0, with the given data."""
    xyxy = [[0, 0, 10, 10], [5, 5, 20, 30], [100.25, 50.5, 140.75, 90]]
    return Detections(xyxy, [0.1, 0.3, 0.2], [0, 1, 0], data)


BAD_DATA = [
    # (data, exception, message)
    ({"track": np.arange(2)}, ValueError, r"data\['track'\]: expected 3 values \(one per box\), found 2"),
    (
        {"note": ["a", "b", "c", "d"]},
        ValueError,
        r"data\['note'\]: expected 3 values \(one per box\), found 4",
    ),
    ({"lat": np.float64(1.0)}, TypeError, r"data\['lat'\]: expected a NumPy array or a list, found float64"),
    ({"lat": np.array(1.0)}, ValueError, r"data\['lat'\]: expected 3 values .* found a 0-d array"),
    ({"ids": (1, 2, 3)}, TypeError, r"data\['ids'\]: expected a NumPy array or a list, found tuple"),
    (
        {"score": [1, 2, 3]},
        ValueError,
        r"data\['score'\]: expected a name other than bbox, score",
    ),  # reserved
    ({7: [1, 2, 3]}, TypeError, r"data: expected string keys, found 7"),
    ([("a", [1, 2, 3])], TypeError, r"data: expected a mapping"),
]


@pytest.mark.parametrize("data,exc,message", BAD_DATA)
def test_data_is_checked_per_key_with_expected_and_found_length(data, exc, message):
    with pytest.raises(exc, match=message):
        Detections(np.zeros((3, 4)), np.zeros(3), np.zeros(3), data)


SUBSETS = [
    # (index, boxes kept, comment)
    (np.array([True, False, True]), [0, 2], "boolean mask"),
    (np.array([2, 0]), [2, 0], "index array, reordering"),
    ([1], [1], "index list"),
    (slice(1, None), [1, 2], "slice"),
    (1, [1], "single index: a Detections of one"),
    (np.array([], np.int64), [], "nothing"),
]


@pytest.mark.parametrize("index,kept,comment", SUBSETS, ids=[c[2] for c in SUBSETS])
def test_subsets_keep_data_in_step(index, kept, comment):
    d = three(track=np.array([10, 11, 12]), gps=np.arange(6.0).reshape(3, 2), note=["a", None, "c"])
    s = d[index]
    assert len(s) == len(kept)
    np.testing.assert_array_equal(s.xyxy, d.xyxy[kept].reshape(-1, 4))
    assert s.data["track"].tolist() == [10 + k for k in kept]
    assert s.data["gps"].tolist() == [[2.0 * k, 2.0 * k + 1] for k in kept]
    assert s.data["note"] == [["a", None, "c"][k] for k in kept]


def test_sorting_and_concat_keep_data_in_step():
    d = three(track=np.array([10, 11, 12]), note=["a", "b", "c"])
    s = d.sorted()  # scores 0.3, 0.2, 0.1
    assert s.data["track"].tolist() == [11, 12, 10] and s.data["note"] == ["b", "c", "a"]
    both = Detections.concat([d, Detections.empty(), s])  # an empty part may lack the keys
    assert both.data["track"].tolist() == [10, 11, 12, 11, 12, 10]
    assert both.data["note"] == ["a", "b", "c", "b", "c", "a"]
    with pytest.raises(
        ValueError, match=r"parts\[1\]\.data: expected the keys .*\['note', 'track'\].* found \[\]"
    ):
        Detections.concat([d, three()])


def test_records_round_trip_with_data():
    d = three(track=np.array([10, 11, 12]), lat=np.array([59.5, np.nan, 60.25]), note=["x", None, "z"])
    names = {0: "person"}
    records = d.to_records(names)
    assert records[1] == {
        "bbox": [5.0, 5.0, 20.0, 30.0],
        "score": pytest.approx(0.3),
        "class_id": 1,
        "class_name": "1",  # a class names does not know is named by its index
        "track": 11,
        "lat": pytest.approx(float("nan"), nan_ok=True),
    }  # None: the key is left out of the record
    back = Detections.from_records(records, names)
    np.testing.assert_array_equal(back.xyxy, d.xyxy)
    np.testing.assert_allclose(back.scores, d.scores)
    np.testing.assert_array_equal(back.class_ids, d.class_ids)
    assert back.data["track"] == [10, 11, 12] and back.data["note"] == ["x", None, "z"]
    assert json.dumps(back.to_records(names)) == json.dumps(records)  # NaN included
    assert Detections.from_records([], names).xyxy.shape == (0, 4)


def test_records_from_json_round_trip_exactly():
    records = [
        {"bbox": [1.5, 2.25, 30.0, 40.12], "score": 0.87654, "class_id": 0, "class_name": "person"},
        {"bbox": [9.0, 8.0, 7.0, 6.0], "score": 0.5, "class_id": 0, "class_name": "person", "lat": 59.1},
    ]  # the second box is degenerate (x2 < x1): models may output such boxes and they pass through
    text = json.dumps(records)
    assert (
        json.dumps(Detections.from_records(json.loads(text), {0: "person"}).to_records({0: "person"})) == text
    )


BAD_RECORDS = [
    # (records, message)
    ([{"score": 0.5, "class_id": 0}], r"records\[0\]\.bbox: expected \[x1, y1, x2, y2\] numbers, found None"),
    ([{"bbox": [0, 0, 1], "score": 0.5, "class_id": 0}], r"records\[0\]\.bbox: .* found \[0, 0, 1\]"),
    ([{"bbox": [0, 0, 1, "2"], "score": 0.5, "class_id": 0}], r"records\[0\]\.bbox"),
    ([{"bbox": [0, 0, 1, 1], "class_id": 0}], r"records\[0\]\.score: expected a number, found None"),
    ([{"bbox": [0, 0, 1, 1], "score": 0.5, "class_id": 1.5}], r"records\[0\]\.class_id: expected an integer"),
    (
        [{"bbox": [0, 0, 1, 1], "score": 0.5, "class_id": 0, "class_name": "car"}],
        r"records\[0\]\.class_name: expected 'person' \(class 0 in names\), found 'car'",
    ),
    (
        [{"bbox": [0, 0, 1, 1], "score": 0.5, "class_name": "car"}],
        r"records\[0\]: expected a class_id, or a class_name of \['person'\], found class_name 'car'",
    ),
    (["not a record"], r"records\[0\]: expected a mapping, found str"),
]


@pytest.mark.parametrize("records,message", BAD_RECORDS)
def test_from_records_names_the_record_and_field(records, message):
    with pytest.raises(ValueError, match=message):
        Detections.from_records(records, {0: "person"})


def test_from_records_takes_the_class_from_its_name_and_keys_some_records_lack():
    records = [
        {"bbox": [0, 0, 1, 1], "score": 0.5, "class_name": "car"},  # no class_id: names gives it
        {"bbox": [0, 0, 2, 2], "score": 0.6, "class_id": 0, "geo_warning": "no ground"},
        {"bbox": [0, 0, 3, 3], "score": 0.7, "class_id": 1, "lat": 59.0},
    ]
    d = Detections.from_records(records, {0: "person", 1: "car"})
    assert d.class_ids.tolist() == [1, 0, 1]
    assert d.data == {"geo_warning": [None, "no ground", None], "lat": [None, None, 59.0]}
    assert "lat" not in d.to_records({})[1] and d.to_records({})[2]["lat"] == 59.0
    without_names = Detections.from_records(records[1:])  # class_name is then not checked
    assert without_names.class_ids.tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"records\[0\]\.class_id: expected an integer \(no names given\)"):
        Detections.from_records(records[:1])


def test_result_writer_writes_the_same_csv_from_detections_or_from_records(tmp_path):
    from edgetile.runtime.outputs import ResultWriter

    d = three(track=np.array([1, 2, 3])).sorted()
    texts = []
    for k, dets in enumerate((d, None)):
        with ResultWriter(tmp_path / str(k), {0: "person"}) as w:
            w.add({"image": "/photos/a.jpg", "detections": d.to_records({0: "person"})}, None, dets)
            w.add({"image": "/photos/b.jpg", "error": "unreadable"})
        texts.append((tmp_path / str(k) / "detections.csv").read_text())
    assert texts[0] == texts[1]
    assert texts[0].splitlines() == [
        "id,xmin,ymin,xmax,ymax,score",
        "a.jpg,5.0,5.0,20.0,30.0,0.3",
        "a.jpg,100.25,50.5,140.75,90.0,0.2",
        "a.jpg,0.0,0.0,10.0,10.0,0.1",
    ]


def test_null_values_round_trip_and_with_data_adds_keys_after_the_present_ones():
    records = [
        {"bbox": [0.0, 0.0, 1.0, 1.0], "score": 0.5, "class_id": 0, "class_name": "person", "alt": None},
        {"bbox": [0.0, 0.0, 2.0, 2.0], "score": 0.6, "class_id": 0, "class_name": "person"},
    ]  # null: the key is there, its value unknown; a missing key: the box has none
    d = Detections.from_records(records, {0: "person"})
    assert d.data == {"alt": [NULL, None]}
    assert json.dumps(d.to_records({0: "person"})) == json.dumps(records)
    more = d.with_data({"track_id": [3, None], "alt": [1.5, None]})
    assert list(more.data) == ["alt", "track_id"] and d.data == {"alt": [NULL, None]}  # d unchanged
    assert more.to_records({0: "person"})[0] == {**records[0], "alt": 1.5, "track_id": 3}
    with pytest.raises(ValueError, match=r"data\['track_id'\]: expected 2 values \(one per box\), found 1"):
        d.with_data({"track_id": [3]})
