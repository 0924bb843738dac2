/** The Key Vault error model (`KeyVaultError` in the spec): `{ error: { code, message, innererror } }`. */
export interface KeyVaultErrorDetail {
  code: string;
  message: string;
  innererror: KeyVaultErrorDetail | null;
}

/**
 * A request the emulator refuses. Route handlers throw it; the server turns it into the status, the
 * headers and a KeyVault error body, so every refusal has the shape the real service uses.
 */
export class HsmHttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Readonly<Record<string, string>> = {},
    readonly innerCode?: string,
  ) {
    super(message);
    this.name = "HsmHttpError";
  }

  toBody(): { error: KeyVaultErrorDetail } {
    const innererror = this.innerCode ? { code: this.innerCode, message: this.message, innererror: null } : null;
    return { error: { code: this.code, message: this.message, innererror } };
  }
}

export function badRequest(message: string, code = "BadRequest"): HsmHttpError {
  return new HsmHttpError(400, code, message);
}

export function notFound(code: string, message: string): HsmHttpError {
  return new HsmHttpError(404, code, message);
}

export function toError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}
