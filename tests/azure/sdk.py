"""Gets a token the way an unmodified program using azure-identity would,
for tokend's managed-identity tests (tests/azure_sdk.rs).

usage: sdk.py CREDENTIAL SCOPE [CLIENT_ID]
  CREDENTIAL  "managed" (ManagedIdentityCredential) or "default"
              (DefaultAzureCredential)
Prints one JSON line: {"token": ..., "expires_on": ...} or
{"error": EXCEPTION_CLASS, "message": ...}. The endpoint and header come
from IDENTITY_ENDPOINT and IDENTITY_HEADER, as on Azure App Service.
"""
import json
import sys

from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

kind, scope = sys.argv[1], sys.argv[2]
client_id = sys.argv[3] if len(sys.argv) > 3 else None
try:
    if kind == "managed":
        cred = ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    else:
        cred = DefaultAzureCredential()
    t = cred.get_token(scope)
    print(json.dumps({"token": t.token, "expires_on": t.expires_on}))
except Exception as e:  # the test reads which error the SDK raised
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
