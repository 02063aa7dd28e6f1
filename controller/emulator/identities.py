"""Azure AD: OpenID configuration, instance discovery and client-credential tokens."""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs

from controller.emulator import logins
from controller.emulator.records import LOGIN_HOST, EmulatorBase
from controller.emulator.routetables import Request, Response, Router, json_response


class IdentityRoutes(EmulatorBase):
    """Azure AD: OpenID configuration, instance discovery and client-credential tokens."""

    def _register_identities(self, router: Router) -> None:
        r = router.add
        r("GET", "login", "/{tenant}/v2.0/.well-known/openid-configuration", self.openid_configuration, authenticated=False)
        r("GET", "login", "/{tenant}/.well-known/openid-configuration", self.openid_configuration, authenticated=False)
        r("GET", "login", "/common/discovery/instance", self.instance_discovery, authenticated=False)
        r("GET", "login", "/{tenant}/discovery/instance", self.instance_discovery, authenticated=False)
        r("POST", "login", "/{tenant}/oauth2/v2.0/token", self.token, authenticated=False)
        r("POST", "login", "/{tenant}/oauth2/token", self.token, authenticated=False)

    def openid_configuration(self, req: Request) -> Response:
        return json_response(200, logins.openid_configuration(LOGIN_HOST, req.params["tenant"]))

    def instance_discovery(self, req: Request) -> Response:
        return json_response(200, logins.instance_discovery(LOGIN_HOST))

    def token(self, req: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(req.body.decode(errors="replace")).items()}
        principal = self.issuer.principal
        tenant = req.params["tenant"]
        if tenant not in (principal.tenant_id, "organizations", "common"):
            return json_response(400, logins.aad_error(
                "AADSTS90002", f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.",
                "invalid_request"))
        if form.get("grant_type") != "client_credentials":
            return json_response(400, logins.aad_error(
                "AADSTS70003", "The app requested an unsupported grant type.", "unsupported_grant_type"))
        client_id = form.get("client_id", "")
        if client_id != principal.client_id:
            return json_response(400, logins.aad_error(
                "AADSTS700016", f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the administrator "
                "of the tenant or consented to by any user in the tenant.", "unauthorized_client"))
        if not hmac.compare_digest(form.get("client_secret", "").encode(), principal.client_secret.encode()):
            return json_response(401, logins.aad_error(
                "AADSTS7000215", "Invalid client secret provided. Ensure the secret being sent in the request is "
                f"the client secret value, not the client secret ID, for a secret added to app '{client_id}'."))
        audience = logins.scope_audience(form.get("scope") or form.get("resource", logins.ARM_AUDIENCE))
        token = self.issuer.mint(audience)
        return json_response(200, {"token_type": "Bearer", "expires_in": logins.TOKEN_LIFETIME_S,
                                   "ext_expires_in": logins.TOKEN_LIFETIME_S, "access_token": token})

