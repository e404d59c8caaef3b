"""The deployment files (no container engine here): they parse, their commands are valid
fedstream command lines, and ports, addresses and probes agree with each other."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from fedstream.cli.main import build_parser

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def parse_cli(argv: list[str]):
    return build_parser().parse_args(argv)


def listen_port(args) -> int:
    return int(args.listen.rsplit(":", 1)[1])


def test_dockerfiles_run_fedstream_and_expose_the_service_ports():
    cpu = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["fedstream"]' in cpu
    assert re.search(r"EXPOSE 50051 50052 9100", cpu)
    gpu = (DEPLOY / "Dockerfile.gpu").read_text()
    assert 'ENTRYPOINT ["fedstream", "worker"]' in gpu
    cmd = re.search(r"^CMD (\[.*\])$", gpu, re.M).group(1)
    args = parse_cli(["worker", *yaml.safe_load(cmd)])
    assert args.device == "/GPU:0"
    for path in re.findall(r"^COPY (\S+) \S+$", cpu + gpu, re.M):
        for part in path.split():
            assert (DEPLOY.parent / part).exists(), part


def test_compose_commands_parse_and_addresses_match_services():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    parsed = {name: parse_cli(svc["command"]) for name, svc in compose.items()}
    assert listen_port(parsed["datapool"]) == 50052 and listen_port(parsed["coordinator"]) == 50051
    assert parsed["coordinator"].datapool == "datapool:50052"
    assert parsed["worker"].coordinator == "coordinator:50051"
    assert parsed["worker"].datapool == "datapool:50052"
    assert parsed["coordinator"].min_workers == compose["worker"]["deploy"]["replicas"]
    for name in ("datapool", "coordinator"):
        check = compose[name]["healthcheck"]["test"]
        assert check[:2] == ["CMD", "fedstream"]
        args = parse_cli(check[2:])
        assert args.command == "health"
        assert args.address.endswith(f":{listen_port(parsed[name])}")
    assert compose["coordinator"]["ports"] == [f"{parsed['coordinator'].prometheus_port}:9100"]


def tls_files_mounted(args, deployment) -> bool:
    """Every TLS file the command names lies in a mounted volume of the fedstream-tls Secret."""
    pod = deployment["spec"]["template"]["spec"]
    secrets = {v["name"] for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "fedstream-tls"}
    mounts = [m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]
              if m["name"] in secrets]
    files = [f for f in (args.tls_ca, args.tls_cert, args.tls_key) if f]
    return bool(files) and all(any(f.startswith(m + "/") for m in mounts) for f in files)


def k8s_documents():
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_agree_with_the_cli():
    docs = k8s_documents()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert set(deployments) == {"fedstream-datapool", "fedstream-coordinator", "fedstream-worker"}
    for role in ("datapool", "coordinator"):
        (container,) = deployments[f"fedstream-{role}"]["spec"]["template"]["spec"]["containers"]
        args = parse_cli(container["args"])
        port = listen_port(args)
        assert args.mtls and tls_files_mounted(args, deployments[f"fedstream-{role}"])
        for probe in ("readinessProbe", "livenessProbe"):
            command = container[probe]["exec"]["command"]
            assert command[0] == "fedstream"
            health = parse_cli(command[1:])
            assert health.command == "health" and health.address == f"127.0.0.1:{port}"
            assert tls_files_mounted(health, deployments[f"fedstream-{role}"])
        assert port in {p["containerPort"] for p in container["ports"]}
        service = services[role]
        assert service["spec"]["selector"] == deployments[f"fedstream-{role}"]["spec"]["selector"]["matchLabels"]
        assert port in {p["targetPort"] for p in service["spec"]["ports"]}
    (worker,) = deployments["fedstream-worker"]["spec"]["template"]["spec"]["containers"]
    args = parse_cli(["worker", *worker["args"]])  # the GPU image's entry point adds "worker"
    assert args.coordinator == "coordinator:50051" and args.datapool == "datapool:50052"
    assert args.tls_cert == "/tls/client.pem" and tls_files_mounted(args, deployments["fedstream-worker"])
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    coordinator_args = parse_cli(deployments["fedstream-coordinator"]["spec"]["template"]["spec"]
                                 ["containers"][0]["args"])
    assert coordinator_args.min_workers == deployments["fedstream-worker"]["spec"]["replicas"]
    assert services["coordinator"]["metadata"]["annotations"]["prometheus.io/port"] == \
        str(coordinator_args.prometheus_port)


@pytest.mark.parametrize("doc", k8s_documents(), ids=lambda d: f"{d['kind']}-{d['metadata']['name']}")
def test_every_manifest_has_the_basic_shape(doc):
    assert doc["apiVersion"] in {"apps/v1", "v1"} and doc["metadata"]["name"]


def test_compose_sites_keep_each_data_pool_on_its_own_sites_network():
    compose = yaml.safe_load((DEPLOY / "compose.sites.yaml").read_text())
    services = compose["services"]
    parsed = {name: parse_cli(svc["command"]) for name, svc in services.items()}
    pools = {args.site: name for name, args in parsed.items() if args.command == "datapool"}
    workers = {name: args for name, args in parsed.items() if args.command == "worker"}
    coordinator = parsed["coordinator"]
    assert coordinator.sites.split(",") == sorted(pools)
    assert coordinator.min_workers == len(workers)
    for site, pool in pools.items():
        assert services[pool]["networks"] == [site]  # nobody but the site's workers
        assert compose["networks"][site] == {"internal": True}
        assert parsed[pool].data_format == "arrays" and site in parsed[pool].data
    for name, args in workers.items():
        assert args.datapool == f"{pools[args.site]}:{listen_port(parsed[pools[args.site]])}"
        assert set(services[name]["networks"]) == {args.site, "federation"}
        assert args.coordinator == f"coordinator:{listen_port(coordinator)}"
    assert services["coordinator"]["networks"] == ["federation"]


def test_kubernetes_sites_agree_with_the_cli_and_fence_each_data_pool():
    docs = []
    for path in sorted((DEPLOY / "k8s" / "sites").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    by = lambda kind: [d for d in docs if d["kind"] == kind]  # noqa: E731
    (coordinator,) = [d for d in by("Deployment") if d["metadata"]["name"] == "fedstream-coordinator"]
    coordinator_args = parse_cli(coordinator["spec"]["template"]["spec"]["containers"][0]["args"])
    sites = coordinator_args.sites.split(",")
    assert sorted(d["metadata"]["name"] for d in by("Namespace")) == sorted(["fedstream", *sites])
    assert coordinator_args.auth_tokens and coordinator_args.mtls
    for site in sites:
        mine = {d["metadata"]["name"]: d for d in docs if d["metadata"].get("namespace") == site}
        pool = mine["fedstream-datapool"]["spec"]["template"]["spec"]
        pool_args = parse_cli(pool["containers"][0]["args"])
        assert pool_args.site == site and pool_args.mtls and tls_files_mounted(
            pool_args, mine["fedstream-datapool"])
        worker = mine["fedstream-worker"]["spec"]["template"]["spec"]["containers"][0]
        worker_args = parse_cli(["worker", *worker["args"]])
        assert worker_args.site == site and worker_args.datapool == "datapool:50052"
        assert worker_args.coordinator == "coordinator.fedstream.svc:50051"
        assert tls_files_mounted(worker_args, mine["fedstream-worker"])
        policy = mine["datapool-serves-its-site-only"]["spec"]
        pool_labels = mine["fedstream-datapool"]["spec"]["template"]["metadata"]["labels"]
        worker_labels = mine["fedstream-worker"]["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"] == pool_labels
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"} and policy["egress"] == []
        (rule,) = policy["ingress"]
        (source,) = rule["from"]
        assert source == {"podSelector": {"matchLabels": worker_labels}}  # this namespace only
        assert rule["ports"] == [{"protocol": "TCP", "port": listen_port(pool_args)}]
