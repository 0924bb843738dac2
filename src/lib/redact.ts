/**
 * Last line of defence against leaking a secret: storage and HSM error texts may echo a request URL
 * or body, raw or encoded. Everything that leaves the app (log line, catalog field, HTTP body, error
 * message, CLI output) passes through here. The first line of defence is not putting a token there
 * at all: the app never writes a SAS, key or token into anything it builds itself.
 *
 * Two nets: patterns for what a secret looks like wherever it comes from (a SAS signature in any of
 * the shapes services echo it, bearer tokens, JWTs, account keys, user-delegation key values), and
 * the exact values the app itself minted (its SAS signatures), in every encoding it can meet them in.
 */

import { requestIdsOfError, requestIdsSuffix } from "./correlation.js";

/**
 * The patterns, built per call rather than at import: code that runs while a module loads is
 * outside every test for Stryker ("static"), so each of these mutants would need the whole suite
 * (issue 11). V8 caches the compiled form of a regex literal, so this costs nothing measurable.
 */
function patterns() {
  /** "sig" or "signature", then a separator however it was encoded or spaced, then the value. */
  const QUOTE = `(?:["']|%(?:25)*2[27])`;
  const SPACE = `(?:\\s|\\+|%(?:25)*20)`;
  const SEPARATOR = `(?:=|:|%(?:25)*3[ADad])`;
  const SIGNATURE = new RegExp(
    `(?<![A-Za-z])(sig|signature)(${QUOTE}?${SPACE}*${SEPARATOR}${SPACE}*${QUOTE}?)[^&\\s"'<>,;)\\]}]+`,
    "gi",
  );
  const SAS_QUERY = /\?[^\s"'<>]*(?<![A-Za-z])(?:sig|se|sv|sp|skoid|sktid)(?:=|%(?:25)*3D)[^\s"'<>]*/gi;
  const BEARER = /\bBearer(\s+|%(?:25)*20)[A-Za-z0-9\-._~+/%]+=*/gi;
  const JWT = /\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/g;
  // Also quoted, as JSON echoes it: {"AccountKey": "..."}.
  const ACCOUNT_KEY = /\bAccountKey(["']?\s*(?:=|:|%(?:25)*3D)\s*["']?)[^;\s"']*/gi;
  /** A storage account key: 64 random bytes in base64 are 86 characters and "==". */
  const BASE64_KEY = /(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}==/g;
  /** The secret half of a user-delegation key, in the service's XML or echoed as JSON. */
  const DELEGATION_KEY_XML = /<Value>[^<]*<\/Value>/gi;
  const DELEGATION_KEY_FIELD = /(?<![A-Za-z])(value|signedKeyValue)(["']?\s*[:=]\s*["']?)[A-Za-z0-9+/]{40,}={0,2}/gi;
  return { SIGNATURE, SAS_QUERY, BEARER, JWT, ACCOUNT_KEY, BASE64_KEY, DELEGATION_KEY_XML, DELEGATION_KEY_FIELD };
}

/** Secrets the app minted itself, each with the encodings it may be echoed in. Bounded: the newest win. */
const minted = new Set<string>();
const MAX_MINTED = 2000;

/**
 * Remembers a secret value the app created (a SAS signature) so that it is redacted wherever it
 * shows up: raw, percent-encoded once or twice, or in base64.
 */
export function rememberSecret(value: string): void {
  if (value.length < 8) return;
  const once = encodeURIComponent(value);
  const twice = encodeURIComponent(once);
  // Some encoders (.NET's HttpUtility.UrlEncode) write the escapes' hex digits in lower case.
  const lowerHex = (text: string) => text.replace(/%[0-9A-F]{2}/g, (escape) => escape.toLowerCase());
  const forms = [
    value,
    once,
    lowerHex(once),
    twice,
    lowerHex(twice),
    Buffer.from(value).toString("base64"),
    Buffer.from(value).toString("base64url"),
  ];
  for (const form of forms) {
    minted.delete(form);
    minted.add(form);
  }
  while (minted.size > MAX_MINTED) minted.delete(minted.values().next().value as string);
}

export function redactSecrets(text: string): string {
  const { SIGNATURE, SAS_QUERY, BEARER, JWT, ACCOUNT_KEY, BASE64_KEY, DELEGATION_KEY_XML, DELEGATION_KEY_FIELD } =
    patterns();
  let safe = text;
  for (const secret of minted) {
    if (safe.includes(secret)) safe = safe.split(secret).join("<redacted>");
  }
  return safe
    .replace(SAS_QUERY, "?<redacted-sas>")
    .replace(SIGNATURE, "$1$2<redacted>")
    .replace(BEARER, "Bearer <redacted>")
    .replace(JWT, "<redacted-jwt>")
    .replace(ACCOUNT_KEY, "AccountKey$1<redacted>")
    .replace(BASE64_KEY, "<redacted-key>")
    .replace(DELEGATION_KEY_XML, "<Value><redacted></Value>")
    .replace(DELEGATION_KEY_FIELD, "$1$2<redacted>");
}

/** @azure/identity's failures: DefaultAzureCredential explains every credential it tried, over many lines. */
const CREDENTIAL_ERRORS = new Set([
  "AggregateAuthenticationError",
  "CredentialUnavailableError",
  "AuthenticationError",
  "AuthenticationRequiredError",
]);

/**
 * Normalises anything thrown into an Error whose message is safe to log. A credential failure
 * becomes one line saying what to do (the chain's full story is in the AZURE_LOG_LEVEL=info log). A storage failure's
 * request ids (RestError: x-ms-request-id, x-ms-client-request-id) are appended when the message does
 * not name them already, so every failure the app records or prints can be looked up by Azure support.
 */
export function toSafeError(error: unknown): Error {
  if (error instanceof Error) {
    const ids = requestIdsOfError(error);
    const missing = {
      ...(ids.requestId && !error.message.includes(ids.requestId) ? { requestId: ids.requestId } : {}),
      ...(ids.clientRequestId && !error.message.includes(ids.clientRequestId)
        ? { clientRequestId: ids.clientRequestId }
        : {}),
    };
    const message = CREDENTIAL_ERRORS.has(error.name)
      ? `no Azure token could be acquired (${error.message.split("\n")[0]!.slice(0, 200)}): sign in with az login, or check the managed identity the app runs as (IDENTITY_ENDPOINT, BackupStorage__clientId)`
      : error.message;
    const safe = new Error(redactSecrets(`${message}${requestIdsSuffix(missing)}`));
    safe.name = error.name;
    return safe;
  }
  return new Error(redactSecrets(String(error)));
}
