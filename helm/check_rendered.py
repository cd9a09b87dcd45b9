"""Checks what each Deployment of a rendered chart would run (helm/check.sh runs it).

For every Deployment of `helm template` output it lays the mounted ConfigMaps out under a temporary
root, points the absolute paths of the arguments, the environment and switchyard.yaml at that
root, and runs `switchyard validate` with exactly the container's arguments and environment. It
also checks the role, the worker groups' connectors, and that the probes and the metrics port
agree with the configuration (SPEC §4, §7).

Usage: check_rendered.py RENDERED.yaml SWITCHYARD_BINARY
"""

import os
import re
import subprocess
import sys
import tempfile

import yaml

CONNECTORS = {"http", "webhook", "salesforce", "mailchimp", "braze"}
# What the AMQP URL Secret would hold; validate does not connect.
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
# What the run-history Secret would hold (only its shape matters: `validate` does not connect).
HISTORY_URL = "postgres://switchyard:secret@postgres:5432/switchyard"


class Problem(Exception):
    pass


def lay_out(deployment, container, configmaps, root):
    """Writes the container's mounted ConfigMaps under root; returns the mount paths."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    mounts = []
    for mount in container.get("volumeMounts", []):
        volume = volumes.get(mount["name"])
        if volume is None:
            raise Problem(f"volumeMount {mount['name']} has no volume")
        target = root + mount["mountPath"]
        mounts.append(mount["mountPath"])
        if "configMap" not in volume:
            os.makedirs(target, exist_ok=True)
            continue
        name = volume["configMap"]["name"]
        data = configmaps.get(name)
        if data is None:
            raise Problem(f"volume {mount['name']} mounts ConfigMap {name}, which the chart does not render")
        if "subPath" in mount:
            files = {"": data[mount["subPath"]]}
        else:
            files = data
        os.makedirs(target if "subPath" not in mount else os.path.dirname(target), exist_ok=True)
        for key, content in files.items():
            with open(os.path.join(target, key) if key else target, "w", encoding="utf-8") as f:
                f.write(content)
    return mounts


def remapper(mounts, root):
    """Prefixes every mount path in a text with root, in one pass (root may itself lie under one)."""
    ordered = sorted(mounts, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(path) for path in ordered)) if ordered else None

    def remap(text):
        return pattern.sub(lambda m: root + m.group(0), text) if pattern else text

    return remap


def expand(value, env):
    """Kubernetes' $(NAME) references to variables defined earlier in the list."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def environment(container, remap):
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for entry in container.get("env", []):
        secret = "secretKeyRef" in entry.get("valueFrom", {})
        if "value" in entry:
            env[entry["name"]] = remap(expand(str(entry["value"]), env))
        elif entry["name"] == "SWITCHYARD__AMQP__URL" and secret:
            env[entry["name"]] = AMQP_URL
        elif entry["name"].startswith("SWITCHYARD_AMQP_NODE_") and secret:
            # One cluster node's URL (amqp.urlKeys), each on its own port.
            node = int(entry["name"].rsplit("_", 1)[1])
            env[entry["name"]] = f"amqp://guest:guest@127.0.0.1:{5672 + node}/%2f"
        elif entry["name"] == "SWITCHYARD__HISTORY__URL" and "secretKeyRef" in entry.get("valueFrom", {}):
            env[entry["name"]] = HISTORY_URL
        else:
            raise Problem(f"environment variable {entry['name']} comes from {entry.get('valueFrom')}, which this check cannot stand in for")
    return env


def option(args, name):
    if name in args and args.index(name) + 1 < len(args):
        return args[args.index(name) + 1]
    return None


def check_probes(container, config):
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    listen = str(config.get("metrics", {}).get("listen", ""))
    if "metrics" not in ports:
        raise Problem("no container port named metrics")
    if not listen.endswith(f":{ports['metrics']}"):
        raise Problem(f"metrics.listen {listen!r} is not the metrics port {ports['metrics']}")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path:
            raise Problem(f"{probe} asks {get.get('path')!r}, not {path}")
        if get.get("port") not in ("metrics", ports["metrics"]):
            raise Problem(f"{probe} asks port {get.get('port')!r}, not the metrics port")


def check(deployment, configmaps, binary):
    name = deployment["metadata"]["name"]
    containers = deployment["spec"]["template"]["spec"]["containers"]
    container = next((c for c in containers if c["name"] == "switchyard"), None)
    if container is None:
        raise Problem("no container named switchyard")
    args = container.get("args", [])
    if args[:1] != ["run"]:
        raise Problem(f"runs {args!r}, not switchyard run")
    role = option(args, "--role")
    if role not in ("router", "worker"):
        raise Problem(f"--role is {role!r}: the chart runs the router and the workers apart")
    with tempfile.TemporaryDirectory(prefix="switchyard-chart-") as root:
        mounts = lay_out(deployment, container, configmaps, root)
        remap = remapper(mounts, root)
        config_path = remap(option(args, "--config") or "config/switchyard.yaml")
        if not os.path.isfile(config_path):
            raise Problem(f"--config {option(args, '--config')} is not a mounted file")
        with open(config_path, encoding="utf-8") as f:
            text = f.read()
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(remap(text))
        config = yaml.safe_load(text) or {}
        check_probes(container, config)
        env = environment(container, remap)
        nodes = [key for key in env if key.startswith("SWITCHYARD_AMQP_NODE_")]
        url = env.get("SWITCHYARD__AMQP__URL", "")
        if "$(" in url:
            raise Problem(f"SWITCHYARD__AMQP__URL refers to a variable not defined before it: {url}")
        if nodes and len(url.split(",")) != len(nodes):
            raise Problem(f"SWITCHYARD__AMQP__URL lists {len(url.split(','))} nodes, not the {len(nodes)} of amqp.urlKeys")
        connectors = set()
        if role == "worker":
            listed = env.get("SWITCHYARD__WORKER__CONNECTORS", "")
            connectors = {c.strip() for c in listed.split(",") if c.strip()}
            if not connectors:
                raise Problem("a worker without SWITCHYARD__WORKER__CONNECTORS")
            if connectors - CONNECTORS:
                raise Problem(f"unknown connectors {sorted(connectors - CONNECTORS)}")
        ran = subprocess.run(
            [binary, "validate", "--config", config_path],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        )
        said = (ran.stdout + ran.stderr).replace(root, "").strip()
        for line in said.splitlines():
            print(f"  {name}: {line}")
        if ran.returncode != 0:
            raise Problem(f"switchyard validate exited with {ran.returncode}")
    return role, connectors


def main():
    rendered, binary = sys.argv[1], os.path.abspath(sys.argv[2])
    with open(rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"}
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    failed = False
    roles, covered = [], set()
    for deployment in deployments:
        name = deployment["metadata"]["name"]
        try:
            role, connectors = check(deployment, configmaps, binary)
            roles.append(role)
            overlap = covered & connectors
            if overlap:
                raise Problem(f"connectors {sorted(overlap)} are consumed by two worker groups")
            covered |= connectors
            print(f"ok: {name} ({role}{': ' + ','.join(sorted(connectors)) if connectors else ''})")
        except Problem as problem:
            print(f"FAIL: {rendered}: {name}: {problem}", file=sys.stderr)
            failed = True
    if "router" not in roles:
        print(f"FAIL: {rendered}: no router Deployment", file=sys.stderr)
        failed = True
    if covered != CONNECTORS:
        print(f"FAIL: {rendered}: no worker group consumes {sorted(CONNECTORS - covered)}", file=sys.stderr)
        failed = True
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
