import { randomBytes, randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/**
 * A local stand-in for the managed identity endpoint that App Service / Azure Functions provides, so
 * that `DefaultAzureCredential` and `ManagedIdentityCredential` run unchanged on a developer machine
 * or in CI. It speaks the App Service protocol (api-version 2019-08-01), which @azure/identity 4.x
 * (through MSAL node's `AppService` source) uses whenever IDENTITY_ENDPOINT and IDENTITY_HEADER are set:
 *
 *   GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource=<r>[&client_id=<id>|&mi_res_id=<id>|&object_id=<id>]
 *   X-IDENTITY-HEADER: {IDENTITY_HEADER}
 *
 * Tokens are unsigned JWTs: Azurite's `--oauth basic` and the Managed HSM emulator only decode them.
 * Nothing here is secure; it listens on 127.0.0.1 only.
 */

export interface IdentityEndpointOptions {
  /** TCP port on 127.0.0.1; default 0 (a free port). */
  port?: number;
  /** `tid` of every token, and the tenant in `iss`; default a random GUID. */
  tenantId?: string;
  /** `oid` (and `sub`) of every token: the identity that role assignments would name; default a random GUID. */
  principalId?: string;
  /** `appid` and `client_id` when the caller asks for the system-assigned identity; default a random GUID. */
  clientId?: string;
  /**
   * The secret callers must send in X-IDENTITY-HEADER; default random. Fix it (with `port`) when the value
   * has to live in a settings file, e.g. local.settings.json for Functions Core Tools.
   */
  identityHeader?: string;
}

export interface IdentityEndpoint {
  /** What the Functions host sets in Azure; put these into process.env (or a child's env). */
  readonly env: { IDENTITY_ENDPOINT: string; IDENTITY_HEADER: string };
  readonly principalId: string;
  readonly tenantId: string;
  /** One entry per token handed out, in order. Failed requests are not recorded. */
  readonly requests: Array<{ resource: string; clientId?: string }>;
  stop(): Promise<void>;
}

const API_VERSION = "2019-08-01";
const TOKEN_PATH = "/msi/token";
const TOKEN_LIFETIME_SECONDS = 3600;
/** Entra ID back-dates iat/nbf by five minutes to absorb clock skew; do the same. */
const BACKDATE_SECONDS = 300;

/**
 * Starts the endpoint on 127.0.0.1.
 *
 * Any requested user-assigned identity (client_id, mi_res_id, object_id, principal_id) is granted, with
 * the same principal: the point is to let tests see which identity the app asked for (`requests`),
 * not to model several identities.
 */
export async function startIdentityEndpoint(options: IdentityEndpointOptions = {}): Promise<IdentityEndpoint> {
  const tenantId = options.tenantId ?? randomUUID();
  const principalId = options.principalId ?? randomUUID();
  const systemClientId = options.clientId ?? randomUUID();
  const secret = options.identityHeader ?? randomBytes(24).toString("hex");
  if (secret === "") throw new Error("identityHeader must not be empty: MSAL treats an empty IDENTITY_HEADER as unset");
  const requests: Array<{ resource: string; clientId?: string }> = [];

  const server = createServer((req, res) => {
    try {
      handle(req, res);
    } catch (error) {
      sendError(res, 500, "internal_error", `identity endpoint failed: ${String(error)}`);
    }
  });

  function handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    // 400, not 404: @azure/identity wraps every managed identity source in its IMDS retry policy, which
    // retries 404 with back-off, so a wrong path in IDENTITY_ENDPOINT would stall ~15 s before failing.
    if (url.pathname !== TOKEN_PATH) {
      return sendError(res, 400, "invalid_request", `no such path ${url.pathname}; the token path is ${TOKEN_PATH}`);
    }
    if (req.method !== "GET") {
      return sendError(res, 405, "method_not_allowed", `method ${req.method} not allowed; use GET`);
    }
    const header = req.headers["x-identity-header"];
    if (header === undefined) {
      return sendError(res, 400, "invalid_request", "missing X-IDENTITY-HEADER header");
    }
    if (header !== secret) {
      return sendError(res, 401, "unauthorized", "X-IDENTITY-HEADER does not match IDENTITY_HEADER of this endpoint");
    }
    const apiVersion = url.searchParams.get("api-version");
    if (apiVersion !== API_VERSION) {
      return sendError(
        res,
        400,
        "invalid_request",
        `api-version ${JSON.stringify(apiVersion)} not supported; use ${API_VERSION}`,
      );
    }
    const resource = url.searchParams.get("resource");
    if (!resource) {
      return sendError(res, 400, "invalid_request", "missing query parameter resource");
    }
    const requestedIds = ["client_id", "mi_res_id", "object_id", "principal_id"].filter((name) =>
      url.searchParams.has(name),
    );
    if (requestedIds.length > 1) {
      return sendError(res, 400, "invalid_request", `give at most one of ${requestedIds.join(", ")}`);
    }
    const requestedClientId = url.searchParams.get("client_id") ?? undefined;
    const clientId = requestedClientId ?? systemClientId;

    const now = Math.floor(Date.now() / 1000);
    const expiresOn = now + TOKEN_LIFETIME_SECONDS;
    const accessToken = unsignedJwt({
      aud: resource,
      iss: `https://sts.windows.net/${tenantId}/`,
      iat: now - BACKDATE_SECONDS,
      nbf: now - BACKDATE_SECONDS,
      exp: expiresOn,
      appid: clientId,
      appidacr: "2",
      idtyp: "app",
      oid: principalId,
      sub: principalId,
      tid: tenantId,
      uti: randomBytes(16).toString("base64url"),
      ver: "1.0",
    });
    requests.push(requestedClientId === undefined ? { resource } : { resource, clientId: requestedClientId });
    sendJson(res, 200, {
      access_token: accessToken,
      // The 2019-08-01 protocol sends expires_on as a string of Unix seconds.
      expires_on: String(expiresOn),
      resource,
      token_type: "Bearer",
      client_id: clientId,
    });
  }

  await new Promise<void>((resolve, reject) => {
    server.once("error", (error) =>
      reject(new Error(`identity endpoint could not listen on 127.0.0.1:${options.port ?? 0}: ${error.message}`)),
    );
    server.listen(options.port ?? 0, "127.0.0.1", () => resolve());
  });
  const { port } = server.address() as AddressInfo;

  return {
    env: { IDENTITY_ENDPOINT: `http://127.0.0.1:${port}${TOKEN_PATH}`, IDENTITY_HEADER: secret },
    principalId,
    tenantId,
    requests,
    stop: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        // The SDK keeps connections alive; without this close() waits for them to time out.
        server.closeAllConnections();
      }),
  };
}

/**
 * Variables that would make @azure/identity 4.x choose something other than this endpoint: another
 * credential in DefaultAzureCredential's chain, a user-assigned identity, or another MSAL managed
 * identity source (Service Fabric is checked before App Service and shares IDENTITY_ENDPOINT/HEADER).
 */
const COMPETING_IDENTITY_VARIABLES = [
  "AZURE_TOKEN_CREDENTIALS",
  "AZURE_TENANT_ID",
  "AZURE_CLIENT_ID",
  "AZURE_CLIENT_SECRET",
  "AZURE_CLIENT_CERTIFICATE_PATH",
  "AZURE_CLIENT_CERTIFICATE_PASSWORD",
  "AZURE_USERNAME",
  "AZURE_PASSWORD",
  "AZURE_FEDERATED_TOKEN_FILE",
  "AZURE_POD_IDENTITY_AUTHORITY_HOST",
  "IDENTITY_SERVER_THUMBPRINT",
  "MSI_ENDPOINT",
  "MSI_SECRET",
  "IMDS_ENDPOINT",
] as const;

/**
 * Points `process.env` at the endpoint (IDENTITY_ENDPOINT/IDENTITY_HEADER) and removes the variables
 * that would steer @azure/identity elsewhere. Returns a function that puts every touched variable back.
 *
 * Do it before the first credential of the process is constructed: MSAL node keeps the managed identity
 * source name (decided at the first credential's construction), the source itself with the endpoint
 * and header (decided at the first token request) and the token cache in static fields, so neither
 * later changes to process.env nor the restore function affect credentials in this process.
 */
export function applyIdentityEnv(env: IdentityEndpoint["env"]): () => void {
  const names = [...COMPETING_IDENTITY_VARIABLES, "IDENTITY_ENDPOINT", "IDENTITY_HEADER"];
  const saved = new Map(names.map((name) => [name, process.env[name]]));
  for (const name of COMPETING_IDENTITY_VARIABLES) delete process.env[name];
  process.env.IDENTITY_ENDPOINT = env.IDENTITY_ENDPOINT;
  process.env.IDENTITY_HEADER = env.IDENTITY_HEADER;
  return () => {
    for (const [name, value] of saved) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  };
}

/**
 * Builds an unsigned JWT (`alg: none`, empty signature) with the given claims, the same kind of token the
 * endpoint hands out, for tests that need a token without the endpoint.
 */
export function unsignedJwt(claims: Record<string, unknown>): string {
  const encode = (value: unknown) => Buffer.from(JSON.stringify(value), "utf8").toString("base64url");
  return `${encode({ alg: "none", typ: "JWT" })}.${encode(claims)}.`;
}

/**
 * Errors in the App Service shape ({ statusCode, message, correlationId }) plus `error`: MSAL ignores
 * the HTTP status and only fails when the body has `error` or `message`.
 */
function sendError(res: ServerResponse, status: number, error: string, message: string): void {
  sendJson(res, status, { statusCode: status, error, message, correlationId: randomUUID() });
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    "content-type": "application/json; charset=utf-8",
    "content-length": Buffer.byteLength(text),
  });
  res.end(text);
}
