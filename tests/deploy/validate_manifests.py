"""Validates deploy/kubernetes without a cluster or kustomize: every object of the base and of
each overlay (its JSON patches applied as kustomize would) against the Kubernetes schemas
bundled in `kubernetes-validate` (strict: unknown fields fail), and the links between the
pieces: kustomization lists every file, the HPA's metric is one the adapter rules expose and
phive's /metrics exports, the probes hit phive's health routes."""

import sys
from pathlib import Path

import jsonpatch
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSIONS = ["1.31.0", "1.37.0"]


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def base_objects() -> list[dict]:
    kustomization = load(BASE / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    present = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present, f"kustomization.yaml lists {sorted(listed)}, the folder has {sorted(present)}"
    return [obj for name in kustomization["resources"] for obj in load(BASE / name)]


def overlay_objects(overlay: Path, base: list[dict]) -> list[dict]:
    kustomization = load(overlay / "kustomization.yaml")[0]
    assert kustomization["resources"] == ["../../"], f"{overlay}: overlays build on the base"
    objects = [dict(obj) for obj in base]
    for patch in kustomization["patches"]:
        target = patch["target"]
        matches = [
            i for i, obj in enumerate(objects)
            if obj["kind"] == target["kind"] and obj["metadata"]["name"] == target["name"]
        ]
        assert len(matches) == 1, f"{overlay}: patch target {target} matches {len(matches)} objects"
        operations = yaml.safe_load((overlay / patch["path"]).read_text())
        objects[matches[0]] = jsonpatch.apply_patch(objects[matches[0]], operations)
    return objects


def validate(objects: list[dict], where: str) -> None:
    for obj in objects:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                sys.exit(f"{where}: {obj['kind']}/{obj['metadata']['name']} is invalid for {version}: {e.message} at {list(e.path)}")
        print(f"ok  {where}: {obj['kind']}/{obj['metadata']['name']}")


def check_links(objects: list[dict]) -> None:
    by_kind = {obj["kind"]: obj for obj in objects}
    metrics_source = (ROOT / "crates" / "phive-server" / "src" / "metrics.rs").read_text()
    lifecycle_source = (ROOT / "crates" / "phive-server" / "src" / "lib.rs").read_text()
    adapter = yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"])
    exposed = {rule["name"]["as"] for rule in adapter["rules"]}
    for rule in adapter["rules"]:
        name = rule["name"]["as"]
        assert f'"{name}"' in metrics_source, f"the adapter rule reads {name}, which /metrics does not export"
    for metric in by_kind["HorizontalPodAutoscaler"]["spec"]["metrics"]:
        name = metric["pods"]["metric"]["name"]
        assert name in exposed, f"the HPA scales on {name}, which no adapter rule exposes"
    container = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert f'.route("{path}"' in lifecycle_source, f"{probe} checks {path}, which phive does not serve"
    print("ok  links: HPA metric -> adapter rule -> /metrics, probes -> health routes")


def main() -> None:
    base = base_objects()
    validate(base, "base")
    check_links(base)
    for overlay in sorted((BASE / "overlays").iterdir()):
        validate(overlay_objects(overlay, base), f"overlays/{overlay.name}")


if __name__ == "__main__":
    main()
