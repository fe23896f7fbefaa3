"""`tandem operator crd` and `tandem operator render`: YAML out, clear errors on bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from tandem.launcher.cli import main as tandem
from tandem.operator.crd import crd_manifest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "deploy" / "k8s" / "overlays" / "aggregated" / "tandemdeployment.yaml"


def test_crd_prints_the_definition(capsys: pytest.CaptureFixture[str]) -> None:
    assert tandem(["operator", "crd"]) == 0
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == [crd_manifest()]


def test_render_prints_the_objects_of_a_resource(capsys: pytest.CaptureFixture[str]) -> None:
    assert tandem(["operator", "render", "-f", str(EXAMPLE), "-n", "prod"]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} >= {
        ("Deployment", "smollm-worker"),
        ("Deployment", "smollm-planner"),
        ("Service", "smollm-frontend"),
    }
    assert {o["metadata"]["namespace"] for o in objects} == {"prod"}
    assert all("ownerReferences" not in o["metadata"] for o in objects)  # no uid outside a cluster


def test_render_names_the_bad_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("engine: torch", "engine: vllm"))
    assert tandem(["operator", "render", "-f", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "TandemDeployment smollm: spec.engine: 'vllm' is not one of torch, mocker" in err
    assert tandem(["operator", "render", "-f", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    assert tandem(["operator", "render", "-f", str(empty)]) == 2
    assert "no TandemDeployment" in capsys.readouterr().err


def test_bad_operator_flags_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tandem(["operator", "--resync-interval", "0"])
    assert exit_info.value.code == 2
    assert "--resync-interval must be > 0" in capsys.readouterr().err
