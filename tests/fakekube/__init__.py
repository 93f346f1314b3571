"""A stateful fake kube-apiserver over real HTTP, for driving the real ``kubernetes`` client.

``server.FakeKube`` serves discovery, get/list/watch, create, update, merge patch, server-side
apply, the status subresource and delete, with resourceVersions, 409 conflicts and 410 Gone,
and counts every write so tests can assert that a reconcile wrote nothing.
"""
