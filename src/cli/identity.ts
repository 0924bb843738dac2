/**
 * Who runs the CLI, as a restore (or a CLI backup) records it in `requestedBy`: the identity the
 * credential signed in as — what storage and the HSM will see — read from the claims of the token it
 * issues, else the OS account. Only the claims are read; the token itself is dropped here and never
 * written anywhere.
 */
import type { TokenCredential } from "@azure/core-auth";
import { userInfo } from "node:os";

/** Claims that name a person (first match wins), then an application or managed identity. */
const NAME_CLAIMS = ["upn", "preferred_username", "unique_name", "email"] as const;
const GUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
/** A sign-in name as Entra ID issues it; anything else in a claim (spaces, controls, markup) is not used. */
const SIGN_IN_NAME = /^[\w.+'@-]{1,128}$/;

export interface IdentityOptions {
  /** The token scope to ask for: the one the command is about to use anyway, so it costs no extra sign-in. */
  readonly scope: string;
  /** A credential that cannot answer within this time (no sign-in available) is not waited for. */
  readonly timeoutMs: number;
  /** Default: the OS account name. */
  readonly osUser?: () => string;
}

/**
 * `cli alice@contoso.com (oid …)` for a signed-in person, `cli app <appid> (oid …)` for a service
 * principal or managed identity, `cli <OS user>` when no token can be had or its claims are unusable.
 */
export async function signedInAs(credential: TokenCredential | undefined, options: IdentityOptions): Promise<string> {
  const fallback = `cli ${(options.osUser ?? osUser)()}`;
  if (!credential) return fallback;
  let token: string | undefined;
  try {
    token = (await credential.getToken(options.scope, { abortSignal: AbortSignal.timeout(options.timeoutMs) }))?.token;
  } catch {
    return fallback; // no sign-in: the command itself will say so when it needs one
  }
  const claims = token === undefined ? undefined : claimsOf(token);
  if (!claims) return fallback;
  const oid = typeof claims.oid === "string" && GUID.test(claims.oid) ? claims.oid : undefined;
  const name = NAME_CLAIMS.map((c) => claims[c]).find(
    (v): v is string => typeof v === "string" && SIGN_IN_NAME.test(v),
  );
  const appId = typeof claims.appid === "string" && GUID.test(claims.appid) ? claims.appid : undefined;
  const who = name ?? (appId ? `app ${appId}` : undefined);
  if (who === undefined && oid === undefined) return fallback;
  return ["cli", who ?? `oid ${oid}`, who && oid ? `(oid ${oid})` : undefined].filter(Boolean).join(" ");
}

/** The payload of a JWT, or undefined when the token is not one (an opaque token is fine: no claims). */
function claimsOf(token: string): Record<string, unknown> | undefined {
  const payload = token.split(".")[1];
  if (payload === undefined) return undefined;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(payload, "base64url").toString("utf8"));
    return typeof parsed === "object" && parsed !== null ? (parsed as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function osUser(): string {
  try {
    return userInfo().username;
  } catch {
    return "unknown user";
  }
}
