"""cluster/: launcher YAMLs, KubeRay manifests, the job runtime_env and the image stay valid and safe.

Nothing here contacts a cloud or a Kubernetes API: launcher configs go through Ray's own
preparation and JSON-schema validation (what `ray up` runs before it calls the cloud), the
runtime_env through Ray's RuntimeEnv parser and its merge with the driver's own runtime_env,
and the manifests through structural checks. A scan over every file keeps credentials out,
token auth on and the dashboard off public interfaces.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.runtime_env import RuntimeEnv
from ray.runtime_env.runtime_env import _merge_runtime_env

from angle_ray.config import load_config
from angle_ray.train.driver import init_ray

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
LAUNCHERS = [CLUSTER / "aws.yaml", CLUSTER / "gcp.yaml"]
KUBERAY = CLUSTER / "kuberay"
IMAGE_PROJECT_DIR = "/home/ray/angle-ray"  # where cluster/Dockerfile installs the project
SHARED = "/mnt/shared"                     # shared storage path on every node / pod
LLM_JOB = REPO / "jobs" / "configs" / "llm_lora.yaml"


def _yaml_files():
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in {".yaml", ".yml"})


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kind(path: Path, kind: str) -> dict:
    (doc,) = [d for d in _docs(path) if d.get("kind") == kind]
    return doc


def _max_llm_workers() -> int:
    workers = load_config(LLM_JOB).train.num_workers
    return workers if isinstance(workers, int) else workers[1]


def _runtime_env() -> dict:
    return yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_yaml_under_cluster_parses_to_mappings(path):
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


def test_the_expected_cluster_files_exist():
    for name in ["aws.yaml", "gcp.yaml", "runtime_env.yaml", "README.md", "Dockerfile",
                 "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]:
        assert (CLUSTER / name).is_file(), name


# --- Ray cluster launcher (`ray up`) ---------------------------------------------------------

def _prepared(path: Path) -> dict:
    return _prepared_from(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_config_passes_rays_own_validation(path):
    config = _prepared(path)
    assert config["provider"]["type"] == path.stem
    assert config["head_node_type"] in config["available_node_types"]


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_rays_validation_rejects_a_misspelt_key(path):
    # proves the validation above can fail: the schema forbids unknown keys
    broken = yaml.safe_load(path.read_text())
    broken["setup_comands"] = ["echo typo"]
    with pytest.raises(jsonschema.ValidationError):
        _prepared_from(broken)


def _prepared_from(config: dict) -> dict:
    """What `ray up` does to a launcher config before it calls the cloud."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_keeps_token_auth_on_and_the_dashboard_on_localhost(path):
    config = _prepared(path)  # defaults filled in, as `ray up` sees it
    head = " ".join(config["head_start_ray_commands"])
    workers = " ".join(config["worker_start_ray_commands"])
    assert re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b", head)
    assert "RAY_AUTH_MODE=token ray start --head" in head
    assert "RAY_AUTH_MODE=token ray start --address" in workers
    # the client's token reaches every node; nothing else carries it
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_gpu_groups_can_hold_the_largest_elastic_job(path):
    config = _prepared(path)
    gpu_groups = {name: t for name, t in config["available_node_types"].items()
                  if t.get("resources", {}).get("GPU", 0) > 0}
    assert gpu_groups and config["head_node_type"] not in gpu_groups
    assert all(t.get("min_workers", 0) == 0 for t in gpu_groups.values())  # scale to zero
    capacity = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_groups.values())
    assert capacity >= _max_llm_workers()
    assert config["max_workers"] >= sum(t["max_workers"] for t in gpu_groups.values())


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_installs_the_project_and_mounts_shared_storage_on_every_node(path):
    config = _prepared(path)
    assert config["file_mounts"].get("~/angle-ray") == "."
    assert any("pip install" in c and "-e ~/angle-ray" in c for c in config["setup_commands"])
    assert any(f"{SHARED}:{SHARED}" in o for o in config["docker"]["run_options"])
    assert any(SHARED in c and "mount" in c for c in config["initialization_commands"])


def test_ray_version_is_the_same_on_the_client_the_launchers_and_the_image():
    version = ray.__version__
    for path in LAUNCHERS:
        config = yaml.safe_load(path.read_text())
        assert config["docker"]["image"].startswith(f"rayproject/ray:{version}-"), path.name
        assert any(f"=={version}" in c for c in config["setup_commands"]), path.name
    assert f"FROM rayproject/ray:{version}-" in (CLUSTER / "Dockerfile").read_text()
    assert _kind(KUBERAY / "raycluster.yaml", "RayCluster")["spec"]["rayVersion"] == version


# --- KubeRay ---------------------------------------------------------------------------------

def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_kuberay_manifests_have_the_expected_kinds_and_api_versions():
    kinds = {(d["apiVersion"], d["kind"]) for d in _docs(KUBERAY / "raycluster.yaml")}
    assert kinds == {("v1", "PersistentVolumeClaim"), ("ray.io/v1", "RayCluster")}
    assert [(d["apiVersion"], d["kind"]) for d in _docs(KUBERAY / "rayjob.yaml")] == [
        ("ray.io/v1", "RayJob")]


def test_raycluster_has_token_auth_a_private_head_and_an_autoscaling_gpu_group():
    spec = _kind(KUBERAY / "raycluster.yaml", "RayCluster")["spec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert "dashboard-host" not in head.get("rayStartParams", {})  # KubeRay's in-pod default
    assert not head.get("enableIngress", False)
    groups = spec["workerGroupSpecs"]
    gpu = [g for g in groups
           if all("nvidia.com/gpu" in c["resources"]["limits"] for c in _containers(g["template"]))]
    assert gpu
    for g in gpu:
        assert 0 == g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    assert sum(g["maxReplicas"] for g in gpu) >= _max_llm_workers()


def test_every_raycluster_pod_mounts_the_shared_volume_and_runs_the_same_image():
    docs = _docs(KUBERAY / "raycluster.yaml")
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    spec = next(d for d in docs if d["kind"] == "RayCluster")["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    images = set()
    for t in templates:
        volumes = {v["name"]: v for v in t["spec"]["volumes"]}
        for c in _containers(t):
            images.add(c["image"])
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            volume = volumes[mounts[SHARED]]
            assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert len(images) == 1


def test_rayjob_runs_an_existing_job_script_and_config_on_the_raycluster():
    cluster = _kind(KUBERAY / "raycluster.yaml", "RayCluster")
    spec = _kind(KUBERAY / "rayjob.yaml", "RayJob")["spec"]
    assert spec["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    words = shlex.split(spec["entrypoint"])
    assert words[0] == "python"
    script = Path(words[1])
    assert str(script).startswith(IMAGE_PROJECT_DIR + "/jobs/")
    assert (REPO / script.relative_to(IMAGE_PROJECT_DIR)).is_file()
    config = Path(words[words.index("--config") + 1])
    local_config = REPO / config.relative_to(IMAGE_PROJECT_DIR)
    assert local_config.is_file() and local_config.parent == REPO / "jobs" / "configs"
    overrides = [w for w in words[2:] if re.match(r"^[a-z_]+(\.[a-z0-9_]+)+=", w)]
    cfg = load_config(local_config, overrides)
    assert cfg.train.storage_path.startswith(SHARED)
    assert f"COPY --chown=ray:users . {IMAGE_PROJECT_DIR}" in (CLUSTER / "Dockerfile").read_text()


def test_rayjob_sets_the_same_environment_as_the_runtime_env():
    spec = _kind(KUBERAY / "rayjob.yaml", "RayJob")["spec"]
    job_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert job_env["env_vars"] == _runtime_env()["env_vars"]


# --- runtime_env of submitted jobs -----------------------------------------------------------

def test_runtime_env_is_accepted_by_ray():
    env = RuntimeEnv(**_runtime_env())
    assert env["working_dir"] == "."
    assert all(isinstance(v, str) for v in env["env_vars"].values())


def test_runtime_env_pip_list_is_pyprojects_dependencies_and_gpu_extra_without_ray():
    try:
        import tomllib
    except ImportError:  # Python 3.10 (the project supports it): the backport, if installed
        tomllib = pytest.importorskip("tomli")

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    # the nodes install the gpu extra (faiss-gpu; faiss is not a base dependency)
    deps = project["dependencies"] + project["optional-dependencies"]["gpu"]
    wanted = {(r.name.lower(), str(r.specifier)) for r in map(Requirement, deps) if r.name != "ray"}
    shipped = {(r.name.lower(), str(r.specifier))
               for r in map(Requirement, _runtime_env()["pip"]["packages"])}
    assert shipped == wanted
    assert "ray" not in {name for name, _ in shipped}  # the cluster's Ray runs the job


def test_runtime_env_points_caches_and_data_at_the_shared_storage():
    env = _runtime_env()["env_vars"]
    assert env["HF_HOME"].startswith(SHARED + "/")
    assert env["ANGLE_RAY_DATA_DIR"].startswith(SHARED + "/")
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"


def _driver_runtime_env(monkeypatch) -> dict:
    """The runtime_env angle_ray.train.driver.init_ray passes to ray.init on a cluster."""
    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    init_ray(address="10.0.0.1:6379")
    assert seen["address"] == "10.0.0.1:6379"
    return seen.get("runtime_env") or {}


def test_runtime_env_merges_with_the_drivers_own_runtime_env(monkeypatch):
    # Inside a submitted job ray.init merges the job's runtime_env with the one the driver
    # passes; any variable named by both makes ray.init raise.
    driver = _driver_runtime_env(monkeypatch)
    assert _merge_runtime_env(_runtime_env(), driver) is not None
    for name, value in driver.get("env_vars", {}).items():  # why those names are not repeated
        assert _merge_runtime_env({"env_vars": {name: value}}, driver) is None


# --- the whole folder: no credentials, token auth never off, dashboard never public ----------

SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret key setting": re.compile(r"aws_secret_access_key|aws_session_token", re.IGNORECASE),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GCP service account key": re.compile(r'"private_key(_id)?"\s*:'),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}"),
    "Slack token": re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}"),
    # a literal value after a token/password/secret setting ($VAR, $(cmd) and refs are fine)
    "literal secret value": re.compile(
        r"(RAY_AUTH_TOKEN|HF_TOKEN|HUGGING_FACE_HUB_TOKEN|PASSWORD|SECRET_KEY|API_KEY)"
        r"\s*[:=]\s*['\"]?(?![$<{'\"\s]|REPLACE_ME)[A-Za-z0-9_\-]{8,}", re.IGNORECASE),
}
AUTH_OFF = re.compile(r"RAY_AUTH_MODE\W{0,3}disabled|mode:\s*disabled", re.IGNORECASE)
ALL_INTERFACES = re.compile(r"0\.0\.0\.0|dashboard-host[=:\s\"']+(::|\*)")


def _text_files():
    folders = [CLUSTER, REPO / "jobs"]
    return sorted(p for folder in folders for p in folder.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts)


def find_secrets(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def test_secret_scanner_recognises_credentials():
    fake_key = "AKIA" + "ABCDEFGHIJKLMNOP"
    assert "AWS access key id" in find_secrets(f"key: {fake_key}")
    assert "private key" in find_secrets("-----BEGIN " + "RSA PRIVATE KEY-----")
    assert "literal secret value" in find_secrets("RAY_AUTH_TOKEN=" + "abcd1234efgh")
    assert find_secrets("RAY_AUTH_TOKEN=$(ray get-auth-token)") == []
    assert AUTH_OFF.search("RAY_AUTH_MODE=" + "disabled")
    assert ALL_INTERFACES.search("--dashboard-host=" + "0.0.0.0")


@pytest.mark.parametrize("path", _text_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_file_holds_a_credential_disables_token_auth_or_opens_the_dashboard(path):
    text = path.read_text()
    assert find_secrets(text) == []
    assert not AUTH_OFF.search(text), "token auth must stay on"
    assert not ALL_INTERFACES.search(text), "bind to 127.0.0.1 / the private address"


def _walk(node, trail=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, trail + (str(k),))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, trail + (str(i),))
    else:
        yield trail, node


# `auth_token`, `RAY_AUTH_TOKEN`, `password`, `api-key` (not `HttpTokens`, `secretKeyRef`)
SECRET_KEY = re.compile(r"(^|[_\-./])(secret|password|passwd|token|api[_-]?key|credentials?)$",
                        re.IGNORECASE)


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_yaml_key_named_like_a_secret_holds_a_literal(path):
    for doc in _docs(path):
        for trail, value in _walk(doc):
            key = trail[-1] if trail else ""
            if SECRET_KEY.search(key) and isinstance(value, str):
                # paths to a token file (never its content) are the one allowed form
                assert value.startswith(("~/", "/", "$")), f"{'.'.join(trail)} holds a literal"


def test_every_placeholder_is_explained_in_the_readme():
    readme = (CLUSTER / "README.md").read_text()
    placeholders = set()
    for p in _text_files():
        placeholders |= set(re.findall(r"REPLACE_ME_[A-Z_]+", p.read_text()))
    assert placeholders, "the scan found no placeholders at all"
    assert {p for p in placeholders if p not in readme} == set()
