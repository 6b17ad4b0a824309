"""Dev-cluster volume provisioner: binds each Pending PVC of the dev StorageClass to a new hostPath PV.

On kwok nodes the directory only records the volume; on the real nodes (all on
this host) pods mount it. As kind's local-path provisioner does: PVCs bind, pods
that use them schedule, released volumes are deleted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from r1_operator.dev.adminapi import AdminApi

STORAGE_CLASS = "r1-dev-local"
PROVISIONER = "r1.inference.dev/dev-hostpath"


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


def step(api: AdminApi, root: Path) -> None:
    _, pvcs = api.request("GET", "/api/v1/persistentvolumeclaims")
    for pvc in pvcs.get("items", []):
        sc = pvc["spec"].get("storageClassName")
        if sc == STORAGE_CLASS and pvc.get("status", {}).get("phase") == "Pending" and not pvc["spec"].get("volumeName"):
            pv = _pv(pvc, root)
            # Writable by the pods' non-root users, as local-path-provisioner makes it (fsGroup does not apply
            # to hostPath volumes).
            path = Path(pv["spec"]["hostPath"]["path"])
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)
            api.request("POST", "/api/v1/persistentvolumes", pv)
    _, pvs = api.request("GET", "/api/v1/persistentvolumes")
    for pv in pvs.get("items", []):
        ann = pv["metadata"].get("annotations") or {}
        if ann.get("pv.kubernetes.io/provisioned-by") == PROVISIONER and pv.get("status", {}).get("phase") == "Released":
            api.request("DELETE", f"/api/v1/persistentvolumes/{pv['metadata']['name']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="r1-dev-provisioner", description=__doc__)
    p.add_argument("--server", required=True, help="API server URL")
    p.add_argument("--pki", required=True, help="the dev cluster's PKI directory (admin client certificate)")
    p.add_argument("--root", required=True)
    p.add_argument("--interval", type=float, default=0.5)
    args = p.parse_args(argv)
    api = AdminApi(args.server, Path(args.pki))
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
