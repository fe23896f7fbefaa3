"""The Kubernetes operator (`tandem operator`): `TandemDeployment` resources into Deployments.

`spec.py` reads a resource's spec, `render.py` turns it into the objects of
each role (a pure function), `crd.py` declares the resource's schema,
`k8s_models.py` checks objects against the official client's API models, and
`reconcile.py` / `handlers.py` apply them to a cluster through kopf.
"""
