"""Kubernetes ``ObjectMeta`` and ``LabelSelector`` in the compact schema format.

Source: Kubernetes ``staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/types.go`` (ObjectMeta,
OwnerReference, LabelSelector). CRDs declare ``metadata`` only as ``type: object``, but the API
server checks it against ObjectMeta, so a typo there (``label:``) is caught the same way.
"""

from __future__ import annotations

from waypoint.schema import nodes

OWNER_REFERENCE = nodes.obj(
    {
        "apiVersion": nodes.STR,
        "kind": nodes.STR,
        "name": nodes.STR,
        "uid": nodes.STR,
        "controller": nodes.BOOL,
        "blockOwnerDeletion": nodes.BOOL,
    },
    required=("apiVersion", "kind", "name", "uid"),
)

OBJECT_META = nodes.obj(
    {
        "name": nodes.STR,
        "generateName": nodes.STR,
        "namespace": nodes.STR,
        "selfLink": nodes.STR,
        "uid": nodes.STR,
        "resourceVersion": nodes.STR,
        "generation": nodes.INT,
        "creationTimestamp": nodes.TIME,
        "deletionTimestamp": nodes.TIME,
        "deletionGracePeriodSeconds": nodes.INT,
        "labels": nodes.STR_MAP,
        "annotations": nodes.STR_MAP,
        "ownerReferences": nodes.arr(OWNER_REFERENCE),
        "finalizers": nodes.arr(nodes.STR),
        # Written by the API server; its inner shape is not a user's concern.
        "managedFields": nodes.arr(nodes.FREE),
    }
)

LABEL_SELECTOR = nodes.obj(
    {
        "matchLabels": nodes.STR_MAP,
        "matchExpressions": nodes.arr(
            nodes.obj(
                {"key": nodes.STR, "operator": nodes.STR, "values": nodes.arr(nodes.STR)},
                required=("key", "operator"),
            )
        ),
    }
)


def resource(spec: nodes.Node, spec_required: bool = True) -> nodes.Obj:
    """A whole object: the type fields, metadata, ``spec``, and a ``status`` left unchecked
    (the controller writes it; users never do)."""
    return nodes.obj(
        {
            "apiVersion": nodes.STR,
            "kind": nodes.STR,
            "metadata": OBJECT_META,
            "spec": spec,
            "status": nodes.FREE,
        },
        required=("spec",) if spec_required else (),
    )
