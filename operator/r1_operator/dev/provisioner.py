"""Dev-cluster volume provisioner: binds each Pending PVC of the dev StorageClass to a new hostPath PV.

The dev cluster has no kubelet, so the directory only records the volume; what
kind's local-path provisioner does for a real node, this does for the API
objects: PVCs bind, pods that use them schedule, released volumes are deleted.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STORAGE_CLASS = "r1-dev-local"
PROVISIONER = "r1.inference.dev/dev-hostpath"


class _Api:
    def __init__(self, kubeconfig: str) -> None:
        import base64
        import tempfile

        import yaml

        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        self.server = cluster["server"]
        tmp = Path(tempfile.mkdtemp(prefix="r1-prov-"))
        for key, fname in (("certificate-authority-data", "ca"), ("client-certificate-data", "crt"),
                           ("client-key-data", "key")):
            (tmp / fname).write_bytes(base64.b64decode(cluster.get(key) or user.get(key)))
        self.ctx = ssl.create_default_context(cafile=str(tmp / "ca"))
        self.ctx.load_cert_chain(str(tmp / "crt"), str(tmp / "key"))

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(self.server + path, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


def storage_class() -> dict:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "Immediate"}


def _pv(pvc: dict, root: Path) -> dict:
    m = pvc["metadata"]
    name = f"pvc-{m['uid']}"
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {"capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
                     "accessModes": pvc["spec"]["accessModes"], "persistentVolumeReclaimPolicy": "Delete",
                     "storageClassName": STORAGE_CLASS, "hostPath": {"path": str(root / name), "type": ""},
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": m["namespace"],
                                  "name": m["name"], "uid": m["uid"]}}}


def step(api: _Api, root: Path) -> None:
    _, pvcs = api.request("GET", "/api/v1/persistentvolumeclaims")
    for pvc in pvcs.get("items", []):
        sc = pvc["spec"].get("storageClassName")
        if sc == STORAGE_CLASS and pvc.get("status", {}).get("phase") == "Pending" and not pvc["spec"].get("volumeName"):
            api.request("POST", "/api/v1/persistentvolumes", _pv(pvc, root))
    _, pvs = api.request("GET", "/api/v1/persistentvolumes")
    for pv in pvs.get("items", []):
        ann = pv["metadata"].get("annotations") or {}
        if ann.get("pv.kubernetes.io/provisioned-by") == PROVISIONER and pv.get("status", {}).get("phase") == "Released":
            api.request("DELETE", f"/api/v1/persistentvolumes/{pv['metadata']['name']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="r1-dev-provisioner", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--root", required=True)
    p.add_argument("--interval", type=float, default=0.5)
    args = p.parse_args(argv)
    api = _Api(args.kubeconfig)
    code, body = api.request("POST", "/apis/storage.k8s.io/v1/storageclasses", storage_class())
    if code not in (200, 201, 409):
        print(f"creating StorageClass {STORAGE_CLASS}: HTTP {code}: {body.get('message')}", file=sys.stderr)
        return 1
    while True:
        try:
            step(api, Path(args.root))
        except (OSError, ValueError) as exc:  # the API server restarting; try again
            print(f"provisioner: {exc}", file=sys.stderr, flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
