"""Dev-cluster volume provisioner: a local PV, bound to the node its first pod runs on, for each PVC of the dev class.

The StorageClass binds WaitForFirstConsumer, as local volumes do on real clusters: the
scheduler picks the consumer's node first (annotation volume.kubernetes.io/selected-node),
then this provisioner creates a PV with node affinity to that node, so a pod on another node
cannot use it. On a real node the volume is a filesystem of exactly the requested size (a
sparse ext4 image, loop-mounted on the host), writable by non-root pods; a full volume fills
up. On a kwok node the volume is a directory that only records it. Released volumes are
deleted (unmounted, detached, removed).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from r1_operator.dev.adminapi import AdminApi
from r1_operator.dev.realnode import REAL_LABEL
from r1_operator.planning.inventory import parse_quantity

STORAGE_CLASS = "r1-dev-local"
PROVISIONER = "r1.inference.dev/dev-local"
SELECTED_NODE = "volume.kubernetes.io/selected-node"


def storage_class() -> dict:
    return {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": STORAGE_CLASS, "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": PROVISIONER, "reclaimPolicy": "Delete", "volumeBindingMode": "WaitForFirstConsumer"}


def _run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise OSError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout.strip()


def make_filesystem(image: Path, mount: Path, size: int) -> None:
    """A sparse ext4 image of exactly `size` bytes, loop-mounted at `mount`, its root writable by any user."""
    image.parent.mkdir(parents=True, exist_ok=True)
    mount.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)
    # -m 0: no blocks reserved for root, which the pods' users could not use anyway
    _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=1", str(image))
    _run("mount", "-o", "loop", str(image), str(mount))
    mount.chmod(0o1777)


def remove_filesystem(image: Path, mount: Path) -> None:
    if mount.is_mount():
        _run("umount", str(mount))
    for line in _run("losetup", "-j", str(image)).splitlines():  # a loop device left attached
        _run("losetup", "-d", line.split(":")[0])
    image.unlink(missing_ok=True)
    if mount.is_dir():
        mount.rmdir()


def _pv(pvc: dict, hostname: str, path: Path) -> dict:
    """A local PV for the claim, on the node whose kubernetes.io/hostname label is `hostname` (a node's name and
    its hostname label may differ: Karpenter names the node after the instance, the label after the NodeClaim)."""
    m = pvc["metadata"]
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"pvc-{m['uid']}", "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {"capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
                     "accessModes": pvc["spec"]["accessModes"], "persistentVolumeReclaimPolicy": "Delete",
                     "storageClassName": STORAGE_CLASS, "local": {"path": str(path)},
                     "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}]}]}},
                     "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": m["namespace"],
                                  "name": m["name"], "uid": m["uid"]}}}


def step(api: AdminApi, root: Path) -> None:
    _, pvcs = api.request("GET", "/api/v1/persistentvolumeclaims")
    real: set[str] | None = None
    for pvc in pvcs.get("items", []):
        ann = pvc["metadata"].get("annotations") or {}
        node = ann.get(SELECTED_NODE)
        if pvc["spec"].get("storageClassName") != STORAGE_CLASS or pvc.get("status", {}).get("phase") != "Pending" \
                or pvc["spec"].get("volumeName") or not node:
            continue
        if real is None:
            _, nodes = api.request("GET", f"/api/v1/nodes?labelSelector={REAL_LABEL}%3Dtrue")
            real = {n["metadata"]["name"] for n in nodes.get("items", [])}
        name = f"pvc-{pvc['metadata']['uid']}"
        mount = root / "mounts" / name
        if node in real:
            if not mount.is_mount():
                size = int(parse_quantity(pvc["spec"]["resources"]["requests"]["storage"], f"PVC {name} size"))
                make_filesystem(root / "images" / f"{name}.img", mount, size)
        else:  # a simulated node: no container will ever write here
            mount.mkdir(parents=True, exist_ok=True)
        _, chosen = api.request("GET", f"/api/v1/nodes/{node}")
        hostname = ((chosen.get("metadata") or {}).get("labels") or {}).get("kubernetes.io/hostname") or node
        api.request("POST", "/api/v1/persistentvolumes", _pv(pvc, hostname, mount))
    _, pvs = api.request("GET", "/api/v1/persistentvolumes")
    for pv in pvs.get("items", []):
        ann = pv["metadata"].get("annotations") or {}
        if ann.get("pv.kubernetes.io/provisioned-by") == PROVISIONER and pv.get("status", {}).get("phase") == "Released":
            name = pv["metadata"]["name"]
            remove_filesystem(root / "images" / f"{name}.img", root / "mounts" / name)
            api.request("DELETE", f"/api/v1/persistentvolumes/{name}")


def release_all(root: Path) -> None:
    """Unmount and detach every volume under root (the dev cluster going down)."""
    for image in sorted((root / "images").glob("*.img")) if (root / "images").is_dir() else []:
        remove_filesystem(image, root / "mounts" / image.stem)


def leftovers(root: Path) -> list[str]:
    """Volumes of this root still mounted or attached to a loop device."""
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
    return [f"mount {m}" for m in mounts if m.startswith(str(root) + "/")] + \
        [f"loop {line.split(':')[0]}" for line in loops if str(root) in line]


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
        except (OSError, ValueError) as exc:  # the API server restarting, a volume that cannot be made; try again
            print(f"provisioner: {exc}", file=sys.stderr, flush=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
