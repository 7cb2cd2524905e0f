#!/usr/bin/env python3
"""A stand-in Kubernetes API server for tests (no real cluster runs in CI: no API server
is packaged for Debian or npm). It speaks the list/watch protocol as kube-apiserver does
over HTTPS with a bearer token, for Services (v1), EndpointSlices (discovery.k8s.io/v1)
and Pods (v1):

- GET /api/v1/services?limit=N[&continue=T]: a ServiceList {"kind", "apiVersion",
  "metadata": {"resourceVersion", "continue", "remainingItemCount"}, "items"} whose items
  carry no kind/apiVersion (as the real server serializes typed lists); `page_max` caps
  the page size so small tests exercise `continue`;
- GET ...?watch=1&resourceVersion=RV&allowWatchBookmarks=true&timeoutSeconds=S: a chunked
  stream of newline-delimited {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object"}
  (objects with kind/apiVersion), every change after RV replayed first, BOOKMARK events
  every `bookmark_every` seconds, ended cleanly after S seconds; a resourceVersion older
  than the compacted history answers 410 Gone — as an HTTP status with a Status body
  (gone_mode "http") or, as current servers do, 200 then an ERROR event whose object is a
  Status {code 410, reason "Expired"} (gone_mode "event");
- PATCH /apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/NAME with
  application/strategic-merge-patch+json: merged into the stored object (webhooks by
  name, the list's patch merge key); RBAC as a minimal role would give: only `patch` on
  that one object (any GET of it is 403).

The test drives it: add/modify/delete objects (each bumps the resourceVersion and reaches
open watches), change objects silently (only a relist sees them), compact the history,
drop open streams (the socket closed mid-stream, no final chunk), end streams with an
ERROR 410 event, hold new watches (503), rotate the expected token, and read the
recorded requests."""

import base64
import copy
import http.server
import json
import queue
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
import uuid

SERVICES = "services"
SLICES = "endpointslices"
PODS = "pods"

RESOURCES = {
    "/api/v1/services": (SERVICES, "Service", "v1"),
    "/apis/discovery.k8s.io/v1/endpointslices": (SLICES, "EndpointSlice", "discovery.k8s.io/v1"),
    "/api/v1/pods": (PODS, "Pod", "v1"),
}
KIND = {r: (k, v) for _, (r, k, v) in RESOURCES.items()}
WEBHOOKS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"


def now_ts():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def meta(name, namespace, labels=None, **extra):
    m = {"name": name, "namespace": namespace, "uid": str(uuid.uuid4()),
         "resourceVersion": "0", "creationTimestamp": now_ts()}
    if labels:
        m["labels"] = dict(labels)
    m.update(extra)
    return m


def service(name, namespace, cluster_ip, ports, selector=None):
    """A ClusterIP Service (cluster_ip "None": headless) with ports [(name, port,
    targetPort)], shaped as the API server returns it (defaults filled in)."""
    spec = {
        "ports": [{"name": n, "protocol": "TCP", "port": p, "targetPort": t}
                  for n, p, t in ports],
        "selector": dict(selector or {"app": name}),
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "type": "ClusterIP",
        "sessionAffinity": "None",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
    }
    return {"kind": "Service", "apiVersion": "v1",
            "metadata": meta(name, namespace, {"app": name}),
            "spec": spec, "status": {"loadBalancer": {}}}


def endpoint(ip, pod, namespace, ready=True, node="node-1"):
    """One EndpointSlice endpoint of a pod; ready None leaves the condition out (the API
    says: unknown, to be read as ready)."""
    cond = {"serving": True, "terminating": False}
    if ready is not None:
        cond["ready"] = ready
        cond["serving"] = ready
    return {"addresses": [ip], "conditions": cond,
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod,
                          "uid": str(uuid.uuid4())},
            "nodeName": node}


def endpoint_slice(name, namespace, service_name, endpoints, ports):
    """An EndpointSlice of service_name with ports [(name, port)]."""
    return {
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": meta(name, namespace, {
            "kubernetes.io/service-name": service_name,
            "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            generateName=service_name + "-",
            ownerReferences=[{"apiVersion": "v1", "kind": "Service", "name": service_name,
                              "uid": str(uuid.uuid4()), "controller": True,
                              "blockOwnerDeletion": True}]),
        "addressType": "IPv4",
        "endpoints": list(endpoints),
        "ports": [{"name": n, "protocol": "TCP", "port": p} for n, p in ports],
    }


def pod(name, namespace, ip, service_account="default", labels=None, port=8080):
    """A running Pod with one container."""
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": meta(name, namespace, labels or {"app": name.rsplit("-", 1)[0]}),
        "spec": {
            "containers": [{"name": "app", "image": "registry.example/app:1.0",
                            "ports": [{"containerPort": port, "protocol": "TCP"}],
                            "resources": {}, "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": service_account,
            "serviceAccount": service_account, "nodeName": "node-1",
            "securityContext": {}, "schedulerName": "default-scheduler",
            "enableServiceLinks": True, "preemptionPolicy": "PreemptLowerPriority",
            "priority": 0},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "hostIP": "192.168.0.10", "hostIPs": [{"ip": "192.168.0.10"}],
                   "startTime": now_ts(), "qosClass": "BestEffort",
                   "conditions": [{"type": "Ready", "status": "True",
                                   "lastProbeTime": None,
                                   "lastTransitionTime": now_ts()}]},
    }


def mutating_webhook_config(name, service_ns="tether-system", service_name="tether-control"):
    return {
        "kind": "MutatingWebhookConfiguration", "apiVersion": "admissionregistration.k8s.io/v1",
        "metadata": {"name": name, "uid": str(uuid.uuid4()), "resourceVersion": "1",
                     "creationTimestamp": now_ts()},
        "webhooks": [{
            "name": "inject.tether.io",
            "clientConfig": {"service": {"namespace": service_ns, "name": service_name,
                                         "path": "/inject", "port": 443}},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                       "resources": ["pods"], "scope": "*"}],
            "failurePolicy": "Fail", "matchPolicy": "Equivalent", "sideEffects": "None",
            "admissionReviewVersions": ["v1"], "timeoutSeconds": 10,
            "reinvocationPolicy": "Never",
            "namespaceSelector": {}, "objectSelector": {}}],
    }


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def strategic_merge(target, patch):
    """The strategic merge of a MutatingWebhookConfiguration patch: maps merged key by
    key, `webhooks` merged by `name` (its patchMergeKey), other lists replaced."""
    for k, v in patch.items():
        if k == "webhooks" and isinstance(v, list):
            cur = target.setdefault("webhooks", [])
            for item in v:
                old = next((w for w in cur if w.get("name") == item.get("name")), None)
                if old is None:
                    cur.append(copy.deepcopy(item))
                else:
                    strategic_merge(old, item)
        elif isinstance(v, dict) and isinstance(target.get(k), dict):
            strategic_merge(target[k], v)
        elif v is None:
            target.pop(k, None)
        else:
            target[k] = copy.deepcopy(v)


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # a client that failed the handshake (the impostor test) or went away


class ApiServer:
    """The stand-in. cert: a harness Cert for localhost; token: the bearer token it
    expects (change with set_token); client_ca: a Cert whose client certificates also
    authenticate (as kube-apiserver's --client-ca-file)."""

    def __init__(self, cert, token, client_ca=None):
        self.lock = threading.Condition()
        self.token = token
        self.rv = 100
        self.objects = {SERVICES: {}, SLICES: {}, PODS: {}}
        self.history = []  # (rv, resource, type, object)
        self.compacted = 0  # a watch from an RV below this is 410 Gone
        self.gone_mode = "event"
        self.page_max = 500
        self.bookmark_every = 1.0
        self.hold_watches = False
        self.requests = []  # {"method", "path", "query", "auth_ok", "ctype", "body"}
        self.streams = []  # open watch queues: (resource, queue)
        self.webhook_configs = {}
        self.patches = []
        self.published = []  # every object version served, for shape validation
        srv = _Server(("127.0.0.1", 0), self._handler())
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert.crt, cert.key)
        if client_ca is not None:
            ctx.load_verify_locations(client_ca.crt)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        self.srv = srv
        self.port = srv.server_address[1]
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()

    @property
    def url(self):
        return "https://localhost:%d" % self.port

    # ---- the test's side ----

    def set_token(self, token):
        with self.lock:
            self.token = token

    def _key(self, obj):
        return "%s/%s" % (obj["metadata"]["namespace"], obj["metadata"]["name"])

    def _publish(self, resource, etype, obj, silent=False):
        """Bumps the RV, stores obj with it, records the event and hands it to the open
        watches of resource (none when silent: only a list shows the change)."""
        with self.lock:
            self.rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self.rv)
            key = self._key(obj)
            self.published.append(obj)
            if etype == "DELETED":
                self.objects[resource].pop(key, None)
            else:
                self.objects[resource][key] = obj
            if not silent:
                self.history.append((self.rv, resource, etype, obj))
                for r, q in self.streams:
                    if r == resource:
                        q.put({"type": etype, "object": obj})
            self.lock.notify_all()
            return obj

    def add(self, resource, obj, silent=False):
        return self._publish(resource, "ADDED", obj, silent)

    def modify(self, resource, obj, silent=False):
        return self._publish(resource, "MODIFIED", obj, silent)

    def delete(self, resource, obj, silent=False):
        return self._publish(resource, "DELETED", obj, silent)

    def get(self, resource, namespace, name):
        with self.lock:
            return copy.deepcopy(self.objects[resource].get("%s/%s" % (namespace, name)))

    def compact(self):
        """Forgets the history up to now: a watch from an older RV is 410 Gone."""
        with self.lock:
            self.compacted = self.rv
            self.history = [h for h in self.history if h[0] > self.rv]

    def drop_streams(self, resource=None):
        """Closes open watches mid-stream (no final chunk), as a lost connection would."""
        with self.lock:
            for r, q in self.streams:
                if resource is None or r == resource:
                    q.put("DROP")

    def expire_streams(self, resource=None):
        """Ends open watches with an ERROR event {Status code 410 Expired}."""
        with self.lock:
            for r, q in self.streams:
                if resource is None or r == resource:
                    q.put("EXPIRE")

    def send_raw(self, resource, data):
        """Writes data (bytes, as is) into the open watches of resource: for tests of what
        a client does with a line that is not an event, or one too large."""
        with self.lock:
            for r, q in self.streams:
                if r == resource:
                    q.put(("RAW", data))

    def open_streams(self, resource=None):
        with self.lock:
            return sum(1 for r, _ in self.streams if resource is None or r == resource)

    def add_webhook_config(self, name):
        with self.lock:
            self.webhook_configs[name] = mutating_webhook_config(name)

    def served_objects(self):
        """Every object version this server stored (as watch events serve them, with kind
        and apiVersion) and the webhook configurations, for a schema check."""
        with self.lock:
            return copy.deepcopy(self.published + list(self.webhook_configs.values()))

    def recorded(self, pred=lambda r: True):
        with self.lock:
            return [r for r in self.requests if pred(r)]

    def stop(self):
        self.drop_streams()
        self.srv.shutdown()
        self.srv.server_close()

    # ---- the HTTP side ----

    def _handler(self):
        api = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _json(self, code, doc):
                body = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-cache, private")
                self.end_headers()
                self.wfile.write(body)

            def _record(self, body=b""):
                u = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
                with api.lock:
                    ok = (self.headers.get("Authorization") == "Bearer " + api.token or
                          bool(self.connection.getpeercert()))
                    rec = {"method": self.command, "path": u.path, "query": q, "auth_ok": ok,
                           "client_cert": bool(self.connection.getpeercert()),
                           "ctype": self.headers.get("Content-Type"), "body": body,
                           "time": time.monotonic()}
                    api.requests.append(rec)
                return u.path, q, ok

            def do_GET(self):
                path, q, ok = self._record()
                if not ok:
                    return self._json(401, status(401, "Unauthorized", "Unauthorized"))
                if path.startswith(WEBHOOKS):
                    return self._json(403, status(403, "Forbidden", (
                        'mutatingwebhookconfigurations.admissionregistration.k8s.io "%s" is '
                        'forbidden: User "system:serviceaccount:tether-system:tether-control"'
                        ' cannot get resource "mutatingwebhookconfigurations"') %
                        path[len(WEBHOOKS):]))
                if path not in RESOURCES:
                    return self._json(404, status(404, "NotFound", "the server could not "
                                                  "find the requested resource"))
                resource = RESOURCES[path][0]
                if q.get("watch") in ("1", "true"):
                    return self._watch(resource, q)
                return self._list(resource, q)

            def _list(self, resource, q):
                kind, version = KIND[resource]
                with api.lock:
                    items = [api.objects[resource][k] for k in sorted(api.objects[resource])]
                    rv = api.rv
                start = 0
                if q.get("continue"):
                    try:
                        tok = json.loads(base64.urlsafe_b64decode(q["continue"]))
                        start, rv = int(tok["start"]), int(tok["rv"])
                    except (ValueError, KeyError, TypeError):
                        return self._json(400, status(400, "BadRequest",
                                                      "continue key is not valid"))
                    if rv < api.compacted:
                        return self._json(410, status(410, "Expired", (
                            "The provided continue parameter is too old to display a "
                            "consistent list result.")))
                limit = int(q.get("limit") or 0) or len(items)
                limit = min(limit, api.page_max)
                page = items[start:start + limit]
                md = {"resourceVersion": str(rv)}
                if start + limit < len(items):
                    md["continue"] = base64.urlsafe_b64encode(json.dumps(
                        {"rv": rv, "start": start + limit}).encode()).decode()
                    md["remainingItemCount"] = len(items) - start - limit
                out = []
                for o in page:  # items of a typed list carry no kind/apiVersion
                    o = copy.deepcopy(o)
                    o.pop("kind", None)
                    o.pop("apiVersion", None)
                    out.append(o)
                self._json(200, {"kind": kind + "List", "apiVersion": version,
                                 "metadata": md, "items": out})

            def _chunk(self, doc):
                data = (json.dumps(doc) + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def _watch(self, resource, q):
                kind, version = KIND[resource]
                if api.hold_watches:
                    return self._json(503, status(503, "ServiceUnavailable",
                                                  "the server is shutting down"))
                try:
                    rv = int(q.get("resourceVersion") or 0)
                except ValueError:
                    return self._json(400, status(400, "BadRequest", "bad resourceVersion"))
                timeout = min(int(q.get("timeoutSeconds") or 1800), 1800)
                bookmarks = q.get("allowWatchBookmarks") == "true"
                too_old = rv < api.compacted
                if too_old and api.gone_mode == "http":
                    return self._json(410, status(410, "Expired", (
                        "too old resource version: %d (%d)" % (rv, api.compacted))))
                mq = queue.Queue()
                with api.lock:
                    replay = [{"type": t, "object": o} for r, res, t, o in api.history
                              if res == resource and r > rv]
                    if not too_old:
                        api.streams.append((resource, mq))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Cache-Control", "no-cache, private")
                self.end_headers()
                try:
                    if too_old:
                        self._chunk({"type": "ERROR", "object": status(
                            410, "Expired", "too old resource version: %d (%d)" %
                            (rv, api.compacted))})
                        self.wfile.write(b"0\r\n\r\n")
                        return
                    for ev in replay:
                        self._chunk(ev)
                    deadline = time.monotonic() + timeout
                    while True:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        try:
                            ev = mq.get(timeout=min(left, api.bookmark_every))
                        except queue.Empty:
                            if bookmarks:
                                with api.lock:
                                    cur = api.rv
                                self._chunk({"type": "BOOKMARK", "object": {
                                    "kind": kind, "apiVersion": version,
                                    "metadata": {"resourceVersion": str(cur),
                                                 "creationTimestamp": None}}})
                            continue
                        if ev == "DROP":
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if isinstance(ev, tuple) and ev[0] == "RAW":
                            for i in range(0, len(ev[1]), 1 << 20):
                                part = ev[1][i:i + (1 << 20)]
                                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                            self.wfile.flush()
                            continue
                        if ev == "EXPIRE":
                            self._chunk({"type": "ERROR", "object": status(
                                410, "Expired", "too old resource version")})
                            break
                        self._chunk(ev)
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (OSError, ssl.SSLError):
                    pass
                finally:
                    self.close_connection = True
                    with api.lock:
                        api.streams = [s for s in api.streams if s[1] is not mq]

            def do_PATCH(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if 0 < n < (1 << 20) else b""
                path, q, ok = self._record(body)
                if not ok:
                    return self._json(401, status(401, "Unauthorized", "Unauthorized"))
                name = path[len(WEBHOOKS):] if path.startswith(WEBHOOKS) else None
                if name is None:
                    return self._json(403, status(403, "Forbidden", "patch is allowed only "
                                                  "on the webhook configuration"))
                if self.headers.get("Content-Type") != "application/strategic-merge-patch+json":
                    return self._json(415, status(415, "UnsupportedMediaType",
                                                  "the body of the request was in an "
                                                  "unknown format"))
                with api.lock:
                    cur = api.webhook_configs.get(name)
                    if cur is None:
                        return self._json(404, status(404, "NotFound", (
                            'mutatingwebhookconfigurations.admissionregistration.k8s.io '
                            '"%s" not found') % name))
                    try:
                        patch = json.loads(body)
                        if not isinstance(patch, dict):
                            raise ValueError("not an object")
                        strategic_merge(cur, patch)
                    except ValueError as e:
                        return self._json(400, status(400, "BadRequest", str(e)))
                    api.rv += 1
                    cur["metadata"]["resourceVersion"] = str(api.rv)
                    api.patches.append({"ctype": self.headers.get("Content-Type"),
                                        "patch": patch})
                    doc = copy.deepcopy(cur)
                self._json(200, doc)

            def _refuse(self):
                self._record()
                self._json(405, status(405, "MethodNotAllowed", "method not allowed"))

            do_POST = do_PUT = do_DELETE = _refuse

        return H
