/**
 * Last line of defence against leaking a SAS: storage and HSM error texts may echo a request URL.
 * Everything that leaves the app (log line, catalog field, HTTP body, error message) passes through
 * here. The first line of defence is not putting the token there at all.
 */
const SAS_QUERY = /\?[^\s"'<>]*\b(?:sig|se|sv|sp|skoid|sktid)=[^\s"'<>]*/gi;
const SIGNATURE = /\bsig=[^&\s"'<>]*/gi;
const BEARER = /\bBearer\s+[A-Za-z0-9\-._~+/]+=*/g;
const ACCOUNT_KEY = /\bAccountKey=[^;\s"']*/gi;

export function redactSecrets(text: string): string {
  return text
    .replace(SAS_QUERY, "?<redacted-sas>")
    .replace(SIGNATURE, "sig=<redacted>")
    .replace(BEARER, "Bearer <redacted>")
    .replace(ACCOUNT_KEY, "AccountKey=<redacted>");
}

/** Normalises anything thrown into an Error whose message is safe to log. */
export function toSafeError(error: unknown): Error {
  if (error instanceof Error) {
    const safe = new Error(redactSecrets(error.message));
    safe.name = error.name;
    return safe;
  }
  return new Error(redactSecrets(String(error)));
}
