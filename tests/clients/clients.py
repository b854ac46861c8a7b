#!/usr/bin/env python3
"""The real client libraries, each doing one authenticated call:

    clients.py kubernetes KUBECONFIG     # the kubernetes client's exec provider
    clients.py google EXTERNAL_ACCOUNT   # google-auth's executable-sourced credential
    clients.py aws                       # boto3's web identity provider (AWS_* from the env)

Prints what the call returned; exits non-zero (with the error) if it failed.
"""
import json
import sys

kind = sys.argv[1]
if kind == "kubernetes":
    from kubernetes import client, config

    config.load_kube_config(config_file=sys.argv[2])
    print(client.VersionApi().get_code().git_version)
elif kind == "google":
    import google.auth
    import google.auth.transport.requests

    with open(sys.argv[2]) as f:
        info = json.load(f)
    creds, _ = google.auth.load_credentials_from_dict(info)
    creds.refresh(google.auth.transport.requests.Request())
    print(creds.token)
elif kind == "aws":
    import boto3

    frozen = boto3.Session().get_credentials().get_frozen_credentials()
    print(frozen.access_key)
else:
    sys.exit(f"unknown client {kind}")
