"""What each deployment is built from: re-weighting, a new token or other request limits must leave a ranker's
constructor argument (hence its code version, a hash of its repr) unchanged, and a new model version change it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mixrec.features.schema import SYNTHETIC_SCHEMA
from mixrec.pipelines.config import ServeConfig
from mixrec.pipelines.workspace import Workspace
from mixrec.serving.resolved import ResolvedServe


def plan(**serve) -> ResolvedServe:
    return ResolvedServe(serve=ServeConfig(**serve), model_name="m", arms={"champion": "1", "challenger": "2"},
                         weights={"champion": 0.5, "challenger": 0.5}, tracking_uri="sqlite:///x.db",
                         workspace=Workspace(Path("/ws")), schema=SYNTHETIC_SCHEMA, env={"A": "1"}, token_sha256=None)


def test_ranker_view_holds_its_arm_and_ranker_settings_only():
    view = plan(item_cache_ttl_s=60.0, max_candidates=7).ranker_view("challenger")
    assert view.arms == {"challenger": "2"} and view.weights == {} and view.token_sha256 is None
    assert view.serve.item_cache_ttl_s == 60.0 and view.serve.max_candidates == ServeConfig().max_candidates


def test_live_settings_and_request_limits_leave_the_ranker_unchanged():
    base = plan()
    changed = replace(plan(arms={"champion": 1.0, "challenger": 0.0}, max_ongoing_requests=1, retry_after_s=5,
                           auth_token_env="TOKEN", app_name="other"),
                      weights={"champion": 1.0, "challenger": 0.0}, token_sha256="ab" * 32)
    for arm in ("champion", "challenger"):
        assert repr(changed.ranker_view(arm)) == repr(base.ranker_view(arm))
    assert repr(changed.splitter_view()) != repr(base.splitter_view())  # retry_after_s is the splitter's
    assert repr(replace(changed, serve=base.serve).splitter_view()) == repr(base.splitter_view())


def test_a_new_version_or_ranker_setting_changes_the_ranker():
    base = plan()
    assert repr(replace(base, arms={"champion": "1", "challenger": "3"}).ranker_view("challenger")) \
        != repr(base.ranker_view("challenger"))
    assert repr(plan(batch_max_size=4).ranker_view("champion")) != repr(base.ranker_view("champion"))


def test_args_round_trip_through_yaml_and_name_what_is_missing():
    import pytest
    import yaml

    from mixrec.features.schema import DatasetSchema, FeatureField

    schema = DatasetSchema(label="y", timestamp="t", user_key="u", item_key="i", event_key="e", name="tags",
                           fields=(FeatureField("genres", "multi_hot", "item", max_len=3, keep="first"),))
    original = replace(plan(max_candidates=9, port=8123), schema=schema, token_sha256="cd" * 32)
    again = ResolvedServe.from_args(yaml.safe_load(yaml.safe_dump(original.to_args())))
    assert again == original and repr(again.ranker_view("champion")) == repr(original.ranker_view("champion"))
    args = original.to_args()
    del args["arms"]
    with pytest.raises(ValueError, match=r"lack \['arms'\]"):
        ResolvedServe.from_args(args)


def test_the_serve_config_file_is_a_valid_ray_serve_deploy_config(tmp_path):
    import yaml

    from mixrec.serving.serve_config import IMPORT_PATH, write_serve_config

    path = write_serve_config(plan(app_name="shop", route_prefix="/shop", port=8123), tmp_path / "serve.yaml")
    text = path.read_text()
    assert text.startswith("# Ray Serve config") and f"serve run {path}" in text
    config = yaml.safe_load(text)
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    (app,) = config["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == ("shop", "/shop", IMPORT_PATH)
    assert ResolvedServe.from_args(app["args"]).arms == {"champion": "1", "challenger": "2"}


def test_the_recorded_state_rebuilds_the_same_plan():
    """serve.json's plan: a later process redeploys exactly this application (set-weights changes weights only)."""
    import json

    from mixrec.features.schema import FeatureField

    schema = replace(SYNTHETIC_SCHEMA, fields=(*SYNTHETIC_SCHEMA.fields,
                                               FeatureField("tags", "multi_hot", "item", max_len=3, nullable=True)))
    original = replace(plan(salt="s-42", auth_token_env="TOKEN", max_candidates=9), schema=schema,
                       token_sha256="ab" * 32)
    again = ResolvedServe.from_args(json.loads(json.dumps(original.to_args())))
    assert again == original and repr(again.splitter_view()) == repr(original.splitter_view())
    assert all(repr(again.ranker_view(a)) == repr(original.ranker_view(a)) for a in original.arms)
