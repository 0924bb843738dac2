import { isIP } from "node:net";
import type { ContainerClient } from "@azure/storage-blob";
import { badRequest } from "./errors.js";
import type { KeyRecord } from "./keys.js";
import type { RoleAssignment } from "./rbac.js";

/**
 * Blob layout of an emulator backup, inside `<storageResourceUri>/mhsm-<name>-<yyyyMMddHHmmss><2 digits>/`:
 *
 *   backup-in-progress   marker written first and deleted last; a folder still holding it is incomplete
 *   keys/<key name>.json one blob per key (live or soft-deleted) with all its versions
 *   manifest.json        written after every key blob: the key list and the role assignments
 *
 * The real layout is undocumented; this one is plain JSON and says so in every blob. Writing it needs
 * create/write, reading back the manifest needs read, removing the marker needs delete — so a backup
 * exercises exactly the documented `crdw`. A restore lists the folder and reads it — exactly `rl`.
 */
export const BACKUP_FORMAT = "hsm-emulator-backup";
export const BACKUP_FORMAT_VERSION = 1;
export const MANIFEST_BLOB = "manifest.json";
export const MARKER_BLOB = "backup-in-progress";
export const keyBlobName = (keyName: string): string => `keys/${keyName}.json`;
const NOTICE =
  "Written by the local Managed HSM emulator (tools/hsm-emulator). NOT a real Managed HSM backup: plain JSON, no key material; it cannot be restored to Azure.";

/** Where a backup/restore reads or writes: a container plus an optional folder path inside it. */
export interface StorageTarget {
  /** Container URL without query, e.g. `http://127.0.0.1:10000/devstoreaccount1/backups`. */
  readonly containerUrl: string;
  /** Decoded path inside the container, no leading/trailing `/` ("" at the container root). */
  readonly prefix: string;
  /** storageResourceUri as given, minus trailing slashes: the base of the reported folder URI. */
  readonly display: string;
}

/** Same rule as @azure/storage-blob's isIpEndpointStyle: IP and localhost hosts carry the account in the path. */
function isPathStyle(url: URL): boolean {
  const hostname = url.hostname.replace(/^\[|\]$/g, "");
  return isIP(hostname) !== 0 || hostname === "localhost" || hostname === "host.docker.internal";
}

export function parseStorageResourceUri(value: string, field: string): StorageTarget {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw badRequest(`${field} '${redact(value)}' is not an absolute URL.`);
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") {
    throw badRequest(`${field} must be an http(s) URL, got protocol '${url.protocol}'.`);
  }
  // A SAS pasted into the URI would end up in the folder URI and in status bodies: refuse it.
  if (url.search || url.hash) {
    throw badRequest(
      `${field} must not carry a query string or fragment; pass the SAS in 'token' (without a leading '?').`,
    );
  }
  const segments = url.pathname
    .split("/")
    .filter(Boolean)
    .map((segment) => decodeURIComponent(segment));
  const containerIndex = isPathStyle(url) ? 1 : 0;
  const containerName = segments[containerIndex];
  if (!containerName) {
    throw badRequest(`${field} '${value}' does not name a blob container.`);
  }
  const containerPath = segments
    .slice(0, containerIndex + 1)
    .map(encodeURIComponent)
    .join("/");
  return {
    containerUrl: `${url.origin}/${containerPath}`,
    prefix: segments.slice(containerIndex + 1).join("/"),
    display: `${url.origin}${url.pathname.replace(/\/+$/, "")}`,
  };
}

/** Joins blob path pieces, dropping empty segments and stray slashes. */
export function joinBlobPath(...parts: string[]): string {
  return parts
    .flatMap((part) => part.split("/"))
    .filter(Boolean)
    .join("/");
}

/** Removes the given secrets and any `sig=` value from text that may end up in a status, error or log. */
export function redact(text: string, secrets: readonly (string | undefined)[] = []): string {
  let result = text;
  for (const secret of secrets) {
    if (secret) result = result.split(secret).join("<redacted>");
  }
  return result.replace(/sig=[^&\s"'<>]*/gi, "sig=<redacted>");
}

/** A failed Azure Storage call, already described without secrets. */
export class StorageFailure extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "StorageFailure";
  }
}

/** The backup folder is missing, incomplete or not an emulator backup. */
export class InvalidBackup extends Error {
  constructor(readonly detail: string) {
    super(`Invalid backup provided: ${detail}`);
    this.name = "InvalidBackup";
  }
}

/** The backup is valid but does not hold the key a selective restore asked for. */
export class KeyNotInBackup extends Error {
  constructor(
    readonly keyName: string,
    folder: string,
  ) {
    super(`Key '${keyName}' is not present in the backup in folder '${folder}'.`);
    this.name = "KeyNotInBackup";
  }
}

interface StorageErrorShape {
  statusCode?: number;
  code?: string;
  details?: { errorCode?: string };
  message?: string;
}

/**
 * Runs one storage call and turns its failure into a StorageFailure naming the storage error code
 * (e.g. 403 AuthorizationPermissionMismatch from Azurite for a SAS lacking a permission).
 */
async function storageStep<T>(operation: string, containerUrl: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    const shape = (
      typeof error === "object" && error !== null ? error : { message: String(error) }
    ) as StorageErrorShape;
    const code = shape.details?.errorCode ?? shape.code ?? "StorageRequestFailed";
    const what = shape.statusCode ? `returned ${shape.statusCode} ${code}` : `request failed (${code})`;
    const firstLine = (shape.message ?? "").split("\n")[0]?.trim();
    const message = `Azure Storage ${what} while ${operation} in container ${containerUrl}${firstLine ? `: ${firstLine}` : ""}`;
    throw new StorageFailure(code, redact(message));
  }
}

export interface BackupContent {
  keys: KeyRecord[];
  roleAssignments: RoleAssignment[];
}

export interface BackupManifest {
  format: typeof BACKUP_FORMAT;
  formatVersion: typeof BACKUP_FORMAT_VERSION;
  notice: string;
  hsmName: string;
  jobId: string;
  /** Unix seconds, the job's startTime. */
  startTime: number;
  createdAt: string;
  keys: { name: string; blob: string; versions: number; softDeleted: boolean }[];
  roleAssignments: RoleAssignment[];
}

interface KeyBlob {
  format: typeof BACKUP_FORMAT;
  formatVersion: typeof BACKUP_FORMAT_VERSION;
  notice: string;
  key: KeyRecord;
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value, null, 2) + "\n", "utf8");
}

const JSON_UPLOAD = {
  blobHTTPHeaders: { blobContentType: "application/json" },
  metadata: { writtenby: "hsmemulator" },
};

export interface BackupIdentity {
  hsmName: string;
  jobId: string;
  startTime: number;
}

/** Writes a complete backup into `folderPath` (see the layout at the top of this file). */
export async function writeBackup(
  client: ContainerClient,
  folderPath: string,
  identity: BackupIdentity,
  content: BackupContent,
  abortSignal: AbortSignal,
): Promise<void> {
  const containerUrl = client.url.split("?")[0]!;
  const blob = (name: string) => client.getBlockBlobClient(joinBlobPath(folderPath, name));
  const upload = (name: string, data: Buffer, what: string, extra: object = {}) =>
    storageStep(`${what} '${joinBlobPath(folderPath, name)}'`, containerUrl, () =>
      blob(name).upload(data, data.length, { ...JSON_UPLOAD, ...extra, abortSignal }),
    );

  // If-None-Match: * so two backups can never share a folder silently.
  await upload(MARKER_BLOB, json({ notice: NOTICE, jobId: identity.jobId }), "creating the in-progress marker", {
    conditions: { ifNoneMatch: "*" },
  });
  for (const key of content.keys) {
    const keyBlob: KeyBlob = { format: BACKUP_FORMAT, formatVersion: BACKUP_FORMAT_VERSION, notice: NOTICE, key };
    await upload(keyBlobName(key.name), json(keyBlob), "uploading key blob");
  }
  const manifest: BackupManifest = {
    format: BACKUP_FORMAT,
    formatVersion: BACKUP_FORMAT_VERSION,
    notice: NOTICE,
    hsmName: identity.hsmName,
    jobId: identity.jobId,
    startTime: identity.startTime,
    createdAt: new Date().toISOString(),
    keys: content.keys.map((key) => ({
      name: key.name,
      blob: keyBlobName(key.name),
      versions: key.versions.length,
      softDeleted: key.deleted !== null,
    })),
    roleAssignments: content.roleAssignments,
  };
  const manifestBytes = json(manifest);
  await upload(MANIFEST_BLOB, manifestBytes, "uploading the manifest");
  const readBack = await storageStep(`reading back '${joinBlobPath(folderPath, MANIFEST_BLOB)}'`, containerUrl, () =>
    blob(MANIFEST_BLOB).downloadToBuffer(undefined, undefined, { abortSignal }),
  );
  if (!readBack.equals(manifestBytes)) {
    throw new StorageFailure(
      "ManifestMismatch",
      `The manifest read back from ${containerUrl} differs from the one written.`,
    );
  }
  await storageStep(`deleting the in-progress marker '${joinBlobPath(folderPath, MARKER_BLOB)}'`, containerUrl, () =>
    blob(MARKER_BLOB).delete({ abortSignal }),
  );
}

export type ReadScope = { kind: "all" } | { kind: "manifest" } | { kind: "key"; name: string };

/** Lists and reads a backup folder. Throws InvalidBackup, KeyNotInBackup or StorageFailure. */
export async function readBackup(
  client: ContainerClient,
  folderPath: string,
  scope: ReadScope,
  abortSignal: AbortSignal,
): Promise<{ manifest: BackupManifest; content: BackupContent }> {
  const containerUrl = client.url.split("?")[0]!;
  if (!folderPath) throw new InvalidBackup("no backup folder was named");
  const names = await storageStep(`listing blobs under '${folderPath}/'`, containerUrl, async () => {
    const found = new Set<string>();
    for await (const item of client.listBlobsFlat({ prefix: `${folderPath}/`, abortSignal })) {
      found.add(item.name.slice(folderPath.length + 1));
    }
    return found;
  });
  if (names.size === 0) throw new InvalidBackup(`folder '${folderPath}' holds no blobs in container ${containerUrl}`);
  if (names.has(MARKER_BLOB))
    throw new InvalidBackup(
      `the backup in folder '${folderPath}' was never completed (${MARKER_BLOB} is still present)`,
    );
  if (!names.has(MANIFEST_BLOB))
    throw new InvalidBackup(`folder '${folderPath}' has no ${MANIFEST_BLOB}: not an emulator backup`);

  const readJson = async (name: string): Promise<unknown> => {
    const path = joinBlobPath(folderPath, name);
    const bytes = await storageStep(`reading '${path}'`, containerUrl, () =>
      client.getBlobClient(path).downloadToBuffer(undefined, undefined, { abortSignal }),
    );
    try {
      return JSON.parse(bytes.toString("utf8"));
    } catch (error) {
      throw new InvalidBackup(`blob '${path}' is not valid JSON (${(error as Error).message})`);
    }
  };
  const hasFormat = (value: unknown): boolean => {
    const candidate = value as { format?: unknown; formatVersion?: unknown } | null;
    return candidate?.format === BACKUP_FORMAT && candidate.formatVersion === BACKUP_FORMAT_VERSION;
  };

  const manifest = (await readJson(MANIFEST_BLOB)) as BackupManifest;
  if (!hasFormat(manifest) || !Array.isArray(manifest.keys) || !Array.isArray(manifest.roleAssignments)) {
    throw new InvalidBackup(
      `${joinBlobPath(folderPath, MANIFEST_BLOB)} is not a ${BACKUP_FORMAT} v${BACKUP_FORMAT_VERSION} manifest`,
    );
  }
  if (scope.kind === "manifest") return { manifest, content: { keys: [], roleAssignments: manifest.roleAssignments } };

  const wanted = scope.kind === "key" ? manifest.keys.filter((entry) => entry.name === scope.name) : manifest.keys;
  if (scope.kind === "key" && wanted.length === 0) throw new KeyNotInBackup(scope.name, folderPath);
  const keys: KeyRecord[] = [];
  for (const entry of wanted) {
    if (!names.has(entry.blob))
      throw new InvalidBackup(`key blob '${joinBlobPath(folderPath, entry.blob)}' listed in the manifest is missing`);
    const keyBlob = (await readJson(entry.blob)) as KeyBlob;
    if (!hasFormat(keyBlob) || keyBlob.key?.name !== entry.name || !Array.isArray(keyBlob.key.versions)) {
      throw new InvalidBackup(`blob '${joinBlobPath(folderPath, entry.blob)}' is not the key blob for '${entry.name}'`);
    }
    keys.push(keyBlob.key);
  }
  return { manifest, content: { keys, roleAssignments: manifest.roleAssignments } };
}

/** Pre-backup check: the SAS/identity can create, read and delete a blob where the backup would go. */
export async function probeWriteAccess(
  client: ContainerClient,
  prefix: string,
  probeName: string,
  abortSignal: AbortSignal,
): Promise<void> {
  const containerUrl = client.url.split("?")[0]!;
  const path = joinBlobPath(prefix, probeName);
  const probe = client.getBlockBlobClient(path);
  const data = json({ notice: NOTICE, purpose: "pre-backup storage access check; deleted right after it is written" });
  await storageStep(`writing the pre-backup probe blob '${path}'`, containerUrl, () =>
    probe.upload(data, data.length, { ...JSON_UPLOAD, abortSignal }),
  );
  await storageStep(`reading the pre-backup probe blob '${path}'`, containerUrl, () =>
    probe.downloadToBuffer(undefined, undefined, { abortSignal }),
  );
  await storageStep(`deleting the pre-backup probe blob '${path}'`, containerUrl, () => probe.delete({ abortSignal }));
}
