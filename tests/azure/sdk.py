"""Gets a token the way an unmodified program using azure-identity would,
for tokend's managed-identity tests (tests/azure_sdk.rs).

usage: sdk.py CREDENTIAL SCOPE [CLIENT_ID]
  CREDENTIAL  "managed" (ManagedIdentityCredential), "default"
              (DefaultAzureCredential) or "msal" (MSAL's
              ManagedIdentityClient, as az login --identity uses it)
Prints one JSON line: {"token": ..., "expires_on": ...} or
{"error": EXCEPTION_CLASS, "message": ...}. The endpoint comes from the
environment as on Azure: IDENTITY_ENDPOINT and IDENTITY_HEADER (App
Service), AZURE_POD_IDENTITY_AUTHORITY_HOST (IMDS elsewhere), or nothing
(IMDS at 169.254.169.254, as on a VM).
"""
import json
import sys
import time

from azure.identity import DefaultAzureCredential, ManagedIdentityCredential


def msal_token(scope, client_id):
    import msal
    import requests

    identity = (
        msal.UserAssignedManagedIdentity(client_id=client_id)
        if client_id
        else msal.SystemAssignedManagedIdentity()
    )
    client = msal.ManagedIdentityClient(identity, http_client=requests.Session())
    resource = scope[: -len("/.default")] if scope.endswith("/.default") else scope
    result = client.acquire_token_for_client(resource=resource)
    if "access_token" not in result:
        return {"error": result.get("error", "?"), "message": result.get("error_description", "")}
    return {"token": result["access_token"], "expires_on": int(time.time()) + int(result["expires_in"])}


kind, scope = sys.argv[1], sys.argv[2]
client_id = sys.argv[3] if len(sys.argv) > 3 else None
try:
    if kind == "msal":
        print(json.dumps(msal_token(scope, client_id)))
        sys.exit(0)
    if kind == "managed":
        cred = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    else:
        cred = DefaultAzureCredential()
    t = cred.get_token(scope)
    print(json.dumps({"token": t.token, "expires_on": t.expires_on}))
except Exception as e:  # the test reads which error the SDK raised
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
