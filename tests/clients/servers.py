#!/usr/bin/env python3
"""Loopback servers for the credential-helper tests (tests/credential_helpers.rs).

    servers.py apiserver RECORD CERT KEY        # a Kubernetes API server, https
    servers.py git RECORD CERT KEY ROOT TOKEN   # git http-backend behind auth, https
    servers.py sts RECORD                       # Google's and AWS's STS, http

Each prints {"port": N} on its first line, then serves until killed, and
appends one JSON line per request to RECORD: what the client sent for
authentication. Standard library only.
"""
import base64
import http.server
import json
import os
import ssl
import subprocess
import sys
import urllib.parse

mode, record = sys.argv[1], sys.argv[2]


def log(entry):
    with open(record, "a") as f:
        f.write(json.dumps(entry) + "\n")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, content_type="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))


class ApiServer(Handler):
    def do_GET(self):
        auth = self.headers.get("Authorization")
        log({"path": self.path, "authorization": auth})
        if not (auth or "").startswith("Bearer "):
            self.answer(401, json.dumps({"kind": "Status", "code": 401}).encode())
            return
        version = {
            "major": "1", "minor": "32", "gitVersion": "v1.32.0-tokend-test",
            "gitCommit": "0", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64",
        }
        self.answer(200, json.dumps(version).encode())


class GitServer(Handler):
    def authorized(self):
        auth = self.headers.get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        ok = False
        if scheme == "Bearer":
            ok = value == token
        elif scheme == "Basic":
            try:
                ok = base64.b64decode(value).decode().partition(":")[2] == token
            except Exception:
                ok = False
        log({"path": self.path, "scheme": scheme or None, "ok": ok})
        return ok

    def cgi(self, method):
        body = self.body() if method == "POST" else b""
        if not self.authorized():
            self.answer(401, b"credentials needed\n", "text/plain",
                        [("WWW-Authenticate", 'Basic realm="tokend-test"')])
            return
        path, _, query = self.path.partition("?")
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                   REQUEST_METHOD=method, PATH_INFO=urllib.parse.unquote(path),
                   QUERY_STRING=query, REMOTE_USER="tokend", REMOTE_ADDR="127.0.0.1",
                   CONTENT_TYPE=self.headers.get("Content-Type") or "",
                   CONTENT_LENGTH=str(len(body)), GIT_PROTOCOL=self.headers.get("Git-Protocol") or "")
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(": ")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self):
        self.cgi("GET")

    def do_POST(self):
        self.cgi("POST")


AWS_ANSWER = """<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>tokend</SubjectFromWebIdentityToken>
    <Audience>tokend-test</Audience>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/tokend-test/session</Arn>
      <AssumedRoleId>AROATOKENDTEST:session</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIATOKENDTEST</AccessKeyId>
      <SecretAccessKey>not-a-real-secret-key</SecretAccessKey>
      <SessionToken>not-a-real-session-token</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <Provider>tokend-test</Provider>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>tokend-test</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>
"""


class Sts(Handler):
    def do_POST(self):
        form = {k: v[0] for k, v in urllib.parse.parse_qs(self.body().decode()).items()}
        log({"path": self.path, "form": form})
        if form.get("Action") == "AssumeRoleWithWebIdentity":
            self.answer(200, AWS_ANSWER.encode(), "text/xml")
        elif form.get("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange":
            self.answer(200, json.dumps({
                "access_token": "sts-access-token",
                "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
                "token_type": "Bearer", "expires_in": 3600,
            }).encode())
        else:
            self.answer(400, json.dumps({"error": "invalid_request"}).encode())


handlers = {"apiserver": ApiServer, "git": GitServer, "sts": Sts}
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handlers[mode])
if mode in ("apiserver", "git"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
if mode == "git":
    root, token = sys.argv[5], sys.argv[6]
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
