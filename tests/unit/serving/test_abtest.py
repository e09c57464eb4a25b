"""The A/B simulator's request bodies (no Ray, no HTTP): ids go out as the dataset's key type."""

from __future__ import annotations

import json

import numpy as np

from mixrec.serving.abtest import wire_ids


def test_ids_are_sent_as_ints_or_as_their_text_for_string_keyed_datasets():
    ids = np.array([0, 17, 2**40])
    assert json.dumps(wire_ids(ids, string=False)) == "[0, 17, 1099511627776]"
    assert json.dumps(wire_ids(ids, string=True)) == '["0", "17", "1099511627776"]'
    assert wire_ids(ids[1:2], string=False)[0] == 17 and type(wire_ids(ids[1:2], string=False)[0]) is int
