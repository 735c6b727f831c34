"""deploy/forward-auth/envoy.yaml, checked offline: no Envoy binary is installable from
the registries this project builds from, so the example is parsed against Envoy's v3 API
(envoy-data-plane: classes generated from Envoy's own protos, which refuse any unknown
field, at every depth, typed_config included, and warn of deprecated ones, which the
test suite turns into errors), then held to what authproxy needs."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import yaml

from authproxy.http.reserved import VERIFY_PATH
from tests.daemon import REPO_ROOT

# Importing a filter's module registers its type for typed_config. Some generated classes
# use a pydantic idiom that pydantic 2.12 deprecates: not ours to fix.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import envoy_data_plane.envoy.extensions.filters.http.ext_authz.v3 as ext_authz
    import envoy_data_plane.envoy.extensions.filters.http.router.v3 as router
    import envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3 as hcm
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

EXAMPLE = REPO_ROOT / "deploy" / "forward-auth" / "envoy.yaml"
IDENTITY = {"x-space-id", "x-api-key-id", "x-api-key-prefix", "x-request-id"}


def parsed(text: str) -> Bootstrap:
    return Bootstrap().from_dict(yaml.safe_load(text))


@pytest.fixture
def bootstrap() -> Bootstrap:
    return parsed(EXAMPLE.read_text())


def _unpack(filter_: Any) -> Any:
    assert filter_.typed_config is not None
    return filter_.typed_config.unpack()


def _filters(bootstrap: Bootstrap) -> tuple[Any, Any]:
    assert bootstrap.static_resources is not None
    (listener,) = bootstrap.static_resources.listeners
    (network_filter,) = listener.filter_chains[0].filters
    manager = _unpack(network_filter)
    assert isinstance(manager, hcm.HttpConnectionManager)
    authz_filter, router_filter = manager.http_filters
    authz = _unpack(authz_filter)
    assert isinstance(authz, ext_authz.ExtAuthz)
    assert isinstance(_unpack(router_filter), router.Router)
    return manager, authz


def test_the_example_is_valid_envoy_v3(bootstrap: Bootstrap) -> None:
    _filters(bootstrap)  # every typed_config parsed as its declared type


def test_an_unknown_field_would_be_caught() -> None:
    """The check has teeth: a misspelt field anywhere fails it."""
    with pytest.raises(KeyError, match="path_prefixx"):
        parsed(EXAMPLE.read_text().replace("path_prefix:", "path_prefixx:"))


def test_it_asks_authproxy_and_strips_the_credential(bootstrap: Bootstrap) -> None:
    manager, authz = _filters(bootstrap)
    assert bootstrap.static_resources is not None
    service = authz.http_service
    assert service.path_prefix == VERIFY_PATH
    assert service.server_uri.cluster in {c.name for c in bootstrap.static_resources.clusters}
    assert not authz.failure_mode_allow  # authproxy down: refuse, never admit
    sent = {p.exact for p in authz.allowed_headers.patterns}
    assert "authorization" in sent
    upstream = {p.exact for p in service.authorization_response.allowed_upstream_headers.patterns}
    assert upstream == IDENTITY
    client = {p.exact for p in service.authorization_response.allowed_client_headers.patterns}
    assert {"www-authenticate", "retry-after"} <= client
    routes = manager.route_config.virtual_hosts[0].routes
    assert routes and all("authorization" in r.request_headers_to_remove for r in routes)
    assert manager.common_http_protocol_options.headers_with_underscores_action.name == (
        "DROP_HEADER"
    )
