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
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = re.findall(r"^COPY (\S+) ", (ROOT / "deploy/docker/Dockerfile").read_text(), flags=re.M)
    assert set(packages) <= set(copied), set(packages) - set(copied)


def test_the_manifest_runs_the_trainer_with_flags_it_accepts_and_names_the_recipe():
    for container in manifest_containers():
        command = container["command"]
        assert command[:1] == ["torchrun"] and "-m" in command and command[command.index("-m") + 1] == "train"
        args = parse_args(command[command.index("-m") + 2:])  # exits on an unknown flag
        assert args.metrics_port == container["ports"][0]["containerPort"]
    assert "deploy/docker/Dockerfile" in (ROOT / "deploy/k8s/pytorchjob.yaml").read_text()


def test_shared_memory_is_mounted_in_memory_and_larger_than_the_container_default():
    job = yaml.safe_load((ROOT / "deploy/k8s/pytorchjob.yaml").read_text())
    for spec in job["spec"]["pytorchReplicaSpecs"].values():
        pod = spec["template"]["spec"]
        shm = next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"]
        assert shm["medium"] == "Memory" and shm["sizeLimit"].endswith("Gi") and int(shm["sizeLimit"][:-2]) >= 2
        mounts = {m["name"]: m["mountPath"] for c in pod["containers"] for m in c["volumeMounts"]}
        assert mounts["shm"] == "/dev/shm"
