"""The web front end in the rendered overlays: TLS settings (overlay.toml ``tls``).

With ``tls``/``mtls`` the web pod dials the coordinator over TLS (the cluster CA, the
coordinator's certificate name; with ``mtls`` its own certificate as the client certificate,
so ``cbir-web-tls`` needs the clientAuth usage) and serves HTTPS with the same certificate; the
kubelet's HTTP probe switches to HTTPS (it does not verify certificates).
"""

from __future__ import annotations

from typing import Any

from deploy.tls import CA, CERT, COORDINATOR_SERVER_NAME, KEY, MOUNTS, volumes

WEB_SECRET = "cbir-web-tls"
WEB_DEPLOYMENT = "cbir-web"


def web_args(mode: str) -> list[str]:
    args = [f"--tls-cert={CERT}", f"--tls-key={KEY}", f"--coordinator-tls-ca={CA}",
            f"--coordinator-tls-server-name={COORDINATOR_SERVER_NAME}"]
    if mode == "mtls":
        args += [f"--coordinator-tls-cert={CERT}", f"--coordinator-tls-key={KEY}"]
    return args


def web_patch(mode: str) -> list[dict[str, Any]]:
    """JSON patch ops for the base web Deployment (kustomize ``patches``); [] for plaintext."""
    if mode == "off":
        return []
    ctr = "/spec/template/spec/containers/0"
    ops: list[dict[str, Any]] = [{"op": "add", "path": f"{ctr}/args/-", "value": arg}
                                 for arg in web_args(mode)]
    ops += [{"op": "add", "path": f"{ctr}/volumeMounts/-", "value": m} for m in MOUNTS]
    ops += [{"op": "add", "path": "/spec/template/spec/volumes/-", "value": v}
            for v in volumes(WEB_SECRET)]
    ops.append({"op": "replace", "path": f"{ctr}/readinessProbe/httpGet/scheme",
                "value": "HTTPS"})
    return ops
