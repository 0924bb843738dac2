/**
 * The input rules the HTTP API and the CLI share, so the two cannot drift apart. Each surface names
 * the fields its own way (top / --top) through `label` and turns InvalidInput into its own refusal
 * (a 400 problem, a usage error).
 */
import { RECORD_ID, RECORD_STATUSES, VERIFICATIONS, type ListQuery, type RecordStatus } from "./catalog.js";
import type { Verification } from "./verify.js";

export const KEY_NAME = /^[0-9A-Za-z-]{1,127}$/;
export const HSM_NAME = /^[0-9A-Za-z-]{1,63}$/;
export const LIST_TOP = { min: 1, max: 100, default: 25 } as const;
/** Longer than any token the Table service hands out; anything longer is not one of ours. */
export const MAX_CONTINUATION_TOKEN_LENGTH = 1024;

export type Field = "hsm" | "status" | "verification" | "top" | "continuationToken" | "keyName";
export type Label = (field: Field) => string;

export class InvalidInput extends Error {
  constructor(
    readonly field: Field | "id",
    readonly title: string,
    message: string,
  ) {
    super(message);
    this.name = "InvalidInput";
  }
}

export interface RawListQuery {
  readonly hsm?: string | undefined;
  readonly status?: string | undefined;
  readonly verification?: string | undefined;
  readonly top?: string | undefined;
  readonly continuationToken?: string | undefined;
}

export function parseListQuery(raw: RawListQuery, label: Label): ListQuery {
  const { hsm, status, continuationToken } = raw;
  if (hsm !== undefined && !HSM_NAME.test(hsm)) {
    throw new InvalidInput("hsm", "Invalid hsm", `${label("hsm")} "${truncate(hsm)}" is not an HSM name`);
  }
  if (status !== undefined && !RECORD_STATUSES.includes(status as RecordStatus)) {
    throw new InvalidInput(
      "status",
      "Invalid status",
      `${label("status")} "${truncate(status)}" is not one of ${RECORD_STATUSES.join(", ")}`,
    );
  }
  const { verification } = raw;
  if (verification !== undefined && !VERIFICATIONS.includes(verification as Verification)) {
    throw new InvalidInput(
      "verification",
      "Invalid verification",
      `${label("verification")} "${truncate(verification)}" is not one of ${VERIFICATIONS.join(", ")}`,
    );
  }
  const top = raw.top ?? String(LIST_TOP.default);
  if (!/^\d{1,3}$/.test(top) || Number(top) < LIST_TOP.min || Number(top) > LIST_TOP.max) {
    throw new InvalidInput(
      "top",
      "Invalid top",
      `${label("top")} must be a whole number from ${LIST_TOP.min} to ${LIST_TOP.max}, not "${truncate(top)}"`,
    );
  }
  if (continuationToken !== undefined && continuationToken.length > MAX_CONTINUATION_TOKEN_LENGTH) {
    throw new InvalidInput(
      "continuationToken",
      "Invalid continuation token",
      `${label("continuationToken")} is longer than any token this listing returns`,
    );
  }
  return {
    top: Number(top),
    ...(hsm !== undefined ? { hsmName: hsm } : {}),
    ...(status !== undefined ? { status: status as RecordStatus } : {}),
    ...(verification !== undefined ? { verification: verification as Verification } : {}),
    ...(continuationToken !== undefined ? { continuationToken } : {}),
  };
}

export function checkKeyName(value: unknown, label: Label): string {
  if (typeof value !== "string" || !KEY_NAME.test(value)) {
    throw new InvalidInput(
      "keyName",
      "Invalid key name",
      `${label("keyName")} ${describe(value)} is not a key name (1-127 letters, digits and hyphens)`,
    );
  }
  return value;
}

/** An HSM name that must be one of the configured ones; the refusal lists them, so a typo is easy to fix. */
export function checkConfiguredHsm(value: unknown, configured: readonly string[], label: Label): string {
  if (typeof value !== "string" || !HSM_NAME.test(value)) {
    throw new InvalidInput("hsm", "Invalid hsm", `${label("hsm")} ${describe(value)} is not an HSM name`);
  }
  if (!configured.includes(value)) {
    throw new InvalidInput(
      "hsm",
      "Unknown hsm",
      `${label("hsm")} "${value}" is not a configured HSM; configured: ${configured.join(", ")}`,
    );
  }
  return value;
}

export function checkRecordId(value: string, what: "backup" | "restore"): string {
  if (!RECORD_ID.test(value)) {
    throw new InvalidInput(
      "id",
      `Invalid ${what} id`,
      `"${truncate(value)}" is not a ${what} id (13 digits, a hyphen, 8 hex digits)`,
    );
  }
  return value;
}

export function describe(value: unknown): string {
  return typeof value === "string"
    ? `"${truncate(value)}"`
    : `of type ${value === null ? "null" : Array.isArray(value) ? "array" : typeof value}`;
}

/** Echoing client input back is useful; echoing a megabyte of it is not. */
export function truncate(text: string): string {
  return text.length > 80 ? `${text.slice(0, 80)}…` : text;
}
