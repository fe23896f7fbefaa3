"""A real HTTP server that speaks a slice of the Kubernetes API as the API server does.

`python -m tests.support.kube_api --port-file F --token T --deployment ns/name=2 ...`
serves, on a free loopback port written to F, to clients with the bearer token:

- discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/{group}/{version}`), what kopf
  scans: ConfigMaps, Services, Events, Namespaces, Deployments (+ `scale`),
  CustomResourceDefinitions and TandemDeployments (+ `status`);
- the Deployment `scale` subresource: `GET` (an `autoscaling/v1` Scale), `PATCH`
  (`application/merge-patch+json` and `application/strategic-merge-patch+json`: an object;
  `application/json-patch+json`: operations; others 415) and `PUT` (409 Conflict when its
  `metadata.resourceVersion` is stale);
- namespaced ConfigMaps, Services, Events, Deployments and TandemDeployments: `GET` one, `GET`
  the collection (`labelSelector` `k=v,...`; `watch=true`: one JSON event a line, every change
  after `resourceVersion`, until `timeoutSeconds`), `POST` (`generateName` honoured; 409
  AlreadyExists), `PATCH` (merge, JSON patch with `test`: 422 when it fails, and
  `application/apply-patch+yaml`: server-side apply needs `fieldManager`; here the applied
  object replaces the old one, except what a whole-object apply leaves to other managers: a
  Deployment's `spec.replicas` and a Service's `spec.clusterIP` when it has none), `PATCH` of
  `/status` (the status only; the main resource's patches leave it alone), `DELETE` (a
  Service comes back whole, others as a Status);
- cluster-wide lists of Namespaces (`tandem`) and CRDs (none), with quiet watches.

`metadata` is kept as the API keeps it (uid, resourceVersion counted up on every write,
creationTimestamp). Errors are `Status` objects with the API's codes and reasons (401
without the token, 404 NotFound, 409, 415, 422). It is not an API server: no admission, no
defaulting, no field ownership, no garbage collection. For tests only: `POST
/_test/deployments` (`{"namespace", "name", "replicas"}`) creates a bare Deployment, `GET
/_test/requests` lists the requests served (method, path, content type, query), `GET
/_test/objects` every stored object.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.support.processes import ServiceProcess

SCALE_PATH = "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"
COLLECTIONS = {
    # URL resource -> (path prefix, apiVersion, kind)
    "configmaps": ("/api/v1", "v1", "ConfigMap"),
    "services": ("/api/v1", "v1", "Service"),
    "events": ("/api/v1", "v1", "Event"),
    "deployments": ("/apis/apps/v1", "apps/v1", "Deployment"),
    "tandemdeployments": ("/apis/tandem.dev/v1alpha1", "tandem.dev/v1alpha1", "TandemDeployment"),
}
# What discovery lists (what kopf scans before it watches): group/version -> resources.
DISCOVERY = {
    "v1": [("configmaps", "ConfigMap", []), ("services", "Service", []), ("events", "Event", []),
           ("namespaces", "Namespace", [])],
    "apps/v1": [("deployments", "Deployment", ["scale"])],
    "apiextensions.k8s.io/v1": [("customresourcedefinitions", "CustomResourceDefinition", [])],
    "tandem.dev/v1alpha1": [("tandemdeployments", "TandemDeployment", ["status"])],
}  # fmt: skip
# Cluster-scoped lists (what the operator's ClusterRole reads): fixed, and their watches quiet.
CLUSTER_LISTS = {
    "/api/v1/namespaces": ("v1", "NamespaceList", [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tandem", "uid": "ns-tandem", "resourceVersion": "1"}}]),
    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions": ("apiextensions.k8s.io/v1", "CustomResourceDefinitionList", []),
}  # fmt: skip
_OBJECT_PATCHES = ("application/merge-patch+json", "application/strategic-merge-patch+json")
Key = tuple[str, str, str]  # (resource, namespace, name)


class KubeApi:
    """The server's state: objects by (resource, namespace, name) and the requests served."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.objects: dict[Key, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self._version = 0
        self._lock = asyncio.Lock()
        # Every write, for watches: (resourceVersion, resource, namespace, type, object).
        self.changes: list[tuple[int, str, str, str, dict[str, Any]]] = []
        self._changed = asyncio.Condition()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_authorize])
        app.router.add_get(SCALE_PATH, self.get_scale)
        app.router.add_patch(SCALE_PATH, self.patch_scale)
        app.router.add_put(SCALE_PATH, self.put_scale)
        app.router.add_get("/version", self.version)
        for path in CLUSTER_LISTS:
            app.router.add_get(path, self.cluster_list)
        app.router.add_get("/api", self.core_versions)
        app.router.add_get("/apis", self.groups)
        for group_version in DISCOVERY:
            prefix = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
            app.router.add_get(prefix, self._bind(self.resources, group_version))
        for resource, (prefix, _, _) in COLLECTIONS.items():
            collection = f"{prefix}/namespaces/{{namespace}}/{resource}"
            one = collection + "/{name}"
            app.router.add_get(collection, self._bind(self.list_objects, resource))
            app.router.add_post(collection, self._bind(self.create_object, resource))
            app.router.add_get(one, self._bind(self.get_object, resource))
            app.router.add_patch(one, self._bind(self.patch_object, resource))
            app.router.add_patch(one + "/status", self._bind(self.patch_status, resource))
            app.router.add_delete(one, self._bind(self.delete_object, resource))
        app.router.add_post("/_test/deployments", self.create_bare_deployment)
        app.router.add_get("/_test/requests", self.list_requests)
        app.router.add_get("/_test/objects", self.dump_objects)
        return app

    @staticmethod
    def _bind(handler: Any, resource: str) -> Any:
        async def bound(request: web.Request) -> web.StreamResponse:
            return await handler(request, resource)  # type: ignore[no-any-return]

        return bound

    @web.middleware
    async def _record_and_authorize(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith("/_test/"):
            self.requests.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "content_type": request.headers.get("Content-Type", ""),
                    "query": dict(request.query),
                }
            )
            if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
                return _status(401, "Unauthorized", "Unauthorized")
        return await handler(request)  # type: ignore[no-any-return]

    # -- stored objects ---------------------------------------------------------------------

    def _store(self, key: Key, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        resource, namespace, name = key
        _, api_version, kind = COLLECTIONS[resource]
        self._version += 1
        stored = copy.deepcopy(obj)
        stored["apiVersion"], stored["kind"] = api_version, kind
        meta = stored.setdefault("metadata", {})
        meta["name"], meta["namespace"] = name, namespace
        meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        meta["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else "2026-01-01T00:00:00Z"  # fmt: skip
        meta["resourceVersion"] = str(self._version)
        self.objects[key] = stored
        self._record_change(key, "MODIFIED" if old else "ADDED", stored)
        return stored

    def _record_change(self, key: Key, kind: str, obj: dict[str, Any]) -> None:
        self.changes.append((self._version, key[0], key[1], kind, copy.deepcopy(obj)))

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    # -- discovery ------------------------------------------------------------------------------

    async def cluster_list(self, request: web.Request) -> web.StreamResponse:
        api_version, kind, items = CLUSTER_LISTS[request.path]
        if request.query.get("watch") not in ("true", "1"):
            return web.json_response({"apiVersion": api_version, "kind": kind,
                                      "metadata": {"resourceVersion": "1"}, "items": items})  # fmt: skip
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await asyncio.sleep(float(request.query.get("timeoutSeconds") or 300))  # nothing changes
        await response.write_eof()
        return response

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"major": "1", "minor": "32", "gitVersion": "v1.32.0"})

    async def core_versions(self, request: web.Request) -> web.Response:
        return web.json_response({"kind": "APIVersions", "versions": ["v1"]})

    async def groups(self, request: web.Request) -> web.Response:
        groups = []
        for group_version in DISCOVERY:
            if "/" in group_version:
                group, version = group_version.split("/")
                entry = {"groupVersion": group_version, "version": version}
                groups.append({"name": group, "versions": [entry], "preferredVersion": entry})
        return web.json_response({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})

    async def resources(self, request: web.Request, group_version: str) -> web.Response:
        listed = []
        for plural, kind, subresources in DISCOVERY[group_version]:
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            namespaced = plural not in ("namespaces", "customresourcedefinitions")
            listed.append({"name": plural, "singularName": kind.lower(), "namespaced": namespaced,
                           "kind": kind, "verbs": verbs})  # fmt: skip
            listed += [{"name": f"{plural}/{sub}", "singularName": "", "namespaced": True,
                        "kind": kind, "verbs": ["get", "patch", "update"]} for sub in subresources]  # fmt: skip
        return web.json_response({"kind": "APIResourceList", "groupVersion": group_version,
                                  "resources": listed})  # fmt: skip

    def _not_found(self, resource: str, name: str) -> web.Response:
        group = "apps" if resource == "deployments" else ""
        noun = f"{resource}.{group}" if group else resource
        return _status(404, "NotFound", f'{noun} "{name}" not found',
                       details={"name": name, "group": group, "kind": resource})  # fmt: skip

    async def get_object(self, request: web.Request, resource: str) -> web.Response:
        key = (resource, request.match_info["namespace"], request.match_info["name"])
        found = self.objects.get(key)
        return web.json_response(found) if found else self._not_found(resource, key[2])

    async def list_objects(self, request: web.Request, resource: str) -> web.StreamResponse:
        if request.query.get("watch") in ("true", "1"):
            return await self._watch(request, resource)
        namespace = request.match_info["namespace"]
        wanted = dict(
            p.split("=", 1) for p in request.query.get("labelSelector", "").split(",") if p
        )
        items = [
            obj
            for (res, ns, _), obj in sorted(self.objects.items())
            if res == resource and ns == namespace
            and all((obj["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]  # fmt: skip
        _, api_version, kind = COLLECTIONS[resource]
        return web.json_response({"apiVersion": api_version, "kind": f"{kind}List",
                                  "metadata": {"resourceVersion": str(self._version)},
                                  "items": items})  # fmt: skip

    async def _watch(self, request: web.Request, resource: str) -> web.StreamResponse:
        """Changes after `resourceVersion`, one JSON event a line, until `timeoutSeconds`."""
        namespace = request.match_info["namespace"]
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for version, res, ns, kind, obj in list(self.changes):
                if version > since and res == resource and ns == namespace:
                    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                    since = version
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
                except TimeoutError:
                    pass
        await response.write_eof()
        return response

    async def create_object(self, request: web.Request, resource: str) -> web.Response:
        async with self._lock:
            body = json.loads(await request.text())
            meta = body.get("metadata") or {}
            name = meta.get("name") or meta.get("generateName", "") + uuid.uuid4().hex[:5]
            key = (resource, request.match_info["namespace"], name)
            if key in self.objects:
                return _status(409, "AlreadyExists", f'{resource} "{name}" already exists')
            return web.json_response(self._store(key, body, None), status=201)

    async def patch_object(self, request: web.Request, resource: str) -> web.Response:
        return await self._patch(request, resource, status_only=False)

    async def patch_status(self, request: web.Request, resource: str) -> web.Response:
        return await self._patch(request, resource, status_only=True)

    async def _patch(
        self, request: web.Request, resource: str, *, status_only: bool
    ) -> web.Response:
        import jsonpatch  # kopf's own dependency

        async with self._lock:
            key = (resource, request.match_info["namespace"], request.match_info["name"])
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            old = self.objects.get(key)
            if old is None:
                return self._not_found(resource, key[2])
            body = json.loads(await request.text())  # JSON is YAML
            if content_type == "application/apply-patch+yaml":
                if not request.query.get("fieldManager"):
                    return _status(400, "BadRequest", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")  # fmt: skip
                new = body
                spec = new.setdefault("spec", {})
                if resource == "deployments" and "replicas" not in spec:
                    spec["replicas"] = old["spec"].get("replicas", 1)
                if (
                    resource == "services"
                    and "clusterIP" in old["spec"]
                    and "clusterIP" not in spec
                ):
                    spec["clusterIP"] = old["spec"]["clusterIP"]
            elif content_type in _OBJECT_PATCHES:
                if not isinstance(body, dict):
                    return _status(400, "BadRequest", "a merge patch is a JSON object")
                new = _merge(copy.deepcopy(old), body)
            elif content_type == "application/json-patch+json":
                try:
                    new = jsonpatch.apply_patch(copy.deepcopy(old), body)
                except jsonpatch.JsonPatchTestFailed:
                    return _status(422, "Invalid", "the server rejected our request due to an error in our request")  # fmt: skip
            else:
                return _status(415, "UnsupportedMediaType", f"unknown patch type {content_type!r}")
            if status_only:
                new = {**copy.deepcopy(old), "status": new.get("status")}
            elif "status" in old and resource == "tandemdeployments":
                new["status"] = old["status"]  # the status subresource is written apart
            new["metadata"] = {**new.get("metadata", {})}
            return web.json_response(self._store(key, new, old))

    async def delete_object(self, request: web.Request, resource: str) -> web.Response:
        async with self._lock:
            key = (resource, request.match_info["namespace"], request.match_info["name"])
            deleted = self.objects.pop(key, None)
            if deleted is None:
                return self._not_found(resource, key[2])
            self._version += 1
            self._record_change(key, "DELETED", deleted)
            if resource == "services":  # as the API does: a deleted Service comes back whole
                return web.json_response(deleted)
            return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {},
                                      "status": "Success", "details": {"name": key[2], "kind": resource}})  # fmt: skip

    # -- the scale subresource --------------------------------------------------------------

    def _deployment(self, request: web.Request) -> tuple[Key, dict[str, Any]] | web.Response:
        key = ("deployments", request.match_info["namespace"], request.match_info["name"])
        found = self.objects.get(key)
        return (key, found) if found else self._not_found("deployments", key[2])

    async def get_scale(self, request: web.Request) -> web.Response:
        found = self._deployment(request)
        return found if isinstance(found, web.Response) else web.json_response(_scale(found[1]))

    async def patch_scale(self, request: web.Request) -> web.Response:
        async with self._lock:
            found = self._deployment(request)
            if isinstance(found, web.Response):
                return found
            key, deployment = found
            content_type = request.headers.get("Content-Type", "").split(";")[0].strip()
            try:
                body = json.loads(await request.text())
            except ValueError:
                return _status(400, "BadRequest", "the body is not JSON")
            current = deployment["spec"].get("replicas", 1)
            if content_type in _OBJECT_PATCHES:
                if not isinstance(body, dict):
                    return _status(400, "BadRequest", "a merge patch is a JSON object")
                replicas = (body.get("spec") or {}).get("replicas", current)
            elif content_type == "application/json-patch+json":
                if not isinstance(body, list):
                    return _status(400, "BadRequest", "a JSON patch is a list of operations")
                replicas = current
                for op in body:
                    if op.get("op") in ("replace", "add") and op.get("path") == "/spec/replicas":
                        replicas = op.get("value")
            else:
                return _status(415, "UnsupportedMediaType",
                               f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got {content_type!r}")  # fmt: skip
            return self._set_replicas(key, deployment, replicas)

    async def put_scale(self, request: web.Request) -> web.Response:
        async with self._lock:
            found = self._deployment(request)
            if isinstance(found, web.Response):
                return found
            key, deployment = found
            body = json.loads(await request.text())
            version = (body.get("metadata") or {}).get("resourceVersion")
            if version and version != deployment["metadata"]["resourceVersion"]:
                return _status(409, "Conflict",
                               f'Operation cannot be fulfilled on deployments.apps "{key[2]}": the object has been modified; please apply your changes to the latest version and try again')  # fmt: skip
            return self._set_replicas(key, deployment, (body.get("spec") or {}).get("replicas", 0))

    def _set_replicas(self, key: Key, deployment: dict[str, Any], replicas: Any) -> web.Response:
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            return _status(422, "Invalid",
                           f'Scale.autoscaling "{key[2]}" is invalid: spec.replicas: Invalid value: {replicas!r}: must be greater than or equal to 0')  # fmt: skip
        updated = copy.deepcopy(deployment)
        updated["spec"]["replicas"] = replicas
        return web.json_response(_scale(self._store(key, updated, deployment)))

    # -- for tests ----------------------------------------------------------------------------

    async def create_bare_deployment(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._store(("deployments", body["namespace"], body["name"]), _bare_deployment(body["name"], int(body.get("replicas", 1))), None)  # fmt: skip
        return web.json_response({"created": f"{body['namespace']}/{body['name']}"})

    async def list_requests(self, request: web.Request) -> web.Response:
        return web.json_response(self.requests)

    async def dump_objects(self, request: web.Request) -> web.Response:
        return web.json_response({"/".join(key): obj for key, obj in self.objects.items()})


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge(target.get(key), value)
    return target


def _bare_deployment(name: str, replicas: int) -> dict[str, Any]:
    return {
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "worker", "image": "tandem-worker"}]},
            },  # fmt: skip
        }
    }


def _scale(deployment: dict[str, Any]) -> dict[str, Any]:
    meta = deployment["metadata"]
    replicas = deployment["spec"].get("replicas", 1)
    labels = deployment["spec"]["selector"].get("matchLabels", {})
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
        },  # fmt: skip
        "spec": {"replicas": replicas},
        "status": {
            "replicas": replicas,
            "selector": ",".join(f"{k}={v}" for k, v in labels.items()),
        },  # fmt: skip
    }


def _status(
    code: int, reason: str, message: str, details: dict[str, Any] | None = None
) -> web.Response:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason, "code": code}  # fmt: skip
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


class KubeApiProcess:
    """This server in its own process, with a kubeconfig that points the official client at it."""

    def __init__(self, proc: ServiceProcess, port: int, kubeconfig: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.kubeconfig = kubeconfig
        self.token = ""

    @classmethod
    def start(
        cls,
        tmp_dir: Path,
        *,
        token: str,
        deployments: Sequence[str] = (),
        context_namespace: str = "",
        client_token: str | None = None,
    ) -> KubeApiProcess:
        """Start the server; its kubeconfig carries `client_token` (default: the right `token`)."""
        port_file = tmp_dir / f"kube-api-{uuid.uuid4().hex[:8]}.port"
        args = ["--port-file", str(port_file), "--token", token]
        for deployment in deployments:
            args += ["--deployment", deployment]
        root = Path(__file__).resolve().parents[2]
        proc = ServiceProcess(
            "tests.support.kube_api", args, tmp_dir, env={"PYTHONPATH": str(root)}
        )
        proc.wait_until(port_file.exists, 30.0, "the API server's port file")
        port = int(port_file.read_text())
        kubeconfig = tmp_dir / f"kubeconfig-{port}.yaml"
        context: dict[str, Any] = {"cluster": "test", "user": "planner"}
        if context_namespace:
            context["namespace"] = context_namespace
        kubeconfig.write_text(json.dumps({  # JSON is YAML
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "planner", "user": {"token": token if client_token is None else client_token}}],
            "contexts": [{"name": "test", "context": context}],
            "current-context": "test",
        }))  # fmt: skip
        api = cls(proc, port, kubeconfig)
        api.token = token
        return api

    def _call(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {self.token}"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.loads(resp.read())

    def post(self, path: str, body: Any) -> Any:
        """POST an object as a client with the token would."""
        return self._call("POST", path, body)

    def merge_patch(self, path: str, body: Any) -> Any:
        return self._call("PATCH", path, body, "application/merge-patch+json")

    def create(self, namespace: str, name: str, replicas: int) -> None:
        self._call("POST", "/_test/deployments", {"namespace": namespace, "name": name, "replicas": replicas})  # fmt: skip

    def requests(self) -> list[dict[str, Any]]:
        return self._call("GET", "/_test/requests")  # type: ignore[no-any-return]

    def objects(self) -> dict[str, dict[str, Any]]:
        """Every stored object by "resource/namespace/name"."""
        return self._call("GET", "/_test/objects")  # type: ignore[no-any-return]

    def replicas(self, namespace: str, name: str) -> int | None:
        """The Deployment's spec.replicas as the server holds it (None: no such Deployment)."""
        found = self.objects().get(f"deployments/{namespace}/{name}")
        return None if found is None else int(found["spec"].get("replicas", 1))

    def stop(self) -> None:
        self.proc.stop()


def _write_port(path: Path, port: int) -> None:
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(str(port))
    tmp.rename(path)  # whole or absent: the test never reads half a number


async def _serve(args: argparse.Namespace) -> None:
    api = KubeApi(args.token)
    for spec in args.deployment:
        where, _, replicas = spec.partition("=")
        namespace, _, name = where.partition("/")
        api._store(
            ("deployments", namespace, name), _bare_deployment(name, int(replicas or 1)), None
        )
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    _write_port(args.port_file, runner.addresses[0][1])
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--token", default="")
    parser.add_argument("--deployment", action="append", default=[], help="ns/name=replicas")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
