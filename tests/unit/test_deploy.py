"""Deployment files: they parse, Kubernetes objects pass offline schema validation, the DaemonSet and
compose file use real CLI flags and a valid config, the dashboard's queries use contract metric names, and the
image is built by scripts/setup.sh. The helpers at the top are shared with
tests/kernel/test_prometheus_e2e.py."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.contract import CONTRACT_METRICS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
EXAMPLES = DEPLOY / "examples"
DASHBOARD = DEPLOY / "grafana" / "ipftrace-dashboard.json"
COMPOSE = EXAMPLES / "docker-compose.yaml"
PROMETHEUS_CONFIG = EXAMPLES / "prometheus.yml"

# The oldest Kubernetes minor still commonly run, and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.29.0", "1.37.0")

# Series Prometheus itself writes for every target.
PROMETHEUS_SERIES = frozenset({"up"})

# Capabilities the daemon may be given (each justified in daemonset.yaml); SYS_ADMIN must never be among them.
ALLOWED_CAPABILITIES = frozenset({"BPF", "PERFMON", "SYSLOG", "SYS_RESOURCE"})
# Host paths the DaemonSet must mount read-only (issue #5); /proc comes from hostPID.
REQUIRED_HOST_PATHS = frozenset({"/sys/kernel/btf", "/sys/kernel/tracing", "/sys/kernel/debug",
                                 "/lib/modules", "/usr/src"})


# ---- helpers (also used by the end-to-end test) ---------------------------------------------------------

def yaml_documents(path: Path) -> list[Any]:
    """Every non-empty YAML document in a file (multi-document aware)."""
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def deploy_files(*suffixes: str) -> list[Path]:
    """Files under deploy/ with one of these suffixes, sorted."""
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in suffixes)


def kubernetes_objects() -> list[tuple[Path, dict[str, Any]]]:
    """(file, object) for every Kubernetes API object under deploy/ (kustomizations excluded)."""
    found = []
    for path in deploy_files(".yaml", ".yml"):
        for doc in yaml_documents(path):
            if (isinstance(doc, dict) and isinstance(doc.get("apiVersion"), str) and "kind" in doc
                    and doc["kind"] != "Kustomization"):
                found.append((path, doc))
    return found


def load_dashboard() -> dict[str, Any]:
    """deploy/grafana/ipftrace-dashboard.json."""
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL expression) for every panel target."""
    return [(panel.get("title", ""), target["expr"])
            for panel in dashboard_panels(dashboard["panels"])
            for target in panel.get("targets", []) if target.get("expr")]


def dashboard_variables(dashboard: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Template variables by name."""
    return {var["name"]: var for var in dashboard["templating"]["list"]}


def variable_query(var: Mapping[str, Any]) -> str:
    """A query variable's query text (Grafana stores a string or {query: ...})."""
    query = var.get("query")
    return query["query"] if isinstance(query, Mapping) else str(query or var.get("definition", ""))


LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>[a-zA-Z_]\w*)\s*\)\s*$")


def parse_label_values(query: str) -> tuple[str | None, str]:
    """Grafana's label_values([selector,] label) -> (selector or None, label)."""
    match = LABEL_VALUES.match(query)
    if not match:
        raise ValueError(f"not a label_values() query: {query!r}")
    return match["selector"], match["label"]


def substitute(expr: str, values: Mapping[str, str], rate_interval: str = "15s",
               time_range: str = "5m") -> str:
    """The expression with Grafana variables ($x, ${x}, [[x]]) and built-ins replaced (unknown: KeyError)."""
    builtins = {"__rate_interval": rate_interval, "__interval": rate_interval, "__range": time_range}
    merged = {**builtins, **values}

    def value(match: re.Match[str]) -> str:
        name = match["a"] or match["b"] or match["c"]
        return merged[name]

    return re.sub(r"\$\{(?P<a>\w+)(?::\w+)?\}|\[\[(?P<b>\w+)\]\]|\$(?P<c>\w+)", value, expr)


def regex_alternation(values: list[str]) -> str:
    """What Grafana puts in `=~"..."` for selected values: regex-escaped in a PromQL string, joined by |."""
    escaped = [re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


PROMQL_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                             "or", "unless", "offset", "inf", "nan", "atan2"})


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, labels, keywords, durations or numbers)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)  # string literals
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # range / subquery durations
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()", text):
        name = match.group(1)
        if name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


def cli_flags(command: Any) -> dict[str, Any]:
    """Every option string of a click command -> its parameter."""
    return {opt: param for param in command.params for opt in (*param.opts, *param.secondary_opts)}


def check_args_against_cli(args: list[str], command: Any) -> list[str]:
    """Problems with a container's args for a click command: unknown flags, values outside a Choice."""
    import click

    flags = cli_flags(command)
    problems = []
    index = 0
    while index < len(args):
        arg = args[index]
        index += 1
        if not arg.startswith("-"):
            problems.append(f"{arg!r}: the daemon takes no positional arguments")
            continue
        name, sep, value = arg.partition("=")
        param = flags.get(name)
        if param is None:
            problems.append(f"{name}: not a flag of {command.name} (flags: {', '.join(sorted(flags))})")
            continue
        if getattr(param, "is_flag", False):
            continue
        if not sep:
            if index >= len(args):
                problems.append(f"{name}: value missing")
                break
            value = args[index]
            index += 1
        if isinstance(param.type, click.Choice) and value not in param.type.choices:
            problems.append(f"{name}={value}: not one of {', '.join(map(str, param.type.choices))}")
    return problems


def daemonset() -> dict[str, Any]:
    """The DaemonSet object of deploy/kubernetes/daemonset.yaml."""
    (obj,) = [doc for doc in yaml_documents(K8S / "daemonset.yaml") if doc["kind"] == "DaemonSet"]
    return obj


def exporter_container() -> dict[str, Any]:
    """The ipftrace-exporter container of the DaemonSet."""
    containers = daemonset()["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == "ipftrace-exporter"]
    return container


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag=v` or `--flag v` in an argument list."""
    for index, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
    return None


# ---- every file parses ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", deploy_files(".yaml", ".yml"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_under_deploy_parses(path: Path) -> None:
    docs = yaml_documents(path)
    assert docs, f"{path}: no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"


@pytest.mark.parametrize("path", deploy_files(".json"), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_json_file_under_deploy_parses(path: Path) -> None:
    assert isinstance(json.loads(path.read_text(encoding="utf-8")), dict)


def test_deploy_holds_the_files_issue_5_asks_for() -> None:
    wanted = ["kubernetes/" + name for name in (
        "kustomization.yaml", "namespace.yaml", "serviceaccount.yaml", "configmap.yaml", "daemonset.yaml",
        "service.yaml", "servicemonitor.yaml")]
    wanted += ["grafana/ipftrace-dashboard.json", "examples/prometheus.yml", "examples/docker-compose.yaml",
               "examples/jaeger/jaeger.yaml", "examples/otel-collector/config.yaml", "config.example.yaml"]
    for rel in wanted:
        assert (DEPLOY / rel).is_file(), f"deploy/{rel} is missing"
    assert (ROOT / "Dockerfile").is_file() and (ROOT / ".dockerignore").is_file()


# ---- Kubernetes objects validate offline -------------------------------------------------------------------

_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          r"(([0-9]+)s)?(([0-9]+)ms)?)$"}
_STRINGS = {"type": "array", "items": {"type": "string"}}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_RELABELINGS = {"type": "array", "items": {"type": "object", "additionalProperties": False, "properties": {
    "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                        "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep",
                        "lowercase", "Lowercase", "uppercase", "Uppercase", "keepequal", "KeepEqual",
                        "dropequal", "DropEqual"]},
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "separator": {"type": "string"}, "targetLabel": {"type": "string"}, "regex": {"type": "string"},
    "replacement": {"type": "string"}, "modulus": {"type": "integer", "minimum": 0}}}}
# The part of the ServiceMonitor CRD (monitoring.coreos.com/v1, prometheus-operator's
# monitoring.coreos.com_servicemonitors.yaml) that these manifests use; names, types, enums and patterns
# copied from it. kubernetes-validate ships no CRD schemas. A field the CRD has but this subset lacks fails
# here: add it from the CRD when the manifest starts using it.
SERVICEMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _STRING_MAP,
            "annotations": _STRING_MAP}},
        "spec": {"type": "object", "required": ["endpoints", "selector"], "additionalProperties": False,
                 "properties": {
            "jobLabel": {"type": "string"}, "targetLabels": _STRINGS, "podTargetLabels": _STRINGS,
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": _STRING_MAP,
                "matchExpressions": {"type": "array", "items": {
                    "type": "object", "required": ["key", "operator"], "additionalProperties": False,
                    "properties": {"key": {"type": "string"}, "operator": {"type": "string"},
                                   "values": _STRINGS}}}}},
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": _STRINGS}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "properties": {
                    "port": {"type": "string"},
                    "targetPort": {"anyOf": [{"type": "integer"}, {"type": "string"}]},
                    "path": {"type": "string"}, "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                    "interval": _DURATION, "scrapeTimeout": _DURATION, "honorLabels": {"type": "boolean"},
                    "relabelings": _RELABELINGS, "metricRelabelings": _RELABELINGS}}}}},
    },
}
CRD_SCHEMAS = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICEMONITOR_SCHEMA}


def validate_object(obj: dict[str, Any], version: str) -> None:
    """Strict offline validation: kubernetes-validate for built-in kinds, CRD_SCHEMAS for custom ones."""
    schema = CRD_SCHEMAS.get((obj["apiVersion"], obj["kind"]))
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(obj)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


def _object_cases() -> list[Any]:
    return [pytest.param(path, obj, version,
                         id=f"{path.relative_to(DEPLOY)}:{obj['kind']}/{obj['metadata']['name']}@{version}")
            for path, obj in kubernetes_objects() for version in K8S_VERSIONS]


@pytest.mark.parametrize(("path", "obj", "version"), _object_cases())
def test_every_kubernetes_object_passes_strict_schema_validation(path: Path, obj: dict[str, Any],
                                                                 version: str) -> None:
    try:
        validate_object(obj, version)
    except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as err:
        where = ".".join(str(p) for p in err.path)
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        pytest.fail(f"{path.relative_to(ROOT)}: {name}: {where}: {err.message}")


def test_kubernetes_objects_cover_every_kind_deployed() -> None:
    kinds = {obj["kind"] for path, obj in kubernetes_objects() if path.parent == K8S}
    assert kinds == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet", "Service", "ServiceMonitor",
                     "NetworkPolicy"}


def test_strict_validation_rejects_a_misspelt_field() -> None:
    broken = json.loads(json.dumps(daemonset()))
    broken["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_object(broken, K8S_VERSIONS[-1])
    (monitor,) = [obj for path, obj in kubernetes_objects() if obj["kind"] == "ServiceMonitor"]
    broken = json.loads(json.dumps(monitor))
    broken["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        validate_object(broken, K8S_VERSIONS[-1])
    broken["spec"]["endpoints"][0] = {"port": "metrics", "interval": "30 seconds"}
    with pytest.raises(jsonschema.ValidationError):
        validate_object(broken, K8S_VERSIONS[-1])


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("kustomization.yaml")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_kustomization_lists_existing_files_and_every_manifest_beside_it(path: Path) -> None:
    (kustomization,) = yaml_documents(path)
    listed = list(kustomization.get("resources", []))
    for generator in kustomization.get("configMapGenerator", []):
        listed += [entry.split("=", 1)[-1] for entry in generator.get("files", [])]
    for entry in listed:
        assert (path.parent / entry).is_file(), f"{path.relative_to(ROOT)} lists {entry}: no such file"
    manifests = {p.name for p in path.parent.glob("*.yaml")
                 if p.name != "kustomization.yaml" and any("kind" in d for d in yaml_documents(p))}
    assert manifests <= set(kustomization.get("resources", [])), f"not listed: {manifests - set(listed)}"
    namespace = kustomization.get("namespace")
    if namespace:
        for doc_path in manifests:
            for doc in yaml_documents(path.parent / doc_path):
                if doc["kind"] != "Namespace":
                    assert doc["metadata"].get("namespace", namespace) == namespace, doc_path


def test_image_tag_is_the_package_version() -> None:
    import ipftrace_exporter

    version = ipftrace_exporter.__version__
    (kustomization,) = yaml_documents(K8S / "kustomization.yaml")
    images = {image["name"]: image for image in kustomization["images"]}
    assert images["ipftrace-exporter"]["newTag"] == version
    assert exporter_container()["image"] == f"ipftrace-exporter:{version}"
    compose_image = yaml_documents(COMPOSE)[0]["services"]["ipftrace-exporter"]["image"]
    assert compose_image == f"ipftrace-exporter:{version}"
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert f'org.opencontainers.image.version="{version}"' in dockerfile


# ---- the DaemonSet: real flags, valid config, least privilege ----------------------------------------------

def test_daemonset_args_are_real_flags_of_the_exporter_cli() -> None:
    from ipftrace_exporter.cli import exporter_cli

    args = exporter_container()["args"]
    assert not exporter_container().get("command"), "the image's entrypoint is the daemon: set args only"
    assert check_args_against_cli(args, exporter_cli) == []


def test_compose_exporter_command_uses_real_flags_of_the_exporter_cli() -> None:
    from ipftrace_exporter.cli import exporter_cli

    command = yaml_documents(COMPOSE)[0]["services"]["ipftrace-exporter"]["command"]
    assert check_args_against_cli(command, exporter_cli) == []


def test_args_checker_reports_unknown_flags_and_bad_choices() -> None:
    import click

    @click.command()
    @click.option("--config")
    @click.option("--log-level", type=click.Choice(["info", "debug"]))
    @click.option("--check", is_flag=True)
    def command(config: str | None, log_level: str | None, check: bool) -> None:
        """Test double of a daemon command."""

    assert check_args_against_cli(["--config", "x", "--log-level=debug", "--check"], command) == []
    problems = check_args_against_cli(["--conf=x", "--log-level=loud", "extra"], command)
    assert len(problems) == 3 and problems[0].startswith("--conf:") and "loud" in problems[1]


def _configs() -> list[Any]:
    (configmap,) = yaml_documents(K8S / "configmap.yaml")
    return [pytest.param(text, f"deploy/kubernetes/configmap.yaml:{key}", id=f"configmap:{key}")
            for key, text in configmap["data"].items()] + [
        pytest.param((DEPLOY / "config.example.yaml").read_text(encoding="utf-8"),
                     "deploy/config.example.yaml", id="config.example.yaml")]


@pytest.mark.parametrize(("text", "source"), _configs())
def test_config_files_pass_the_daemons_config_validation(text: str, source: str) -> None:
    from ipftrace_exporter.config import parse_config

    config = parse_config(text, source)
    assert len(config.flows) >= 2


def test_configmap_is_the_file_the_daemonset_reads() -> None:
    (configmap,) = yaml_documents(K8S / "configmap.yaml")
    container = exporter_container()
    config_path = flag_value(container["args"], "--config")
    assert config_path is not None
    volumes = {v["name"]: v for v in daemonset()["spec"]["template"]["spec"]["volumes"]}
    mounts = [m for m in container["volumeMounts"]
              if config_path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1, f"no single volume mount holds {config_path}"
    assert volumes[mounts[0]["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
    assert Path(config_path).name in configmap["data"]


def test_configmap_samples_traces_and_sends_them_to_an_in_cluster_otlp_endpoint() -> None:
    (configmap,) = yaml_documents(K8S / "configmap.yaml")
    config = yaml.safe_load(configmap["data"]["config.yaml"])
    assert len(config["flows"]) >= 3 and all("name" in flow for flow in config["flows"])
    assert config["backend"] == "auto"
    assert 0 < config["traces"]["sample_ratio"] < 1
    otlp = config["traces"]["otlp"]
    assert otlp["protocol"] == "grpc"
    assert re.fullmatch(r"http://[a-z0-9-]+\.observability(\.svc(\.cluster\.local)?)?:4317", otlp["endpoint"])
    assert config["metrics"]["address"] == "0.0.0.0:9436"


def test_daemonset_runs_on_every_node_with_host_pids() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert {"operator": "Exists"} in spec["tolerations"]
    assert spec.get("automountServiceAccountToken") is False


def test_daemonset_uses_capabilities_not_privileged_mode() -> None:
    context = exporter_container()["securityContext"]
    assert not context.get("privileged", False)
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    added = set(context["capabilities"]["add"])
    assert {"BPF", "PERFMON"} <= added <= ALLOWED_CAPABILITIES, added
    text = (K8S / "daemonset.yaml").read_text(encoding="utf-8")
    for capability in added | {"SYS_ADMIN", "SYS_PTRACE"}:
        assert re.search(rf"#\s*{capability}:", text), f"no comment justifying {capability} (granted or not)"


def test_daemonset_mounts_host_paths_read_only_and_only_cache_and_tmp_writable() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    container = exporter_container()
    volumes = {v["name"]: v for v in spec["volumes"]}
    host_paths = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            assert mount.get("readOnly") is True, f"{mount['mountPath']} must be read-only"
            assert mount["mountPath"] == volume["hostPath"]["path"]
            host_paths[volume["hostPath"]["path"]] = mount
        elif not mount.get("readOnly"):
            assert "emptyDir" in volume, f"{mount['mountPath']}: writable, but not an emptyDir"
    assert set(host_paths) == REQUIRED_HOST_PATHS
    env = {e["name"]: e for e in container["env"]}
    cache = env["IPFTRACE_CACHE_DIR"]["value"]
    assert any(m["mountPath"] == cache and not m.get("readOnly") for m in container["volumeMounts"])


def test_daemonset_sets_node_name_service_name_probes_resources_and_grace_period() -> None:
    container = exporter_container()
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["OTEL_SERVICE_NAME"]["value"] == "ipftrace-exporter"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    (configmap,) = yaml_documents(K8S / "configmap.yaml")
    timeout = yaml.safe_load(configmap["data"]["config.yaml"])["traces"]["otlp"]["timeout"]
    grace = daemonset()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 2 * int(timeout.rstrip("s")), "room to detach probes and flush spans (OTLP timeout)"


def test_resources_cover_the_measured_footprint() -> None:
    """The memory request is at least the idle RSS bench/footprint.py measured, the limit at least its peak."""
    text = (ROOT / "bench" / "RESULTS.md").read_text(encoding="utf-8")
    section = text.split("## Footprint (Kubernetes requests and limits)", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| ") and "MiB" not in line]
    rss_max = max(float(row[4]) for row in rows)
    peak = float(re.search(r"peak over the whole run ([\d.]+) MiB", section).group(1))  # type: ignore[union-attr]
    resources = exporter_container()["resources"]

    def mebibytes(quantity: str) -> float:
        assert quantity.endswith("Mi"), quantity
        return float(quantity[:-2])

    assert mebibytes(resources["requests"]["memory"]) >= rss_max
    assert mebibytes(resources["limits"]["memory"]) >= 1.5 * peak


def test_network_policy_admits_only_the_metrics_port_and_lets_out_only_dns_and_otlp() -> None:
    (policy,) = yaml_documents(K8S / "networkpolicy.yaml")
    spec = policy["spec"]
    pod_labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert daemonset()["spec"]["template"]["spec"].get("hostNetwork") is False  # else a policy does not apply
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    (ingress,) = spec["ingress"]
    (port,) = [p for p in exporter_container()["ports"] if p["name"] == "metrics"]
    assert ingress["ports"] == [{"port": "metrics", "protocol": "TCP"}] and port["protocol"] == "TCP"
    egress_ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    (configmap,) = yaml_documents(K8S / "configmap.yaml")
    endpoint = yaml.safe_load(configmap["data"]["config.yaml"])["traces"]["otlp"]["endpoint"]
    host, otlp_port = endpoint.removeprefix("http://").removeprefix("https://").rsplit(":", 1)
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (int(otlp_port), "TCP"), (4318, "TCP")}
    (otlp_rule,) = [rule for rule in spec["egress"] if any(p["port"] == int(otlp_port) for p in rule["ports"])]
    namespace = host.split(".")[1]
    assert otlp_rule["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}]
    assert all(rule.get("to") for rule in spec["egress"])  # no rule opens egress to everywhere


def test_metrics_port_agrees_across_args_container_service_and_servicemonitor() -> None:
    container = exporter_container()
    address = flag_value(container["args"], "--metrics-address")
    assert address is not None
    (port,) = [p for p in container["ports"] if p["name"] == "metrics"]
    assert address.rsplit(":", 1)[1] == str(port["containerPort"]) == "9436"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("metrics", port["containerPort"])
    (service,) = yaml_documents(K8S / "service.yaml")
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in ("metrics", port["containerPort"])
    pod_labels = daemonset()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (monitor,) = yaml_documents(K8S / "servicemonitor.yaml")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service_port["name"]


def test_compose_exporter_has_the_daemonsets_privileges_and_mounts() -> None:
    service = yaml_documents(COMPOSE)[0]["services"]["ipftrace-exporter"]
    context = exporter_container()["securityContext"]
    assert service["pid"] == "host"
    assert service["cap_drop"] == ["ALL"]
    assert set(service["cap_add"]) == set(context["capabilities"]["add"])
    assert service.get("read_only") is True and "privileged" not in service
    binds = {v["source"]: v for v in service["volumes"] if isinstance(v, dict) and v.get("type") == "bind"}
    assert set(binds) == REQUIRED_HOST_PATHS
    assert all(v["read_only"] is True and v["source"] == v["target"] for v in binds.values())


# ---- the Grafana dashboard ---------------------------------------------------------------------------------

def test_dashboard_takes_datasource_node_and_flow_variables() -> None:
    variables = dashboard_variables(load_dashboard())
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "node", "flow"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        parse_label_values(variable_query(variables[name]))
    assert parse_label_values(variable_query(variables["node"]))[1] == "instance"
    assert "ipftrace_build_info" in variable_query(variables["node"])


def test_every_dashboard_panel_queries_through_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    panels = list(dashboard_panels(dashboard["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = set(dashboard_variables(dashboard))
    for panel in panels:
        for target in panel.get("targets", []):
            uids = (panel["datasource"]["uid"], target["datasource"]["uid"])
            assert uids == ("${datasource}", "${datasource}"), panel["title"]
            for name in re.findall(r"\$(?!__)(\w+)", target["expr"]):
                assert name in variables, f"{panel['title']}: ${name} is not a dashboard variable"


def test_dashboard_has_the_panels_issue_5_asks_for() -> None:
    dashboard = load_dashboard()
    by_metric: dict[str, list[str]] = {}
    for title, expr in dashboard_queries(dashboard):
        for name in promql_metric_names(expr):
            by_metric.setdefault(name, []).append(title)
    titles = {panel.get("title") for panel in dashboard_panels(dashboard["panels"])}
    assert {"Drops per function", "Drops by reason", "Hits per function", "Paths by outcome",
            "Events and lost events", "Exporter up", "Build info", "Probes",
            "Spans exported and dropped"} <= titles
    assert set(by_metric) == CONTRACT_METRICS | PROMETHEUS_SERIES, "every contract metric is charted"
    queries = dict(dashboard_queries(dashboard))
    assert "by (function)" in queries["Drops per function"] and "by (reason)" in queries["Drops by reason"]
    assert "by (function)" in queries["Hits per function"] and "by (outcome)" in queries["Paths by outcome"]


def test_dashboard_metric_names_are_in_the_metrics_contract() -> None:
    dashboard = load_dashboard()
    queries = dashboard_queries(dashboard) + [
        ("variable " + name, variable_query(var)) for name, var in dashboard_variables(dashboard).items()
        if var["type"] == "query"]
    for title, expr in queries:
        if expr.lstrip().startswith("label_values("):
            selector, _ = parse_label_values(expr)
            expr = selector or ""
        unknown = promql_metric_names(expr) - CONTRACT_METRICS - PROMETHEUS_SERIES
        assert not unknown, f"{title}: {sorted(unknown)} not in the metrics contract"


def test_promql_metric_names_finds_metrics_and_nothing_else() -> None:
    expr = ('topk(10, sum by (function, reason) (rate(ipftrace_skb_drops_total{flow=~"$flow", x="a{b}"}'
            '[$__rate_interval]))) / on(instance) group_left(version) ipftrace_build_info or vector(0)')
    assert promql_metric_names(expr) == {"ipftrace_skb_drops_total", "ipftrace_build_info"}
    assert promql_metric_names("sum(1 - up{job=~\"$job\"}) > bool 0") == {"up"}
    assert promql_metric_names("bogus_metric_total offset 5m") == {"bogus_metric_total"}


def test_substitute_replaces_variables_and_builtins() -> None:
    expr = 'rate(x{instance=~"$node", flow=~"${flow}", j="[[job]]"}[$__rate_interval]) [$__range]'
    assert substitute(expr, {"node": ".*", "flow": "a", "job": "j"}, "30s", "1h") == \
        'rate(x{instance=~".*", flow=~"a", j="j"}[30s]) [1h]'
    with pytest.raises(KeyError):
        substitute("x{a=~\"$nope\"}", {})
    assert regex_alternation(["127.0.0.1:9436"]) == r"127\\.0\\.0\\.1:9436"
    assert regex_alternation(["a", "b"]) == "(a|b)"


def test_contract_metrics_match_the_design_doc() -> None:
    candidates = (ROOT.parent / "shared" / "DESIGN.md", ROOT / "docs" / "DESIGN.md")
    design = next((p for p in candidates if p.is_file()), None)
    if design is None:
        pytest.skip("DESIGN.md is not beside the repository")
    section = design.read_text(encoding="utf-8").split("## Contract: metrics", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(ipftrace_\w+)`", section))
    assert names == CONTRACT_METRICS


# ---- examples: Prometheus, OpenTelemetry Collector, Grafana provisioning, Jaeger ---------------------------

def test_prometheus_example_scrapes_the_exporter_on_localhost() -> None:
    (config,) = yaml_documents(PROMETHEUS_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = [t for sc in jobs["ipftrace"]["static_configs"] for t in sc["targets"]]
    assert targets == ["localhost:9436"]


def test_prometheus_example_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_otel_collector_pipeline_uses_only_defined_components() -> None:
    (config,) = yaml_documents(EXAMPLES / "otel-collector" / "config.yaml")
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    traces = config["service"]["pipelines"]["traces"]
    for kind in ("receivers", "processors", "exporters"):
        for name in traces[kind]:
            assert name in config[kind], f"{kind}: {name} used but not defined"
    assert traces["receivers"] == ["otlp"]
    jaeger = [config["exporters"][name] for name in traces["exporters"] if name.split("/")[0] == "otlp_grpc"]
    assert jaeger and jaeger[0]["endpoint"] == "jaeger-collector.observability:4317"
    assert "memory_limiter" == traces["processors"][0], "memory_limiter goes first"


def test_jaeger_example_serves_the_endpoint_the_configmap_sends_to() -> None:
    (configmap,) = yaml_documents(K8S / "configmap.yaml")
    endpoint = yaml.safe_load(configmap["data"]["config.yaml"])["traces"]["otlp"]["endpoint"]
    host, port = endpoint.removeprefix("http://").split(":")
    name, namespace = host.split(".")[:2]
    services = {(d["metadata"]["name"], d["metadata"]["namespace"]): d
                for d in yaml_documents(EXAMPLES / "jaeger" / "jaeger.yaml") if d["kind"] == "Service"}
    assert int(port) in {p["port"] for p in services[(name, namespace)]["spec"]["ports"]}


def test_compose_provisions_grafana_with_the_dashboard_and_prometheus() -> None:
    services = yaml_documents(COMPOSE)[0]["services"]
    assert {"ipftrace-exporter", "jaeger", "prometheus", "grafana"} <= set(services)
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["grafana"]["volumes"])
    dashboards_dir = mounts["../grafana"]
    provisioning = EXAMPLES / "grafana" / "provisioning"
    (provider_file,) = yaml_documents(provisioning / "dashboards" / "dashboards.yaml")
    assert provider_file["providers"][0]["options"]["path"] == dashboards_dir
    assert (COMPOSE.parent / "grafana" / "provisioning").resolve() == (EXAMPLES / "grafana" / "provisioning")
    (datasources,) = yaml_documents(provisioning / "datasources" / "datasources.yaml")
    prometheus = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
    assert prometheus and prometheus[0]["isDefault"] is True
    prom_mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["prometheus"]["volumes"]
                       if v.startswith("./"))
    assert prom_mounts["./prometheus.yml"] == "/etc/prometheus/prometheus.yml"


# ---- the image --------------------------------------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_dockerfile_installs_through_the_readme_setup_script() -> None:
    instructions = _dockerfile_instructions()
    assert instructions[0] == ("FROM", "debian:bookworm-slim")
    runs = [arg for op, arg in instructions if op == "RUN"]
    setup = re.compile(r"IPFTRACE_VENV=/opt/ipftrace IPFTRACE_EXTRAS= scripts/setup\.sh\b")
    assert any(setup.match(run) for run in runs)
    assert ("ENTRYPOINT", '["ipftrace-exporter"]') in instructions
    volumes = [json.loads(arg) for op, arg in instructions if op == "VOLUME"]
    env = {e["name"]: e.get("value") for e in exporter_container()["env"]}
    assert [env["IPFTRACE_CACHE_DIR"]] in volumes
    assert (ROOT / "scripts" / "setup.sh").is_file()


def test_dockerfile_copies_the_sources_after_installing_dependencies() -> None:
    """Layer caching: a source edit must not re-run apt and pip. Before setup.sh only what it reads is copied."""
    instructions = _dockerfile_instructions()
    setup = next(i for i, (op, arg) in enumerate(instructions) if op == "RUN" and "scripts/setup.sh" in arg)
    copies = [(i, arg) for i, (op, arg) in enumerate(instructions) if op == "COPY"]
    before = {arg.split()[0] for i, arg in copies if i < setup}
    assert before == {"pyproject.toml", "scripts/setup.sh"}, before
    assert any(arg == ". ." and i > setup for i, arg in copies)
    checks = [arg for i, (op, arg) in enumerate(instructions) if op == "RUN" and i > setup]
    assert any("ipftrace-exporter --help" in arg for arg in checks)  # the real sources import


def test_dockerignore_keeps_what_setup_sh_installs() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")]

    def ignored(rel: str) -> bool:
        parts = rel.split("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
                   for pattern in patterns for prefix in prefixes)

    needed = ["pyproject.toml", "README.md", "scripts/setup.sh", "ipftrace_exporter/__init__.py",
              "ipftrace_exporter/default-config.yaml"]
    assert not [rel for rel in needed if ignored(rel)]
    assert ignored(".venv/bin/python") and ignored("tests/unit/test_deploy.py")


def test_deploy_readme_explains_every_capability_and_host_mount() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")  # its Deploy section
    for capability in exporter_container()["securityContext"]["capabilities"]["add"]:
        assert f"CAP_{capability}" in text, capability
    for path in REQUIRED_HOST_PATHS | {"/proc/config.gz", "/proc/kallsyms"}:
        assert path in text, path
    for needle in ("kubectl apply -k deploy/kubernetes", "16686", "ipftrace.outcome"):
        assert needle in text, needle
