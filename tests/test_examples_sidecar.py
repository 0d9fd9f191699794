"""The sidecar example and the local end-to-end script work as shipped."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from sqlalchemy.engine import make_url

from otel_batchmon import load_config

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SIDECAR = EXAMPLES / "sidecar"


def test_sidecar_settings_file_and_configmap_are_valid_and_equal() -> None:
    documents = list(
        yaml.safe_load_all((SIDECAR / "kubernetes.yaml").read_text())
    )
    configmap = next(d for d in documents if d["kind"] == "ConfigMap")
    embedded = configmap["data"]["batchmon.toml"]
    on_disk = (SIDECAR / "batchmon.toml").read_text()
    env = {"OTEL_BATCHMON_DATABASE_URL": "postgresql+psycopg://u:p@h/app"}

    from_map = load_config(_write(embedded), environ=env)
    from_file = load_config(SIDECAR / "batchmon.toml", environ=env)

    assert from_map == from_file
    (store,) = from_file.stores
    assert store.schema == "integration"
    assert store.columns.finished_at == "completed_at"
    assert store.database_url == env["OTEL_BATCHMON_DATABASE_URL"]
    shipped = load_config(SIDECAR / "batchmon.toml", environ={})
    assert make_url(shipped.stores[0].database_url).password is None
    assert "PASSWORD" not in on_disk


def _write(text: str) -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp()) / "batchmon.toml"
    path.write_text(text)
    return path


def test_sidecar_manifests_take_secrets_from_secrets_only() -> None:
    kube = list(yaml.safe_load_all((SIDECAR / "kubernetes.yaml").read_text()))
    statefulset = next(d for d in kube if d["kind"] == "StatefulSet")
    containers = statefulset["spec"]["template"]["spec"]["containers"]
    monitor = next(c for c in containers if c["name"] == "otel-batchmon")
    env = {e["name"]: e for e in monitor["env"]}
    assert "secretKeyRef" in env["OTEL_BATCHMON_DATABASE_URL"]["valueFrom"]
    assert monitor["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert monitor["livenessProbe"]["httpGet"]["path"] == "/livez"
    compose = yaml.safe_load((SIDECAR / "compose.yaml").read_text())
    service = compose["services"]["otel-batchmon"]
    assert (
        "${DB_PASSWORD}"
        in service["environment"]["OTEL_BATCHMON_DATABASE_URL"]
    )
    assert service["network_mode"] == "service:db"


def test_local_end_to_end_script_delivers_the_demo_over_otlp(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "local_end_to_end.py"),
            "--keep",
            str(tmp_path / "demo.db"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "received over OTLP/HTTP (1 export)" in result.stdout
    assert "batch.stuck.count{batch.store=demo} 1" in result.stdout
    assert "batch.alerts{batch.store=demo,alert.type=stuck" in result.stdout
