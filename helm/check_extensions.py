"""Checks the chart's extension points in two renders (helm/check.sh makes them):

    python helm/check_extensions.py DEFAULTS.yaml EXTENDED.yaml

DEFAULTS is `helm template` with the default values: every Deployment spreads over zones and nodes, its
PodDisruptionBudget lets unready pods be evicted (a broker outage never blocks a drain), no NetworkPolicy,
the image by tag. EXTENDED is rendered with the values of EXTENDED_VALUES below: the image pinned by digest,
the salesforce group's own volumes, mounts, init and sidecar containers (and only that group's), the
router's own spread constraints, a NetworkPolicy with PostgreSQL and an extra egress rule, and alert
thresholds from values in the PrometheusRule.
"""

import sys

import yaml

DIGEST = "sha256:" + "ab" * 32

# helm/check.sh renders the chart with these values (`--values` prints them as YAML for `helm -f`).
EXTENDED_VALUES = {
    "image": {"digest": DIGEST},
    "workers": [
        {"name": "general", "connectors": ["http", "webhook", "mailchimp", "braze"]},
        {
            "name": "salesforce",
            "connectors": ["salesforce"],
            "replicaCount": 1,
            "concurrency": 32,
            "extraVolumes": [{"name": "private-ca", "configMap": {"name": "private-ca"}}],
            "extraVolumeMounts": [{"name": "private-ca", "mountPath": "/etc/ssl/private-ca", "readOnly": True}],
            "initContainers": [{"name": "wait", "image": "busybox:1.36", "command": ["true"]}],
            "extraContainers": [{"name": "proxy", "image": "envoyproxy/envoy:v1.31.0"}],
        },
    ],
    "router": {
        "topologySpreadConstraints": [
            {
                "maxSkew": 2,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "router"}},
            }
        ],
        "podDisruptionBudget": {"unhealthyPodEvictionPolicy": "IfHealthyBudget"},
    },
    "networkPolicy": {
        "enabled": True,
        "postgres": {"enabled": True},
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "extraEgress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 3128}]}],
    },
    "prometheusRule": {
        "enabled": True,
        "alerts": {"SwitchyardDeliveryLatencyHigh": {"threshold": 123, "for": "7m"}},
        "targetSelector": 'job="custom"',
        "runbookBaseUrl": "https://runbooks.example.org/switchyard/",
    },
}

# Values the schema must refuse: (--set argument, what the error names).
REFUSED = [
    ("router.replicaCount=abc", "router.replicaCount"),
    ("image.pullPolicy=Sometimes", "image.pullPolicy"),
    ("image.digest=latest", "image.digest"),
    ("workers[0].connectors[0]=ftp", "connectors"),
    ("router.podDisruptionBudget.unhealthyPodEvictionPolicy=Never", "unhealthyPodEvictionPolicy"),
    ("networkPolicy.broker.ports[0]=amqp", "networkPolicy.broker.ports"),
    ("prometheusRule.alerts.SwitchyardAbsent.for=soon", "SwitchyardAbsent.for"),
    ("metrics.port=99999", "metrics.port"),
    ("routr.replicaCount=2", "routr"),
]


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


class Checks:
    def __init__(self):
        self.failures = []

    def expect(self, ok, what):
        if not ok:
            self.failures.append(what)


def check_defaults(docs, c):
    deployments = by_kind(docs, "Deployment")
    c.expect(len(deployments) >= 2, f"defaults: only {len(deployments)} Deployments")
    for name, d in deployments.items():
        pod = d["spec"]["template"]
        spread = pod["spec"].get("topologySpreadConstraints", [])
        keys = [t["topologyKey"] for t in spread]
        c.expect(keys == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"], f"{name}: default spread {keys}")
        for t in spread:
            selector = t["labelSelector"]["matchLabels"]
            c.expect(
                all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items()),
                f"{name}: the spread selector {selector} does not select its own pods",
            )
            c.expect(t["whenUnsatisfiable"] == "ScheduleAnyway", f"{name}: spread must not block scheduling")
        image = pod["spec"]["containers"][0]["image"]
        c.expect(image == "switchyard:0.1.0", f"{name}: image {image}")
        c.expect("initContainers" not in pod["spec"], f"{name}: init containers by default")
        c.expect(len(pod["spec"]["containers"]) == 1, f"{name}: extra containers by default")
    for name, pdb in by_kind(docs, "PodDisruptionBudget").items():
        c.expect(pdb["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", f"{name}: PDB eviction policy")
    c.expect(not by_kind(docs, "NetworkPolicy"), "defaults: a NetworkPolicy")


def check_extended(docs, c):
    deployments = by_kind(docs, "Deployment")
    router = deployments["switchyard-router"]["spec"]["template"]["spec"]
    salesforce = deployments["switchyard-worker-salesforce"]["spec"]["template"]["spec"]
    general = deployments["switchyard-worker-general"]["spec"]["template"]["spec"]
    for name, d in deployments.items():
        image = d["spec"]["template"]["spec"]["containers"][0]["image"]
        c.expect(image == f"switchyard:0.1.0@{DIGEST}", f"{name}: image {image} not pinned by digest")
    c.expect([x["name"] for x in salesforce.get("initContainers", [])] == ["wait"], "salesforce: init container")
    c.expect([x["name"] for x in salesforce["containers"]] == ["switchyard", "proxy"], "salesforce: sidecar")
    c.expect("private-ca" in [v["name"] for v in salesforce["volumes"]], "salesforce: extra volume")
    mounts = {m["name"]: m["mountPath"] for m in salesforce["containers"][0]["volumeMounts"]}
    c.expect(mounts.get("private-ca") == "/etc/ssl/private-ca", f"salesforce: extra mount {mounts}")
    for name, spec in (("router", router), ("general", general)):
        c.expect("initContainers" not in spec and len(spec["containers"]) == 1, f"{name}: got the salesforce group's extras")
        c.expect("private-ca" not in [v["name"] for v in spec["volumes"]], f"{name}: got the salesforce group's volume")
    spread = router["topologySpreadConstraints"]
    c.expect(len(spread) == 1 and spread[0]["maxSkew"] == 2, f"router: its own spread replaces the default: {spread}")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    c.expect(pdbs["switchyard-router"]["spec"].get("unhealthyPodEvictionPolicy") == "IfHealthyBudget", "router PDB policy")
    policies = by_kind(docs, "NetworkPolicy")
    c.expect(len(policies) == 1, f"NetworkPolicies: {list(policies)}")
    for policy in policies.values():
        spec = policy["spec"]
        c.expect(spec["policyTypes"] == ["Ingress", "Egress"], "NetworkPolicy types")
        c.expect(spec["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}], "ingress: the metrics port only")
        c.expect("from" in spec["ingress"][0], "ingress: metricsFrom")
        ports = [p["port"] for rule in spec["egress"] for p in rule.get("ports", [])]
        for port in (53, 5672, 5671, 5432, 443, 3128):
            c.expect(port in ports, f"egress: no rule for port {port} ({ports})")
        public = [r for r in spec["egress"] if any("ipBlock" in t for t in r.get("to", [])) and {"port": 443, "protocol": "TCP"} in r["ports"]]
        c.expect(public and "169.254.0.0/16" in public[0]["to"][0]["ipBlock"]["except"], "egress 443: cloud metadata excluded")
        selector = spec["podSelector"]["matchLabels"]
        for name, d in deployments.items():
            labels = d["spec"]["template"]["metadata"]["labels"]
            c.expect(all(labels.get(k) == v for k, v in selector.items()), f"NetworkPolicy does not select {name}")
    rules = by_kind(docs, "PrometheusRule")
    c.expect(len(rules) == 1, "PrometheusRule")
    for rule in rules.values():
        alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
        latency = alerts["SwitchyardDeliveryLatencyHigh"]
        c.expect(latency["expr"].rstrip().endswith("> 123"), f"threshold from values: {latency['expr']}")
        c.expect(latency["for"] == "7m", f"for from values: {latency['for']}")
        c.expect('up{job="custom"}' in alerts["SwitchyardTargetDown"]["expr"], "targetSelector from values")
        for name, r in alerts.items():
            url = r["annotations"]["runbook_url"]
            c.expect(url == f"https://runbooks.example.org/switchyard/alerts.md#{name.lower()}", f"{name}: {url}")
            c.expect("@{" not in str(r), f"{name}: a placeholder left")


def main():
    if sys.argv[1:] == ["--values"]:
        print(yaml.safe_dump(EXTENDED_VALUES, sort_keys=False))
        return
    if sys.argv[1:] == ["--refused"]:
        print("\n".join(f"{arg}\t{says or ''}" for arg, says in REFUSED))
        return
    defaults, extended = sys.argv[1:]
    c = Checks()
    check_defaults(load(defaults), c)
    check_extended(load(extended), c)
    for failure in c.failures:
        print(f"check_extensions.py: {failure}", file=sys.stderr)
    if c.failures:
        sys.exit(1)
    print("check_extensions.py: spread, PDB eviction policy, digest, per-group volumes and containers, "
          "NetworkPolicy and alert values render as set")


if __name__ == "__main__":
    main()
