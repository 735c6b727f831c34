"""Deployment files that cannot run here: docker-compose.yml and deploy/kubernetes.yaml.

Parsed, checked against their schemas (compose-spec via check-jsonschema, Kubernetes via
kubernetes-validate, both offline) and against the Dockerfile and the daemon's defaults.
The image itself is built and run by scripts/container-smoke.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from authproxy.config.schema import ServerConfig

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
KUBERNETES = ROOT / "deploy" / "kubernetes.yaml"
COMPOSE_TLS = ROOT / "deploy" / "compose.tls.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DRAIN_AND_STOP = ServerConfig().drain_delay + ServerConfig().shutdown_timeout
TLS_SECRET = "authproxy-tls"


def tool(name: str) -> str:
    """A console script installed beside this interpreter by the `test` extra."""
    path = Path(sys.executable).parent / name
    assert path.exists(), f"{name} is missing: pip install -e '.[test]'"
    return str(path)


def dockerfile_instruction(name: str) -> str:
    """The argument of the last `name` instruction in the Dockerfile."""
    found = re.findall(rf"^{name}\s+(.+)$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert found, f"no {name} in the Dockerfile"
    return str(found[-1]).strip()


def seconds(duration: str) -> float:
    """A compose duration such as `20s`, `1m30s` or `1500ms`, in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def overlay() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_TLS.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(KUBERNETES.read_text(encoding="utf-8")) if d]
    mine = [doc for doc in docs if doc["metadata"]["name"] == "authproxy"]
    by_kind = {doc["kind"]: doc for doc in mine}
    assert len(by_kind) == len(mine), "one resource named authproxy of each kind expected"
    others = sorted((doc["kind"], doc["metadata"]["name"]) for doc in docs if doc not in mine)
    assert others == [("Secret", TLS_SECRET)], others
    return by_kind


@pytest.fixture(scope="module")
def tls_secret() -> dict[str, Any]:
    docs = yaml.safe_load_all(KUBERNETES.read_text(encoding="utf-8"))
    (found,) = [d for d in docs if d and d["metadata"]["name"] == TLS_SECRET]
    assert isinstance(found, dict)
    return found


@pytest.fixture(scope="module")
def pod(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec = manifests["Deployment"]["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


@pytest.fixture(scope="module")
def container(pod: dict[str, Any]) -> dict[str, Any]:
    (found,) = [c for c in pod["containers"] if c["name"] == "authproxy"]
    assert isinstance(found, dict)
    return found


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


class TestComposeServices:
    def test_service_names(self, services: dict[str, Any]) -> None:
        """PostgreSQL, a one-shot migration, a sample upstream and authproxy itself."""
        assert set(services) == {"postgres", "migrate", "upstream", "authproxy"}

    @pytest.mark.parametrize("path", [COMPOSE, COMPOSE_TLS], ids=lambda p: p.name)
    def test_valid_against_the_compose_spec(self, path: Path) -> None:
        """The file (and the TLS overlay) passes the compose-spec JSON schema (unknown keys
        and typos fail)."""
        result = subprocess.run(
            [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr

    def test_authproxy_services_build_this_dockerfile(self, services: dict[str, Any]) -> None:
        """migrate, upstream and authproxy share one image built from this repository."""
        images = {services[name]["image"] for name in ("migrate", "upstream", "authproxy")}
        assert len(images) == 1
        for name in ("migrate", "upstream", "authproxy"):
            assert services[name]["build"] in (".", {"context": "."})

    def test_only_authproxy_is_published(self, services: dict[str, Any]) -> None:
        """Port 8080 on loopback reaches authproxy; the upstream and PostgreSQL stay inside."""
        assert services["authproxy"]["ports"] == ["127.0.0.1:8080:8080"]
        assert dockerfile_instruction("EXPOSE") == "8080"
        assert services["authproxy"]["environment"]["AUTHPROXY_LISTEN"] == "0.0.0.0:8080"
        for name in ("postgres", "upstream", "migrate"):
            assert "ports" not in services[name], name

    def test_sample_upstream_command_exists(self, services: dict[str, Any]) -> None:
        """The upstream's inline program imports a factory the package really has."""
        from authproxy.cli.sample_upstream import create_sample_upstream

        program = services["upstream"]["command"][-1]
        assert "from authproxy.cli.sample_upstream import create_sample_upstream" in program
        assert "port=8081" in program and callable(create_sample_upstream)
        assert services["upstream"]["expose"] == ["8081"]


class TestComposeHealth:
    def test_postgres_healthcheck(self, services: dict[str, Any]) -> None:
        """PostgreSQL is healthy once pg_isready answers for the authproxy database."""
        test = services["postgres"]["healthcheck"]["test"]
        assert test[0] == "CMD-SHELL" and "pg_isready" in test[1]

    def test_authproxy_healthcheck_asks_readyz(self, services: dict[str, Any]) -> None:
        """authproxy's health is /_authproxy/readyz on its own listen port."""
        test = services["authproxy"]["healthcheck"]["test"]
        assert test[0] == "CMD"
        assert "http://127.0.0.1:8080/_authproxy/readyz" in " ".join(test)

    def test_upstream_healthcheck(self, services: dict[str, Any]) -> None:
        """The sample upstream is healthy once it answers on its port."""
        assert "127.0.0.1:8081" in " ".join(services["upstream"]["healthcheck"]["test"])

    def test_stop_grace_period_covers_the_drain(self, services: dict[str, Any]) -> None:
        """Compose waits longer than drain_delay + shutdown_timeout before SIGKILL."""
        assert seconds(services["authproxy"]["stop_grace_period"]) > DRAIN_AND_STOP


class TestComposeStartOrder:
    def test_migrate_runs_once_after_postgres_is_healthy(self, services: dict[str, Any]) -> None:
        """migrate runs `authproxy migrate` when PostgreSQL is healthy and is not restarted."""
        migrate = services["migrate"]
        assert migrate["command"] == ["authproxy", "migrate"]
        assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        assert migrate["restart"] == "no"

    def test_authproxy_serves_after_migrations(self, services: dict[str, Any]) -> None:
        """authproxy serves only after migrate completed, PostgreSQL and the upstream healthy."""
        authproxy = services["authproxy"]
        assert authproxy["command"] == ["authproxy", "serve"]
        assert authproxy["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
            "upstream": {"condition": "service_healthy"},
        }

    def test_database_url_matches_postgres(self, services: dict[str, Any]) -> None:
        """migrate and authproxy get one AUTHPROXY_DATABASE_URL, naming the postgres service."""
        pg = services["postgres"]["environment"]
        expected = (
            f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}"
            f"@postgres:5432/{pg['POSTGRES_DB']}"
        )
        for name in ("migrate", "authproxy"):
            assert services[name]["environment"]["AUTHPROXY_DATABASE_URL"] == expected, name

    def test_upstream_url_names_the_upstream_service(self, services: dict[str, Any]) -> None:
        """authproxy forwards to the upstream service on its exposed port."""
        env = services["authproxy"]["environment"]
        assert env["AUTHPROXY_UPSTREAM_URL"] == "http://upstream:8081"
        assert "AUTHPROXY_ADMIN_JWT_SECRET" in env


class TestComposeTls:
    """deploy/compose.tls.yaml: HTTPS on top of docker-compose.yml, from Compose secrets."""

    def test_certificate_and_key_come_from_secrets(
        self, overlay: dict[str, Any], services: dict[str, Any]
    ) -> None:
        """Only authproxy changes; its TLS variables name the secrets' mounted files."""
        assert set(overlay["services"]) == {"authproxy"} <= set(services)
        authproxy = overlay["services"]["authproxy"]
        env = authproxy["environment"]
        mounted = {f"/run/secrets/{name}" for name in authproxy["secrets"]}
        assert {env["AUTHPROXY_TLS_CERT_FILE"], env["AUTHPROXY_TLS_KEY_FILE"]} == mounted
        assert set(overlay["secrets"]) == set(authproxy["secrets"])
        for secret in overlay["secrets"].values():
            assert secret["file"].startswith("./deploy/tls/")

    def test_healthcheck_asks_readyz_over_https(self, overlay: dict[str, Any]) -> None:
        test = " ".join(overlay["services"]["authproxy"]["healthcheck"]["test"])
        assert "https://127.0.0.1:8080/_authproxy/readyz" in test


class TestKubernetesResources:
    def test_kinds(self, manifests: dict[str, dict[str, Any]]) -> None:
        """A Secret, the Deployment, a Service and a PodDisruptionBudget."""
        assert set(manifests) == {"Secret", "Deployment", "Service", "PodDisruptionBudget"}

    def test_valid_against_the_kubernetes_schemas(self) -> None:
        """Every resource passes kubernetes-validate --strict (unknown fields fail)."""
        result = subprocess.run(
            [tool("kubernetes-validate"), "--strict", str(KUBERNETES)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "did not validate" not in result.stdout + result.stderr

    def test_service_targets_the_container_port(
        self, manifests: dict[str, dict[str, Any]], container: dict[str, Any]
    ) -> None:
        """The Service's named target port is the container's 8080, speaking HTTPS."""
        (port,) = manifests["Service"]["spec"]["ports"]
        (container_port,) = container["ports"]
        assert port["targetPort"] == container_port["name"]
        assert container_port["containerPort"] == 8080
        assert env_of(container)["AUTHPROXY_LISTEN"]["value"] == "0.0.0.0:8080"

    def test_resources(self, container: dict[str, Any]) -> None:
        """Requests for cpu and memory, and a memory limit above the request."""
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert "memory" in resources["limits"]

        def mebibytes(quantity: str) -> int:
            match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
            assert match, quantity
            return int(match[1]) * (1024 if match[2] == "Gi" else 1)

        assert mebibytes(resources["limits"]["memory"]) > mebibytes(resources["requests"]["memory"])


class TestKubernetesProbes:
    def test_readiness_probe_asks_readyz(self, container: dict[str, Any]) -> None:
        """The readiness probe is /_authproxy/readyz over HTTPS."""
        probe = container["readinessProbe"]["httpGet"]
        assert (probe["path"], probe["port"]) == ("/_authproxy/readyz", "https")
        assert probe["scheme"] == "HTTPS"

    def test_liveness_probe_asks_healthz(self, container: dict[str, Any]) -> None:
        """The liveness probe is /_authproxy/healthz, which checks no dependency."""
        for name in ("livenessProbe", "startupProbe"):
            probe = container[name]["httpGet"]
            assert (probe["path"], probe["port"], probe["scheme"]) == (
                "/_authproxy/healthz",
                "https",
                "HTTPS",
            )

    def test_prestop_and_grace_period(self, pod: dict[str, Any], container: dict[str, Any]) -> None:
        """A preStop pause, then drain and stop, all inside terminationGracePeriodSeconds."""
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop = float(command[1])
        assert pre_stop > 0
        assert pod["terminationGracePeriodSeconds"] > pre_stop + DRAIN_AND_STOP


class TestKubernetesSecretsAndUser:
    def test_secret_feeds_database_url_and_jwt_secret(
        self, manifests: dict[str, dict[str, Any]], container: dict[str, Any]
    ) -> None:
        """AUTHPROXY_DATABASE_URL and AUTHPROXY_ADMIN_JWT_SECRET come from the Secret."""
        secret = manifests["Secret"]
        env = env_of(container)
        for var in ("AUTHPROXY_DATABASE_URL", "AUTHPROXY_ADMIN_JWT_SECRET"):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], var
            assert ref["key"] in secret["stringData"], var
            assert "value" not in env[var], var

    def test_init_container_migrates(self, pod: dict[str, Any]) -> None:
        """An init container runs `authproxy migrate` with the database URL from the Secret."""
        (init,) = pod["initContainers"]
        assert init["command"] == ["authproxy", "migrate"]
        assert "secretKeyRef" in env_of(init)["AUTHPROXY_DATABASE_URL"]["valueFrom"]

    def test_runs_as_the_images_non_root_user(self, pod: dict[str, Any]) -> None:
        """runAsNonRoot with the uid of the Dockerfile's numeric USER."""
        user = dockerfile_instruction("USER")
        uid, _, gid = user.partition(":")
        assert uid.isdigit() and int(uid) != 0, f"USER {user} must be a numeric non-root uid"
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == int(uid)
        assert context["runAsGroup"] == int(gid or uid)

    def test_containers_are_locked_down(
        self, pod: dict[str, Any], container: dict[str, Any]
    ) -> None:
        """No privilege escalation, no capabilities, a read-only root with /tmp in memory."""
        for each in [container, *pod["initContainers"]]:
            context = each["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["readOnlyRootFilesystem"] is True
            assert context["capabilities"]["drop"] == ["ALL"]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert set(mounts) == {"/tmp", "/etc/authproxy/tls"}
        assert mounts["/etc/authproxy/tls"]["readOnly"] is True


class TestKubernetesTls:
    def test_the_listener_certificate_is_mounted_from_a_tls_secret(
        self, pod: dict[str, Any], container: dict[str, Any], tls_secret: dict[str, Any]
    ) -> None:
        """AUTHPROXY_TLS_CERT_FILE/_KEY_FILE name the files of a kubernetes.io/tls Secret's
        volume, readable by the pod's group only (fsGroup, defaultMode 0400)."""
        assert tls_secret["type"] == "kubernetes.io/tls"
        assert set(tls_secret["stringData"]) == {"tls.crt", "tls.key"}
        (volume,) = [v for v in pod["volumes"] if "secret" in v]
        assert volume["secret"]["secretName"] == TLS_SECRET
        assert volume["secret"]["defaultMode"] == 0o400
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        env = env_of(container)
        assert env["AUTHPROXY_TLS_CERT_FILE"]["value"] == mount["mountPath"] + "/tls.crt"
        assert env["AUTHPROXY_TLS_KEY_FILE"]["value"] == mount["mountPath"] + "/tls.key"

    def test_the_service_is_https(self, manifests: dict[str, dict[str, Any]]) -> None:
        (port,) = manifests["Service"]["spec"]["ports"]
        assert (port["name"], port["port"], port["targetPort"]) == ("https", 443, "https")
