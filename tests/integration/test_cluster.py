"""The local cluster is a real Kubernetes: controllers, scheduler, GC and admission all work."""

from __future__ import annotations

import pytest
from r1_devtools.waiting import wait_for
from kubernetes import client
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.cluster

IMAGE = "registry.invalid/r1/pause:1"  # kwok never pulls images


def _pod_spec(resources: dict | None = None, **container_extra) -> client.V1PodSpec:
    return client.V1PodSpec(
        containers=[
            client.V1Container(
                name="c",
                image=IMAGE,
                resources=client.V1ResourceRequirements(limits=resources, requests=resources) if resources else None,
                **container_extra,
            )
        ],
    )


def test_four_simulated_nodes_with_gpu_labels(core):
    nodes = {n.metadata.name: n for n in core.list_node().items}
    assert {"gpu-24g", "gpu-80g", "gpu-2x80g", "cpu-only"} <= set(nodes)
    expect = {"gpu-24g": ("1", "24576", "64Gi"), "gpu-80g": ("1", "81920", "512Gi"), "gpu-2x80g": ("2", "81920", "256Gi")}
    for name, (gpus, mib, mem) in expect.items():
        n = nodes[name]
        assert n.status.allocatable["nvidia.com/gpu"] == gpus
        assert n.metadata.labels["nvidia.com/gpu.memory"] == mib
        assert n.metadata.labels["nvidia.com/gpu.count"] == gpus
        assert n.metadata.labels["nvidia.com/gpu.product"]
        assert n.status.allocatable["memory"] == mem
    assert "nvidia.com/gpu" not in nodes["cpu-only"].status.allocatable
    assert nodes["cpu-only"].status.allocatable["memory"] == "256Gi"
    for n in nodes.values():
        ready = [c for c in n.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", n.metadata.name


def test_deployment_pods_reach_running(api_client, core, namespace):
    apps = client.AppsV1Api(api_client)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=2,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=_pod_spec()),
            ),
        ),
    )

    def running():
        pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
        ok = [p for p in pods if p.status.phase == "Running" and p.spec.node_name]
        return len(ok) == 2 and ok

    wait_for(running, 60, "2 Running pods of the Deployment")
    wait_for(lambda: (apps.read_namespaced_deployment("web", namespace).status.ready_replicas or 0) == 2, 30, "ready replicas")


def test_job_completes(api_client, namespace):
    batch = client.BatchV1Api(api_client)
    spec = _pod_spec()
    spec.restart_policy = "Never"
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="once"),
            spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=spec)),
        ),
    )
    wait_for(lambda: batch.read_namespaced_job("once", namespace).status.succeeded == 1, 60, "the Job to succeed")
    job = batch.read_namespaced_job("once", namespace)
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions)


def test_scheduler_places_gpu_pods_and_keeps_impossible_ones_pending(core, namespace):
    core.create_namespaced_pod(namespace, client.V1Pod(metadata=client.V1ObjectMeta(name="two"), spec=_pod_spec({"nvidia.com/gpu": "2"})))
    core.create_namespaced_pod(namespace, client.V1Pod(metadata=client.V1ObjectMeta(name="three"), spec=_pod_spec({"nvidia.com/gpu": "3"})))
    placed = wait_for(lambda: core.read_namespaced_pod("two", namespace).spec.node_name, 30, "the 2-GPU pod to be scheduled")
    assert placed == "gpu-2x80g"

    def failed_scheduling():
        evs = core.list_namespaced_event(namespace, field_selector="involvedObject.name=three").items
        return [e for e in evs if e.reason == "FailedScheduling"]

    events = wait_for(failed_scheduling, 30, "a FailedScheduling event for the 3-GPU pod")
    assert "nvidia.com/gpu" in events[0].message
    pod = core.read_namespaced_pod("three", namespace)
    assert pod.status.phase == "Pending" and not pod.spec.node_name
    # Give the GPUs back before other tests plan against the cluster.
    for name in ("two", "three"):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, 30, "the GPU pods to be deleted")


def test_deleting_an_owner_deletes_its_children(core, namespace):
    owner = core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner")))
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="child", owner_references=[ref])))
    core.delete_namespaced_config_map("owner", namespace)

    def child_gone():
        try:
            core.read_namespaced_config_map("child", namespace)
            return False
        except ApiException as exc:
            return exc.status == 404

    wait_for(child_gone, 60, "the garbage collector to delete the child")


@pytest.mark.parametrize("namespace", [{"pod-security.kubernetes.io/enforce": "restricted"}], indirect=True)
def test_restricted_namespace_rejects_privileged_pod(core, namespace):
    privileged = _pod_spec(security_context=client.V1SecurityContext(privileged=True))
    with pytest.raises(ApiException) as err:
        core.create_namespaced_pod(namespace, client.V1Pod(metadata=client.V1ObjectMeta(name="priv"), spec=privileged))
    assert err.value.status == 403
    assert "violates PodSecurity" in err.value.body and "privileged" in err.value.body
    # A pod that meets the profile is admitted, so the rejection above is PodSecurity's, not a broken API.
    ok = _pod_spec(
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            run_as_non_root=True,
            run_as_user=1000,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        )
    )
    core.create_namespaced_pod(namespace, client.V1Pod(metadata=client.V1ObjectMeta(name="ok"), spec=ok))
