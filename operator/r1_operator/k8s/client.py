"""The API client (kubeconfig or in-cluster credentials), and one-shot reads of Nodes and GPU-holding pods."""

from __future__ import annotations

from typing import Any


def api_client(kubeconfig: str | None = None):
    from kubernetes import client, config

    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def check_api(api, namespaces: list[str]) -> None:
    """One cheap call that needs the API server and the operator's RBAC: list at most one R1Deployment where the
    operator watches (cluster-wide, or its first namespace that is not a pattern); raises when it cannot."""
    from kubernetes import client

    from r1_operator.api.types import GROUP, PLURAL, VERSION

    plain = [n for n in namespaces if not any(c in n for c in "*?[")]
    objects = client.CustomObjectsApi(api)
    if not namespaces:
        objects.list_cluster_custom_object(GROUP, VERSION, PLURAL, limit=1, _request_timeout=10)
    elif plain:
        objects.list_namespaced_custom_object(GROUP, VERSION, plain[0], PLURAL, limit=1, _request_timeout=10)
    else:
        client.VersionApi(api).get_code(_request_timeout=10)


def read_nodes_and_pods(api) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from kubernetes import client

    core = client.CoreV1Api(api)
    nodes = [api.sanitize_for_serialization(n) for n in core.list_node().items]
    pods = [
        api.sanitize_for_serialization(p)
        for p in core.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,status.phase!=Failed").items
    ]
    return nodes, pods
