"""Great Expectations inside Ray Data: planted bad rows are quarantined with the expectation they failed."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mixrec.features.schema import SYNTHETIC_SCHEMA as SCHEMA
from mixrec.features.synthetic import generate
from mixrec.pipelines.progress import relay
from mixrec.pipelines.validate import (
    FAILED_COLUMN,
    ValidationFailed,
    build_suite,
    column_types,
    fit_dense_ranges,
    validate_dataset,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    t = generate(num_events=3000, num_users=100, num_items=50, days=3, seed=3)
    df = t.events.merge(t.users.drop_duplicates("user_id"), on="user_id", suffixes=("", "_u"))
    df = df.merge(t.items, on="item_id", suffixes=("", "_i"))
    return df[list(SCHEMA.required_columns)].sort_values("event_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def suite(rows):
    return build_suite(SCHEMA, fit_dense_ranges(rows, [f.name for f in SCHEMA.dense], margin=0.25),
                       column_types(pa.Schema.from_pandas(rows), SCHEMA.required_columns))


def test_planted_bad_rows_are_quarantined_with_their_expectation(ray_session, rows, suite, tmp_path):
    bad = rows.copy()
    bad["user_id"] = bad["user_id"].astype("float64")
    bad.loc[10, "user_id"] = np.nan          # null id
    bad.loc[20, "label"] = 2                  # label outside {0, 1}
    bad.loc[30, "activity"] = np.nan          # NaN dense
    bad.loc[40, "price"] = np.inf             # not finite
    bad.loc[50, "quality"] = 1e6              # far outside the fitted range
    batches = []  # what the validator reports to the driver's progress, batch by batch
    with relay(batches.append) as queue:
        accepted, result = validate_dataset(ray_session.data.from_pandas(bad), suite, tmp_path / "q.parquet",
                                            max_failure_fraction=0.05, batch_size=1000, progress_queue=queue)
    assert sum(batches) == result.rows_in and max(batches) <= 1000
    assert result.rows_in == len(bad) == result.accepted + result.quarantined
    assert result.quarantined == 5
    assert accepted.count() == len(bad) - 5
    q = pq.read_table(tmp_path / "q.parquet").to_pandas().set_index("event_id")[FAILED_COLUMN]
    expected = {10: "expect_column_values_to_not_be_null(user_id)",
                20: "expect_column_values_to_be_in_set(label)",
                30: "expect_column_values_to_not_be_null(activity)",
                40: "expect_column_values_to_be_between(price)",
                50: "expect_column_values_to_be_between(quality)"}
    for event_id, expectation in expected.items():
        assert expectation in q.loc[event_id], (event_id, q.loc[event_id])
    assert set(q.index) == set(expected)


def test_missing_column_quarantines_its_rows_and_stops_the_run(ray_session, rows, suite, tmp_path):
    ds = ray_session.data.from_pandas(rows.drop(columns=["brand"]))
    with pytest.raises(ValidationFailed, match=r"3000 of 3000 rows .* validate.max_failure_fraction") as err:
        validate_dataset(ds, suite, tmp_path / "q.parquet", max_failure_fraction=0.05, batch_size=1000)
    assert "expect_column_to_exist(brand)" in str(err.value)
    q = pq.read_table(tmp_path / "q.parquet").to_pandas()
    assert len(q) == 3000 and q[FAILED_COLUMN].str.contains("expect_column_to_exist\\(brand\\)").all()


def test_over_threshold_stops_with_counts(ray_session, rows, suite, tmp_path):
    bad = rows.copy()
    bad.loc[: len(bad) // 5, "label"] = 7  # 20 % bad labels
    with pytest.raises(ValidationFailed, match="above validate.max_failure_fraction=5.0%"):
        validate_dataset(ray_session.data.from_pandas(bad), suite, tmp_path / "q.parquet",
                         max_failure_fraction=0.05, batch_size=1000)
    assert len(pq.read_table(tmp_path / "q.parquet")) == len(bad) // 5 + 1


def test_a_column_of_the_wrong_type_quarantines_its_batch(ray_session, rows, suite, tmp_path):
    """A block whose dense column arrives with another type (bool here; text from a drifted upstream file
    alike) fails the type expectation as a column: every row of that batch is quarantined, keeping its raw
    values, and the other batches pass."""
    first, rest = rows.iloc[:1000].copy(), rows.iloc[1000:]
    first["quality"] = first["quality"] > 0.5
    ds = ray_session.data.from_pandas([first, rest])
    accepted, result = validate_dataset(ds, suite, tmp_path / "q.parquet", max_failure_fraction=0.5,
                                        batch_size=1000)
    assert result.quarantined == 1000 and result.accepted == len(rows) - 1000 == accepted.count()
    q = pq.read_table(tmp_path / "q.parquet").to_pandas()
    assert q[FAILED_COLUMN].str.contains("expect_column_values_to_be_in_type_list\\(quality\\)").all()
    raw = pd.read_json(io.StringIO("\n".join(q["_raw_row"])), lines=True)
    assert raw["quality"].tolist() == first["quality"].tolist()  # the bool values survive in the quarantine
