"""manifests/overlays/istio-ca builds, validates, and its class defaults give waypoints the
istio-certs containers (kustomize from ``kubectl kustomize``; skipped without kubectl)."""

from __future__ import annotations

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import kubernetes_validate
import pytest

from tests import test_kube_manifests as manifests
from tests.fakekube import gateway_api_schema, world
from waypoint import version
from waypoint.envoy import options as envoy_options
from waypoint.kube import gateway, render, settings

OVERLAY = "overlays/istio-ca"


def test_overlay_validates_and_names_no_registry() -> None:
    docs = manifests.build(OVERLAY)
    for doc in docs:
        if doc["kind"] in gateway_api_schema.SCHEMAS:
            jsonschema.validate(doc, gateway_api_schema.SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, "1.32.0", strict=True)
    images = [image for doc in docs for image in manifests._images(doc)]
    assert "waypoint-mesh:0.1.0" in images
    assert all("." not in image.partition("/")[0] for image in images if "/" in image)
    # Nothing beyond the base's RBAC: the waypoint pods never call the API server.
    base_rbac = [d for d in manifests.build("base") if d["kind"].endswith(("Role", "Binding"))]
    assert [d for d in docs if d["kind"].endswith(("Role", "Binding"))] == base_rbac


def test_class_defaults_give_waypoints_istio_certs() -> None:
    docs = manifests.build(OVERLAY)
    (gateway_class,) = [d for d in docs if d["kind"] == "GatewayClass"]
    ref = settings.class_parameters_ref(gateway_class)
    (defaults,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and (d["metadata"]["namespace"], d["metadata"]["name"]) == ref
    ]
    gw = gateway.generate_gateway("demo")
    inputs = [*world.mesh("demo"), gw, gateway_class, defaults]
    generated = render.render_kubernetes(inputs, envoy_options.BootstrapOptions())
    for obj in generated:
        kubernetes_validate.validate(obj, "1.32.0", strict=True)
    conf = settings.resolve(gw, None, None, defaults)
    assert conf.cert_source is settings.CertSource.ISTIO
    assert conf.ca_address == "istiod.istio-system.svc:15012"
    (deployment,) = [o for o in generated if o["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["envoy", "istio-certs"]
    assert [c["name"] for c in pod["initContainers"]] == ["istio-certs-init"]
    # The istio-certs containers run the one image, as the controller does (its --image).
    assert pod["initContainers"][0]["image"] == version.default_image()


@pytest.mark.parametrize("value", ["", "istiod.istio-system.svc", "host:99999"])
def test_bad_ca_address_is_reported(value: str) -> None:
    defaults = {
        "metadata": {"name": "waypoint-class-defaults"},
        "data": {"certSource": "istio", "caAddress": value},
    }
    with pytest.raises(settings.SettingsError, match="key caAddress"):
        settings.resolve(gateway.generate_gateway("demo"), None, None, defaults)
