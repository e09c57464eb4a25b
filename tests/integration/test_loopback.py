"""Embedded mode listens on loopback only: every listening socket of this process tree (the driver, GCS,
raylet, agents, Ray workers, Serve's proxy and replicas) is bound to 127.0.0.0/8 or ::1, except the one that
Ray 2.60 hard-codes: each Serve replica's inter-deployment gRPC server on ``[::]:0`` (no setting moves it;
docs/security.md lists it with the reason)."""

from __future__ import annotations

import ipaddress

import psutil


def _is_loopback(host: str) -> bool:
    address = ipaddress.ip_address(host.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback on a dual-stack socket
    return (mapped or address).is_loopback


def _listeners(root: psutil.Process) -> list[tuple[str, int, str]]:
    tree = {p.pid: p for p in [root, *root.children(recursive=True)]}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in tree:
            try:
                name = tree[conn.pid].name()
            except psutil.Error:
                name = "?"
            found.append((conn.laddr.ip, conn.laddr.port, name))
    return found


def _serve_replica_pids(root: psutil.Process) -> list[int]:
    pids = []
    for proc in root.children(recursive=True):
        try:
            if proc.name().startswith("ray::ServeReplica:"):
                pids.append(proc.pid)
        except psutil.Error:
            pass
    return pids


def test_every_listener_of_the_embedded_stack_is_on_loopback(served):
    assert served["client"].get("/health").status_code == 200  # the Serve proxy and replicas are up
    listeners = _listeners(psutil.Process())
    names = {name for _, _, name in listeners}
    assert {"gcs_server", "raylet"} <= names, names  # the tree really holds the Ray node
    outside = [entry for entry in listeners if not _is_loopback(entry[0])]
    replica_grpc = [entry for entry in outside if entry[2].startswith("ray::ServeReplica:")]
    assert outside == replica_grpc, listeners
    replicas = {pid for pid in _serve_replica_pids(psutil.Process())}
    assert len(replica_grpc) == len(replicas)  # one each, no more



def test_another_process_joins_the_embedded_instance(ray_session):
    """A second process (`mixrec ab set-weights`, `mixrec score`) joins the loopback node by its address: its
    driver must take the loopback node address too, or it waits for a raylet on the host address forever."""
    import subprocess
    import sys

    address = ray_session.get_runtime_context().gcs_address
    script = ("from mixrec.pipelines.runtime import init_ray\n"
              f"ray = init_ray({address!r})\n"
              "print(ray.get_runtime_context().gcs_address, ray.cluster_resources()['CPU'])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == address
