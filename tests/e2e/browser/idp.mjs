// A real OpenID Provider on loopback for Pictor's sign-in tests (issue #21): the npm
// package oidc-provider (an OpenID Certified implementation), configured with one public
// client (the viewer: authorization code with PKCE) and the test's people.
//
// Usage: node idp.mjs <config.json>. The configuration names the port, the client's
// redirect URIs, the audience of the access tokens (they are JWTs, RFC 9068, signed
// with the provider's keys, published at <issuer>/jwks) and the people with their roles
// (a `roles` claim in the access token). The provider's own development sign-in pages
// take any password for a person it knows; a name it does not know is refused.
// Prints "ready <issuer>" once it listens.

import fs from 'node:fs';
import Provider from 'oidc-provider';

const config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;
const people = config.people; // { name: { roles: [...], name: 'Display Name' } }
const resource = config.resource; // the API the access tokens are for

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: config.clientId,
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: config.redirectUris,
      post_logout_redirect_uris: config.postLogoutRedirectUris,
    },
  ],
  cookies: { keys: ['pictor-test-idp-cookie-key'] },
  claims: { openid: ['sub'], profile: ['name'] },
  features: {
    devInteractions: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // the viewer names no resource: its tokens are for Pictor's API anyway
      defaultResource: () => resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, indicator) => {
        if (indicator !== resource) throw new Error(`unknown resource ${indicator}`);
        return {
          scope: 'pictor',
          audience: config.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: config.accessTokenTTL || 300,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // the viewer's page (another port of the same host) calls the token endpoint
  clientBasedCORS: () => true,
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    if (!Object.prototype.hasOwnProperty.call(people, id)) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, name: people[id].name || id };
      },
    };
  },
  async extraTokenClaims(ctx, token) {
    const person = people[token.accountId];
    return person ? { roles: person.roles } : undefined;
  },
  // first-party client: the grant is given without a consent page
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile');
    grant.addResourceScope(resource, 'pictor');
    await grant.save();
    return grant;
  },
});
provider.proxy = false;

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
