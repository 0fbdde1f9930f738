"""The container recipe and the Kubernetes manifest users deploy as written."""
import re
import tomllib
from pathlib import Path

import yaml

from train.__main__ import parse_args

ROOT = Path(__file__).resolve().parents[1]


def manifest_containers() -> list[dict]:
    job = yaml.safe_load((ROOT / "deploy/k8s/pytorchjob.yaml").read_text())
    return [c for spec in job["spec"]["pytorchReplicaSpecs"].values() for c in spec["template"]["spec"]["containers"]]


def test_the_image_holds_every_package_the_project_installs():
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name.split(".")[0] for name in include}
    copied = re.findall(r"^COPY (\S+) ", (ROOT / "deploy/docker/Dockerfile").read_text(), flags=re.M)
    assert packages <= set(copied), packages - set(copied)


def trainer_args(container: dict):
    command = container["command"]
    assert command[:1] == ["torchrun"] and "-m" in command and command[command.index("-m") + 1] == "train"
    return parse_args(command[command.index("-m") + 2:])  # exits on an unknown flag


def test_the_manifest_runs_the_trainer_under_torchrun_with_flags_it_accepts():
    for container in manifest_containers():
        trainer_args(container)


def test_the_manifest_exposes_the_port_the_trainer_serves_metrics_on():
    for container in manifest_containers():
        assert trainer_args(container).metrics_port == container["ports"][0]["containerPort"]


def test_the_manifest_names_the_image_recipe():
    assert "deploy/docker/Dockerfile" in (ROOT / "deploy/k8s/pytorchjob.yaml").read_text()


def test_shared_memory_is_mounted_in_memory_and_larger_than_the_container_default():
    job = yaml.safe_load((ROOT / "deploy/k8s/pytorchjob.yaml").read_text())
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        pod = spec["template"]["spec"]
        shm = next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"].endswith("Gi") and int(shm["sizeLimit"][:-2]) >= 2
        mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert mounts["shm"] == "/dev/shm"
