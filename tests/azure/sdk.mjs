// Gets a token the way an unmodified program using @azure/identity would,
// for tokend's managed-identity tests (tests/azure_sdk.rs).
//
// usage: node sdk.mjs CREDENTIAL SCOPE [CLIENT_ID]
//   CREDENTIAL  "managed" (ManagedIdentityCredential) or "default"
//               (DefaultAzureCredential)
// Prints one JSON line: {"token", "expires_on"} (seconds) or
// {"error": name, "message"}. The endpoint and header come from
// IDENTITY_ENDPOINT and IDENTITY_HEADER, as on Azure App Service.
import { DefaultAzureCredential, ManagedIdentityCredential } from '@azure/identity';

const [kind, scope, clientId] = process.argv.slice(2);
try {
  const cred = kind === 'managed'
    ? (clientId ? new ManagedIdentityCredential({ clientId }) : new ManagedIdentityCredential())
    : new DefaultAzureCredential();
  const t = await cred.getToken(scope);
  process.stdout.write(`${JSON.stringify({ token: t.token, expires_on: Math.floor(t.expiresOnTimestamp / 1000) })}\n`);
} catch (e) {
  process.stdout.write(`${JSON.stringify({ error: e.name, message: e.message })}\n`);
}
