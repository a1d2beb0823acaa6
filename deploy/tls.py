"""TLS for the rendered workloads (overlay.toml ``tls = "off" | "tls" | "mtls"``).

Mounts the certificates from Kubernetes Secrets as volumes (never subPath: subPath mounts do not
see a rotated Secret, and the servers hot-reload their certificate files), adds the servers'
``--tls-*`` flags, points the coordinator's shard connections at the CA (and, for ``mtls``, its
client certificate), and swaps the built-in ``grpc:`` probes - which dial plaintext only - for
``exec`` probes running ``python -m cbir.rpc.probe`` with the pod's own files.

Secrets (type kubernetes.io/tls, plus the CA): ``cbir-shard-tls``, ``cbir-coordinator-tls``
(serving certs; with mtls the coordinator's cert is also its client cert, so it needs the
clientAuth usage, and so does the shard's for its own probe), ``cbir-ca`` (key ``ca.crt``).
Shard certificates must name ``cbir-shard`` (the coordinator dials pod IPs and checks that
name) and ``127.0.0.1`` / ``localhost`` are not needed: probes use the same name.
"""

from __future__ import annotations

from typing import Any

TLS_MODES = ("off", "tls", "mtls")
SHARD_SECRET, COORDINATOR_SECRET, CA_SECRET = "cbir-shard-tls", "cbir-coordinator-tls", "cbir-ca"
TLS_DIR, CA_DIR = "/etc/cbir/tls", "/etc/cbir/ca"
SHARD_SERVER_NAME = "cbir-shard"
COORDINATOR_SERVER_NAME = "cbir-coordinator"
CERT, KEY, CA = f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{CA_DIR}/ca.crt"


def volumes(serving_secret: str) -> list[dict[str, Any]]:
    return [{"name": "tls", "secret": {"secretName": serving_secret, "defaultMode": 0o400}},
            {"name": "ca", "secret": {"secretName": CA_SECRET}}]


MOUNTS = [{"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
          {"name": "ca", "mountPath": CA_DIR, "readOnly": True}]


def server_args(mode: str) -> list[str]:
    args = [f"--tls-cert={CERT}", f"--tls-key={KEY}"]
    if mode == "mtls":
        args += [f"--tls-ca={CA}", "--tls-require-client-cert"]
    return args


def coordinator_shard_args(mode: str) -> list[str]:
    args = [f"--shard-tls-ca={CA}", f"--shard-tls-server-name={SHARD_SERVER_NAME}"]
    if mode == "mtls":
        args += [f"--shard-tls-cert={CERT}", f"--shard-tls-key={KEY}"]
    return args


def exec_probe(probe: dict[str, Any], mode: str, server_name: str) -> dict[str, Any]:
    """The same probe (timings kept) as an exec of cbir.rpc.probe over TLS."""
    grpc = probe["grpc"]
    command = ["python", "-m", "cbir.rpc.probe", f"127.0.0.1:{grpc['port']}",
               f"--service={grpc.get('service', '')}", f"--tls-ca={CA}",
               f"--tls-server-name={server_name}"]
    if mode == "mtls":
        command += [f"--tls-cert={CERT}", f"--tls-key={KEY}"]
    out = {k: v for k, v in probe.items() if k != "grpc"}
    out["exec"] = {"command": command}
    out.setdefault("timeoutSeconds", 5)  # a Python start-up, not a kubelet dial
    return out


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def secure_shard_pod(pod: dict[str, Any], mode: str) -> None:
    """Edit a shard Deployment's pod spec in place."""
    if mode == "off":
        return
    ctr = pod["containers"][0]
    ctr["args"] = [*ctr["args"], *server_args(mode)]
    ctr["volumeMounts"] = [*ctr.get("volumeMounts", []), *MOUNTS]
    pod["volumes"] = [*pod.get("volumes", []), *volumes(SHARD_SECRET)]
    for name in PROBES:
        ctr[name] = exec_probe(ctr[name], mode, SHARD_SERVER_NAME)


def coordinator_patch(mode: str, base_probes: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """JSON patch ops for the base coordinator Deployment (kustomize ``patches``)."""
    if mode == "off":
        return []
    ctr = "/spec/template/spec/containers/0"
    ops: list[dict[str, Any]] = [
        {"op": "add", "path": f"{ctr}/args/-", "value": arg}
        for arg in [*server_args(mode), *coordinator_shard_args(mode)]
    ]
    ops += [{"op": "add", "path": f"{ctr}/volumeMounts/-", "value": m} for m in MOUNTS]
    ops += [{"op": "add", "path": "/spec/template/spec/volumes/-", "value": v}
            for v in volumes(COORDINATOR_SECRET)]
    ops += [{"op": "replace", "path": f"{ctr}/{name}",
             "value": exec_probe(probe, mode, COORDINATOR_SERVER_NAME)}
            for name, probe in base_probes.items()]
    return ops
