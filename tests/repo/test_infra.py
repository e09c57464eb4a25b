"""The deployment files under infra/ agree with the code: they parse, carry the fields their schemas need, and
name images, entry points, ports, module paths and services that exist.

Neither Docker nor Kubernetes runs here, and kubeconform cannot be installed from the registries this project
reaches (see infra/README.md), so the Kubernetes objects are checked against a small strict schema of the
fields the manifests use (types, required fields, no unknown fields), written from the Kubernetes core/v1 and
KubeRay ray.io/v1 CRD definitions. serveConfigV2 is also validated with Ray Serve's own schema.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import importlib
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
COMPOSE = INFRA / "docker" / "docker-compose.yaml"
KUBERAY = INFRA / "kuberay"
LAUNCHER = INFRA / "cluster-launcher.yaml"
README = INFRA / "README.md"

PORTS = {"serve": 8000, "dashboard": 8265, "gcs": 6380}
IMAGE_REPO = "ghcr.io/mixrec/mixrec"
TEAM_WORKSPACE = "/mnt/shared/mixrec"

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
IMAGE = f"{IMAGE_REPO}:{VERSION}-cpu"


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load(path: Path) -> list[dict]:
    return [d for d in yaml.load_all(path.read_text(), Loader=_Loader) if d is not None]


@functools.cache
def _kuberay_docs() -> dict[str, list[dict]]:
    """Parsed once per session; read-only for the tests (copy before changing)."""
    return {p.name: _load(p) for p in sorted(KUBERAY.glob("*.yaml"))}


def _by_kind(kind: str) -> list[tuple[str, dict]]:
    return [(name, d) for name, docs in _kuberay_docs().items() for d in docs if d.get("kind") == kind]


def _cluster_specs() -> list[tuple[str, dict]]:
    """(where, RayClusterSpec) of every Ray cluster the manifests define, inline ones included."""
    out = [(f"{n}:RayCluster", d["spec"]) for n, d in _by_kind("RayCluster")]
    out += [(f"{n}:RayJob", d["spec"]["rayClusterSpec"]) for n, d in _by_kind("RayJob")]
    out += [(f"{n}:RayService", d["spec"]["rayClusterConfig"]) for n, d in _by_kind("RayService")]
    return out


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(f"worker {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


def _configmaps() -> dict[str, dict]:
    return {f"{n}:{d['metadata']['name']}": d for n, d in _by_kind("ConfigMap")}


def _mounted_file(pod_spec: dict, container: dict, path: str) -> tuple[str, str] | None:
    """(ConfigMap name, key) that provides ``path`` in this container, or None."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        mount = PurePosixPath(m["mountPath"])
        p = PurePosixPath(path)
        if p.parent == mount and "configMap" in volumes.get(m["name"], {}):
            return volumes[m["name"]]["configMap"]["name"], p.name
    return None


def _shared_mount(pod_spec: dict, container: dict, path: str) -> bool:
    """Is ``path`` on a PersistentVolumeClaim mounted in this container?"""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    return any(PurePosixPath(path).is_relative_to(m["mountPath"])
               and "persistentVolumeClaim" in volumes.get(m["name"], {})
               for m in container.get("volumeMounts", []))


# --- a strict schema of the fields the manifests use ----------------------------------------------------
# A schema is a type name ("string", "integer", "boolean", "quantity", "any"), ("enum", values),
# ("array", item), ("map", value), or ("object", {field: schema}, required fields). Objects are strict
# (kubeconform -strict): a field the schema does not know is an error, which catches misspelled keys.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|m|k|Ki|Mi|Gi|Ti|Pi|Ei|M|G|T|P|E)?$")


def obj(fields: dict, required: tuple = ()) -> tuple:
    return ("object", fields, required)


def check(value, schema, where: str = "") -> list[str]:
    where = where or "(root)"
    if schema == "any":
        return []
    if schema == "string":
        return [] if isinstance(value, str) else [f"{where}: expected string, got {type(value).__name__} {value!r}"]
    if schema == "boolean":
        return [] if isinstance(value, bool) else [f"{where}: expected boolean, got {value!r}"]
    if schema == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected integer, got {value!r}"]
    if schema == "quantity":
        ok = (isinstance(value, int | float) and not isinstance(value, bool)) or (
            isinstance(value, str) and _QUANTITY.match(value))
        return [] if ok else [f"{where}: not a Kubernetes quantity: {value!r}"]
    kind = schema[0]
    if kind == "enum":
        return [] if value in schema[1] else [f"{where}: {value!r} not one of {list(schema[1])}"]
    if kind == "array":
        if not isinstance(value, list):
            return [f"{where}: expected array, got {type(value).__name__}"]
        return [e for i, v in enumerate(value) for e in check(v, schema[1], f"{where}[{i}]")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{where}: expected object, got {type(value).__name__}"]
        return [e for k, v in value.items() for e in check(v, schema[1], f"{where}.{k}")]
    assert kind == "object", schema
    if not isinstance(value, dict):
        return [f"{where}: expected object, got {type(value).__name__}"]
    fields, required = schema[1], schema[2]
    errors = [f"{where}: missing required field {r!r}" for r in required if r not in value]
    for k, v in value.items():
        if k not in fields:
            errors.append(f"{where}: unknown field {k!r}")
        else:
            errors += check(v, fields[k], f"{where}.{k}")
    return errors


_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABELS = ("map", "string")
OBJECT_META = obj({"name": "string", "namespace": "string", "labels": LABELS, "annotations": LABELS}, ("name",))
ENV_VAR = obj({"name": "string", "value": "string", "valueFrom": "any"}, ("name",))
CONTAINER_PORT = obj({"name": "string", "containerPort": "integer", "protocol": ("enum", ("TCP", "UDP", "SCTP"))},
                     ("containerPort",))
RESOURCES = obj({"requests": ("map", "quantity"), "limits": ("map", "quantity")})
VOLUME_MOUNT = obj({"name": "string", "mountPath": "string", "readOnly": "boolean", "subPath": "string"},
                   ("name", "mountPath"))
CONTAINER = obj({
    "name": "string", "image": "string",
    "imagePullPolicy": ("enum", ("Always", "IfNotPresent", "Never")),
    "command": ("array", "string"), "args": ("array", "string"),
    "ports": ("array", CONTAINER_PORT), "env": ("array", ENV_VAR), "resources": RESOURCES,
    "volumeMounts": ("array", VOLUME_MOUNT),
}, ("name", "image"))
VOLUME = obj({
    "name": "string",
    "configMap": obj({"name": "string", "defaultMode": "integer"}, ("name",)),
    "persistentVolumeClaim": obj({"claimName": "string", "readOnly": "boolean"}, ("claimName",)),
    "emptyDir": obj({"medium": "string", "sizeLimit": "quantity"}),
}, ("name",))
POD_TEMPLATE = obj({
    "metadata": obj({"labels": LABELS, "annotations": LABELS}),
    "spec": obj({"containers": ("array", CONTAINER), "volumes": ("array", VOLUME),
                 "serviceAccountName": "string", "nodeSelector": LABELS, "tolerations": ("array", "any")},
                ("containers",)),
}, ("spec",))
RAY_START_PARAMS = ("map", "string")  # map[string]string in the CRD: "6380", never 6380
RAY_CLUSTER_SPEC = obj({
    "rayVersion": "string",
    "authOptions": obj({"mode": ("enum", ("disabled", "token")), "secretName": "string"}),
    "enableInTreeAutoscaling": "boolean",
    "headGroupSpec": obj({"serviceType": ("enum", ("ClusterIP", "NodePort", "LoadBalancer")),
                          "rayStartParams": RAY_START_PARAMS, "template": POD_TEMPLATE}, ("template",)),
    "workerGroupSpecs": ("array", obj({
        "groupName": "string", "replicas": "integer", "minReplicas": "integer", "maxReplicas": "integer",
        "rayStartParams": RAY_START_PARAMS, "template": POD_TEMPLATE}, ("groupName", "template"))),
}, ("headGroupSpec",))


def _top(api_version: str, kind: str, body: dict, required: tuple) -> tuple:
    return obj({"apiVersion": ("enum", (api_version,)), "kind": ("enum", (kind,)), "metadata": OBJECT_META,
                **body}, ("apiVersion", "kind", "metadata", *required))


SCHEMAS = {
    "ConfigMap": _top("v1", "ConfigMap", {"data": ("map", "string")}, ("data",)),
    "PersistentVolumeClaim": _top("v1", "PersistentVolumeClaim", {"spec": obj({
        "accessModes": ("array", ("enum", ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"))),
        "storageClassName": "string",
        "resources": obj({"requests": ("map", "quantity")}, ("requests",)),
    }, ("accessModes", "resources"))}, ("spec",)),
    "RayCluster": _top("ray.io/v1", "RayCluster", {"spec": RAY_CLUSTER_SPEC}, ("spec",)),
    "RayJob": _top("ray.io/v1", "RayJob", {"spec": obj({
        "entrypoint": "string",
        "submissionMode": ("enum", ("K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode")),
        "shutdownAfterJobFinishes": "boolean", "ttlSecondsAfterFinished": "integer",
        "activeDeadlineSeconds": "integer", "runtimeEnvYAML": "string", "rayClusterSpec": RAY_CLUSTER_SPEC,
    }, ("entrypoint", "rayClusterSpec"))}, ("spec",)),
    "RayService": _top("ray.io/v1", "RayService", {"spec": obj({
        "serveConfigV2": "string", "rayClusterConfig": RAY_CLUSTER_SPEC,
    }, ("serveConfigV2", "rayClusterConfig"))}, ("spec",)),
}


# --- every file parses; Kubernetes objects match the schema ---------------------------------------------
def test_every_yaml_file_parses():
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    assert {p.relative_to(INFRA).as_posix() for p in files} >= {
        "docker/docker-compose.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml",
        "kuberay/rayservice.yaml", "cluster-launcher.yaml"}
    for path in files:
        docs = _load(path)
        assert docs, f"{path} holds no document"
        assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_kuberay_files_define_the_expected_objects():
    kinds = {name: [d["kind"] for d in docs] for name, docs in _kuberay_docs().items()}
    assert "RayCluster" in kinds["raycluster.yaml"]
    assert {"RayJob", "ConfigMap"} <= set(kinds["rayjob.yaml"])
    assert {"RayService", "ConfigMap"} <= set(kinds["rayservice.yaml"])


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml", "rayservice.yaml"])
def test_kubernetes_objects_match_schema(name):
    for doc in _load(KUBERAY / name):
        assert doc.get("kind") in SCHEMAS, f"{name}: no schema for kind {doc.get('kind')!r}"
        errors = check(doc, SCHEMAS[doc["kind"]], f"{name}:{doc['kind']}")
        assert not errors, "\n".join(errors)
        assert _DNS1123.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 63


def test_schema_check_catches_typos_and_wrong_types():
    _, cluster = _by_kind("RayCluster")[0]
    bad = copy.deepcopy(cluster)
    bad["spec"]["headGroupSpec"]["rayStartParams"]["port"] = 6380           # int where the CRD wants string
    bad["spec"]["workerGroupSpecs"][0]["replica"] = 2                        # misspelled field
    del bad["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
    errors = "\n".join(check(bad, SCHEMAS["RayCluster"]))
    assert "rayStartParams.port: expected string" in errors
    assert "unknown field 'replica'" in errors
    assert "missing required field 'image'" in errors


def test_names_are_unique_and_shared_objects_identical():
    seen: dict[tuple[str, str], tuple[str, dict]] = {}
    for name, docs in _kuberay_docs().items():
        keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
        assert len(keys) == len(set(keys)), f"{name} defines an object twice"
        for d in docs:
            key = (d["kind"], d["metadata"]["name"])
            if key in seen:  # applying both files must not flip an object back and forth
                assert d == seen[key][1], f"{key} differs between {seen[key][0]} and {name}"
            seen[key] = (name, d)


# --- Ray clusters: images, ports, mounts ----------------------------------------------------------------
def test_ray_clusters_have_head_workers_containers_and_images():
    specs = _cluster_specs()
    assert len(specs) == 3
    for where, spec in specs:
        assert spec["workerGroupSpecs"], f"{where}: no worker group"
        assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: keep Ray token auth on"
        assert spec["rayVersion"] == _constraint("ray"), f"{where}: rayVersion != the pinned ray"
        for group, template in _pod_templates(spec):
            containers = template["spec"]["containers"]
            assert containers, f"{where} {group}: no container"
            assert containers[0]["image"] == IMAGE, f"{where} {group}: image {containers[0]['image']!r}"


def test_head_ports_agree():
    for where, spec in _cluster_specs():
        head = spec["headGroupSpec"]
        params = head["rayStartParams"]
        assert params["port"] == str(PORTS["gcs"]), where
        assert params["dashboard-host"] == "0.0.0.0", where
        assert params.get("dashboard-port", "8265") == str(PORTS["dashboard"]), where
        ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
        # KubeRay builds the head Service from these names; gcs-server must match rayStartParams.port.
        assert ports["gcs-server"] == PORTS["gcs"], where
        assert ports["dashboard"] == PORTS["dashboard"], where
        assert ports["serve"] == PORTS["serve"], where
        for _, group in _pod_templates(spec)[1:]:
            assert "port" not in group.get("rayStartParams", {}), f"{where}: workers join the head's port"


# --- the pipeline config inside the ConfigMaps ----------------------------------------------------------
def _team_config_checks(cfg, where: str) -> None:
    assert cfg.registry.tracking_uri == "http://mlflow:5000", where
    assert cfg.features.online_store == {"type": "redis", "connection_string": "redis:6379"}, where
    assert isinstance(cfg.features.registry, dict) and cfg.features.registry["registry_type"] == "sql", where
    assert cfg.features.registry["path"].startswith("postgresql+psycopg://"), where
    assert cfg.serve.host == "0.0.0.0", f"{where}: inside a pod the Serve proxy must listen on all interfaces"
    assert cfg.serve.port == PORTS["serve"], where
    assert cfg.workspace == TEAM_WORKSPACE, where


def _team_config_hosts(cfg) -> set[str]:
    return {urlparse(cfg.registry.tracking_uri).hostname,
            cfg.features.online_store["connection_string"].split(",")[0].split(":")[0],
            urlparse(cfg.features.registry["path"]).hostname}


def test_configmap_pipeline_configs_validate():
    from mixrec.pipelines.config import parse_config

    found = 0
    for where, cm in _configmaps().items():
        for key, text in cm["data"].items():
            if key.endswith((".yaml", ".yml")):
                cfg = parse_config(yaml.safe_load(text), f"{where}/{key}")
                _team_config_checks(cfg, f"{where}/{key}")
                found += 1
    assert found >= 2


def test_pipeline_config_is_mounted_where_the_entrypoints_read_it_and_workspace_is_shared():
    from mixrec.pipelines.config import parse_config

    cms = {cm["metadata"]["name"]: cm for cm in _configmaps().values()}
    needed = [(f"{n}:RayJob", d["spec"]["rayClusterSpec"], shlex.split(d["spec"]["entrypoint"])[-1])
              for n, d in _by_kind("RayJob")]
    for n, d in _by_kind("RayService"):
        for app in yaml.safe_load(d["spec"]["serveConfigV2"])["applications"]:
            needed.append((f"{n}:RayService", d["spec"]["rayClusterConfig"], app["args"]["config"]))
    assert len(needed) >= 2
    for where, spec, config_path in needed:
        # the job driver runs on the head; Serve may build the application on any node: mount it on all.
        for group, template in _pod_templates(spec):
            pod, container = template["spec"], template["spec"]["containers"][0]
            source = _mounted_file(pod, container, config_path)
            assert source, f"{where} {group}: nothing mounts {config_path}"
            cm_name, key = source
            assert cm_name in cms and key in cms[cm_name]["data"], f"{where}: ConfigMap {cm_name}/{key} missing"
            cfg = parse_config(yaml.safe_load(cms[cm_name]["data"][key]))
            assert _shared_mount(pod, container, cfg.workspace), \
                f"{where} {group}: workspace {cfg.workspace} is not on a shared volume"


# --- entry points and module paths agree with the code --------------------------------------------------
def _typer_commands() -> dict:
    import typer.main

    cli = importlib.import_module("mixrec.cli")
    return typer.main.get_command(cli.app).commands


def test_rayjob_entrypoint_is_the_console_script_and_a_real_command():
    scripts = PYPROJECT["project"]["scripts"]
    commands = _typer_commands()
    for where, job in _by_kind("RayJob"):
        words = shlex.split(job["spec"]["entrypoint"])
        assert words[0] in scripts, f"{where}: {words[0]!r} is not a console script of pyproject"
        module, _, func = scripts[words[0]].partition(":")
        assert callable(getattr(importlib.import_module(module), func))
        assert module == "mixrec.cli", "the script must run the typer app the test inspects"
        assert words[1] in commands, f"{where}: {words[1]!r} is not one of {sorted(commands)}"
        # the arguments parse as that command's arguments (nothing runs)
        ctx = commands[words[1]].make_context(" ".join(words[:2]), words[2:])
        assert str(ctx.params["config"]) == "/etc/mixrec/pipeline.yaml"
        assert job["spec"]["shutdownAfterJobFinishes"] is True


def test_rayservice_serve_config_imports_and_matches_the_pipeline_config():
    from ray.serve.schema import ServeDeploySchema

    from mixrec.pipelines.config import parse_config

    cms = {cm["metadata"]["name"]: cm for cm in _configmaps().values()}
    for where, svc in _by_kind("RayService"):
        serve_cfg = yaml.safe_load(svc["spec"]["serveConfigV2"])
        ServeDeploySchema.model_validate(serve_cfg)
        assert serve_cfg["http_options"]["host"] == "0.0.0.0"
        assert serve_cfg["http_options"]["port"] == PORTS["serve"]
        apps = serve_cfg["applications"]
        assert apps, where
        for app in apps:
            module_name, _, attr = app["import_path"].partition(":")
            assert app["import_path"] == "mixrec.serving.server:app_from_args"
            module = importlib.import_module(module_name)
            assert callable(getattr(module, attr)), f"{where}: {app['import_path']} is not callable"
            assert app["name"] == module.APP_NAME
            head = svc["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
            cm_name, key = _mounted_file(head, head["containers"][0], app["args"]["config"])
            cfg = parse_config(yaml.safe_load(cms[cm_name]["data"][key]))
            assert app["route_prefix"] == cfg.serve.route_prefix


# --- Dockerfile -----------------------------------------------------------------------------------------
def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def _constraint(package: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and name.strip().lower() == package:
            return version.strip()
    raise AssertionError(f"{package} is not pinned in constraints.txt")


def test_dockerfile_variants_and_install():
    ins = _dockerfile_instructions()
    first_from = next(i for i, (op, _) in enumerate(ins) if op == "FROM")
    global_args = dict(a.split("=", 1) for op, a in ins[:first_from] if op == "ARG" and "=" in a)
    assert global_args["VARIANT"] == "cpu"
    stages = {rest.split()[-1] for op, rest in ins if op == "FROM" and " AS " in rest.upper()}
    assert {"base-cpu", "base-cuda"} <= stages
    assert any(op == "FROM" and rest.startswith("base-${VARIANT}") for op, rest in ins)
    assert "nvidia/cuda" in global_args["CUDA_BASE"] or "rayproject/ray" in global_args["CUDA_BASE"]
    args = dict(a.split("=", 1) for op, a in ins if op == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == _constraint("torch").split("+")[0]
    assert args["TORCH_CPU_INDEX"] == "https://download.pytorch.org/whl/cpu"
    runs = [rest for op, rest in ins if op == "RUN"]
    torch_run = next(r for r in runs if "torch==" in r)
    cpu_branch = re.search(r"cpu\)(.*?);;", torch_run).group(1)
    cuda_branch = re.search(r"cuda\)(.*?);;", torch_run).group(1)
    assert "--index-url" in cpu_branch and "TORCH_CPU_INDEX" in cpu_branch
    assert "--index-url" not in cuda_branch and "torch==${TORCH_VERSION}" in cuda_branch
    assert any(re.search(r"pip install .*-c (\S*/)?constraints\.txt", r) for r in runs)


def test_dockerfile_copies_what_the_package_needs_from_the_repo_root():
    ins = _dockerfile_instructions()
    sources = []
    for op, rest in ins:
        if op == "COPY":
            words = [w for w in rest.split() if not w.startswith("--")]
            sources += words[:-1]
    for src in sources:  # the build context is the repository root
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository root"
    package_dirs = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs <= set(sources), f"not copied: {package_dirs - set(sources)}"
    assert {"pyproject.toml", "constraints.txt", PYPROJECT["project"]["readme"]} <= set(sources)


def test_dockerfile_runs_as_non_root_and_exposes_the_ports():
    ins = _dockerfile_instructions()
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    exposed = {int(p.split("/")[0]) for op, rest in ins if op == "EXPOSE" for p in rest.split()}
    assert exposed == set(PORTS.values())


# --- docker compose -------------------------------------------------------------------------------------
_INTERP = re.compile(r"\$\{(\w+)(?:(:?-)([^}]*)|(:?\?)[^}]*)?\}")


def _interpolate(value):
    """Compose variable interpolation with every variable unset: defaults apply, required ones are named."""
    if isinstance(value, str):
        value = _INTERP.sub(lambda m: m.group(3) if m.group(2) else f"<{m.group(1)}>", value)
        return value.replace("$$", "$")
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return _interpolate(yaml.safe_load(COMPOSE.read_text()))


def _command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def _flag(cmd: list[str], name: str) -> str:
    for i, word in enumerate(cmd):
        if word == name:
            return cmd[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    raise AssertionError(f"{name} not in {cmd}")


def _container_ports(service: dict) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}


def test_compose_has_the_team_stack(compose):
    services = compose["services"]
    assert {"postgres", "minio", "create-buckets", "mlflow", "redis", "ray-head"} <= set(services)
    assert services["postgres"]["image"].split(":")[1].split(".")[0] == "15"
    assert services["redis"]["image"].startswith("redis:")
    for name in ("mlflow", "ray-head"):
        build = services[name]["build"]
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == ROOT, f"{name}: the build context must be the repository root"
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE
        assert build["args"]["VARIANT"] == "cpu"
        assert services[name]["image"] == IMAGE


def test_compose_depends_on_existing_services_with_valid_conditions(compose):
    services = compose["services"]
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        deps = {d: {"condition": "service_started"} for d in deps} if isinstance(deps, list) else deps
        for dep, spec in deps.items():
            assert dep in services, f"{name} depends on unknown service {dep!r}"
            cond = spec["condition"]
            assert cond in ("service_started", "service_healthy", "service_completed_successfully")
            if cond == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep} to be healthy: no healthcheck"
    for name in ("postgres", "redis", "minio", "mlflow", "ray-head"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert services["mlflow"]["depends_on"]["create-buckets"]["condition"] == "service_completed_successfully"


def _service_port(services: dict, name: str) -> int:
    """The port a service listens on, from its command (the URL checks compare against it)."""
    cmd = _command(services[name])
    if name == "mlflow":
        return int(_flag(cmd, "--port"))
    if name == "minio":
        return int(_flag(cmd, "--address").rsplit(":", 1)[1])
    return {"postgres": 5432, "redis": 6379}[name]


def test_compose_urls_name_existing_services(compose):
    services = compose["services"]
    urls = []
    for name, svc in services.items():
        env = svc.get("environment", {})
        env = dict(e.split("=", 1) for e in env) if isinstance(env, list) else env
        urls += [(f"{name}.environment.{k}", str(v)) for k, v in env.items() if "://" in str(v)]
        words = [w for part in _command(svc) for w in shlex.split(part)]
        urls += [(f"{name}.command", w) for w in words if re.match(r"^[a-z+]+://[^/]+:\d+", w)]
    assert len(urls) >= 4
    for where, url in urls:
        parsed = urlparse(url)
        assert parsed.hostname in services, f"{where}: {url} names no service"
        assert parsed.port == _service_port(services, parsed.hostname), f"{where}: {url} wrong port"


def test_compose_mlflow_server(compose):
    services = compose["services"]
    cmd = _command(services["mlflow"])
    assert cmd[:2] == ["mlflow", "server"]
    assert urlparse(_flag(cmd, "--backend-store-uri")).scheme.startswith("postgresql")
    destination = _flag(cmd, "--artifacts-destination")
    assert destination == "s3://mlflow/"
    assert _flag(cmd, "--host") == "0.0.0.0" and _flag(cmd, "--workers") == "1"
    # MLflow 3.17 validates the Host header (which carries the port) against --allowed-hosts
    allowed = _flag(cmd, "--allowed-hosts").split(",")
    tracking = urlparse(services["ray-head"]["environment"]["MLFLOW_TRACKING_URI"])
    assert any(fnmatch.fnmatch(tracking.netloc, a) for a in allowed), f"{tracking.netloc} not in {allowed}"
    assert any(fnmatch.fnmatch("localhost:5000", a) for a in allowed)
    bucket_cmd = " ".join(_command(services["create-buckets"]))
    assert f"mc mb --ignore-existing store/{urlparse(destination).netloc}" in bucket_cmd


def test_compose_ray_head(compose):
    head = compose["services"]["ray-head"]
    cmd = _command(head)
    assert cmd[:3] == ["ray", "start", "--head"] and "--block" in cmd
    assert _flag(cmd, "--port") == str(PORTS["gcs"])
    assert _flag(cmd, "--dashboard-host") == "0.0.0.0"
    assert int(_flag(cmd, "--dashboard-port")) == PORTS["dashboard"]
    assert _container_ports(head) == set(PORTS.values())
    env = head["environment"]
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env.get(key), f"ray-head lacks {key}"
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"] == "<RAY_AUTH_TOKEN>", "the token must come from the environment, not the file"
    assert env["MIXREC_HOME"] == TEAM_WORKSPACE
    for name in ("postgres", "redis"):  # the dev boxes already hold 5432 and 6379 on the host
        assert not compose["services"][name].get("ports"), f"{name} must not be published on the host"


def test_team_config_hosts_are_compose_services(compose):
    from mixrec.pipelines.config import parse_config

    for where, cm in _configmaps().items():
        cfg = parse_config(yaml.safe_load(cm["data"]["pipeline.yaml"]))
        assert _team_config_hosts(cfg) <= set(compose["services"]), where


# --- cluster launcher -----------------------------------------------------------------------------------
def test_cluster_launcher():
    (cfg,) = _load(LAUNCHER)
    assert cfg["provider"]["type"] == "aws"
    assert cfg["docker"]["image"] == IMAGE
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types and len(types) >= 2
    for name, node in types.items():
        assert isinstance(node["node_config"], dict) and isinstance(node["resources"], dict), name
        if name != cfg["head_node_type"]:
            assert isinstance(node["min_workers"], int) and node["max_workers"] >= node["min_workers"]
    assert isinstance(cfg["max_workers"], int)
    setup = " ".join(cfg["setup_commands"])
    assert re.search(r"pip install .*-c \S*constraints\.txt \S*mixrec", setup)
    head = " ".join(cfg["head_start_ray_commands"])
    assert f"--port={PORTS['gcs']}" in head and "--head" in head
    assert "--dashboard-host=0.0.0.0" in head and f"--dashboard-port={PORTS['dashboard']}" in head
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert f"--address=$RAY_HEAD_IP:{PORTS['gcs']}" in worker
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]


# --- README ---------------------------------------------------------------------------------------------
def test_readme_commands_and_team_config():
    from mixrec.pipelines.config import parse_config

    text = README.read_text()
    for needle in ("--build-arg VARIANT=cpu", "--build-arg VARIANT=cuda", "-f infra/docker/Dockerfile",
                   "docker compose -f infra/docker/docker-compose.yaml up", "kubectl apply -f infra/kuberay/",
                   "ray up infra/cluster-launcher.yaml", "kubeconform", ".dockerignore", IMAGE):
        assert needle in text, f"infra/README.md does not mention {needle!r}"
    block = re.search(r"<!-- team-config -->\s*```yaml\n(.*?)```", text, re.S)
    assert block, "infra/README.md lacks the team config block"
    cfg = parse_config(yaml.safe_load(block.group(1)), "infra/README.md")
    _team_config_checks(cfg, "infra/README.md")
    (_, cm), *_ = _configmaps().items()
    assert cfg == parse_config(yaml.safe_load(cm["data"]["pipeline.yaml"])), \
        "the README's team config and the ConfigMaps' differ"


def test_no_file_uses_the_redis_port_for_ray():
    for path in [DOCKERFILE, COMPOSE, LAUNCHER, *KUBERAY.glob("*.yaml")]:
        text = path.read_text()
        assert not re.search(r"(--port[= ]|port: \"?|address=\S*:)6379\b", text), f"{path}: Ray on 6379"
