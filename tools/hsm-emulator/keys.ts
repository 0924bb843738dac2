import { randomBytes } from "node:crypto";
import { HsmHttpError, badRequest, notFound } from "./errors.js";

/** Key types a create request may name; the HSM stores every key as its `-HSM` variant. */
export type KeyType = "RSA" | "RSA-HSM" | "EC" | "EC-HSM" | "oct" | "oct-HSM";
const STORED_KTY: Record<KeyType, "RSA-HSM" | "EC-HSM" | "oct-HSM"> = {
  RSA: "RSA-HSM",
  "RSA-HSM": "RSA-HSM",
  EC: "EC-HSM",
  "EC-HSM": "EC-HSM",
  oct: "oct-HSM",
  "oct-HSM": "oct-HSM",
};

/** Recorded value for a Managed HSM with the default 7-day soft-delete retention. */
const RECOVERY_LEVEL = "CustomizedRecoverable+Purgeable";
const RECOVERABLE_DAYS = 7;
const KEY_NAME = /^[0-9a-zA-Z-]{1,127}$/;

export interface KeyVersionRecord {
  version: string;
  kty: "RSA-HSM" | "EC-HSM" | "oct-HSM";
  keyOps: string[];
  enabled: boolean;
  created: number;
  updated: number;
  /** Random bytes shaped like public JWK fields (n/e, crv/x/y). Never real key material. */
  placeholder: Record<string, string>;
}

export interface KeyRecord {
  name: string;
  /** Oldest first; the last one is the current version. */
  versions: KeyVersionRecord[];
  deleted: { deletedDate: number; scheduledPurgeDate: number } | null;
}

export interface KeyAttributes {
  enabled: boolean;
  created: number;
  updated: number;
  recoveryLevel: string;
  recoverableDays: number;
  exportable: boolean;
}

export interface KeyBundle {
  key: { kid: string; kty: string; key_ops: string[] } & Record<string, unknown>;
  attributes: KeyAttributes;
}

export interface DeletedKeyBundle extends KeyBundle {
  recoveryId: string;
  deletedDate: number;
  scheduledPurgeDate: number;
}

export interface KeyItem {
  kid: string;
  attributes: KeyAttributes;
}

export interface CreateKeyOptions {
  keyOps?: string[];
  enabled?: boolean;
}

const DEFAULT_KEY_OPS: Record<KeyVersionRecord["kty"], string[]> = {
  "RSA-HSM": ["wrapKey", "decrypt", "encrypt", "unwrapKey", "sign", "verify"],
  "EC-HSM": ["sign", "verify"],
  "oct-HSM": ["wrapKey", "unwrapKey", "encrypt", "decrypt"],
};

export function isKeyType(value: unknown): value is KeyType {
  return typeof value === "string" && Object.prototype.hasOwnProperty.call(STORED_KTY, value);
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

function placeholderFor(kty: KeyVersionRecord["kty"]): Record<string, string> {
  switch (kty) {
    case "RSA-HSM":
      return { n: randomBytes(256).toString("base64url"), e: "AQAB" };
    case "EC-HSM":
      return { crv: "P-256", x: randomBytes(32).toString("base64url"), y: randomBytes(32).toString("base64url") };
    case "oct-HSM":
      return {};
  }
}

function keyNotFound(name: string): HsmHttpError {
  return notFound("KeyNotFound", `Key not found: ${name}`);
}

/**
 * The HSM's key state: live and soft-deleted keys with all their versions. Everything the keys API
 * serves, a backup captures and a restore replaces lives here.
 */
export class KeyStore {
  private readonly records = new Map<string, KeyRecord>();

  /** Adds a new version (creating the key if needed). A soft-deleted name is refused, as in Key Vault. */
  create(name: string, kty: KeyType, options: CreateKeyOptions = {}): KeyVersionRecord {
    if (!KEY_NAME.test(name)) {
      throw badRequest(`Key name '${name}' is invalid: use 1-127 letters, digits and dashes.`, "BadParameter");
    }
    const existing = this.records.get(name);
    if (existing?.deleted) {
      throw new HsmHttpError(
        409,
        "Conflict",
        `Key ${name} is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged.`,
        {},
        "ObjectIsDeletedButRecoverable",
      );
    }
    const stored = STORED_KTY[kty];
    const now = nowSeconds();
    const version: KeyVersionRecord = {
      version: randomBytes(16).toString("hex"),
      kty: stored,
      keyOps: options.keyOps ?? DEFAULT_KEY_OPS[stored],
      enabled: options.enabled ?? true,
      created: now,
      updated: now,
      placeholder: placeholderFor(stored),
    };
    if (existing) existing.versions.push(version);
    else this.records.set(name, { name, versions: [version], deleted: null });
    return version;
  }

  /** The live key, or undefined when it does not exist or is soft-deleted. */
  live(name: string): KeyRecord | undefined {
    const record = this.records.get(name);
    return record && !record.deleted ? record : undefined;
  }

  deletedRecord(name: string): KeyRecord | undefined {
    const record = this.records.get(name);
    return record?.deleted ? record : undefined;
  }

  /** True when the name is taken, live or soft-deleted (selective restore does not overwrite either). */
  exists(name: string): boolean {
    return this.records.has(name);
  }

  liveRecords(): KeyRecord[] {
    return [...this.records.values()].filter((record) => !record.deleted);
  }

  deletedRecords(): KeyRecord[] {
    return [...this.records.values()].filter((record) => record.deleted);
  }

  requireLive(name: string): KeyRecord {
    const record = this.live(name);
    if (!record) throw keyNotFound(name);
    return record;
  }

  requireVersion(name: string, version: string | undefined): KeyVersionRecord {
    const record = this.requireLive(name);
    const found = version ? record.versions.find((candidate) => candidate.version === version) : record.versions.at(-1);
    if (!found) throw notFound("KeyNotFound", `Key not found: ${name}/${version ?? ""}`);
    return found;
  }

  softDelete(name: string): KeyRecord {
    const record = this.requireLive(name);
    const deletedDate = nowSeconds();
    record.deleted = { deletedDate, scheduledPurgeDate: deletedDate + RECOVERABLE_DAYS * 86_400 };
    return record;
  }

  purge(name: string): void {
    if (!this.deletedRecord(name)) throw notFound("KeyNotFound", `Deleted key not found: ${name}`);
    this.records.delete(name);
  }

  recover(name: string): KeyRecord {
    const record = this.deletedRecord(name);
    if (!record) throw notFound("KeyNotFound", `Deleted key not found: ${name}`);
    record.deleted = null;
    return record;
  }

  /** A deep copy, so a backup is not changed by later key operations. */
  snapshot(): KeyRecord[] {
    return structuredClone([...this.records.values()]);
  }

  /** Full restore: the HSM's key state becomes exactly the backup's. */
  replaceAll(records: readonly KeyRecord[]): void {
    this.records.clear();
    for (const record of structuredClone(records)) this.records.set(record.name, record);
  }

  /** Selective restore of one key, brought back live with all its versions. */
  restore(record: KeyRecord): void {
    this.records.set(record.name, { ...structuredClone(record), deleted: null });
  }
}

export function keyAttributes(version: KeyVersionRecord): KeyAttributes {
  return {
    enabled: version.enabled,
    created: version.created,
    updated: version.updated,
    recoveryLevel: RECOVERY_LEVEL,
    recoverableDays: RECOVERABLE_DAYS,
    exportable: false,
  };
}

export function keyBundle(baseUrl: string, name: string, version: KeyVersionRecord): KeyBundle {
  return {
    key: {
      kid: `${baseUrl}/keys/${name}/${version.version}`,
      kty: version.kty,
      key_ops: [...version.keyOps],
      ...version.placeholder,
    },
    attributes: keyAttributes(version),
  };
}

export function deletedKeyBundle(baseUrl: string, record: KeyRecord): DeletedKeyBundle {
  const current = record.versions.at(-1);
  if (!current || !record.deleted)
    throw new Error(`Key record '${record.name}' is not a soft-deleted key with versions.`);
  return {
    ...keyBundle(baseUrl, record.name, current),
    recoveryId: `${baseUrl}/deletedkeys/${record.name}`,
    deletedDate: record.deleted.deletedDate,
    scheduledPurgeDate: record.deleted.scheduledPurgeDate,
  };
}

/** List items carry the unversioned kid, as Key Vault's `GET /keys` does. */
export function keyItem(baseUrl: string, record: KeyRecord): KeyItem {
  const current = record.versions.at(-1);
  if (!current) throw new Error(`Key record '${record.name}' has no versions.`);
  return { kid: `${baseUrl}/keys/${record.name}`, attributes: keyAttributes(current) };
}
