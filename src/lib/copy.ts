/**
 * Immutable copies (optional, BACKUP_COPY_CONTAINER): after a backup succeeds, its folder's blobs are
 * copied into a container of a second account whose version-level immutability policy keeps every
 * copy for N days against deletes and overwrites, by the app or by anyone holding its keys. The HSM
 * cannot write there itself: Managed HSM does not support a backup target with an immutability policy.
 *
 * The app streams each blob (download from the backup container, upload to the copy container) with
 * its own identity rather than asking storage for a server-side copy: across accounts a server-side
 * copy needs a SAS or a bearer token for the source, fails behind a firewall the source account has,
 * and (synchronous Copy Blob From URL) stops at 256 MiB; Azurite does not check the source's
 * authorization at all, so a test could not show it works.
 */
import type { Readable } from "node:stream";
import type { BlockBlobClient } from "@azure/storage-blob";
import type { BackupRecord, Stored } from "./catalog.js";
import type { HsmTarget } from "./config.js";
import type { AppDeps } from "./deps.js";
import type { Logger } from "./logger.js";
import { persist } from "./outcome.js";
import { toSafeError } from "./redact.js";
import type { Verification } from "./verify.js";

export type CopyStatus = "Copied" | "Failed" | "Skipped";

/** The record fields of a copy. */
export interface CopyFields {
  readonly copyStatus: CopyStatus;
  /** The copy's folder, a plain URL (no SAS); set when Copied. */
  readonly copyFolderUri?: string;
  readonly copiedAt?: string;
  /** Why the copy Failed or was Skipped. */
  readonly copyMessage?: string;
}

/** Each blob's download and upload together must end within this, and within the run's deadline. */
export const COPY_BLOB_DEADLINE_MS = 10 * 60_000;
/** Blocks of about 4 MiB, one at a time: memory stays flat whatever the size of a backup. */
const BLOCK_BYTES = 4 * 1024 * 1024;

/**
 * Copies a succeeded backup's folder, blob for blob under the same names, into the copy container.
 * Never throws: a copy that fails leaves the backup as good as it was, and the fields (and a log
 * error) say what failed, naming the account and container. A backup the HSM's check refused is not
 * copied: it would sit undeletable for the policy's days and restore nothing.
 * @returns no fields when copies are off.
 */
export async function copyBackup(
  deps: AppDeps,
  hsm: HsmTarget,
  folderUri: string,
  verification: Verification | undefined,
  deadline: Date,
  log: Logger,
): Promise<CopyFields | Record<string, never>> {
  const target = deps.copyTarget;
  if (!target) return {};
  if (verification === "Failed") {
    const copyMessage =
      "not copied: the HSM's pre-restore check refused this backup, and an immutable copy could not be removed before its retention ends";
    log.warn(`Immutable copy of ${folderUri} (HSM ${hsm.name}) ${copyMessage}`);
    return { copyStatus: "Skipped", copyMessage };
  }
  const where = `container "${target.container}" of storage account ${target.blobService.accountName} (${new URL(target.blobService.url).host})`;
  const destination = target.blobService.getContainerClient(target.container);
  const remainingMs = deadline.getTime() - deps.now().getTime();
  const run = AbortSignal.timeout(Math.max(0, remainingMs));
  let step = "starting";
  let blobDeadline: AbortSignal | undefined;
  try {
    if (remainingMs <= 0) throw new Error("no time was left before the run's deadline");
    const folder = folderNameOf(deps, folderUri);
    const source = deps.storage.blobService.getContainerClient(deps.config.backupContainer);
    step = "checking the copy container";
    // Bicep creates it in Azure; locally (Azurite) the app does, as it does the backup container.
    if (!(await destination.exists({ abortSignal: run }))) await destination.createIfNotExists({ abortSignal: run });
    let blobs = 0;
    let bytes = 0;
    step = `listing ${folder}/ in the backup container`;
    for await (const item of source.listBlobsFlat({ prefix: `${folder}/`, abortSignal: run })) {
      blobDeadline = AbortSignal.timeout(COPY_BLOB_DEADLINE_MS);
      const abortSignal = AbortSignal.any([run, blobDeadline]);
      step = `reading ${item.name}`;
      const download = await source.getBlobClient(item.name).download(0, undefined, { abortSignal });
      const size = download.contentLength;
      const body = download.readableStreamBody as Readable | undefined;
      if (!body || size === undefined) {
        body?.destroy();
        throw new Error(`the backup account's answer for ${item.name} had no body or no length`);
      }
      step = `writing ${item.name}`;
      const copy = destination.getBlockBlobClient(item.name);
      try {
        await uploadBlocks(copy, body, download.contentType, abortSignal);
      } finally {
        // A failed upload leaves the download half read: release its connection.
        body.destroy();
      }
      // The copy must hold every byte the source had: a short stream must not pass for a copy.
      const written = (await copy.getProperties({ abortSignal })).contentLength;
      if (written !== size) throw new Error(`${item.name} has ${written} bytes in the copy, ${size} in the backup`);
      blobs += 1;
      bytes += size;
    }
    if (blobs === 0) throw new Error(`the backup container holds no blob under ${folder}/`);
    const copyFolderUri = `${destination.url}/${folder}`;
    log.info(`Immutable copy of HSM ${hsm.name}'s backup ${folder}: ${blobs} blob(s), ${bytes} bytes in ${where}`);
    return { copyStatus: "Copied", copyFolderUri, copiedAt: deps.now().toISOString() };
  } catch (error) {
    const cause = run.aborted
      ? "the run's deadline passed"
      : blobDeadline?.aborted
        ? `one blob's copy took longer than ${COPY_BLOB_DEADLINE_MS / 1000} s`
        : toSafeError(error).message;
    const copyMessage = `copy to ${where} failed while ${step}: ${cause}`;
    log.error(`Immutable copy of ${folderUri} (HSM ${hsm.name}): ${copyMessage}. The backup itself is unaffected.`);
    return { copyStatus: "Failed", copyMessage };
  }
}

/** What this run learns about a new backup's folder after the job ended: its verification and its copy. */
const CHECK_FIELDS = [
  "verification",
  "verifiedAt",
  "verificationMessage",
  "copyStatus",
  "copyFolderUri",
  "copiedAt",
  "copyMessage",
] as const satisfies readonly (keyof BackupRecord)[];

/**
 * A status read elsewhere (reconcile, GET /api/backups/{id}) may record the outcome while this run
 * still verifies and copies. That outcome stands; what this run learnt about the same folder is
 * added to it rather than lost (health would otherwise report a copy that exists as missing). A
 * failed write is logged: the copy itself is done either way.
 */
export async function keepChecks(
  deps: AppDeps,
  stored: Stored<BackupRecord>,
  patch: Partial<BackupRecord>,
  log: Logger,
): Promise<Stored<BackupRecord>> {
  const record = stored.record;
  const missing = CHECK_FIELDS.filter((key) => patch[key] !== undefined && record[key] === undefined);
  if (missing.length === 0 || record.status !== patch.status || record.folderUri !== patch.folderUri) return stored;
  const fields = Object.fromEntries(missing.map((key) => [key, patch[key]])) as Partial<BackupRecord>;
  try {
    // The one merge mode that may write a settled record; it is conditional on the record's etag.
    return await persist(deps, () => deps.catalog.merge("backup", stored, fields, { correction: true }));
  } catch (error) {
    log.error(
      `Backup record ${record.id} of HSM ${record.hsmName} was settled by another reader; adding ${missing.join(", ")} to it failed: ${toSafeError(error).message}`,
    );
    return stored;
  }
}

/**
 * The folder's name in the backup container. The folder URI is the HSM's answer: it must name a
 * folder directly in the app's own backup container, or nothing is read.
 */
function folderNameOf(deps: AppDeps, folderUri: string): string {
  const container = deps.storage.containerUrl(deps.config.backupContainer);
  const folder = folderUri.startsWith(`${container}/`) ? folderUri.slice(container.length + 1) : "";
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$/.test(folder))
    throw new Error(`the backup's folder ${folderUri} is not a folder of the backup container ${container}`);
  return folder;
}

/**
 * Writes a stream as a block blob, every call under the abort signal. Not storage-blob's
 * uploadStream: it does not hand the abort signal to its block writes, so a copy account that
 * never answers would hold the run past its deadline.
 */
async function uploadBlocks(
  blob: BlockBlobClient,
  body: Readable,
  contentType: string | undefined,
  abortSignal: AbortSignal,
): Promise<void> {
  const ids: string[] = [];
  let chunks: Buffer[] = [];
  let buffered = 0;
  const stage = async () => {
    const id = Buffer.from(String(ids.length).padStart(8, "0")).toString("base64");
    const block = Buffer.concat(chunks, buffered);
    chunks = [];
    buffered = 0;
    await blob.stageBlock(id, block, block.length, { abortSignal });
    ids.push(id);
  };
  for await (const chunk of body) {
    const bytes = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string);
    chunks.push(bytes);
    buffered += bytes.length;
    if (buffered >= BLOCK_BYTES) await stage();
  }
  if (buffered > 0) await stage();
  await blob.commitBlockList(ids, {
    abortSignal,
    ...(contentType ? { blobHTTPHeaders: { blobContentType: contentType } } : {}),
  });
}
