// A real OAuth 2.0 authorization server for tokend's interop tests:
// panva's oidc-provider, configured for the client-credentials grant with
// JWT access tokens for one resource.
//
// Environment:
//   PORT           port on 127.0.0.1 (0 or unset: a free one)
//   TTL            access token lifetime in seconds (default 300)
//   CRED_DIR       if set, a directory the test filled with openssl:
//                  pkjwt.pem      certificate whose key the private_key_jwt
//                                 clients `pkjwt-rs` (RS256) and `pkjwt-ps`
//                                 (PS256) sign with;
//                  ca.pem, server.pem, server.key
//                                 a test CA and a server certificate for
//                                 127.0.0.1: an HTTPS listener is started too,
//                                 where client `mtls` authenticates with
//                                 tls_client_auth (a certificate from ca.pem
//                                 with subject CN=tokend-mtls).
//
// Prints one JSON line {"port": N, "issuer": URL, "tls_port": N?} once
// listening.
//
// Test-only routes (not part of oidc-provider):
//   GET /_test/verify?token=T  verifies T's signature against this server's
//                              keys, issuer and audience; 200 with the claims
//                              or 401 {"error": ...}
//   GET /_test/stats           {"issued": N}: tokens issued since start
//
// Scopes: oidc-provider rejects (invalid_scope) a scope that is in the
// provider's `scopes` list but not in the client's `scope`; a scope the
// provider does not know at all is silently dropped. The tests rely on the
// first rule: `write` is a known scope that the `narrow` client lacks.
import Provider from 'oidc-provider';
import * as jose from 'jose';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const port = Number(process.env.PORT || 0);
const ttl = Number(process.env.TTL || 300);
const RESOURCE = 'https://api.tokend.test';

export const SECRETS = {
  basic: 'basic-s3cret+/:%&=?',
  post: 'post-s3cret+/:%&=?',
  narrow: 'narrow-s3cret',
};

async function signingKeys() {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  return { keys: [{ ...jwk, kid: 'interop-1', use: 'sig', alg: 'RS256' }] };
}

const credDir = process.env.CRED_DIR;

// The private_key_jwt clients' public key, from the test's certificate.
async function pkjwtClients() {
  if (!credDir) return [];
  const pem = readFileSync(join(credDir, 'pkjwt.pem'), 'utf8');
  const clients = [];
  for (const alg of ['RS256', 'PS256']) {
    const key = await jose.exportJWK(await jose.importX509(pem, alg));
    clients.push({
      ...machine,
      client_id: `pkjwt-${alg.slice(0, 2).toLowerCase()}`,
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: alg,
      jwks: { keys: [{ ...key, use: 'sig', alg }] },
      scope: 'read write',
    });
  }
  return clients;
}

const jwks = await signingKeys();
const machine = { grant_types: ['client_credentials'], redirect_uris: [], response_types: [] };
const tls = credDir && existsSync(join(credDir, 'server.pem'));
const mtlsClient = {
  ...machine,
  client_id: 'mtls',
  token_endpoint_auth_method: 'tls_client_auth',
  tls_client_auth_subject_dn: 'CN=tokend-mtls',
  scope: 'read write',
};


async function start() {
  const http = await import('node:http');
  const probe = http.createServer();
  await new Promise((r) => probe.listen(port, '127.0.0.1', r));
  const actual = probe.address().port;
  await new Promise((r) => probe.close(r));
  const issuer = `http://127.0.0.1:${actual}`;

  const provider = new Provider(issuer, {
    jwks,
    clients: [
      { ...machine, client_id: 'basic', client_secret: SECRETS.basic, token_endpoint_auth_method: 'client_secret_basic', scope: 'read write' },
      { ...machine, client_id: 'post', client_secret: SECRETS.post, token_endpoint_auth_method: 'client_secret_post', scope: 'read write' },
      { ...machine, client_id: 'narrow', client_secret: SECRETS.narrow, token_endpoint_auth_method: 'client_secret_basic', scope: 'read' },
      ...(await pkjwtClients()),
      ...(tls ? [mtlsClient] : []),
    ],
    scopes: ['read', 'write'],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt', ...(tls ? ['tls_client_auth'] : [])],
    features: {
      devInteractions: { enabled: false },
      // tls_client_auth: the HTTPS listener asks for a client certificate
      // and Node checks it against the test CA; the provider reads it here.
      mTLS: {
        enabled: Boolean(tls),
        tlsClientAuth: true,
        getCertificate: (ctx) => ctx.socket.getPeerX509Certificate?.(),
        certificateAuthorized: (ctx) => ctx.socket.authorized === true,
        certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
          && ctx.socket.getPeerX509Certificate?.()?.subject === expected,
      },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => RESOURCE,
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'read write',
          audience: RESOURCE,
          accessTokenTTL: ttl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    ttl: { ClientCredentials: ttl },
  });

  let issued = 0;
  provider.on('grant.success', () => { issued += 1; });

  const verifier = jose.createLocalJWKSet({ keys: jwks.keys.map(({ d, p, q, dp, dq, qi, ...pub }) => pub) });
  provider.use(async (ctx, next) => {
    if (ctx.path === '/_test/stats') {
      ctx.body = { issued };
      return;
    }
    if (ctx.path === '/_test/verify') {
      try {
        const { payload, protectedHeader } = await jose.jwtVerify(String(ctx.query.token || ''), verifier, { issuer, audience: RESOURCE });
        ctx.body = { header: protectedHeader, claims: payload };
      } catch (e) {
        ctx.status = 401;
        ctx.body = { error: e.code || 'invalid', message: e.message };
      }
      return;
    }
    await next();
  });

  let tlsPort;
  if (tls) {
    const https = await import('node:https');
    const server = https.createServer({
      key: readFileSync(join(credDir, 'server.key')),
      cert: readFileSync(join(credDir, 'server.pem')),
      ca: readFileSync(join(credDir, 'ca.pem')),
      requestCert: true,
      rejectUnauthorized: false,
    }, provider.callback());
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    tlsPort = server.address().port;
  }
  provider.listen(actual, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ port: actual, issuer, tls_port: tlsPort })}\n`);
  });
}

await start();
