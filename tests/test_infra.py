"""Every file under infra/ is checked: it parses, job templates validate against Prefect's schemas, the
accelerate configs load in accelerate, the Dockerfile installs the way the README says."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
POOLS = sorted((INFRA / "work-pools").glob("*.json"))


def test_every_infra_file_parses():
    files = [f for f in INFRA.rglob("*") if f.is_file()]
    assert files
    for f in files:
        if f.suffix in {".yaml", ".yml"}:
            assert yaml.safe_load(f.read_text()) is not None, f
        elif f.suffix == ".json":
            json.loads(f.read_text())
        else:
            assert f.suffix == ".md" or f.name == "Dockerfile", f"{f}: no check for this kind of file"


def _defaults(schema: dict) -> dict:
    return {k: v["default"] for k, v in schema["properties"].items() if "default" in v}


@pytest.mark.parametrize("path", POOLS, ids=[p.stem for p in POOLS])
def test_job_templates_validate_against_prefect_schemas(path):
    from prefect._internal.schemas.validators import validate_values_conform_to_schema
    from prefect.server.schemas.actions import WorkPoolCreate
    template = json.loads(path.read_text())
    pool = WorkPoolCreate(name=f"iap-{path.stem}", type=path.stem, base_job_template=template)  # every
    assert pool.base_job_template == template  # placeholder is a declared variable
    jsonschema.Draft202012Validator.check_schema(template["variables"])
    validate_values_conform_to_schema(_defaults(template["variables"]), template["variables"])
    if path.stem != "process":  # GPU pools request GPUs through a variable
        assert "gpu_count" in template["variables"]["properties"]
        assert "{{ gpu_count }}" in json.dumps(template["job_configuration"])


@pytest.mark.e2e
def test_process_template_renders_with_the_process_worker():
    from prefect.workers.process import ProcessJobConfiguration, ProcessWorker
    template = json.loads((INFRA / "work-pools" / "process.json").read_text())
    default = ProcessWorker.get_default_base_job_template()
    assert template["job_configuration"].keys() == default["job_configuration"].keys()
    config = asyncio.run(ProcessJobConfiguration.from_template_and_values(
        template, {"env": {"CUDA_VISIBLE_DEVICES": "3"}}))
    assert config.env["CUDA_VISIBLE_DEVICES"] == "3"


def test_kubernetes_template_requests_gpus_as_a_non_root_pod():
    template = json.loads((INFRA / "work-pools" / "kubernetes.json").read_text())
    spec = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpu_count }}"


@pytest.mark.parametrize("name", ["1gpu", "8gpu", "2nodes"])
def test_accelerate_configs_load_in_accelerate(name):
    from accelerate.commands.config.config_args import ClusterConfig
    config = ClusterConfig.from_yaml_file(str(INFRA / "accelerate" / f"{name}.yaml"))  # unknown keys raise
    assert config.num_processes % config.num_machines == 0
    assert config.num_processes == {"1gpu": 1, "8gpu": 8, "2nodes": 16}[name]
    from iap.system.launch import launch_command
    cmd = launch_command(["train", "--out", "x"], accelerate_config=str(INFRA / "accelerate" / f"{name}.yaml"))
    assert cmd[1:4] == ["-m", "accelerate.commands.launch", "--config_file"] and cmd[-3:] == ["train", "--out", "x"]


def test_dockerfile_installs_as_the_readme_says_and_runs_as_non_root():
    docker = (INFRA / "Dockerfile").read_text()
    readme = (ROOT / "README.md").read_text()
    install = re.search(r"^(bash install\.sh)\b.*$", readme, re.M).group(1)
    runs = [line.split("RUN", 1)[1].strip() for line in docker.splitlines() if line.startswith("RUN")]
    assert install in runs
    assert re.search(r"^FROM python:3\.11\.\d+-slim-\w+$", docker, re.M)  # the Python constraints.txt was made on
    user = [line.split()[1] for line in docker.splitlines() if line.startswith("USER")]
    assert user and user[-1] not in {"root", "0"}
    assert docker.index("USER") < docker.index(f"RUN {install}")  # installed as the user that runs it


def test_compose_team_setup():
    import prefect
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "s3", "worker"} <= services.keys()
    server = services["prefect-server"]
    assert server["image"].startswith(f"prefecthq/prefect:{prefect.__version__}")
    assert "postgresql+asyncpg://" in server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert services["worker"]["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert services["worker"]["build"]["dockerfile"] == "infra/Dockerfile"


def test_the_install_is_locked_and_every_dependency_is_declared_and_pinned():
    """Issue 27, finding 6: five pins, untested floors, and imported packages nobody declared."""
    import ast
    import sys
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    engines = [r for extra in ("dask", "ray", "spark") for r in project["optional-dependencies"][extra]]
    declared = {canonicalize_name(Requirement(r).name): Requirement(r) for r in project["dependencies"] + engines}
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    for name, req in declared.items():
        if name == "torch":
            continue  # pinned by install.sh itself, by build
        assert name in pins, f"{name} is declared but not locked"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}: lock {pins[name]} vs {req}"
    imported = set()
    for folder in ("iap", "flows", "tasks"):
        for f in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    distribution = {"PIL": "pillow", "yaml": "pyyaml"}
    third_party = {m for m in imported - set(sys.stdlib_module_names) - {"iap", "flows", "tasks"}}
    assert {canonicalize_name(distribution.get(m, m)) for m in third_party} <= set(declared)
    install = (ROOT / "install.sh").read_text()
    assert "-c constraints.txt" in install and "torch==2.13.0" in install
    assert "bash install.sh dev" in (ROOT / ".ci" / "run").read_text()
    assert "RUN bash install.sh" in (INFRA / "Dockerfile").read_text()


def test_the_team_stack_pins_its_images_and_starts_what_it_installs():
    """Issue 27, finding 7: minio/minio:latest is no longer published, the Dockerfile started a docker-type
    worker without prefect-docker, and COPY . shipped .venv/ and .git/."""
    import shutil
    import subprocess
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    for name, service in compose["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), (name, image)
        assert "minio" not in image, "MinIO no longer publishes images"
    s3 = compose["services"]["s3"]
    config = next(v.split(":")[0] for v in s3["volumes"] if v.endswith(":ro"))
    identities = json.loads((INFRA / config).read_text())["identities"]
    keys = {(c["accessKey"], c["secretKey"]) for i in identities for c in i["credentials"]}
    worker = compose["services"]["worker"]["environment"]
    default = lambda v: v.split(":-", 1)[1].rstrip("}")  # noqa: E731 - ${VAR:-default}
    assert (default(worker["AWS_ACCESS_KEY_ID"]), default(worker["AWS_SECRET_ACCESS_KEY"])) in keys
    assert worker["AWS_ENDPOINT_URL"] == f"http://s3:{s3['ports'][0].split(':')[1]}"
    docker = (INFRA / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", docker, re.M).group(1))
    assert cmd[:3] == ["prefect", "worker", "start"] and cmd[cmd.index("--type") + 1] == "process"
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git", ".prefect"} <= ignored
    compose_cli = shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True,
                                                            timeout=60).returncode == 0
    if compose_cli:  # where Docker Compose exists, it validates the file too
        r = subprocess.run(["docker", "compose", "-f", str(INFRA / "compose.yaml"), "config", "-q"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr


def test_install_lock_rewrites_the_constraints_from_the_venv(tmp_path):
    """`bash install.sh lock`, the README's command that makes constraints.txt, run on a copy of the
    repository's install script against this venv."""
    import shutil
    import subprocess
    import sys
    for name in ("install.sh", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    r = subprocess.run(["bash", "install.sh", "lock"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "constraints.txt").read_text().splitlines()
    assert lines[:2] == (ROOT / "constraints.txt").read_text().splitlines()[:2]  # the header stays
    pins = [line for line in lines[2:] if line]
    assert pins and all("==" in line for line in pins)
    assert not any(line.startswith(("torch==", "dataclasses==", "iap")) for line in pins)
    assert any(line.startswith("prefect==3.8.8") for line in pins)
