"""With --peering, kopf pauses until its peering object exists; say so at start-up and every minute until it does."""

from __future__ import annotations

import fnmatch
import logging
import threading

from r1_operator.k8s.client import api_client

log = logging.getLogger("r1_operator")
INTERVAL_S = 60.0


def missing(api, name: str, namespaces: list[str]) -> list[str]:
    """Where the peering object is missing: "cluster" (ClusterKopfPeering), or the namespaces without a KopfPeering."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    custom = client.CustomObjectsApi(api)
    try:
        if not namespaces:
            custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name)
            return []
        exact = [ns for ns in namespaces if not any(c in ns for c in "*?[")]
        if len(exact) < len(namespaces):  # patterns: the namespaces that exist now and match
            all_ns = [n.metadata.name for n in client.CoreV1Api(api).list_namespace().items]
            exact += [n for n in all_ns if any(fnmatch.fnmatch(n, p) for p in namespaces) and n not in exact]
        have = {o["metadata"]["namespace"] for o in
                custom.list_cluster_custom_object("kopf.dev", "v1", "kopfpeerings").get("items", [])
                if o["metadata"]["name"] == name}
        return [ns for ns in exact if ns not in have]
    except ApiException as exc:
        if exc.status == 404:
            return ["cluster"] if not namespaces else list(namespaces)
        raise


def _say(name: str, where: list[str]) -> None:
    if where == ["cluster"]:
        how = (f"kubectl apply -f crds/kopf-peering.yaml, then create ClusterKopfPeering {name} "
               "(helm install with ha.enabled does both)")
        log.info("waiting for peering object ClusterKopfPeering %s, which does not exist: %s; or run without "
                 "--peering (standalone)", name, how)
    else:
        log.info("waiting for peering object KopfPeering %s in namespace(s) %s, which do(es) not have it: "
                 "kubectl apply -f crds/kopf-peering.yaml, then create it there (helm install with ha.enabled does "
                 "both); or run without --peering (standalone)", name, ", ".join(where))


def watch_for_peering_object(name: str, namespaces: list[str], kubeconfig: str | None) -> threading.Thread:
    """A daemon thread that logs, now and every minute, while the peering object is missing."""
    stop = threading.Event()

    def run() -> None:
        api = api_client(kubeconfig)
        while not stop.is_set():
            try:
                where = missing(api, name, namespaces)
            except Exception as exc:  # noqa: BLE001 - the API server unreachable; kopf says so too
                log.info("cannot check for peering object %s yet: %s", name, exc)
                where = []
            if not where:
                return
            _say(name, where)
            stop.wait(INTERVAL_S)

    t = threading.Thread(target=run, name="peering-check", daemon=True)
    t.start()
    return t
