// A real OAuth 2.0 authorization server for tokend's interop tests:
// panva's oidc-provider, configured for the client-credentials grant with
// JWT access tokens for one resource.
//
// Environment:
//   PORT           port on 127.0.0.1 (0 or unset: a free one)
//   TTL            access token lifetime in seconds (default 300)
//   KEY_DIR        if set, the private_key_jwt client's private key is written
//                  there as pkjwt.key.pem (generated now, never committed)
//
// Prints one JSON line {"port": N, "issuer": URL} once listening.
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
import { writeFileSync } from 'node:fs';
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

async function pkjwtClientKey() {
  const { publicKey, privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  if (process.env.KEY_DIR) {
    writeFileSync(join(process.env.KEY_DIR, 'pkjwt.key.pem'), await jose.exportPKCS8(privateKey), { mode: 0o600 });
  }
  return { ...(await jose.exportJWK(publicKey)), kid: 'pkjwt-1', alg: 'RS256', use: 'sig' };
}

const jwks = await signingKeys();
const clientKey = await pkjwtClientKey();
const machine = { grant_types: ['client_credentials'], redirect_uris: [], response_types: [] };


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
      { ...machine, client_id: 'pkjwt', token_endpoint_auth_method: 'private_key_jwt', token_endpoint_auth_signing_alg: 'RS256', jwks: { keys: [clientKey] }, scope: 'read write' },
    ],
    scopes: ['read', 'write'],
    features: {
      devInteractions: { enabled: false },
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

  provider.listen(actual, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ port: actual, issuer })}\n`);
  });
}

await start();
