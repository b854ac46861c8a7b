"""Checks the rendered kustomize base (docs/kubernetes.md) for the shape a
node imposes and the hardening it promises, for tests/kubernetes.rs.

usage: shape.py RENDERED.yaml
Prints one line per problem and exits 1 if there is any.
"""
import sys

import yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = {(d["kind"], d["metadata"]["name"]): d for d in docs}
problems = []


def want(cond, what):
    if not cond:
        problems.append(what)


want(set(k for k, _ in kinds) == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"},
     f"resources: {sorted(kinds)} (no RBAC, nothing else)")
want(not any(d["kind"] == "Secret" for d in docs), "no Secret in the repository")
sa = kinds[("ServiceAccount", "tokend")]
want(sa.get("automountServiceAccountToken") is False, "the ServiceAccount mounts no token")
ds = kinds[("DaemonSet", "tokend")]
want(ds["metadata"]["namespace"] == "tokend", "the DaemonSet is in namespace tokend")
want(ds["spec"]["updateStrategy"]["type"] == "RollingUpdate", "a rolling update")
pod = ds["spec"]["template"]["spec"]
for key in ("hostNetwork", "hostPID", "hostIPC"):
    want(not pod.get(key), f"no {key}")
want(pod.get("automountServiceAccountToken") is False, "the pod mounts no API token")
sc = pod["securityContext"]
want(sc.get("runAsNonRoot") is True and sc.get("runAsUser") and sc.get("runAsGroup"),
     "the pod runs as a fixed non-root uid and gid")
want(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", "seccomp RuntimeDefault")
volumes = {v["name"]: v for v in pod["volumes"]}
want(volumes["run"].get("hostPath") == {"path": "/run/tokend", "type": "DirectoryOrCreate"},
     "the socket's directory is the node's /run/tokend")
want(volumes["config"]["configMap"]["name"] == "tokend-config", "the config from the ConfigMap")
want(volumes["secrets"]["secret"]["secretName"] == "tokend-secrets", "secrets from the Secret")
for c in pod["containers"] + pod.get("initContainers", []):
    csc = c.get("securityContext", {})
    name = c["name"]
    want(c["image"].startswith("localhost/tokend:"), f"{name}: the tokend image")
    want(csc.get("allowPrivilegeEscalation") is False, f"{name}: no privilege escalation")
    want(csc.get("readOnlyRootFilesystem") is True, f"{name}: a read-only root")
    want(not csc.get("privileged"), f"{name}: not privileged")
    want(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: every capability dropped")
    want("limits" in c.get("resources", {}) and "requests" in c["resources"], f"{name}: requests and limits")
for c in pod.get("initContainers", []):
    want(c["securityContext"]["capabilities"].get("add") == ["CHOWN"], f"{c['name']}: CAP_CHOWN alone")
daemon = pod["containers"][0]
want(not daemon["securityContext"].get("capabilities", {}).get("add"), "the daemon adds no capability")
want(daemon.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", "liveness: /healthz")
want(daemon.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", "readiness: /readyz")
mounts = {m["mountPath"]: m for m in daemon["volumeMounts"]}
want(mounts["/etc/tokend"].get("readOnly") is True, "the config is mounted read-only")
want("tokend.toml" in kinds[("ConfigMap", "tokend-config")]["data"], "the ConfigMap holds tokend.toml")

for p in problems:
    print(p)
sys.exit(1 if problems else 0)
