/** The resource the real Managed HSM names in its challenge; tokens must carry it as `aud`. */
export const HSM_RESOURCE = "https://managedhsm.azure.net";

/** Exactly the recorded real header (see managed-hsm-backup-api.md §5). */
export function challengeHeader(tenantId: string): string {
  return `Bearer authorization="https://login.microsoftonline.com/${tenantId}", resource="${HSM_RESOURCE}"`;
}

export interface Caller {
  /** The token's `oid`: the principal id role assignments are matched against. */
  readonly oid: string | undefined;
}

export type AuthResult =
  | { readonly kind: "ok"; readonly caller: Caller }
  /** No bearer token at all: the client's challenge probe. Answered with an empty 401. */
  | { readonly kind: "challenge" }
  | { readonly kind: "rejected"; readonly message: string };

/**
 * Reads the bearer token's claims without verifying a signature: in this project's local setup tokens
 * come unsigned from a fake identity endpoint, and what the emulator has to reproduce is the HSM's
 * audience and expiry checks, not Entra ID's signing.
 */
export function authenticate(authorization: string | undefined, nowSeconds: number): AuthResult {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? "");
  if (!match) return { kind: "challenge" };
  const segments = match[1]!.split(".");
  if (segments.length !== 3 || !segments[1]) {
    return {
      kind: "rejected",
      message: `The bearer token is not a JWT: expected 3 dot-separated segments, got ${segments.length}.`,
    };
  }
  let claims: Record<string, unknown>;
  try {
    const parsed: unknown = JSON.parse(Buffer.from(segments[1], "base64url").toString("utf8"));
    if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed))
      throw new Error("payload is not a JSON object");
    claims = parsed as Record<string, unknown>;
  } catch (error) {
    return { kind: "rejected", message: `The bearer token's payload could not be read: ${(error as Error).message}.` };
  }

  const audiences = Array.isArray(claims.aud) ? claims.aud : [claims.aud];
  const audienceOk = audiences.some((aud) => typeof aud === "string" && aud.replace(/\/+$/, "") === HSM_RESOURCE);
  if (!audienceOk) {
    // Wording of the real service (quoted in Azure/azure-sdk-for-java#33659).
    return {
      kind: "rejected",
      message: `Found token with aud=${String(claims.aud)}, but expected aud=${HSM_RESOURCE}`,
    };
  }
  if (typeof claims.exp !== "number") {
    return { kind: "rejected", message: "The bearer token has no numeric exp claim." };
  }
  if (claims.exp <= nowSeconds) {
    return {
      kind: "rejected",
      message: `The bearer token expired at ${new Date(claims.exp * 1000).toISOString()} (exp=${claims.exp}, now=${nowSeconds}).`,
    };
  }
  return { kind: "ok", caller: { oid: typeof claims.oid === "string" ? claims.oid : undefined } };
}
