"""Checks of deploy/: Prometheus config and alerts, the Grafana dashboard, the Kubernetes manifests.

(a) Every PromQL expression in the dashboard and the alert rules names only ``rlhf_*`` series that the
    services really export: the names come from the registries of serving.metrics, learner.metrics,
    reward_service.metrics and learner.canary_metrics (the live canary controller), so a renamed or removed
    metric fails here; each service's families are named ``rlhf_<service>_*``.
(b) ``promtool check config``, ``promtool check rules`` and ``promtool test rules`` pass, and every dashboard
    query parses as PromQL (promtool checks it as a recording rule).
(c) The Kubernetes YAML parses; every workload has probes and resource limits; serving's spool is on a
    persistent volume; the learner runs torchrun across its StatefulSet's pods; the canary controller is one
    replica.

Needs ``promtool`` (Debian package ``prometheus``, installed by scripts/install.sh). Runs in seconds.
"""

import importlib
import inspect
import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from proto.metrics import ServiceMetrics

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
K8S = ROOT / "deploy" / "k8s"
# Each service's metrics module, and the prefix of its families.
METRICS_MODULES = {"serving.metrics": "rlhf_serving_", "learner.metrics": "rlhf_learner_",
                   "reward_service.metrics": "rlhf_reward_", "learner.canary_metrics": "rlhf_canary_"}
JOBS = {"serving", "reward", "learner", "canary"}

# Series names each metric type exposes, from its family name (prometheus_client's text exposition).
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "unknown": ("",),
}
# Grafana's variables, replaced by a duration so a query parses as plain PromQL.
GRAFANA_VARS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")


def _registries() -> dict[str, CollectorRegistry]:
    """The registry of each metrics module's :class:`ServiceMetrics` (one per instance), by module name."""
    registries = {}
    for name in METRICS_MODULES:
        module = importlib.import_module(name)
        (cls,) = [attr for attr in vars(module).values() if inspect.isclass(attr)
                  and issubclass(attr, ServiceMetrics) and attr.__module__ == module.__name__]
        registries[name] = cls().registry
    return registries


@cache
def exported() -> dict[str, str]:
    """Every ``rlhf_*`` series name the services expose, mapped to its family's type."""
    names: dict[str, str] = {}
    for registry in _registries().values():
        for family in registry.collect():
            if not family.name.startswith("rlhf_"):
                continue
            for suffix in SUFFIXES.get(family.type, ("",)):
                names[family.name + suffix] = family.type
            for sample in family.samples:  # labelled metrics have samples only once a child exists
                names[sample.name] = family.type
    return names


def _strip_strings(expr: str) -> str:
    """``expr`` without its string literals (label values such as ``endpoint="/v1/..."``)."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def referenced(expr: str) -> set[str]:
    """The ``rlhf_*`` metric names a PromQL expression selects."""
    return set(re.findall(r"(?<![\w:])rlhf_[A-Za-z0-9_:]*", _strip_strings(expr)))


def _explain(name: str) -> str:
    """Why ``name`` is not exported, with the family's real series names when the family exists."""
    names = exported()
    for suffix in ("_bucket", "_count", "_sum", "_created", "_total", "_info", "_gcount", "_gsum", ""):
        if suffix and not name.endswith(suffix):
            continue
        base = name[: len(name) - len(suffix)] if suffix else name
        for kind, suffixes in SUFFIXES.items():
            family = [base + s for s in suffixes]
            if any(n in names and names[n] == kind for n in family):
                real = ", ".join(sorted(n for n in family if n in names))
                return f"{name}: {base} is a {kind}; it exports {real}"
    return f"{name}: no such metric in {', '.join(METRICS_MODULES)}"


def _walk_exprs(node, where: str = ""):
    """(location, expr) of every ``expr`` string in a Grafana dashboard JSON tree."""
    if isinstance(node, dict):
        title = node.get("title") or node.get("name") or where
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield f"{title} [{node.get('refId', '')}]", value
            else:
                yield from _walk_exprs(value, title)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_exprs(item, where)


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[tuple[str, str]]:
    return list(_walk_exprs(dashboard()))


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail("promtool is not installed: run scripts/install.sh (it installs Debian's `prometheus` "
                    "package, which provides /usr/bin/promtool), or `apt-get install prometheus`")
    return path


def run_promtool(*args: str, cwd: Path = PROMETHEUS) -> None:
    result = subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


# --- (a) queries name only exported metrics ------------------------------------------------------------


def test_services_export_metrics():
    names = exported()
    for prefix in ("rlhf_serving_requests_total", "rlhf_learner_", "rlhf_reward_", "rlhf_canary_"):
        assert any(n.startswith(prefix) for n in names), f"no {prefix}* metric in {list(METRICS_MODULES)}"


def test_every_family_is_named_after_its_service():
    for module, registry in _registries().items():
        wrong = [f.name for f in registry.collect() if not f.name.startswith(METRICS_MODULES[module])]
        assert not wrong, f"{module} exports {wrong}: its families are named {METRICS_MODULES[module]}*"


def test_dashboard_queries_name_exported_metrics():
    exprs = dashboard_exprs()
    assert len(exprs) >= 20, "the dashboard has fewer queries than expected"
    missing = sorted({f"{where}: {_explain(n)}" for where, expr in exprs for n in referenced(expr)
                      if n not in exported()})
    assert not missing, "dashboard queries name metrics the services do not export:\n" + "\n".join(missing)


def test_alert_expressions_name_exported_metrics():
    missing = sorted({f"{rule['alert']}: {_explain(n)}" for rule in alert_rules()
                      for n in referenced(rule["expr"]) if n not in exported()})
    assert not missing, "alert rules name metrics the services do not export:\n" + "\n".join(missing)


def test_reference_parser_handles_suffixes_and_strings():
    expr = ('sum by (le) (rate(rlhf_serving_request_latency_seconds_bucket{endpoint="/rlhf_fake"}[5m])) '
            "/ rlhf_learner_kl_coef and rlhf_serving_feedback_total")
    assert referenced(expr) == {"rlhf_serving_request_latency_seconds_bucket", "rlhf_learner_kl_coef",
                                "rlhf_serving_feedback_total"}
    names = exported()
    assert "rlhf_serving_request_latency_seconds_bucket" in names
    assert "rlhf_serving_request_latency_seconds" not in names
    assert "rlhf_serving_spool_depth" in names and "rlhf_serving_spool_depth_total" not in names
    assert "rlhf_learner_versions_published_total" in names  # Counter("..._published") exposes _total
    assert "is a histogram" in _explain("rlhf_serving_request_latency_seconds_total")


def test_dashboard_covers_the_loop():
    used = {n for _, expr in dashboard_exprs() for n in referenced(expr)}
    wanted = {
        "rlhf_learner_reward_mean", "rlhf_reward_score_bucket", "rlhf_learner_kl_to_reference",
        "rlhf_learner_kl_coef", "rlhf_serving_feedback_total", "rlhf_serving_policy_version",
        "rlhf_serving_swap_duration_seconds_count", "rlhf_serving_generation_pause_seconds_bucket",
        "rlhf_serving_request_latency_seconds_bucket", "rlhf_serving_time_to_first_token_seconds_bucket",
        "rlhf_serving_spool_depth",
        "rlhf_serving_produce_errors_total", "rlhf_reward_heldout_accuracy", "rlhf_reward_heldout_auc",
        "rlhf_learner_policy_loss", "rlhf_learner_value_loss", "rlhf_learner_entropy",
        "rlhf_learner_clip_fraction", "rlhf_learner_approx_kl", "rlhf_learner_explained_variance",
        "rlhf_learner_consumer_lag", "rlhf_learner_versions_published_total",
        "rlhf_learner_versions_rejected_total",
        "rlhf_canary_candidate_version", "rlhf_canary_incumbent_version", "rlhf_canary_share",
        "rlhf_canary_votes", "rlhf_canary_thumbs_up", "rlhf_canary_log_likelihood_ratio",
        "rlhf_canary_promote_bound", "rlhf_canary_roll_back_bound", "rlhf_canary_decisions_total",
        "rlhf_canary_paused",
    }
    assert not wanted - used, f"dashboard lacks panels on {sorted(wanted - used)}"


# --- dashboard structure ---------------------------------------------------------------------------------


def test_dashboard_structure():
    d = dashboard()
    assert d["schemaVersion"] >= 36
    variables = {v["name"]: v for v in d["templating"]["list"]}
    ds = [v for v in variables.values() if v["type"] == "datasource"]
    assert ds and ds[0]["query"] == "prometheus", "needs a Prometheus datasource variable"
    uid = "${%s}" % ds[0]["name"]
    panels = d["panels"] + [p for row in d["panels"] for p in row.get("panels", [])]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == uid, f"panel {p['title']!r} does not use the datasource variable"
        assert p.get("targets"), f"panel {p['title']!r} has no query"
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"panel {p['title']!r} overflows the grid"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid and t["expr"].strip()


# --- (b) promtool --------------------------------------------------------------------------------------


def test_promtool_check_config():
    run_promtool("check", "config", "prometheus.yml")


def test_promtool_check_rules():
    run_promtool("check", "rules", "alerts.yml")


def test_promtool_test_rules():
    run_promtool("test", "rules", "alerts_test.yml")


def test_dashboard_queries_parse_as_promql(tmp_path):
    """Each dashboard query, with Grafana's $__ variables replaced, checked by promtool as a rule."""
    rules = [{"record": f"dashboard:query_{i}", "expr": GRAFANA_VARS.sub("5m", expr)}
             for i, (_, expr) in enumerate(dashboard_exprs())]
    unknown = [r["expr"] for r in rules if "$" in r["expr"]]
    assert not unknown, f"queries use a Grafana variable this test does not know: {unknown}"
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run_promtool("check", "rules", str(path), cwd=tmp_path)


def test_alert_rules_are_documented():
    rules = alert_rules()
    names = {r["alert"] for r in rules}
    for wanted in ("LearnerKLOverBudget", "RewardMeanDrop", "ThumbsUpRateDrop", "LearnerConsumerLagHigh",
                   "ServingSpoolNotDraining", "NoPromotionForLong", "ServiceDown", "CanaryRolledBack"):
        assert wanted in names
    for r in rules:
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert r["annotations"]["summary"] and len(r["annotations"]["description"]) > 80, r["alert"]
    tested = set(re.findall(r"alertname:\s*(\w+)", (PROMETHEUS / "alerts_test.yml").read_text()))
    assert len(tested & names) >= 2, "alerts_test.yml must unit-test at least two rules"


def test_scrape_targets_match_service_ports():
    from learner.canary_controller import Settings as CanarySettings
    from learner.settings import Settings as LearnerSettings
    from reward_service.settings import Settings as RewardSettings
    from serving.settings import Settings as ServingSettings

    ports = {"serving": ServingSettings.model_fields["port"].default,
             "reward": RewardSettings.model_fields["port"].default,
             "learner": LearnerSettings.model_fields["metrics_port"].default,
             "canary": CanarySettings.model_fields["metrics_port"].default}
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == JOBS
    for name, job in jobs.items():
        targets = [t for sc in job["static_configs"] for t in sc["targets"]]
        assert targets == [f"127.0.0.1:{ports[name]}"], \
            f"job {name} scrapes {targets}, the service listens on {ports[name]}"
        assert job["scrape_interval"] == "5s"
    assert config["rule_files"] == ["alerts.yml"]


# --- (c) Kubernetes manifests --------------------------------------------------------------------------


def k8s_objects() -> list[dict]:
    objects = []
    for path in sorted(K8S.glob("*.y*ml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return objects


WORKLOADS = ("Deployment", "StatefulSet")


def test_k8s_manifests_parse_and_workloads_are_complete():
    objects = k8s_objects()
    by_kind: dict[str, dict[str, dict]] = {}
    for o in objects:
        by_kind.setdefault(o["kind"], {})[o.get("metadata", {}).get("name")] = o
    workloads = {name: w for kind in WORKLOADS for name, w in by_kind.get(kind, {}).items()}
    assert {"rlhf-serving", "rlhf-reward", "rlhf-learner", "rlhf-canary"} <= set(workloads)
    config_maps = by_kind.get("ConfigMap", {})
    assert config_maps, "no ConfigMap"
    for name, d in workloads.items():
        pod = d["spec"]["template"]
        assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true", name
        selector = d["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items(), f"{name}: selector misses its pods"
        for c in pod["spec"]["containers"]:
            where = f"{name}/{c['name']}"
            assert c.get("readinessProbe") and c.get("livenessProbe"), f"{where}: needs both probes"
            limits = c.get("resources", {}).get("limits", {})
            assert "cpu" in limits and "memory" in limits, f"{where}: needs cpu and memory limits"
            assert c.get("resources", {}).get("requests"), f"{where}: needs resource requests"
            env = {e["name"]: e for e in c.get("env", [])}
            kafka = env["RLHF_KAFKA_BOOTSTRAP_SERVERS"]["valueFrom"]["configMapKeyRef"]
            assert kafka["name"] in config_maps and kafka["key"] in config_maps[kafka["name"]]["data"], where
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            if name != "rlhf-canary":  # Kafka only: no state, no volume
                assert mounts.get("shared") == "/data", f"{where}: the shared volume must be at /data"
    for name in ("rlhf-serving", "rlhf-learner"):
        limits = workloads[name]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" in limits, f"{name} must request a GPU"
    serving = workloads["rlhf-serving"]["spec"]["template"]["spec"]
    container = serving["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["RLHF_SERVING_ADMIN_TOKEN"]["valueFrom"]
    assert "secretKeyRef" in env["RLHF_SERVING_SECRET"]["valueFrom"]  # the same in every replica
    keys_dir = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["api-keys"]
    assert env["RLHF_SERVING_API_KEYS_FILE"]["value"].startswith(keys_dir + "/")
    assert {v["name"]: v for v in serving["volumes"]}["api-keys"]["secret"]["secretName"] == "rlhf-api-keys"
    # The learner and serving share the checkpoint volume: a ReadWriteMany claim at the same path.
    claims = {v["persistentVolumeClaim"]["claimName"]
              for d in (workloads["rlhf-serving"], workloads["rlhf-learner"])
              for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == "shared"}
    assert len(claims) == 1
    pvc = by_kind["PersistentVolumeClaim"][claims.pop()]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    state_dir = config_maps["rlhf-config"]["data"]["RLHF_STATE_DIR"]
    assert state_dir == "/data"
    # Services select some workload's pods.
    for name, svc in by_kind.get("Service", {}).items():
        pods = [d for d in workloads.values()
                if svc["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pods, f"Service {name} selects no workload's pods"
    assert {"rlhf-serving", "rlhf-reward"} <= set(by_kind.get("Service", {}))


def test_serving_spool_is_on_a_persistent_volume():
    """An emptyDir spool loses accepted events when a pod is deleted during a broker outage."""
    serving = {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == "StatefulSet"}["rlhf-serving"]
    container = serving["spec"]["template"]["spec"]["containers"][0]
    data_dir = {e["name"]: e.get("value") for e in container["env"]}["RLHF_SERVING_DATA_DIR"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == data_dir)
    templates = {t["metadata"]["name"]: t for t in serving["spec"]["volumeClaimTemplates"]}
    assert mount["name"] in templates, "the spool must come from a volumeClaimTemplate"
    assert not [v for v in serving["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert templates[mount["name"]]["spec"]["resources"]["requests"]["storage"]


def test_learner_runs_torchrun_across_its_pods():
    objects = k8s_objects()
    learner = next(o for o in objects if o["kind"] == "StatefulSet" and o["metadata"]["name"] == "rlhf-learner")
    spec, pod = learner["spec"], learner["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container["command"]
    assert command[0] == "torchrun" and command[-3:] == ["-m", "learner.cli", "ppo"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)
    env = {e["name"]: e.get("value") for e in container["env"]}
    # --nnodes and --nproc-per-node come from env vars that must match the replicas and the GPU request.
    assert flags["nnodes"] == "$(RLHF_LEARNER_NODES)" and int(env["RLHF_LEARNER_NODES"]) == spec["replicas"]
    assert flags["nproc-per-node"] == "$(RLHF_LEARNER_GPUS_PER_POD)"
    assert int(env["RLHF_LEARNER_GPUS_PER_POD"]) == container["resources"]["limits"]["nvidia.com/gpu"]
    assert flags["rdzv-backend"] == "c10d" and "max-restarts" in flags
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1", "restarts need a fresh rendezvous store"
    # The rendezvous endpoint is pod 0's name under the set's headless service, published before readiness.
    host, port = flags["rdzv-endpoint"].rsplit(":", 1)
    assert host == f"{learner['metadata']['name']}-0.{spec['serviceName']}"
    service = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == spec["serviceName"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert spec["podManagementPolicy"] == "Parallel"


def test_one_canary_controller():
    """Two controllers would both write each decision (learner/canary_controller.py): one replica, and no
    rolling update that runs an old and a new pod side by side."""
    canary = next(o for o in k8s_objects() if o["kind"] == "Deployment" and o["metadata"]["name"] == "rlhf-canary")
    assert canary["spec"]["replicas"] == 1 and canary["spec"]["strategy"]["type"] == "Recreate"
    container = canary["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    port = int(env["RLHF_CANARY_METRICS_PORT"])
    assert env["RLHF_CANARY_METRICS_HOST"] == "0.0.0.0"
    assert {p["containerPort"] for p in container["ports"]} == {port}
    assert canary["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_dockerfile_installs_gpu_extra():
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert '".[gpu]"' in text
