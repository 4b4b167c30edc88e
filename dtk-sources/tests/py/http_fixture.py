#!/usr/bin/env python3
"""A local HTTP server for the tests of the `http` and `hockeyapp` kinds (stdlib only).

    python3 http_fixture.py --root DIR [--port 0]

Binds 127.0.0.1 (port 0: any free port), prints the port on the first line of stdout,
then serves until killed. Everything it serves comes from DIR, which the test changes
while the server runs:

  DIR/files/PATH          served at /PATH, with ETag (sha256 of the content) and
                          Last-Modified (the file's mtime); honours If-None-Match and
                          If-Modified-Since with 304.
  DIR/token               the HockeyApp API token; /api/ requests must send it in
                          X-HockeyAppToken (else 401). No file: no token required.
  DIR/hockeyapp/apps.json          a JSON list of apps (objects with public_identifier,
                                   id, title, ...), served as GET /api/2/apps.
  DIR/hockeyapp/APP_ID/builds.json a JSON list of builds, newest first: objects with id,
                                   version, shortversion, title, timestamp, file (a name
                                   in DIR/hockeyapp/APP_ID/files/), and optionally
                                   "no_url": true. Served as
                                   GET /api/2/apps/APP_ID/app_versions, and each file as
                                   GET /api/2/apps/APP_ID/app_versions/ID?format=FORMAT.
                                   POST /api/2/apps/APP_ID/app_versions/upload (multipart
                                   form: the build file as `ipa`, optional `notes`,
                                   `notes_type`, `status`, `notify`, as the API v2
                                   documents it) stores the file under its name in files/ (the same
                                   name again must hold the same bytes),
                                   adds a build numbered one more than the highest, newest
                                   first, and answers 201 with the new version (`version`
                                   is its build number). A stored name with other bytes,
                                   or no `ipa`, answers 422.
  DIR/ctl/                switches (files; remove them to switch back):
      garbage             API answers are not JSON.
      truncate            file and build downloads announce more bytes than they send,
                          then close the connection.
      stall               sleep this many seconds (the file's content, default 30)
                          before answering anything.
      no-validators       no ETag / Last-Modified, no 304.
      html                build downloads answer an HTML page.
      per_page            paginate app_versions with this many builds per page.
      etag                use this ETag for every file instead of one from the content.
      status              answer file requests with this HTTP status (401, 403, 500, ...).
      busy                "N SECONDS [STATUS]": answer the next N requests STATUS
                          (default 429) with Retry-After: SECONDS; a request that comes
                          back before SECONDS have passed is answered the same and
                          logged with status "early" (a client that ignores the wait).
      trickle             send file bodies one byte every this many seconds.
  DIR/requests.log        one line per request: METHOD PATH STATUS AUTH, where AUTH is
                          token-ok, token-bad or no-token (the token itself is never
                          written).
"""

import argparse
import email.parser
import email.policy
import email.utils
import hashlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

ROOT = "."
PORT = 0
LOG_LOCK = threading.Lock()


def ctl(name):
    p = os.path.join(ROOT, "ctl", name)
    if not os.path.exists(p):
        return None
    with open(p) as f:
        return f.read().strip()


def read_json(path):
    with open(path) as f:
        return json.load(f)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dtk-fixture/1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def auth(self):
        sent = self.headers.get("X-HockeyAppToken")
        token_file = os.path.join(ROOT, "token")
        if not os.path.exists(token_file):
            return "no-token" if sent is None else "token-ok"
        with open(token_file) as f:
            want = f.read().strip()
        if sent is None:
            return "no-token"
        return "token-ok" if sent == want else "token-bad"

    def record(self, status):
        with LOG_LOCK:
            with open(os.path.join(ROOT, "requests.log"), "a") as f:
                f.write(f"{self.command} {self.path} {status} {self.auth()}\n")

    def send(self, status, body=b"", headers=None, truncate=False, logged=None):
        self.record(status if logged is None else logged)
        self.send_response(status)
        headers = dict(headers or {})
        length = len(body) + (100 if truncate else 0)
        headers.setdefault("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            if truncate:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            trickle = ctl("trickle") if status == 200 else None
            if trickle:
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    time.sleep(float(trickle))
                return
            self.wfile.write(body)

    def send_json(self, status, obj):
        if ctl("garbage") is not None:
            body = b"<html>this is not {json"
        else:
            body = json.dumps(obj).encode()
        self.send(status, body, {"Content-Type": "application/json"})

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            parts = urlsplit(self.path)
            path = unquote(parts.path)
            if path.startswith("/api/"):
                return self.api(path, parse_qs(parts.query), body)
            return self.send(405, b"", {})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        try:
            self.handle_get()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def handle_get(self):
        stall = ctl("stall")
        if stall is not None:
            time.sleep(float(stall or "30"))
        busy = ctl("busy")
        if busy:
            n, wait, *status = busy.split()
            status = int(status[0]) if status else 429
            headers = {"Retry-After": wait}
            with LOG_LOCK:
                until = ctl("busy-until")
                early = until is not None and time.time() < float(until)
                if not early and int(n) > 0:
                    with open(os.path.join(ROOT, "ctl", "busy"), "w") as f:
                        f.write(f"{int(n) - 1} {wait} {status}")
                    with open(os.path.join(ROOT, "ctl", "busy-until"), "w") as f:
                        # A little slack for the client's timer granularity.
                        f.write(str(time.time() + float(wait) - 0.05))
            if early:
                return self.send(status, b"too early\n", headers, logged="early")
            if int(n) > 0:
                return self.send(status, b"slow down\n", headers)
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        if path.startswith("/api/"):
            return self.api(path, query)
        return self.static(path)

    # ------------------------------------------------------------------ static files
    def static(self, path):
        status = ctl("status")
        if status:
            return self.send(int(status), b"refused\n", {"Content-Type": "text/plain"})
        rel = path.lstrip("/")
        full = os.path.realpath(os.path.join(ROOT, "files", rel))
        base = os.path.realpath(os.path.join(ROOT, "files"))
        if not full.startswith(base + os.sep) or not os.path.isfile(full):
            return self.send(404, b"not found\n", {"Content-Type": "text/plain"})
        with open(full, "rb") as f:
            body = f.read()
        headers = {"Content-Type": "application/octet-stream"}
        if ctl("no-validators") is None:
            etag = ctl("etag") or ('"' + hashlib.sha256(body).hexdigest()[:16] + '"')
            mtime = int(os.stat(full).st_mtime)
            headers["ETag"] = etag
            headers["Last-Modified"] = email.utils.formatdate(mtime, usegmt=True)
            inm = self.headers.get("If-None-Match")
            ims = self.headers.get("If-Modified-Since")
            if inm is not None:
                if inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]:
                    return self.send(304, b"", {"ETag": etag}, False)
            elif ims is not None:
                try:
                    since = email.utils.parsedate_to_datetime(ims).timestamp()
                    if mtime <= since:
                        return self.send(304, b"", {"ETag": etag}, False)
                except (TypeError, ValueError):
                    pass
        self.send(200, body, headers, truncate=ctl("truncate") is not None)

    # ------------------------------------------------------------------ HockeyApp API v2
    def api(self, path, query, body=None):
        if self.auth() != "token-ok" and os.path.exists(os.path.join(ROOT, "token")):
            return self.send(
                401,
                b'{"errors":{"credentials":["not authorized"]}}',
                {"Content-Type": "application/json"},
            )
        segs = [s for s in path.split("/") if s]  # api, 2, apps, ...
        if segs[:3] != ["api", "2", "apps"]:
            return self.send(404, b"{}", {"Content-Type": "application/json"})
        hdir = os.path.join(ROOT, "hockeyapp")
        if len(segs) == 3:
            apps_file = os.path.join(hdir, "apps.json")
            if not os.path.exists(apps_file):
                return self.send(404, b"{}", {"Content-Type": "application/json"})
            return self.send_json(200, {"apps": read_json(apps_file), "status": "success"})
        app_id = segs[3]
        builds_file = os.path.join(hdir, app_id, "builds.json")
        if "/" in app_id or app_id.startswith(".") or not os.path.exists(builds_file):
            return self.send(404, b'{"errors":"not found"}', {"Content-Type": "application/json"})
        builds = read_json(builds_file)
        if self.command == "POST":
            if segs[4:] == ["app_versions", "upload"]:
                return self.upload(app_id, builds, builds_file, body or b"")
            return self.send(404, b"{}", {"Content-Type": "application/json"})
        if len(segs) == 5 and segs[4] == "app_versions":
            return self.versions(app_id, builds, query)
        if len(segs) == 6 and segs[4] == "app_versions":
            return self.build_file(app_id, builds, segs[5])
        return self.send(404, b"{}", {"Content-Type": "application/json"})

    def numeric_id(self, app_id):
        try:
            for a in read_json(os.path.join(ROOT, "hockeyapp", "apps.json")):
                if a.get("public_identifier") == app_id:
                    return a.get("id", 0)
        except OSError:
            pass
        return 0

    def versions(self, app_id, builds, query):
        base = f"http://127.0.0.1:{PORT}"
        numeric = self.numeric_id(app_id)
        out = []
        for b in builds:
            fpath = os.path.join(ROOT, "hockeyapp", app_id, "files", b["file"])
            size = os.path.getsize(fpath) if os.path.exists(fpath) else 0
            v = {
                "id": b["id"],
                "app_id": numeric,
                "version": str(b["version"]),
                "shortversion": b.get("shortversion", ""),
                "title": b.get("title", "App"),
                "timestamp": b.get("timestamp", 0),
                "appsize": size,
                "mandatory": False,
                "status": 2,
                "notes": "",
                "config_url": f"{base}/manage/apps/{numeric}/app_versions/{b['id']}",
            }
            if not b.get("no_url"):
                v["download_url"] = f"{base}/apps/{app_id}/app_versions/{b['id']}"
                if query.get("include_build_urls") == ["true"]:
                    v["build_url"] = f"{base}/api/2/apps/{app_id}/app_versions/{b['id']}?format=zip"
            out.append(v)
        per_page = ctl("per_page")
        if per_page:
            n = int(per_page)
            page = int(query.get("page", ["1"])[0])
            total_pages = max(1, (len(out) + n - 1) // n)
            chunk = out[(page - 1) * n : page * n]
            return self.send_json(
                200,
                {
                    "app_versions": chunk,
                    "status": "success",
                    "current_page": page,
                    "per_page": n,
                    "total_entries": len(out),
                    "total_pages": total_pages,
                },
            )
        return self.send_json(200, {"app_versions": out, "status": "success"})

    def upload(self, app_id, builds, builds_file, body):
        head = f"Content-Type: {self.headers.get('Content-Type', '')}\r\n\r\n".encode()
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        fields, name, data = {}, None, None
        if msg.is_multipart():
            for part in msg.iter_parts():
                field = part.get_param("name", header="content-disposition")
                if field == "ipa":
                    name = part.get_filename()
                    data = part.get_payload(decode=True)
                elif field:
                    fields[field] = part.get_payload(decode=True).decode()
        if not name or data is None or "/" in name or name.startswith("."):
            return self.send(422, b'{"errors":{"ipa":["missing"]}}', {"Content-Type": "application/json"})
        fdir = os.path.join(ROOT, "hockeyapp", app_id, "files")
        os.makedirs(fdir, exist_ok=True)
        existing = os.path.join(fdir, name)
        if os.path.exists(existing):
            with open(existing, "rb") as f:
                if f.read() != data:
                    return self.send(422, b'{"errors":{"ipa":["taken"]}}', {"Content-Type": "application/json"})
        with open(os.path.join(fdir, name), "wb") as f:
            f.write(data)
        number = max([int(b["version"]) for b in builds] + [0]) + 1
        bid = max([int(b["id"]) for b in builds] + [0]) + 1
        build = {
            "id": bid,
            "version": str(number),
            "shortversion": fields.get("shortversion", ""),
            "title": "App",
            "timestamp": int(time.time()),
            "file": name,
            "notes": fields.get("notes", ""),
            "notes_type": fields.get("notes_type", ""),
            "status": fields.get("status", ""),
        }
        with open(builds_file + ".tmp", "w") as f:
            json.dump([build] + builds, f)
        os.replace(builds_file + ".tmp", builds_file)
        numeric = self.numeric_id(app_id)
        base = f"http://127.0.0.1:{PORT}"
        return self.send_json(
            201,
            {
                "id": bid,
                "version": str(number),
                "shortversion": build["shortversion"],
                "title": "App",
                "timestamp": build["timestamp"],
                "appsize": len(data),
                "notes": build["notes"],
                "status": 2,
                "config_url": f"{base}/manage/apps/{numeric}/app_versions/{bid}",
                "public_url": f"{base}/apps/{app_id}",
            },
        )

    def build_file(self, app_id, builds, build_id):
        for b in builds:
            if str(b["id"]) == build_id and not b.get("no_url"):
                fpath = os.path.join(ROOT, "hockeyapp", app_id, "files", b["file"])
                with open(fpath, "rb") as f:
                    body = f.read()
                if ctl("html") is not None:
                    return self.send(200, b"<html>sign in</html>", {"Content-Type": "text/html"})
                headers = {
                    "Content-Type": "application/octet-stream",
                    "Content-Disposition": f'attachment; filename="{b["file"]}"',
                }
                return self.send(200, body, headers, truncate=ctl("truncate") is not None)
        return self.send(404, b"{}", {"Content-Type": "application/json"})


def main():
    global ROOT, PORT
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    ROOT = os.path.abspath(args.root)
    os.makedirs(os.path.join(ROOT, "files"), exist_ok=True)
    os.makedirs(os.path.join(ROOT, "ctl"), exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    PORT = server.server_address[1]
    print(PORT, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
