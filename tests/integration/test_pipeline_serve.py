"""End to end at a tiny size through the real stack: generate -> Feast -> Ray Data + GX -> Ray Train -> MLflow
registry -> Ray Serve over HTTP, with a champion and a challenger in different arms."""

from __future__ import annotations

import mlflow
import pyarrow.parquet as pq
import pytest

from mixrec.pipelines.registry import CHALLENGER, CHAMPION, RegistryError, promote, resolve_alias

pytestmark = pytest.mark.integration


def test_counts_reconcile_and_artifacts_exist(served):
    result = served["first"]
    c = result.counts
    assert c["events"] == c["feast_dropped"] + c["validated"]
    assert c["validated"] == c["accepted"] + c["quarantined"]
    assert c["accepted"] == c["train_rows"] + c["valid_rows"] + c["test_rows"]
    assert 0.5 < result.metrics["test_auc"] <= 1.0
    ws = result.workspace
    assert (ws.artifacts_dir / "preprocessing.json").exists()
    assert ws.mlflow_db.exists() and ws.feast_registry.exists() and ws.online_store_db.exists()


def test_registry_aliases_first_is_champion_second_is_challenger(served):
    assert served["first"].version == "1" and set(served["first"].aliases) >= {CHAMPION}
    assert served["second"].version == "2" and served["second"].aliases == [CHALLENGER]
    assert resolve_alias("mixrec-ranker", CHAMPION) == "1"
    run = mlflow.get_run(served["second"].run_id)
    assert "valid_auc" in run.data.metrics and "test_auc" in run.data.metrics
    (train_run,) = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{served['second'].run_id}'",
                                      search_all_experiments=True, output_format="list")
    history = mlflow.MlflowClient().get_metric_history(train_run.info.run_id, "valid_auc")
    assert len(history) == 1  # the nested training run: one point per epoch
    assert "train.num_workers" in train_run.data.params


def test_two_users_in_different_arms_get_different_versions(served):
    client = served["client"]
    seen = {}
    for user in range(40):
        r = client.post("/rank", json={"user_id": user, "items": [1, 2, 3, 4, 5], "context": {"device": 1, "hour": 9}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert sorted(i["item_id"] for i in body["ranked"]) == [1, 2, 3, 4, 5]
        scores = [i["score"] for i in body["ranked"]]
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        seen.setdefault(body["arm"], body["model_version"])
        if len(seen) == 2:
            break
    assert seen == {CHAMPION: "1", CHALLENGER: "2"}


def test_assignment_is_sticky_over_http(served):
    client = served["client"]
    arms = [client.post("/rank", json={"user_id": 12345, "items": [7]}).json()["arm"] for _ in range(5)]
    assert len(set(arms)) == 1


def test_unknown_ids_are_scored_with_oov(served):
    r = served["client"].post("/rank", json={"user_id": 10**12, "items": [10**9, 1]})
    assert r.status_code == 200, r.text
    assert {i["item_id"] for i in r.json()["ranked"]} == {10**9, 1}
    # the int-keyed dataset: a decimal string is that id, any other string an unknown one; echoed as sent
    r = served["client"].post("/rank", json={"user_id": "seven", "items": ["1", "8dcb419a"]})
    assert r.status_code == 200, r.text
    assert {i["item_id"] for i in r.json()["ranked"]} == {"1", "8dcb419a"}
    as_int, as_text = (served["client"].post("/rank", json=body).json()["ranked"][0]
                       for body in ({"user_id": 3, "items": [5]}, {"user_id": "3", "items": ["5"]}))
    assert as_text["item_id"] == "5" and as_text["score"] == pytest.approx(as_int["score"], rel=1e-5)


@pytest.mark.parametrize("payload, status, needle", [
    (b"{not json", 422, "json"),
    ({"items": [1, 2]}, 422, "user_id"),
    ({"user_id": 1}, 422, "items"),
    ({"user_id": 7.5, "items": [1]}, 422, "user_id"),
    ({"user_id": 1, "items": [1, "a"]}, 422, "items"),
    ({"user_id": 1, "items": [2, 2]}, 422, "distinct"),
    ({"user_id": 1, "items": []}, 422, "items"),
    ({"user_id": -1, "items": [1]}, 422, "user_id"),
    ({"user_id": 1, "items": list(range(51))}, 422, "at most 50 candidates"),
    ({"user_id": 1, "items": [1], "context": {"colour": 3}}, 422, "colour"),
    ({"user_id": 1, "items": [1], "extra": True}, 422, "extra"),
])
def test_malformed_requests_get_4xx_naming_the_problem(served, payload, status, needle):
    client = served["client"]
    if isinstance(payload, bytes):
        r = client.post("/rank", content=payload, headers={"content-type": "application/json"})
    else:
        r = client.post("/rank", json=payload)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_openapi_schema_is_published(served):
    r = served["client"].get("/openapi.json")
    assert r.status_code == 200 and "/rank" in r.json()["paths"]


def test_promote_moves_champion_and_rejects_unknown_versions(served):
    mv = promote("mixrec-ranker", "2", reason="test")
    assert CHAMPION in mv.aliases and resolve_alias("mixrec-ranker", CHAMPION) == "2"
    tags = mlflow.MlflowClient().get_model_version("mixrec-ranker", "2").tags
    assert tags["alias.champion.previous"] == "1" and tags["alias.champion.reason"] == "test"
    with pytest.raises(RegistryError, match="no version '99'"):
        promote("mixrec-ranker", "99")
    promote("mixrec-ranker", "1", reason="restore")


def test_quarantine_file_absent_when_nothing_failed(served):
    q = served["first"].workspace.quarantine_dir / "validation.parquet"
    if served["first"].counts["quarantined"]:
        assert len(pq.read_table(q)) == served["first"].counts["quarantined"]
    else:
        assert not q.exists()
