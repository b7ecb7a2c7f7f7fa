"""deploy/kubernetes.yaml: valid against Kubernetes' own schemas (offline, strict), and wired to this project."""

from pathlib import Path

import kubernetes_validate
import yaml

from framepack.config import SETTINGS

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes.yaml"
KUBERNETES_VERSION = "1.33.0"


def documents() -> dict[str, dict]:
    return {document["kind"]: document for document in yaml.safe_load_all(MANIFEST.read_text())}


def test_every_object_is_valid_for_the_api_strictly():
    objects = documents()
    assert set(objects) == {"PersistentVolumeClaim", "Deployment", "Service"}
    for document in objects.values():  # strict: an unknown or misspelt field fails too
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_each_replica_has_a_gpu_the_shared_volume_and_a_readiness_that_waits_for_ready():
    objects = documents()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "127.0.0.1:5000/health-check" in probe and '!= "READY"' in probe
    assert container["startupProbe"]["exec"] == container["readinessProbe"]["exec"]
    variables = {setting.variable for setting in SETTINGS if setting.variable} | {"HF_HOME"}
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(env) <= variables and all(value.startswith("/data/") for value in env.values())
    assert container["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert (
        pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == objects["PersistentVolumeClaim"]["metadata"]["name"]
    )
    service = objects["Service"]["spec"]
    assert (
        service["type"] == "ClusterIP"
        and service["selector"] == objects["Deployment"]["spec"]["selector"]["matchLabels"]
    )
