"""The workspace's Feast repo works with the plain `feast` CLI: `feast apply` there registers exactly what mixrec
registered (the repo carries its definitions), so it deletes nothing; `feast feature-views list` sees them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mixrec.features import feast_repo

FEAST = str(Path(sys.executable).with_name("feast"))


def _registered(repo: Path) -> dict[str, list]:
    store = feast_repo.open_store(repo)
    return {
        "entities": sorted((e.name, e.join_key) for e in store.list_entities()),
        "feature_views": sorted((v.name, tuple(f.name for f in v.features)) for v in store.list_feature_views()),
        "feature_services": sorted(s.name for s in store.list_feature_services()),
    }


def test_feast_apply_in_the_workspace_keeps_every_definition(served):
    repo = served["first"].workspace.feast_repo
    before = _registered(repo)
    assert before["feature_services"] == [feast_repo.FEATURE_SERVICE] and before["feature_views"]
    env = {**os.environ, "FEAST_USAGE": "False"}
    applied = subprocess.run([FEAST, "-c", str(repo), "apply"], capture_output=True, text=True, env=env, timeout=300)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert "Deleting" not in applied.stdout, applied.stdout
    assert _registered(repo) == before
    listed = subprocess.run([FEAST, "-c", str(repo), "feature-views", "list"], capture_output=True, text=True,
                            env=env, timeout=300)
    assert listed.returncode == 0 and all(name in listed.stdout for name, _ in before["feature_views"]), listed.stdout
    # The served app still ranks with features read from the same online store.
    response = served["client"].post("/rank", json={"user_id": 1, "items": [1, 2, 3]})
    assert response.status_code == 200, response.text
